//! The long page header at the start of every WAL segment
//! (`XLogLongPageHeaderData`), and the check that a segment is the one its
//! name says.
//!
//! Layout (PostgreSQL's `access/xlog_internal.h`, native byte order):
//!
//! ```text
//! 0  u16 xlp_magic      version-specific
//! 2  u16 xlp_info       flag bits; XLP_LONG_HEADER = 0x0002
//! 4  u32 xlp_tli        timeline of the first record on the page
//! 8  u64 xlp_pageaddr   LSN of the page's start
//! 16 u32 xlp_rem_len    (then 4 bytes of padding)
//! 24 u64 xlp_sysid      system identifier
//! 32 u32 xlp_seg_size   segment size, as a cross-check
//! 36 u32 xlp_xlog_blcksz WAL block size, as a cross-check
//! ```

use std::fmt;

use super::{Lsn, TimelineId, WalSegmentName};

/// Bytes of the long page header that this module reads.
pub const LONG_HEADER_LEN: usize = 40;

const XLP_LONG_HEADER: u16 = 0x0002;

/// The fields of a segment's first page header that name the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: TimelineId,
    pub page_addr: Lsn,
    pub system_id: u64,
    pub seg_size: u32,
    pub block_size: u32,
}

/// Why a segment's first page is not the one its name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageHeaderMismatch {
    /// Fewer bytes than a long page header.
    TooShort { len: usize },
    /// No byte order gives a plausible segment and block size: not WAL.
    NotWal,
    /// The first page has a short header: not the start of a segment.
    NotLongHeader { info: u16 },
    /// The page address is not the start of the named segment.
    WrongAddress {
        found: Lsn,
        expected: Lsn,
        /// The segment the page address belongs to, named on the same
        /// timeline as the asked-for name.
        holds: WalSegmentName,
    },
    /// The page is on a later timeline than the name.
    LaterTimeline { found: TimelineId },
}

impl fmt::Display for PageHeaderMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageHeaderMismatch::TooShort { len } => write!(
                f,
                "it is {len} bytes long, shorter than a WAL page header ({LONG_HEADER_LEN} bytes)"
            ),
            PageHeaderMismatch::NotWal => {
                write!(f, "its first page header is not a WAL segment's")
            }
            PageHeaderMismatch::NotLongHeader { info } => write!(
                f,
                "its first page has no long header (xlp_info {info:#06x}): it is not the start of a WAL segment"
            ),
            PageHeaderMismatch::WrongAddress {
                found,
                expected,
                holds,
            } => write!(
                f,
                "its first page is at {found} (segment {holds}), not at {expected} where this segment starts"
            ),
            PageHeaderMismatch::LaterTimeline { found } => write!(
                f,
                "its first page is on timeline {found}, later than the timeline of its name"
            ),
        }
    }
}

fn plausible(seg_size: u32, block_size: u32) -> bool {
    seg_size.is_power_of_two()
        && (1 << 20..=1 << 30).contains(&seg_size)
        && block_size.is_power_of_two()
        && (1 << 10..=1 << 16).contains(&block_size)
}

impl LongPageHeader {
    /// Parses the first bytes of a segment. The byte order is the one in
    /// which the segment and block sizes are plausible (WAL is written in
    /// the server's native order).
    pub fn parse(bytes: &[u8]) -> Result<LongPageHeader, PageHeaderMismatch> {
        if bytes.len() < LONG_HEADER_LEN {
            return Err(PageHeaderMismatch::TooShort { len: bytes.len() });
        }
        let h = &bytes[..LONG_HEADER_LEN];
        for big_endian in [false, true] {
            let u16_at = |i: usize| {
                let b = [h[i], h[i + 1]];
                if big_endian {
                    u16::from_be_bytes(b)
                } else {
                    u16::from_le_bytes(b)
                }
            };
            let u32_at = |i: usize| {
                let b: [u8; 4] = h[i..i + 4].try_into().expect("4 bytes");
                if big_endian {
                    u32::from_be_bytes(b)
                } else {
                    u32::from_le_bytes(b)
                }
            };
            let u64_at = |i: usize| {
                let b: [u8; 8] = h[i..i + 8].try_into().expect("8 bytes");
                if big_endian {
                    u64::from_be_bytes(b)
                } else {
                    u64::from_le_bytes(b)
                }
            };
            let (seg_size, block_size) = (u32_at(32), u32_at(36));
            if plausible(seg_size, block_size) {
                return Ok(LongPageHeader {
                    magic: u16_at(0),
                    info: u16_at(2),
                    tli: TimelineId(u32_at(4)),
                    page_addr: Lsn(u64_at(8)),
                    system_id: u64_at(24),
                    seg_size,
                    block_size,
                });
            }
        }
        Err(PageHeaderMismatch::NotWal)
    }
}

