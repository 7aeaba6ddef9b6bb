//! WAL file names: segments, timeline history files, backup history files
//! and partial segments.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Lsn;

/// PostgreSQL's default WAL segment size (Greenplum uses 64 MiB).
pub const DEFAULT_WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A timeline: 1 for a new cluster, +1 at each promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid timeline {0:?}: expected a positive decimal number")]
pub struct TimelineParseError(String);

/// A timeline as the server prints it (`timeline_id`, IDENTIFY_SYSTEM,
/// TIMELINE_HISTORY, `pg_control_checkpoint()`): decimal, at least 1;
/// surrounding white space is ignored.
impl std::str::FromStr for TimelineId {
    type Err = TimelineParseError;
    fn from_str(s: &str) -> Result<TimelineId, TimelineParseError> {
        s.trim()
            .parse::<u32>()
            .ok()
            .filter(|&t| t > 0)
            .map(TimelineId)
            .ok_or_else(|| TimelineParseError(s.to_string()))
    }
}

/// A WAL segment file name: timeline, log and segment number
/// (`000000010000000A000000FF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalSegmentName {
    pub timeline: TimelineId,
    /// Segment number counted from LSN 0 (log * segments_per_log + seg).
    log: u32,
    seg: u32,
}

impl WalSegmentName {
    /// The segment of `lsn` on `timeline` for a given segment size.
    pub fn from_lsn(timeline: TimelineId, lsn: Lsn, segment_size: u64) -> WalSegmentName {
        let per_log = 0x1_0000_0000 / segment_size;
        let no = lsn.segment_no(segment_size);
        WalSegmentName {
            timeline,
            log: (no / per_log) as u32,
            seg: (no % per_log) as u32,
        }
    }

    pub fn parse(name: &str) -> Option<WalSegmentName> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let part = |i: usize| u32::from_str_radix(&name[i..i + 8], 16).ok();
        let timeline = part(0)?;
        if timeline == 0 {
            return None;
        }
        Some(WalSegmentName {
            timeline: TimelineId(timeline),
            log: part(8)?,
            seg: part(16)?,
        })
    }

    /// The segment after this one on the same timeline.
    pub fn next(self, segment_size: u64) -> WalSegmentName {
        let per_log = 0x1_0000_0000 / segment_size;
        // A name's segment part may be any 32-bit number (a listing holds
        // what it holds): past the last segment of the LSN space, numbers
        // wrap, as XLogSegNo arithmetic does in PostgreSQL.
        if u64::from(self.seg) + 1 >= per_log {
            WalSegmentName {
                log: self.log.wrapping_add(1),
                seg: 0,
                ..self
            }
        } else {
            WalSegmentName {
                seg: self.seg + 1, // below per_log: no overflow
                ..self
            }
        }
    }

    /// The first LSN of this segment.
    pub fn start_lsn(self, segment_size: u64) -> Lsn {
        let per_log = 0x1_0000_0000 / segment_size;
        // Wraps like PostgreSQL's XLogFromFileName and
        // XLogSegNoOffsetToRecPtr for a name past the end of the LSN space.
        Lsn((self.log as u64)
            .wrapping_mul(per_log)
            .wrapping_add(self.seg as u64)
            .wrapping_mul(segment_size))
    }

    /// The first 16 characters (timeline and log): groups 256 segments of
    /// 16 MiB, used as a directory in the repository.
    pub fn group(self) -> String {
        format!("{:08X}{:08X}", self.timeline.0, self.log)
    }
}

impl fmt::Display for WalSegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline.0, self.log, self.seg)
    }
}

/// Any file that `archive_command` is given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFile {
    Segment(WalSegmentName),
    /// `00000002.history`
    History(TimelineId),
    /// `000000010000000000000002.00000028.backup`
    BackupHistory(WalSegmentName, u32),
    /// `000000010000000000000005.partial`, left at promotion
    Partial(WalSegmentName),
}

impl WalFile {
    pub fn parse(name: &str) -> Option<WalFile> {
        if let Some(seg) = WalSegmentName::parse(name) {
            return Some(WalFile::Segment(seg));
        }
        if let Some(tli) = name.strip_suffix(".history") {
            if tli.len() == 8 && tli.bytes().all(|b| b.is_ascii_hexdigit()) {
                let t = u32::from_str_radix(tli, 16).ok()?;
                return (t > 0).then_some(WalFile::History(TimelineId(t)));
            }
            return None;
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return WalSegmentName::parse(seg).map(WalFile::Partial);
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.')?;
            if off.len() != 8 || !off.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let seg = WalSegmentName::parse(seg)?;
            return Some(WalFile::BackupHistory(
                seg,
                u32::from_str_radix(off, 16).ok()?,
            ));
        }
        None
    }

    pub fn segment(&self) -> Option<WalSegmentName> {
        match self {
            WalFile::Segment(s) | WalFile::Partial(s) | WalFile::BackupHistory(s, _) => Some(*s),
            WalFile::History(_) => None,
        }
    }
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFile::Segment(s) => write!(f, "{s}"),
            WalFile::History(t) => write!(f, "{:08X}.history", t.0),
            WalFile::BackupHistory(s, off) => write!(f, "{s}.{off:08X}.backup"),
            WalFile::Partial(s) => write!(f, "{s}.partial"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_parse() {
        assert_eq!("1".parse::<TimelineId>(), Ok(TimelineId(1)));
        assert_eq!(" 12\n".parse::<TimelineId>(), Ok(TimelineId(12)));
        for bad in ["", "0", "-1", "x", "1/2", "4294967296"] {
            assert!(bad.parse::<TimelineId>().is_err(), "{bad}");
        }
    }

    const MB16: u64 = 16 * 1024 * 1024;
    const MB64: u64 = 64 * 1024 * 1024;

    #[test]
    fn every_kind_of_name_round_trips() {
        for name in [
            "000000010000000A000000FF",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000030000000000000005.partial",
        ] {
            let f = WalFile::parse(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(f.to_string(), name);
        }
        for bad in [
            "",
            "RECOVERYXLOG",
            "000000010000000A000000F",
            "000000000000000A000000FF",
            "0000000G0000000A000000FF",
            "00000000.history",
            "1.history",
            "000000010000000000000002.backup",
            "000000010000000A000000FF.tmp",
        ] {
            assert_eq!(WalFile::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn next_segment_wraps_by_segment_size() {
        let s = WalSegmentName::parse("0000000100000000000000FE").unwrap();
        assert_eq!(s.next(MB16).to_string(), "0000000100000000000000FF");
        assert_eq!(
            s.next(MB16).next(MB16).to_string(),
            "000000010000000100000000"
        );
        let g = WalSegmentName::parse("00000001000000000000003F").unwrap();
        assert_eq!(g.next(MB64).to_string(), "000000010000000100000000");
    }

    #[test]
    fn segments_and_lsns_agree() {
        let lsn: Lsn = "1/5000028".parse().unwrap();
        let s = WalSegmentName::from_lsn(TimelineId(3), lsn, MB16);
        assert_eq!(s.to_string(), "000000030000000100000005");
        assert_eq!(s.start_lsn(MB16), "1/5000000".parse().unwrap());
        assert_eq!(s.group(), "0000000300000001");
        let g = WalSegmentName::from_lsn(TimelineId(1), lsn, MB64);
        assert_eq!(g.to_string(), "000000010000000100000001");
    }
}
