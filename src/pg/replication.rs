//! Physical streaming replication, the client's side: the messages of
//! `START_REPLICATION` (XLogData, primary keepalive, standby status update)
//! and the replication commands around it (`IDENTIFY_SYSTEM`,
//! `READ_REPLICATION_SLOT`, `CREATE_REPLICATION_SLOT`, `TIMELINE_HISTORY`).
//!
//! Message layouts follow PostgreSQL's "Streaming Replication Protocol"
//! documentation; all integers are big-endian, LSNs are 64-bit, times are
//! microseconds since 2000-01-01 00:00 UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::conn::{BackendMessage, PgConn, PgError};
use super::{Lsn, TimelineId};

/// Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// A message the server sends inside the COPY BOTH stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalMessage {
    XLogData(XLogData),
    Keepalive(Keepalive),
}

/// `w`: WAL bytes starting at `start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogData {
    pub start: Lsn,
    /// The end of WAL on the server when it sent this.
    pub wal_end: Lsn,
    /// Server clock, microseconds since 2000-01-01.
    pub send_time: i64,
    pub data: Bytes,
}

impl XLogData {
    /// The LSN right after the data.
    pub fn end(&self) -> Lsn {
        self.start + self.data.len() as u64
    }
}

/// `k`: the primary's keepalive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub wal_end: Lsn,
    pub send_time: i64,
    /// The server wants a status update now (else it disconnects after
    /// wal_sender_timeout).
    pub reply_requested: bool,
}

/// Parses a CopyData payload of a physical replication stream.
pub fn parse_wal_message(mut b: Bytes) -> Result<WalMessage, PgError> {
    let kind = match b.first() {
        Some(&k) => k,
        None => return Err(PgError::Protocol("empty CopyData in a WAL stream".into())),
    };
    b.advance(1);
    match kind {
        b'w' => {
            if b.len() < 24 {
                return Err(PgError::Protocol(format!(
                    "XLogData message too short ({} bytes)",
                    b.len() + 1
                )));
            }
            let start = Lsn(b.get_u64());
            let wal_end = Lsn(b.get_u64());
            let send_time = b.get_i64();
            if start.0.checked_add(b.len() as u64).is_none() {
                return Err(PgError::Protocol(format!(
                    "XLogData at {start} with {} bytes ends past the end of WAL",
                    b.len()
                )));
            }
            Ok(WalMessage::XLogData(XLogData {
                start,
                wal_end,
                send_time,
                data: b,
            }))
        }
        b'k' => {
            if b.len() < 17 {
                return Err(PgError::Protocol(format!(
                    "keepalive message too short ({} bytes)",
                    b.len() + 1
                )));
            }
            Ok(WalMessage::Keepalive(Keepalive {
                wal_end: Lsn(b.get_u64()),
                send_time: b.get_i64(),
                reply_requested: b.get_u8() != 0,
            }))
        }
        other => Err(PgError::Protocol(format!(
            "unexpected message {:?} in a physical replication stream",
            other as char
        ))),
    }
}

/// `r`: what the client reports to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StandbyStatus {
    /// Received (written) up to here.
    pub write: Lsn,
    /// Durable up to here; for a physical slot this is where the slot's
    /// restart_lsn moves, so the server may remove WAL before it.
    /// [`Lsn::INVALID`] reports nothing (the slot does not move).
    pub flush: Lsn,
    /// Applied up to here.
    pub apply: Lsn,
    /// Ask the server to answer at once (with a keepalive).
    pub reply_requested: bool,
}

impl StandbyStatus {
    /// The CopyData payload (34 bytes) at time `now`.
    pub fn encode(&self, now: SystemTime) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(34);
        b.put_u8(b'r');
        b.put_u64(self.write.0);
        b.put_u64(self.flush.0);
        b.put_u64(self.apply.0);
        b.put_i64(pg_timestamp(now));
        b.put_u8(self.reply_requested as u8);
        b.to_vec()
    }
}

