//! WAL coverage: which segments the archive holds, per timeline, and gaps.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pg::{Lsn, TimelineId, WalFile, WalSegmentName};

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
                        w[1].start_lsn(segment_size) - segment_size,
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

/// The archived segment where WAL ends for a recovery that starts on
/// timeline `from` (recovery follows the latest timeline): the segment
/// with the highest start LSN on `from` or a later timeline, the highest
/// timeline first when two hold it. `None` when there is none.
pub fn last_segment<'a>(
    names: impl IntoIterator<Item = &'a str>,
    from: TimelineId,
    segment_size: u64,
) -> Option<WalSegmentName> {
    names
        .into_iter()
        .filter_map(|n| match WalFile::parse(n) {
            Some(WalFile::Segment(s)) if s.timeline >= from => Some(s),
            _ => None,
        })
        .max_by_key(|s| (s.start_lsn(segment_size), s.timeline))
}

/// Where the WAL written into a segment ends: the LSN after its last
/// non-zero byte. PostgreSQL zero-fills a segment after a WAL switch, and
/// no record can start at a zero byte (its length is its first field), so
/// no record starts at or after this LSN: a target there is never reached.
pub fn end_of_written_wal(segment: WalSegmentName, bytes: &[u8], segment_size: u64) -> Lsn {
    let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    segment.start_lsn(segment_size) + used as u64
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

    #[test]
    fn the_last_segment_follows_later_timelines() {
        let size = 16 << 20;
        let names = [
            "000000010000000000000003",
            "000000010000000000000009",
            "00000002.history",
            "000000020000000000000007",
            "000000020000000000000009",
            "000000030000000000000001",
        ];
        let last = |from| last_segment(names, TimelineId(from), size).map(|s| s.to_string());
        assert_eq!(last(1).as_deref(), Some("000000020000000000000009"));
        assert_eq!(last(3).as_deref(), Some("000000030000000000000001"));
        assert_eq!(last(4), None);
    }

    #[test]
    fn written_wal_ends_after_the_last_non_zero_byte() {
        let size = 1 << 20;
        let seg = WalSegmentName::parse("00000001000000000000000C").unwrap();
        let mut bytes = vec![0u8; size as usize];
        assert_eq!(end_of_written_wal(seg, &bytes, size), Lsn(0xC0_0000));
        bytes[0] = 1;
        bytes[4099] = 7;
        assert_eq!(end_of_written_wal(seg, &bytes, size), Lsn(0xC0_1004));
        *bytes.last_mut().unwrap() = 1;
        assert_eq!(end_of_written_wal(seg, &bytes, size), Lsn(0xD0_0000));
    }
}
