//! Log sequence numbers.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A position in the WAL, written `X/Y` as PostgreSQL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    /// The segment number holding this LSN.
    pub fn segment_no(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }

    /// The start of the segment holding this LSN.
    pub fn segment_start(self, segment_size: u64) -> Lsn {
        Lsn(self.0 - self.segment_offset(segment_size))
    }

    /// The offset of this LSN in its segment.
    pub fn segment_offset(self, segment_size: u64) -> u64 {
        self.0 % segment_size
    }

    /// The start of the next 4 GiB "log" (the next value of the high 32
    /// bits, the `X` of `X/Y`; a WAL file name's middle part).
    pub fn next_log_start(self) -> Lsn {
        Lsn(((self.0 >> 32) + 1) << 32)
    }

    /// `self + bytes`, or `None` past the end of the LSN space.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// `self - bytes`, or `None` before 0/0.
    pub fn checked_sub(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_sub(bytes).map(Lsn)
    }

    /// `self - bytes`, or 0/0.
    pub fn saturating_sub(self, bytes: u64) -> Lsn {
        Lsn(self.0.saturating_sub(bytes))
    }

    /// The bytes from `earlier` to `self`, or `None` when `earlier` is
    /// later.
    pub fn checked_distance(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }
}

/// An LSN `bytes` further on. Panics past the end of the LSN space (2^64
/// bytes of WAL: a bug, not a server's answer; use
/// [`Lsn::checked_add`] on untrusted input).
impl Add<u64> for Lsn {
    type Output = Lsn;
    fn add(self, bytes: u64) -> Lsn {
        self.checked_add(bytes)
            .unwrap_or_else(|| panic!("LSN overflow: {self} + {bytes}"))
    }
}

impl AddAssign<u64> for Lsn {
    fn add_assign(&mut self, bytes: u64) {
        *self = *self + bytes;
    }
}

/// An LSN `bytes` earlier. Panics before 0/0 (use [`Lsn::checked_sub`]
/// or [`Lsn::saturating_sub`] where that can happen).
impl Sub<u64> for Lsn {
    type Output = Lsn;
    fn sub(self, bytes: u64) -> Lsn {
        self.checked_sub(bytes)
            .unwrap_or_else(|| panic!("LSN underflow: {self} - {bytes}"))
    }
}

/// The number of bytes of WAL from `earlier` to `self`. Panics when
/// `earlier` is later (use [`Lsn::checked_distance`] where that can
/// happen).
impl Sub<Lsn> for Lsn {
    type Output = u64;
    fn sub(self, earlier: Lsn) -> u64 {
        self.checked_distance(earlier)
            .unwrap_or_else(|| panic!("LSN underflow: {self} - {earlier}"))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected the form 16/B374D848")]
pub struct LsnParseError(String);

impl FromStr for Lsn {
    type Err = LsnParseError;
    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(hi << 32 | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_print() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in ["", "1", "/1", "1/", "G/1", "1/2/3", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        assert!("0/5000028".parse::<Lsn>().unwrap() < "1/0".parse().unwrap());
    }

    #[test]
    fn lsn_arithmetic() {
        let mb = 1 << 20;
        let l = Lsn(0x0300_0028);
        assert_eq!(l + 8, Lsn(0x0300_0030));
        let mut m = l;
        m += 0x10;
        assert_eq!(m, Lsn(0x0300_0038));
        assert_eq!(l - 0x28, Lsn(0x0300_0000));
        assert_eq!(Lsn(0x0300_0038) - l, 0x10);
        assert_eq!(l.segment_start(mb), Lsn(0x0300_0000));
        assert_eq!(l.segment_offset(mb), 0x28);
        assert_eq!(Lsn(0x0300_0000).segment_start(mb), Lsn(0x0300_0000));
        assert_eq!(
            Lsn(0x1_0FFF_FFFF).segment_start(16 * mb),
            Lsn(0x1_0F00_0000)
        );
        assert_eq!(Lsn(0x1_0FFF_FFFF).segment_offset(16 * mb), 0xFF_FFFF);
        assert_eq!(Lsn(0x1_0FFF_FFFF).next_log_start(), Lsn(0x2_0000_0000));
        assert_eq!(Lsn(0x2_0000_0000).next_log_start(), Lsn(0x3_0000_0000));
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(u64::MAX - 1).checked_add(1), Some(Lsn(u64::MAX)));
        assert_eq!(Lsn(5).checked_sub(6), None);
        assert_eq!(Lsn(5).saturating_sub(6), Lsn(0));
        assert_eq!(Lsn(5).checked_distance(Lsn(6)), None);
        assert_eq!(Lsn(6).checked_distance(Lsn(5)), Some(1));
    }

    #[test]
    #[should_panic(expected = "LSN overflow")]
    fn lsn_overflow_panics() {
        let _ = Lsn(u64::MAX) + 1;
    }

    #[test]
    #[should_panic(expected = "LSN underflow")]
    fn lsn_distance_backwards_panics() {
        let _ = Lsn(5) - Lsn(6);
    }

    #[test]
    fn lsns_serialize_as_text() {
        let j = serde_json::to_string(&Lsn(0x1_0000_0028)).unwrap();
        assert_eq!(j, "\"1/28\"");
        assert_eq!(serde_json::from_str::<Lsn>(&j).unwrap(), Lsn(0x1_0000_0028));
    }
}