/// Checks that `first_bytes`, the start of a segment file, is the segment
/// `name`: a long header whose page address is the start of `name` (by the
/// header's segment size: the size the server wrote) on a timeline not
/// later than `name`'s. (The first segment of a timeline starts with a page
/// copied from its parent, so an older timeline is normal.)
pub fn check_segment_start(
    name: WalSegmentName,
    first_bytes: &[u8],
) -> Result<LongPageHeader, PageHeaderMismatch> {
    let h = LongPageHeader::parse(first_bytes)?;
    if h.info & XLP_LONG_HEADER == 0 {
        return Err(PageHeaderMismatch::NotLongHeader { info: h.info });
    }
    let size = u64::from(h.seg_size);
    let expected = name.start_lsn(size);
    if h.page_addr != expected {
        return Err(PageHeaderMismatch::WrongAddress {
            found: h.page_addr,
            expected,
            holds: WalSegmentName::from_lsn(name.timeline, h.page_addr, size),
        });
    }
    if h.tli > name.timeline {
        return Err(PageHeaderMismatch::LaterTimeline { found: h.tli });
    }
    Ok(h)
}

#[cfg(test)]
pub(crate) fn test_header(tli: u32, page_addr: u64, seg_size: u32, big_endian: bool) -> Vec<u8> {
    let mut h = Vec::with_capacity(LONG_HEADER_LEN);
    let mut put = |b: &[u8]| h.extend_from_slice(b);
    macro_rules! num {
        ($v:expr) => {
            if big_endian {
                put(&$v.to_be_bytes())
            } else {
                put(&$v.to_le_bytes())
            }
        };
    }
    num!(0xD110u16);
    num!(XLP_LONG_HEADER | 0x0004);
    num!(tli);
    num!(page_addr);
    num!(0u32);
    put(&[0; 4]);
    num!(0x7312_3456_789A_BCDEu64);
    num!(seg_size);
    num!(8192u32);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u32 = 16 << 20;
    const MB1: u32 = 1 << 20;

    fn seg(name: &str) -> WalSegmentName {
        WalSegmentName::parse(name).unwrap()
    }

    #[test]
    fn a_segment_named_for_its_first_page_passes() {
        let name = seg("000000010000000A000000FF");
        let addr = name.start_lsn(MB16 as u64).0;
        for be in [false, true] {
            let h = check_segment_start(name, &test_header(1, addr, MB16, be)).unwrap();
            assert_eq!(h.page_addr, Lsn(addr));
            assert_eq!(h.seg_size, MB16);
            assert_eq!(h.block_size, 8192);
            assert_eq!(h.magic, 0xD110);
        }
        // A header longer than 40 bytes (the whole page) is fine.
        let mut page = test_header(1, addr, MB16, false);
        page.resize(8192, 0);
        check_segment_start(name, &page).unwrap();
    }

    #[test]
    fn the_header_segment_size_names_the_segment() {
        // 1 MiB segments: segment 0x25 of log 0 starts at 0/2500000.
        let name = seg("000000010000000000000025");
        let addr = 0x25u64 << 20;
        check_segment_start(name, &test_header(1, addr, MB1, false)).unwrap();
        // The same bytes are not segment 0x25 with 16 MiB segments; the
        // header's size decides, so a 16 MiB header at that address is
        // refused.
        let e = check_segment_start(name, &test_header(1, addr, MB16, false)).unwrap_err();
        assert!(
            matches!(e, PageHeaderMismatch::WrongAddress { expected, .. } if expected == Lsn(0x25u64 * (16 << 20))),
            "{e:?}"
        );
    }

    #[test]
    fn a_swapped_segment_is_named() {
        let name = seg("000000010000000000000005");
        let other = seg("000000010000000000000007").start_lsn(MB16 as u64);
        let e = check_segment_start(name, &test_header(1, other.0, MB16, false)).unwrap_err();
        assert_eq!(
            e,
            PageHeaderMismatch::WrongAddress {
                found: other,
                expected: Lsn(5 * (16 << 20)),
                holds: seg("000000010000000000000007"),
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("0/7000000") && text.contains("000000010000000000000007"),
            "{text}"
        );
        assert!(text.contains("not at 0/5000000"), "{text}");
    }

    #[test]
    fn timelines_may_be_older_never_newer() {
        let name = seg("000000030000000000000005");
        let addr = name.start_lsn(MB16 as u64).0;
        // The first segment of a timeline starts with its parent's page.
        check_segment_start(name, &test_header(2, addr, MB16, false)).unwrap();
        check_segment_start(name, &test_header(3, addr, MB16, false)).unwrap();
        let e = check_segment_start(name, &test_header(4, addr, MB16, false)).unwrap_err();
        assert_eq!(
            e,
            PageHeaderMismatch::LaterTimeline {
                found: TimelineId(4)
            }
        );
    }

    #[test]
    fn garbage_short_and_short_headers_are_refused() {
        let name = seg("000000010000000000000001");
        assert_eq!(
            check_segment_start(name, &[0u8; 39]).unwrap_err(),
            PageHeaderMismatch::TooShort { len: 39 }
        );
        assert_eq!(
            check_segment_start(name, &[0u8; 8192]).unwrap_err(),
            PageHeaderMismatch::NotWal
        );
        let noise: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        assert_eq!(
            check_segment_start(name, &noise).unwrap_err(),
            PageHeaderMismatch::NotWal
        );
        let mut h = test_header(1, 1 << 24, MB16, false);
        h[2] = 0x04; // xlp_info without XLP_LONG_HEADER
        h[3] = 0;
        assert_eq!(
            check_segment_start(name, &h).unwrap_err(),
            PageHeaderMismatch::NotLongHeader { info: 0x0004 }
        );
    }
}
