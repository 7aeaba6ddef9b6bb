//! Where logical backups live in the repository, and their identifiers.
//!
//! ```text
//! logical/{TS}/metadata.sql                 the DDL, one statement after another
//! logical/{TS}/toc.json                     table of contents: each object and where
//!                                           its statement is in metadata.sql
//! logical/{TS}/data/{OID}                   one table's rows (COPY's binary or text
//!                                           format, as the record says per table)
//! logical/{TS}/data/all                     --single-data-file: every table's rows, as
//!                                           independently decodable frames
//! logical/{TS}/data/large_objects           the large objects' contents (binary COPY
//!                                           rows: oid, offset, bytes of one chunk)
//! logical/{TS}/statistics.json              --with-stats: pg_class row/page counts
//! logical/{TS}/report                       the backup report (gpbackup_{TS}_report)
//! logical/{TS}/restores/{RTS}/report        the report of a restore of this backup
//! logical/{TS}/restores/{RTS}/errors        statements and tables that failed in it
//! logical/{TS}/backup.json                  the record, written LAST: a backup
//!                                           without it is incomplete and never listed
//! logical/{TS}/claim-{random}               an empty object by which a backup claims
//!                                           its timestamp before writing anything else
//! ```
//! `TS` is the backup's 14-digit timestamp (YYYYMMDDHHMMSS, local time, as
//! gpbackup prints it).

use std::fmt;

use chrono::{DateTime, Local};

use crate::error::{Error, Result};

pub const LOGICAL_PREFIX: &str = "logical/";

/// A backup's identifier: 14 digits, YYYYMMDDHHMMSS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(String);

impl Timestamp {
    /// Validates a user-given timestamp with gpbackup's message.
    pub fn parse(s: &str) -> Result<Timestamp> {
        if is_valid_timestamp(s) {
            Ok(Timestamp(s.to_string()))
        } else {
            Err(Error::Usage(format!(
                "Timestamp {s} is invalid.  Timestamps must be in the format YYYYMMDDHHMMSS."
            )))
        }
    }

    pub fn from_time(t: DateTime<Local>) -> Timestamp {
        Timestamp(t.format("%Y%m%d%H%M%S").to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 14 digits forming a real date and time.
pub fn is_valid_timestamp(s: &str) -> bool {
    s.len() == 14
        && s.bytes().all(|b| b.is_ascii_digit())
        && chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").is_ok()
}

pub fn backup_prefix(ts: &Timestamp) -> String {
    format!("{LOGICAL_PREFIX}{ts}/")
}

/// The record whose presence makes a logical backup complete.
pub fn record_key(ts: &Timestamp) -> String {
    format!("{}backup.json", backup_prefix(ts))
}

pub fn metadata_key(ts: &Timestamp) -> String {
    format!("{}metadata.sql", backup_prefix(ts))
}

pub fn toc_key(ts: &Timestamp) -> String {
    format!("{}toc.json", backup_prefix(ts))
}

pub fn table_data_key(ts: &Timestamp, oid: u32) -> String {
    format!("{}data/{oid}", backup_prefix(ts))
}

pub fn single_data_key(ts: &Timestamp) -> String {
    format!("{}data/all", backup_prefix(ts))
}

pub fn large_objects_key(ts: &Timestamp) -> String {
    format!("{}data/large_objects", backup_prefix(ts))
}

/// The name a frame of the single data file is sealed under: binds it to
/// the object and to its position, so frames cannot be swapped.
pub fn frame_name(key: &str, frame: u32) -> String {
    format!("{key}#{frame}")
}

pub fn stats_key(ts: &Timestamp) -> String {
    format!("{}statistics.json", backup_prefix(ts))
}

pub fn report_key(ts: &Timestamp) -> String {
    format!("{}report", backup_prefix(ts))
}

pub fn restore_report_key(ts: &Timestamp, restore_ts: &Timestamp) -> String {
    format!("{}restores/{restore_ts}/report", backup_prefix(ts))
}

pub fn restore_errors_key(ts: &Timestamp, restore_ts: &Timestamp) -> String {
    format!("{}restores/{restore_ts}/errors", backup_prefix(ts))
}

/// The timestamp of a key under `logical/`, if it has one.
pub fn timestamp_of_key(key: &str) -> Option<Timestamp> {
    let rest = key.strip_prefix(LOGICAL_PREFIX)?;
    let ts = rest.split('/').next()?;
    is_valid_timestamp(ts).then(|| Timestamp(ts.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert!(Timestamp::parse("20260131235959").is_ok());
        for bad in [
            "2026013123595",
            "202601312359590",
            "20261331000000",
            "2026013a000000",
            "",
        ] {
            let e = Timestamp::parse(bad).unwrap_err().to_string();
            assert!(e.contains("must be in the format YYYYMMDDHHMMSS"), "{e}");
        }
    }

    #[test]
    fn keys_are_valid_and_parse_back() {
        let ts = Timestamp::parse("20260102030405").unwrap();
        let keys = [
            record_key(&ts),
            metadata_key(&ts),
            toc_key(&ts),
            table_data_key(&ts, 16384),
            single_data_key(&ts),
            large_objects_key(&ts),
            stats_key(&ts),
            report_key(&ts),
            restore_report_key(&ts, &Timestamp::parse("20260102030500").unwrap()),
            restore_errors_key(&ts, &Timestamp::parse("20260102030500").unwrap()),
        ];
        for k in &keys {
            crate::storage::validate_key(k).unwrap();
            assert_eq!(timestamp_of_key(k).as_ref(), Some(&ts), "{k}");
        }
        assert_eq!(record_key(&ts), "logical/20260102030405/backup.json");
        assert_eq!(timestamp_of_key("logical/notatime/backup.json"), None);
        assert_eq!(timestamp_of_key("seg-1/wal/x"), None);
    }
}
