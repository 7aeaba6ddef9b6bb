//! WAL coverage: which segments the archive holds, per timeline, and gaps.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pg::{TimelineId, WalFile, WalSegmentName};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// First missing segment.
    pub from: String,
    /// Last missing segment.
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineCoverage {
    pub timeline: TimelineId,
    pub first: String,
    pub last: String,
    pub segments: u64,
    pub gaps: Vec<Gap>,
}

/// Coverage of the given archived file names (other names are ignored).
pub fn coverage<'a>(
    names: impl IntoIterator<Item = &'a str>,
    segment_size: u64,
) -> Vec<TimelineCoverage> {
    let mut by_tli: BTreeMap<TimelineId, Vec<WalSegmentName>> = BTreeMap::new();
    for n in names {
        if let Some(WalFile::Segment(s)) = WalFile::parse(n) {
            by_tli.entry(s.timeline).or_default().push(s);
        }
    }
    by_tli
        .into_iter()
        .map(|(timeline, mut segs)| {
            segs.sort();
            segs.dedup();
            let mut gaps = Vec::new();
            for w in segs.windows(2) {
                let expected = w[0].next(segment_size);
                if expected != w[1] {
                    let before_next = WalSegmentName::from_lsn(
                        timeline,
                        crate::pg::Lsn(w[1].start_lsn(segment_size).0 - segment_size),
                        segment_size,
                    );
                    gaps.push(Gap {
                        from: expected.to_string(),
                        to: before_next.to_string(),
                    });
                }
            }
            TimelineCoverage {
                timeline,
                first: segs[0].to_string(),
                last: segs[segs.len() - 1].to_string(),
                segments: segs.len() as u64,
                gaps,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_timelines() {
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000005",
            "0000000100000000000000FF",
            "000000010000000100000000",
            "00000002.history",
            "000000020000000000000005",
            "000000020000000000000006.partial",
        ];
        let c = coverage(names, 16 << 20);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].segments, 5);
        assert_eq!(c[0].first, "000000010000000000000001");
        assert_eq!(c[0].last, "000000010000000100000000");
        assert_eq!(
            c[0].gaps,
            vec![
                Gap {
                    from: "000000010000000000000003".into(),
                    to: "000000010000000000000004".into()
                },
                Gap {
                    from: "000000010000000000000006".into(),
                    to: "0000000100000000000000FE".into()
                },
            ]
        );
        assert_eq!(c[1].segments, 1);
        assert!(c[1].gaps.is_empty());
    }
}