/// Microseconds since 2000-01-01 00:00 UTC (PostgreSQL's TimestampTz).
pub fn pg_timestamp(t: SystemTime) -> i64 {
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS);
    match t.duration_since(pg_epoch) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// What `IDENTIFY_SYSTEM` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The server's current WAL flush position.
    pub xlogpos: Lsn,
}

pub async fn identify_system(conn: &mut PgConn) -> Result<SystemIdentity, PgError> {
    let row = conn.query_one("IDENTIFY_SYSTEM").await?;
    Ok(SystemIdentity {
        system_id: row.get_str("systemid")?.to_string(),
        timeline: row.parse("timeline")?,
        xlogpos: row.parse("xlogpos")?,
    })
}

/// A replication slot as `READ_REPLICATION_SLOT` (PostgreSQL 15+) or
/// `pg_replication_slots` describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// `None`: the slot reserves no WAL (created without reserving it, or
    /// invalidated because its WAL exceeded max_slot_wal_keep_size).
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn` (READ_REPLICATION_SLOT only).
    pub restart_tli: Option<TimelineId>,
}

/// A slot name PostgreSQL accepts: 1 to 63 lower-case letters, digits and
/// underscores. Checked before it goes into a command.
pub fn validate_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "invalid replication slot name {name:?}: use 1 to 63 lower-case letters, digits and \
             underscores"
        ));
    }
    Ok(())
}

/// `READ_REPLICATION_SLOT name` (PostgreSQL 15+): `None` when there is no
/// such slot.
pub async fn read_replication_slot(
    conn: &mut PgConn,
    name: &str,
) -> Result<Option<SlotInfo>, PgError> {
    validate_slot_name(name).map_err(PgError::Protocol)?;
    let row = conn
        .query_one(&format!("READ_REPLICATION_SLOT {name}"))
        .await?;
    let Some(slot_type) = row.get_by_name("slot_type") else {
        return Ok(None);
    };
    Ok(Some(SlotInfo {
        slot_type: slot_type.to_string(),
        restart_lsn: row.parse_opt("restart_lsn")?,
        restart_tli: row.parse_opt("restart_tli")?,
    }))
}

/// The slot from `pg_replication_slots` on a normal SQL connection (for
/// servers before PostgreSQL 15, which lack READ_REPLICATION_SLOT).
pub async fn query_replication_slot(
    conn: &mut PgConn,
    name: &str,
) -> Result<Option<SlotInfo>, PgError> {
    validate_slot_name(name).map_err(PgError::Protocol)?;
    let rows = conn
        .simple_query(&format!(
            "select slot_type, restart_lsn::text as restart_lsn from pg_replication_slots \
             where slot_name = '{name}'"
        ))
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(SlotInfo {
        slot_type: row.get_str("slot_type")?.to_string(),
        restart_lsn: row.parse_opt("restart_lsn")?,
        restart_tli: None,
    }))
}

/// `CREATE_REPLICATION_SLOT name PHYSICAL RESERVE_WAL` (the syntax every
/// version since 10 accepts): a permanent slot that holds WAL from the last
/// checkpoint's redo point on. `false` when a slot of that name already
/// exists.
pub async fn create_physical_slot(conn: &mut PgConn, name: &str) -> Result<bool, PgError> {
    validate_slot_name(name).map_err(PgError::Protocol)?;
    match conn
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"
        ))
        .await
    {
        Ok(_) => Ok(true),
        // duplicate_object
        Err(e) if e.code() == Some("42710") => Ok(false),
        Err(e) => Err(e),
    }
}

/// `TIMELINE_HISTORY tli`: the file name and the exact bytes of the
/// server's `NNNNNNNN.history` file.
pub async fn timeline_history(
    conn: &mut PgConn,
    tli: TimelineId,
) -> Result<(String, Bytes), PgError> {
    conn.send_query(&format!("TIMELINE_HISTORY {}", tli.0))
        .await?;
    let mut found = None;
    let mut error = None;
    loop {
        match conn.next_message().await {
            Ok(BackendMessage::ReadyForQuery) => break,
            Ok(BackendMessage::DataRow(mut values)) if values.len() == 2 => {
                let content = values.pop().flatten().unwrap_or_default();
                let name = values.pop().flatten().unwrap_or_default();
                found = Some((String::from_utf8_lossy(&name).into_owned(), content));
            }
            Ok(_) => {}
            Err(e @ PgError::Server(_)) => {
                error.get_or_insert(e);
            }
            Err(e) => return Err(error.unwrap_or(e)),
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    found.ok_or_else(|| PgError::Protocol("TIMELINE_HISTORY returned no row".into()))
}

/// What Greenplum's and Cloudberry's own copies of a segment leave out
/// (gppylib's `PgBaseBackup`, used by `gpinitstandby` and `gprecoverseg
/// -F`: `pg_basebackup -E ./db_dumps -E ./promote`): old `gpcrondump`
/// dumps kept in the data directory, and the trigger file of a promotion.
/// Their BASE_BACKUP matches these against paths relative to the data
/// directory, with the leading `./`.
pub const GREENPLUM_EXCLUDES: [&str; 2] = ["./db_dumps", "./promote"];

