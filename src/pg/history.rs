//! Timeline history files (`00000003.history`): where each ancestor
//! timeline of a timeline ended.
//!
//! Each line is `parentTLI<tab>switchpoint<tab>reason`, oldest first;
//! blank lines and lines starting with `#` are comments (PostgreSQL's
//! `readTimeLineHistory`).

use super::{Lsn, TimelineId};

/// One ancestor: `timeline` ended at `end` (the next line's timeline, or
/// the file's own timeline, starts there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub timeline: TimelineId,
    pub end: Lsn,
}

/// Parses a history file's content; an error names the line.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let bad = |what: &str| format!("line {}: {what}: {line:?}", i + 1);
        let tli: u32 = fields
            .next()
            .and_then(|f| f.parse().ok())
            .filter(|t| *t > 0)
            .ok_or_else(|| bad("not a timeline ID"))?;
        let end: Lsn = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| bad("not a switch point (X/Y)"))?;
        if let Some(prev) = out.last() {
            if tli <= prev.timeline.0 || end < prev.end {
                return Err(bad("timelines and switch points must increase"));
            }
        }
        out.push(HistoryEntry {
            timeline: TimelineId(tli),
            end,
        });
    }
    Ok(out)
}

/// Where `timeline` ended according to a history, if it is an ancestor.
pub fn end_of(history: &[HistoryEntry], timeline: TimelineId) -> Option<Lsn> {
    history
        .iter()
        .find(|e| e.timeline == timeline)
        .map(|e| e.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_postgresql_writes() {
        let text = "1\t0/3000148\tno recovery target specified\n\n# comment\n2\t0/5A00000\tat restore point \"p\"\n";
        let h = parse_history(text).unwrap();
        assert_eq!(
            h,
            vec![
                HistoryEntry {
                    timeline: TimelineId(1),
                    end: "0/3000148".parse().unwrap()
                },
                HistoryEntry {
                    timeline: TimelineId(2),
                    end: "0/5A00000".parse().unwrap()
                },
            ]
        );
        assert_eq!(
            end_of(&h, TimelineId(2)),
            Some("0/5A00000".parse().unwrap())
        );
        assert_eq!(end_of(&h, TimelineId(3)), None);
        assert_eq!(parse_history("").unwrap(), vec![]);
    }

    #[test]
    fn malformed_lines_are_named() {
        for (text, needle) in [
            ("x\t0/1\n", "line 1: not a timeline ID"),
            ("0\t0/1\n", "not a timeline ID"),
            ("1\n", "not a switch point"),
            (
                "1\t0/3\n1\t0/4\n",
                "line 2: timelines and switch points must increase",
            ),
            ("1\t0/5\n2\t0/4\n", "must increase"),
        ] {
            let e = parse_history(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