/// The `BASE_BACKUP` command: the parenthesised options of PostgreSQL 15+
/// (with `compression`, e.g. `COMPRESSION 'lz4'`, when the server
/// compresses), else the keywords of PostgreSQL 13 and 14, which Greenplum 7
/// and Cloudberry speak too; on those (`greenplum`) `NOVERIFY_CHECKSUMS`,
/// since append-optimized files fail the heap page checksum check and the
/// backup would error at its end, and an `EXCLUDE 'path'` (their own
/// keyword) for each of [`GREENPLUM_EXCLUDES`].
pub fn base_backup_command(
    label: &str,
    version: u32,
    compression: Option<&str>,
    greenplum: bool,
) -> String {
    let label = crate::pg::quote::quote_literal(label);
    if version >= 150000 {
        let compression = compression.map(|c| format!(", {c}")).unwrap_or_default();
        format!(
            "BASE_BACKUP (LABEL {label}, PROGRESS true, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP true{compression})"
        )
    } else {
        let greenplum_options = if greenplum {
            let excludes: String = GREENPLUM_EXCLUDES
                .iter()
                .map(|p| format!(" EXCLUDE {}", crate::pg::quote::quote_literal(p)))
                .collect();
            format!(" NOVERIFY_CHECKSUMS{excludes}")
        } else {
            String::new()
        };
        format!("BASE_BACKUP LABEL {label} PROGRESS FAST NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' TABLESPACE_MAP{greenplum_options}")
    }
}

/// `START_REPLICATION SLOT slot PHYSICAL X/Y TIMELINE n`.
pub fn start_replication_command(slot: &str, start: Lsn, tli: TimelineId) -> String {
    format!(
        "START_REPLICATION SLOT {slot} PHYSICAL {start} TIMELINE {}",
        tli.0
    )
}

/// The row that ends the streaming of a historic timeline: the next
/// timeline and where it starts.
pub fn parse_next_timeline(values: &[Option<Bytes>]) -> Result<(TimelineId, Lsn), PgError> {
    let text = |i: usize| {
        values
            .get(i)
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| {
                PgError::Protocol("malformed end-of-timeline result after START_REPLICATION".into())
            })
    };
    Ok((parse_sent(&text(0)?)?, parse_sent(&text(1)?)?))
}

/// One line of a timeline history file: timeline `tli` ended at
/// `switchpoint`, where its child begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub tli: TimelineId,
    pub switchpoint: Lsn,
}

/// The ancestry of a timeline, as its `.history` file lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    /// Ancestors, oldest first.
    pub entries: Vec<HistoryEntry>,
    /// The timeline the file belongs to (the newest).
    pub current: TimelineId,
}

impl TimelineHistory {
    /// A server on its first timeline (no history file).
    pub fn first(current: TimelineId) -> TimelineHistory {
        TimelineHistory {
            entries: Vec::new(),
            current,
        }
    }

    /// Parses a history file: `parentTLI <tab> switchpoint <tab> reason`
    /// lines; blank lines and `#` comments are skipped, as PostgreSQL does.
    pub fn parse(current: TimelineId, text: &[u8]) -> Result<TimelineHistory, String> {
        let text = String::from_utf8_lossy(text);
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let tli = fields
                .next()
                .and_then(|t| t.parse::<u32>().ok())
                .ok_or_else(|| format!("bad timeline in history line {line:?}"))?;
            let switchpoint: Lsn = fields
                .next()
                .ok_or_else(|| format!("no switch point in history line {line:?}"))?
                .parse()
                .map_err(|e| format!("history line {line:?}: {e}"))?;
            if let Some(last) = entries.last() {
                if tli <= last.tli.0 || switchpoint < last.switchpoint {
                    return Err(format!("history line {line:?} is out of order"));
                }
            }
            if tli >= current.0 {
                return Err(format!(
                    "history line {line:?} names timeline {tli}, not an ancestor of {current}"
                ));
            }
            entries.push(HistoryEntry {
                tli: TimelineId(tli),
                switchpoint,
            });
        }
        Ok(TimelineHistory { entries, current })
    }

    /// Where `tli` ended (`None` for the current timeline or one not in
    /// the history).
    pub fn switchpoint(&self, tli: TimelineId) -> Option<Lsn> {
        self.entries
            .iter()
            .find(|e| e.tli == tli)
            .map(|e| e.switchpoint)
    }

    /// The timeline holding position `lsn` (PostgreSQL's
    /// tliOfPointInHistory: a switch point belongs to the child).
    pub fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        self.entries
            .iter()
            .find(|e| lsn < e.switchpoint)
            .map(|e| e.tli)
            .unwrap_or(self.current)
    }

    /// The timeline whose name the segment starting at `seg_start` has in
    /// an archive: the timeline of its last byte. (The segment in which a
    /// timeline switch happens is complete only on the new timeline; the
    /// old one's copy is a `.partial`.)
    pub fn segment_timeline(&self, seg_start: Lsn, segment_size: u64) -> TimelineId {
        self.timeline_of(seg_start + (segment_size - 1))
    }
}

/// A value the server sent (an LSN, a timeline) parsed, or a protocol
/// error naming what it was.
fn parse_sent<T>(text: &str) -> Result<T, PgError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| PgError::Protocol(format!("the server sent an {e}")))
}

/// Whether a replication connection may succeed when made again later:
/// [`PgError::is_retryable`], or the slot still held by an old connection
/// (55006 object_in_use), or a start position the server has not yet
/// flushed (a standby behind its primary; the server gives no SQLSTATE of
/// its own for it, only the message).
pub fn stream_retryable(e: &PgError) -> bool {
    e.is_retryable()
        || e.code() == Some("55006")
        || e.server_error()
            .is_some_and(|s| s.message.contains("ahead of the WAL flush position"))
}

/// The server's message when it no longer has the WAL asked for
/// ("requested WAL segment ... has already been removed").
pub fn wal_removed(e: &PgError) -> Option<&str> {
    e.server_error()
        .filter(|s| s.message.contains("has already been removed"))
        .map(|s| s.message.as_str())
}

/// Whether the server refused a replication connection because it allows
/// none (`max_wal_senders = 0`; 53300 otherwise means "retry later").
pub fn replication_disabled(e: &PgError) -> bool {
    e.server_error()
        .is_some_and(|s| s.message.contains("max_wal_senders (currently 0)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_backup_commands_by_version_and_server() {
        assert_eq!(
            base_backup_command("cbdr b1", 150000, Some("COMPRESSION 'lz4'"), false),
            "BASE_BACKUP (LABEL 'cbdr b1', PROGRESS true, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP true, COMPRESSION 'lz4')"
        );
        assert_eq!(
            base_backup_command("cbdr b1", 130000, None, false),
            "BASE_BACKUP LABEL 'cbdr b1' PROGRESS FAST NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' TABLESPACE_MAP"
        );
        assert!(base_backup_command("x", 140000, None, true).ends_with(
            " TABLESPACE_MAP NOVERIFY_CHECKSUMS EXCLUDE './db_dumps' EXCLUDE './promote'"
        ));
        assert!(!base_backup_command("x", 140000, None, false).contains("EXCLUDE"));
        assert!(base_backup_command("it's", 150000, None, false).contains("LABEL 'it''s'"));
    }
    use crate::pg::conn::ServerError;

    fn server(code: &str, message: &str) -> PgError {
        PgError::Server(ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            ..Default::default()
        })
    }

    #[test]
    fn what_is_retried() {
        assert!(stream_retryable(&PgError::Closed));
        assert!(stream_retryable(&PgError::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(stream_retryable(&server(
            "57P01",
            "terminating connection due to administrator command"
        )));
        assert!(stream_retryable(&server(
            "57P03",
            "the database system is starting up"
        )));
        assert!(stream_retryable(&server(
            "53300",
            "sorry, too many clients already"
        )));
        assert!(stream_retryable(&server(
            "55006",
            "replication slot \"x\" is active for PID 12"
        )));
        assert!(stream_retryable(&server(
            "XX000",
            "requested starting point 0/5000000 is ahead of the WAL flush position of this server 0/4000000"
        )));
        assert!(!stream_retryable(&server(
            "28000",
            "no pg_hba.conf entry for replication connection"
        )));
        assert!(!stream_retryable(&server(
            "42704",
            "replication slot \"x\" does not exist"
        )));
        assert!(!stream_retryable(&server(
            "58P01",
            "requested WAL segment 000000010000000000000003 has already been removed"
        )));
        assert!(!stream_retryable(&PgError::Protocol("garbage".into())));
        let removed = server(
            "58P01",
            "requested WAL segment 000000010000000000000003 has already been removed",
        );
        assert!(wal_removed(&removed).is_some());
        assert!(wal_removed(&server("57P01", "terminating")).is_none());
        assert!(replication_disabled(&server(
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 0)"
        )));
        assert!(!replication_disabled(&server(
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 5)"
        )));
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn xlogdata_is_parsed_zero_copy() {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(0x1_0000_0028);
        b.put_u64(0x1_0000_1000);
        b.put_i64(123_456);
        b.put_slice(b"walbytes");
        let whole = b.freeze();
        let WalMessage::XLogData(x) = parse_wal_message(whole.clone()).unwrap() else {
            panic!("not XLogData")
        };
        assert_eq!(x.start, lsn("1/28"));
        assert_eq!(x.wal_end, lsn("1/1000"));
        assert_eq!(x.send_time, 123_456);
        assert_eq!(&x.data[..], b"walbytes");
        assert_eq!(x.end(), lsn("1/30"));
        // A slice of the message, not a copy.
        assert_eq!(x.data.as_ptr(), whole[25..].as_ptr());
        // An empty payload is valid (the server never sends one, but it
        // must not be mistaken for a short header).
        assert!(parse_wal_message(whole.slice(..25)).is_ok());
        assert!(parse_wal_message(whole.slice(..24)).is_err());
    }

    #[test]
    fn keepalives_are_parsed() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x5000_0000);
        b.put_i64(-7);
        b.put_u8(1);
        assert_eq!(
            parse_wal_message(b.clone().freeze()).unwrap(),
            WalMessage::Keepalive(Keepalive {
                wal_end: lsn("0/50000000"),
                send_time: -7,
                reply_requested: true,
            })
        );
        b.truncate(17);
        assert!(parse_wal_message(b.freeze()).is_err());
        assert!(parse_wal_message(Bytes::new()).is_err());
        assert!(parse_wal_message(Bytes::from_static(b"x123")).is_err());
    }

    #[test]
    fn status_updates_are_encoded() {
        let s = StandbyStatus {
            write: lsn("0/3000060"),
            flush: lsn("0/3000000"),
            apply: lsn("0/3000000"),
            reply_requested: false,
        };
        let t = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS + 1);
        let b = s.encode(t);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &0x0300_0060u64.to_be_bytes());
        assert_eq!(&b[9..17], &0x0300_0000u64.to_be_bytes());
        assert_eq!(&b[17..25], &0x0300_0000u64.to_be_bytes());
        assert_eq!(&b[25..33], &1_000_000i64.to_be_bytes());
        assert_eq!(b[33], 0);
        let asking = StandbyStatus {
            reply_requested: true,
            ..s
        };
        assert_eq!(asking.encode(t)[33], 1);
    }

    #[test]
    fn timestamps_count_from_2000() {
        let y2k = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(pg_timestamp(y2k), 0);
        assert_eq!(pg_timestamp(y2k + Duration::from_micros(5)), 5);
        assert_eq!(pg_timestamp(y2k - Duration::from_secs(1)), -1_000_000);
    }

    #[test]
    fn slot_names_are_checked() {
        for good in ["cbdr", "cbdr_seg_0", "a", &"x".repeat(63)] {
            validate_slot_name(good).unwrap();
        }
        for bad in ["", "Cbdr", "cbdr-1", "a b", "x'; drop", &"x".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn start_command() {
        assert_eq!(
            start_replication_command("cbdr", lsn("0/3000000"), TimelineId(2)),
            "START_REPLICATION SLOT cbdr PHYSICAL 0/3000000 TIMELINE 2"
        );
    }

    #[test]
    fn end_of_timeline_row() {
        let row = vec![
            Some(Bytes::from_static(b"3")),
            Some(Bytes::from_static(b"0/5000A28")),
        ];
        assert_eq!(
            parse_next_timeline(&row).unwrap(),
            (TimelineId(3), lsn("0/5000A28"))
        );
        assert!(parse_next_timeline(&row[..1]).is_err());
        assert!(parse_next_timeline(&[None, None]).is_err());
        let bad = vec![
            Some(Bytes::from_static(b"0")),
            Some(Bytes::from_static(b"0/1")),
        ];
        assert!(parse_next_timeline(&bad).is_err());
    }

    const MB: u64 = 1024 * 1024;

    #[test]
    fn histories_are_parsed_and_answer_where_positions_belong() {
        let text = b"1\t0/3000A28\tno recovery target specified\n\n\
                     # a comment\n\
                     2\t0/5000000\tat restore point \"x\"\n";
        let h = TimelineHistory::parse(TimelineId(3), text).unwrap();
        assert_eq!(
            h.entries,
            vec![
                HistoryEntry {
                    tli: TimelineId(1),
                    switchpoint: lsn("0/3000A28")
                },
                HistoryEntry {
                    tli: TimelineId(2),
                    switchpoint: lsn("0/5000000")
                },
            ]
        );
        assert_eq!(h.switchpoint(TimelineId(1)), Some(lsn("0/3000A28")));
        assert_eq!(h.switchpoint(TimelineId(3)), None);
        assert_eq!(h.timeline_of(lsn("0/3000A27")), TimelineId(1));
        assert_eq!(h.timeline_of(lsn("0/3000A28")), TimelineId(2));
        assert_eq!(h.timeline_of(lsn("0/4FFFFFF")), TimelineId(2));
        assert_eq!(h.timeline_of(lsn("0/5000000")), TimelineId(3));
        // Segment names: the segment where 1 switched to 2 mid-way is
        // complete only on timeline 2; the switch from 2 to 3 fell on a
        // segment boundary, so 0/4000000's segment is complete on 2.
        assert_eq!(h.segment_timeline(lsn("0/2000000"), 16 * MB), TimelineId(1));
        assert_eq!(h.segment_timeline(lsn("0/2000000"), MB), TimelineId(1));
        assert_eq!(h.segment_timeline(lsn("0/3000000"), MB), TimelineId(2));
        assert_eq!(h.segment_timeline(lsn("0/4000000"), MB), TimelineId(2));
        assert_eq!(h.segment_timeline(lsn("0/5000000"), MB), TimelineId(3));
        assert_eq!(h.segment_timeline(lsn("0/0"), 16 * MB), TimelineId(1));

        let first = TimelineHistory::first(TimelineId(1));
        assert_eq!(first.timeline_of(lsn("5/0")), TimelineId(1));

        for bad in [
            &b"x\t0/1\treason\n"[..],
            b"1\n",
            b"1\tnot-an-lsn\n",
            b"2\t0/5\n1\t0/6\n",
            b"1\t0/6\n2\t0/5\n",
            b"3\t0/5\n",
        ] {
            assert!(
                TimelineHistory::parse(TimelineId(3), bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
