//! `wal-receive`: continuous WAL archiving by streaming replication.
//!
//! Besides (or instead of) archive_command, the receiver streams WAL with
//! `START_REPLICATION ... PHYSICAL` on a permanent replication slot, and
//! stores every completed segment through the repository codec under the
//! same name and format as `wal-push` (both go through
//! `push::store_wal_file`: a segment archived by both is
//! recognised as identical, different content is a conflict that
//! overwrites nothing). `wal-fetch` reads either.
//!
//! * Position: the slot's restart_lsn, rounded down to its segment, then
//!   past the segments the repository already has. On a reconnection, never
//!   later than the end of what this run stored.
//! * The server is told (standby status update) that WAL is flushed only up
//!   to the end of the last segment stored in the repository: the slot holds
//!   everything not yet stored, across disconnections and restarts. The
//!   write position is what was received.
//! * Memory: one segment being received and at most one being uploaded.
//! * Timelines: a slot position on an older timeline is streamed to the
//!   end of that timeline (`TIMELINE_HISTORY`, `START_REPLICATION ...
//!   TIMELINE n`), then the next one from the start of the segment where it
//!   begins, as pg_receivewal does; each timeline's `.history` file is
//!   stored before its WAL. The last segment of an old timeline is
//!   incomplete and not stored: the new timeline has it complete.
//! * The segment being received when the receiver stops (or the
//!   connection breaks) is not stored; it is streamed again from its start
//!   next time, since the slot still holds it. The receiver's RPO is that
//!   partial segment; archive_timeout or pg_switch_wal() bound it.
//! * A lost connection is retried with exponential backoff (one WARN per
//!   outage, INFO when streaming again). The server no longer having the
//!   WAL needed, a missing or invalidated slot, a WAL conflict, bad
//!   credentials are fatal, with what to do.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};

use super::push::{store_wal_file, WalSource};
use super::PushOutcome;
use crate::error::{Error, ExitCode, Result};
use crate::pg::conn::{BackendMessage, ConnParams, PgConn, PgError, Replication};
use crate::pg::replication::{self as repl, SlotInfo, StandbyStatus, TimelineHistory, WalMessage};
use crate::pg::{Lsn, TimelineId, WalFile, WalSegmentName};
use crate::repo::{layout, Repo};

/// Status updates to the server, when nothing else prompts one. Must stay
/// below the server's wal_sender_timeout (default 60 s).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// The longest wait between reconnection attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long a clean stop waits for the server to end the stream.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Content id of the server (-1: the coordinator or a single server).
    pub content_id: i32,
    pub conn: ConnParams,
    /// The physical replication slot that holds WAL until it is stored.
    pub slot: String,
    /// Create the slot (reserving WAL from the last checkpoint on) when it
    /// does not exist.
    pub create_slot: bool,
    /// How often the server is told what is received and stored, at least.
    pub status_interval: Duration,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl ReceiveOptions {
    pub fn new(content_id: i32, conn: ConnParams, slot: impl Into<String>) -> ReceiveOptions {
        ReceiveOptions {
            content_id,
            conn,
            slot: slot.into(),
            create_slot: false,
            status_interval: DEFAULT_STATUS_INTERVAL,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

/// Streams WAL from the server into the repository until `shutdown` turns
/// true (or its sender is dropped), then stops cleanly: `Ok(())`. Returns
/// an error only for what retrying cannot fix; connection losses and
/// storage outages are retried with backoff.
pub async fn receive_wal(
    repo: Arc<Repo>,
    opts: ReceiveOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    repl::validate_slot_name(&opts.slot).map_err(|e| Error::Usage(format!("--slot: {e}")))?;
    if opts.status_interval.is_zero() {
        return Err(Error::Usage(
            "the status interval must be more than zero".into(),
        ));
    }
    let mut durable: Option<Lsn> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut outage: Option<Instant> = None;
    loop {
        let mut session = Session {
            repo: &repo,
            opts: &opts,
            durable: &mut durable,
            outage: &mut outage,
            streamed: false,
        };
        let result = session.run(&mut shutdown).await;
        if session.streamed {
            backoff = FIRST_BACKOFF;
        }
        match result {
            Ok(()) => {
                tracing::info!("wal-receive: stopped");
                return Ok(());
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => {
                if outage.is_none() {
                    tracing::warn!(
                        "wal-receive from {} (slot {}): {e}; retrying until it works (further \
                         failures are logged at debug level)",
                        opts.conn.target(),
                        opts.slot
                    );
                    outage = Some(Instant::now());
                } else {
                    tracing::debug!("wal-receive: {e}; retrying in {}s", backoff.as_secs());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown_requested(&mut shutdown) => return Ok(()),
        }
        backoff = (backoff * 2).min(opts.max_backoff.max(FIRST_BACKOFF));
    }
}

/// Resolves when shutdown is asked for, or nobody can ask any more.
async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Why a session ended badly.
enum Failure {
    /// Connection lost, server restarting, storage unreachable: try again.
    Retry(Error),
    /// Retrying cannot help: stop with this error.
    Fatal(Error),
}

type Step<T> = std::result::Result<T, Failure>;

/// Storage failures are retried; everything else (conflicts, keys,
/// integrity, configuration) is fatal.
fn repo_failure(e: Error) -> Failure {
    match e.exit_code() {
        ExitCode::Storage => Failure::Retry(e),
        _ => Failure::Fatal(e),
    }
}

/// How the stream of one timeline ended.
enum StreamEnd {
    Shutdown,
    /// A historic timeline ended: `next` begins at `start`.
    Timeline {
        next: TimelineId,
        start: Lsn,
    },
}

/// One connection's worth of streaming.
struct Session<'a> {
    repo: &'a Arc<Repo>,
    opts: &'a ReceiveOptions,
    /// The end of the last segment stored during this run.
    durable: &'a mut Option<Lsn>,
    outage: &'a mut Option<Instant>,
    /// START_REPLICATION was accepted.
    streamed: bool,
}

impl Session<'_> {
    fn pg(&self, what: &str) -> impl Fn(PgError) -> Failure + '_ {
        let what = what.to_string();
        move |e| self.pg_failure(&what, e)
    }

    /// A failed request: fatal with advice for the known dead ends, a retry
    /// when reconnecting later may help, else fatal.
    fn pg_failure(&self, what: &str, e: PgError) -> Failure {
        if let Some(s) = repl::wal_removed(&e) {
            return Failure::Fatal(Error::Server(format!(
                "{} no longer has the WAL the receiver needs ({s}): the archive now has a gap. \
                 Slot {slot} was not holding it: it was dropped and created again, or \
                 invalidated because its WAL exceeded max_slot_wal_keep_size. Take a new base \
                 backup (cbdr backup-push) so that restores do not need the missing WAL, and \
                 keep the receiver running (check pg_replication_slots.wal_status; raise \
                 max_slot_wal_keep_size if the receiver may be down longer)",
                self.opts.conn.target(),
                slot = self.opts.slot
            )));
        }
        if repl::replication_disabled(&e) {
            return Failure::Fatal(Error::Server(format!(
                "{} does not allow replication connections (max_wal_senders = 0): set \
                 max_wal_senders (and wal_level = replica) and restart it",
                self.opts.conn.target()
            )));
        }
        let retry = repl::stream_retryable(&e);
        let err = Error::postgres(format!("{what} on {}", self.opts.conn.target()), e);
        if retry {
            Failure::Retry(err)
        } else {
            Failure::Fatal(err)
        }
    }

    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Step<()> {
        if *shutdown.borrow() {
            return Ok(());
        }
        let mut params = self.opts.conn.clone();
        if params.application_name.is_empty() || params.application_name == "cbdr" {
            params.application_name = "cbdr_wal_receive".into();
        }
        let mut conn = tokio::select! {
            c = PgConn::connect(&params, Replication::Physical) => {
                c.map_err(self.pg("connecting for replication"))?
            }
            _ = shutdown_requested(shutdown) => return Ok(()),
        };
        let result = self.run_on(&mut conn, shutdown).await;
        conn.close().await;
        result
    }

    async fn run_on(
        &mut self,
        conn: &mut PgConn,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Step<()> {
        self.repo.prepare_write().await.map_err(repo_failure)?;
        let ident = repl::identify_system(conn)
            .await
            .map_err(self.pg("IDENTIFY_SYSTEM"))?;
        let seg_size = self.segment_size(conn).await?;
        let slot = self.slot(conn).await?;
        let restart = slot.restart_lsn.ok_or_else(|| {
            Failure::Fatal(Error::Server(format!(
                "replication slot {slot} on {target} reserves no WAL: it was invalidated (its WAL \
                 exceeded max_slot_wal_keep_size and was removed) or created without reserving \
                 WAL. Drop it (SELECT pg_drop_replication_slot('{slot}')), start wal-receive \
                 with --create-slot, then take a new base backup: WAL since the last archived \
                 segment may be missing",
                slot = self.opts.slot,
                target = self.opts.conn.target()
            )))
        })?;
        let history = if ident.timeline.0 > 1 {
            let (_, text) = repl::timeline_history(conn, ident.timeline)
                .await
                .map_err(self.pg("TIMELINE_HISTORY"))?;
            TimelineHistory::parse(ident.timeline, &text).map_err(|e| {
                Failure::Fatal(Error::Server(format!(
                    "the history file of timeline {} on {}: {e}",
                    ident.timeline,
                    self.opts.conn.target()
                )))
            })?
        } else {
            TimelineHistory::first(ident.timeline)
        };

        let mut pos = restart.segment_start(seg_size);
        if let Some(d) = *self.durable {
            pos = pos.min(d);
        }
        pos = self
            .skip_archived(pos, ident.xlogpos, &history, seg_size)
            .await?;
        let mut tli = history.segment_timeline(pos, seg_size);
        tracing::info!(
            "wal-receive: streaming from {} (system {}, timeline {}) through slot {} (restart_lsn \
             {restart}): starting at {pos} on timeline {tli}",
            self.opts.conn.target(),
            ident.system_id,
            ident.timeline,
            self.opts.slot
        );
        loop {
            if tli.0 > 1 {
                self.store_history(conn, tli).await?;
            }
            match self.stream(conn, tli, pos, seg_size, shutdown).await? {
                StreamEnd::Shutdown => return Ok(()),
                StreamEnd::Timeline { next, start } => {
                    if next <= tli || start < pos {
                        return Err(Failure::Fatal(Error::Server(format!(
                            "{} ended timeline {tli} with an impossible next timeline {next} at \
                             {start}",
                            self.opts.conn.target()
                        ))));
                    }
                    tracing::info!(
                        "wal-receive: timeline {tli} ended at {start}; following timeline {next}"
                    );
                    tli = next;
                    pos = start.segment_start(seg_size);
                }
            }
        }
    }

    async fn segment_size(&self, conn: &mut PgConn) -> Step<u64> {
        let row = conn
            .query_one("SHOW wal_segment_size")
            .await
            .map_err(self.pg("SHOW wal_segment_size"))?;
        let size = row
            .get_str("wal_segment_size")
            .map_err(self.pg("SHOW wal_segment_size"))?;
        let size = crate::physical::backup::parse_size_setting(size).map_err(Failure::Fatal)?;
        if !size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&size) {
            return Err(Failure::Fatal(Error::Server(format!(
                "{} reports wal_segment_size {size}: expected a power of two from 1 MB to 1 GB",
                self.opts.conn.target()
            ))));
        }
        Ok(size)
    }

    /// The slot, created when asked to.
    async fn slot(&self, conn: &mut PgConn) -> Step<SlotInfo> {
        let slot = &self.opts.slot;
        let mut info = self.read_slot(conn).await?;
        if info.is_none() && self.opts.create_slot {
            let created = repl::create_physical_slot(conn, slot)
                .await
                .map_err(self.pg("CREATE_REPLICATION_SLOT"))?;
            if created {
                tracing::info!(
                    "wal-receive: created the physical replication slot {slot} on {}",
                    self.opts.conn.target()
                );
            }
            info = self.read_slot(conn).await?;
        }
        let info = info.ok_or_else(|| {
            Failure::Fatal(Error::Usage(format!(
                "replication slot {slot} does not exist on {}: let wal-receive create it \
                 (--create-slot), or create it with SELECT \
                 pg_create_physical_replication_slot('{slot}', true). The slot holds the \
                 server's WAL until it is in the archive",
                self.opts.conn.target()
            )))
        })?;
        if info.slot_type != "physical" {
            return Err(Failure::Fatal(Error::Usage(format!(
                "replication slot {slot} on {} is a {} slot: wal-receive needs a physical one \
                 (choose another --slot name)",
                self.opts.conn.target(),
                info.slot_type
            ))));
        }
        Ok(info)
    }

    /// READ_REPLICATION_SLOT (PostgreSQL 15+), else pg_replication_slots on
    /// an SQL connection.
    async fn read_slot(&self, conn: &mut PgConn) -> Step<Option<SlotInfo>> {
        if conn.server_version_num() >= 150000 {
            return repl::read_replication_slot(conn, &self.opts.slot)
                .await
                .map_err(self.pg("READ_REPLICATION_SLOT"));
        }
        let mut sql = PgConn::connect(&self.opts.conn, Replication::Off)
            .await
            .map_err(self.pg("connecting to read pg_replication_slots"))?;
        let info = repl::query_replication_slot(&mut sql, &self.opts.slot).await;
        sql.close().await;
        info.map_err(self.pg("reading pg_replication_slots"))
    }

    /// The first segment from `pos` on that the repository does not have
    /// (not beyond the server's flush position `server_end`).
    async fn skip_archived(
        &self,
        mut pos: Lsn,
        server_end: Lsn,
        history: &TimelineHistory,
        seg_size: u64,
    ) -> Step<Lsn> {
        let first = pos;
        while pos.0 + seg_size <= server_end.0 {
            let seg =
                WalSegmentName::from_lsn(history.segment_timeline(pos, seg_size), pos, seg_size);
            let key = layout::wal_key(self.opts.content_id, &WalFile::Segment(seg));
            if !self
                .repo
                .exists(&key)
                .await
                .map_err(|e| repo_failure(e.into()))?
            {
                break;
            }
            pos += seg_size;
        }
        if pos != first {
            tracing::info!("wal-receive: the repository already has the WAL from {first} to {pos}");
        }
        Ok(pos)
    }

    async fn store_history(&self, conn: &mut PgConn, tli: TimelineId) -> Step<()> {
        let (_, content) = repl::timeline_history(conn, tli)
            .await
            .map_err(self.pg("TIMELINE_HISTORY"))?;
        store_wal_file(
            self.repo,
            self.opts.content_id,
            &WalFile::History(tli),
            WalSource::Bytes(content),
        )
        .await
        .map_err(repo_failure)?;
        Ok(())
    }

    /// START_REPLICATION on `tli` from `start` (a segment start) until a
    /// shutdown, the end of the timeline, or a failure.
    async fn stream(
        &mut self,
        conn: &mut PgConn,
        tli: TimelineId,
        start: Lsn,
        seg_size: u64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Step<StreamEnd> {
        conn.send_query(&repl::start_replication_command(
            &self.opts.slot,
            start,
            tli,
        ))
        .await
        .map_err(self.pg("START_REPLICATION"))?;
        match conn.next_message().await {
            Ok(BackendMessage::CopyBothResponse) => {}
            // A historic timeline with nothing left to send: the result
            // naming the next timeline comes at once.
            Ok(BackendMessage::RowDescription(_)) => {
                return match read_timeline_end(conn)
                    .await
                    .map_err(self.pg("START_REPLICATION"))?
                {
                    Some((next, start)) => Ok(StreamEnd::Timeline { next, start }),
                    None => Err(Failure::Fatal(Error::Server(
                        "START_REPLICATION returned no next timeline".into(),
                    ))),
                };
            }
            Ok(other) => {
                return Err(Failure::Fatal(Error::Server(format!(
                    "unexpected answer to START_REPLICATION: {other:?}"
                ))))
            }
            Err(e) => return Err(self.pg_failure("START_REPLICATION", e)),
        }
        self.streamed = true;
        if let Some(since) = self.outage.take() {
            tracing::info!(
                "wal-receive: streaming from {} again, after {}s",
                self.opts.conn.target(),
                since.elapsed().as_secs()
            );
        }
        let mut rx = Receiver {
            repo: self.repo.clone(),
            content_id: self.opts.content_id,
            seg_size,
            tli,
            seg_start: start,
            buf: Vec::with_capacity(seg_size as usize),
            server_end: start,
            // Everything before `start` is stored: the segments from the
            // slot's position were found in the repository, or stored by
            // the previous stream of this run.
            durable: start,
            upload: None,
            last_message: Instant::now(),
            status_interval: self.opts.status_interval,
        };
        let mut ticker = tokio::time::interval(self.opts.status_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let result = rx.run(self, conn, &mut ticker, shutdown).await;
        // Whatever happened, the segment being uploaded finishes first.
        let settled = rx.settle().await;
        *self.durable = Some(self.durable.map_or(rx.durable, |d| d.max(rx.durable)));
        match (result, settled) {
            (_, Err(f @ Failure::Fatal(_))) => Err(f),
            (Ok(end), Err(f)) if !matches!(end, StreamEnd::Shutdown) => Err(f),
            (result, _) => result,
        }
    }
}

/// After the end of a historic timeline (CopyDone both ways): the result
/// set naming the next timeline, up to ReadyForQuery.
async fn read_timeline_end(conn: &mut PgConn) -> Result<Option<(TimelineId, Lsn)>, PgError> {
    let mut next = None;
    loop {
        match conn.next_message().await? {
            BackendMessage::ReadyForQuery => return Ok(next),
            BackendMessage::DataRow(values) if values.len() == 2 => {
                next = Some(repl::parse_next_timeline(&values)?);
            }
            _ => {}
        }
    }
}

/// A segment on its way to the repository.
struct Upload {
    name: WalSegmentName,
    end: Lsn,
    handle: JoinHandle<Result<PushOutcome>>,
}

enum Event {
    Shutdown,
    Uploaded(std::result::Result<Result<PushOutcome>, tokio::task::JoinError>),
    Tick,
    Message(std::result::Result<BackendMessage, PgError>),
}

/// The state of one START_REPLICATION stream.
struct Receiver {
    repo: Arc<Repo>,
    content_id: i32,
    seg_size: u64,
    tli: TimelineId,
    /// Start of the segment being received.
    seg_start: Lsn,
    /// What was received of it.
    buf: Vec<u8>,
    /// The end of WAL on the server, as last reported.
    server_end: Lsn,
    /// Everything before this is in the repository: the flush position
    /// reported to the server.
    durable: Lsn,
    upload: Option<Upload>,
    /// When the last message came from the server (or, after a wait for
    /// an upload during which nothing was read, when the wait ended).
    last_message: Instant,
    status_interval: Duration,
}

impl Receiver {
    fn received(&self) -> Lsn {
        self.seg_start + self.buf.len() as u64
    }

    async fn run(
        &mut self,
        session: &Session<'_>,
        conn: &mut PgConn,
        ticker: &mut Interval,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Step<StreamEnd> {
        let pg = |what: &str| session.pg(what);
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown_requested(shutdown) => Event::Shutdown,
                r = async { (&mut self.upload.as_mut().expect("checked").handle).await },
                    if self.upload.is_some() => Event::Uploaded(r),
                _ = ticker.tick() => Event::Tick,
                m = conn.next_message() => Event::Message(m),
            };
            if let Event::Message(Ok(_)) = &event {
                self.last_message = Instant::now();
            }
            match event {
                Event::Shutdown => {
                    self.stop(session, conn, ticker).await?;
                    return Ok(StreamEnd::Shutdown);
                }
                Event::Uploaded(r) => {
                    self.uploaded(r)?;
                    self.send_status(conn, false)
                        .await
                        .map_err(pg("sending a status update"))?;
                }
                Event::Tick => {
                    // An idle server sends nothing while it hears from us:
                    // ask for an answer after a while, and give up on a
                    // connection that stays silent (a half-open TCP
                    // connection would otherwise go unnoticed for many
                    // minutes).
                    let silent = self.last_message.elapsed();
                    if silent > dead_after(self.status_interval) {
                        return Err(Failure::Retry(Error::Server(format!(
                            "no message from {} for {}s: the connection seems dead",
                            session.opts.conn.target(),
                            silent.as_secs()
                        ))));
                    }
                    let ask = silent >= self.status_interval * 2;
                    self.send_status_asking(conn, ask)
                        .await
                        .map_err(pg("sending a status update"))?
                }
                Event::Message(Err(e)) => return Err(session.pg_failure("streaming WAL", e)),
                Event::Message(Ok(BackendMessage::CopyData(b))) => {
                    match repl::parse_wal_message(b).map_err(pg("streaming WAL"))? {
                        WalMessage::XLogData(x) => {
                            self.server_end = self.server_end.max(x.wal_end);
                            if x.start != self.received() {
                                return Err(Failure::Fatal(Error::Server(format!(
                                    "the server sent WAL from {} where {} was expected",
                                    x.start,
                                    self.received()
                                ))));
                            }
                            self.append(session, conn, ticker, &x.data).await?;
                        }
                        WalMessage::Keepalive(k) => {
                            self.server_end = self.server_end.max(k.wal_end);
                            if k.reply_requested {
                                self.send_status(conn, true)
                                    .await
                                    .map_err(pg("answering a keepalive"))?;
                            }
                        }
                    }
                }
                Event::Message(Ok(BackendMessage::CopyDone)) => {
                    return self.end_of_timeline(session, conn, ticker).await;
                }
                Event::Message(Ok(BackendMessage::CommandComplete(_))) => {
                    // The server ends streaming without CopyDone when it
                    // shuts down.
                    return Err(Failure::Retry(Error::Server(format!(
                        "{} ended the replication stream (is it shutting down?)",
                        session.opts.conn.target()
                    ))));
                }
                Event::Message(Ok(other)) => {
                    return Err(Failure::Fatal(Error::Server(format!(
                        "unexpected message in a replication stream: {other:?}"
                    ))))
                }
            }
        }
    }

    /// Adds received WAL; each segment completed goes to the repository.
    async fn append(
        &mut self,
        session: &Session<'_>,
        conn: &mut PgConn,
        ticker: &mut Interval,
        mut data: &[u8],
    ) -> Step<()> {
        while !data.is_empty() {
            let room = self.seg_size as usize - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() as u64 == self.seg_size {
                self.segment_complete(session, conn, ticker).await?;
            }
        }
        Ok(())
    }

    async fn segment_complete(
        &mut self,
        session: &Session<'_>,
        conn: &mut PgConn,
        ticker: &mut Interval,
    ) -> Step<()> {
        // One segment uploading, one being received: no more.
        self.wait_upload(session, Some(conn), ticker).await?;
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.seg_size as usize));
        let name = WalSegmentName::from_lsn(self.tli, self.seg_start, self.seg_size);
        let end = self.seg_start + self.seg_size;
        let repo = self.repo.clone();
        let content_id = self.content_id;
        let handle = tokio::spawn(async move {
            store_wal_file(
                &repo,
                content_id,
                &WalFile::Segment(name),
                WalSource::Bytes(Bytes::from(data)),
            )
            .await
        });
        self.upload = Some(Upload { name, end, handle });
        self.seg_start = end;
        Ok(())
    }

    /// Waits for the segment being uploaded, if any, telling the server
    /// where things are meanwhile.
    async fn wait_upload(
        &mut self,
        session: &Session<'_>,
        mut conn: Option<&mut PgConn>,
        ticker: &mut Interval,
    ) -> Step<()> {
        let waited = self.upload.is_some();
        while let Some(up) = self.upload.as_mut() {
            tokio::select! {
                r = &mut up.handle => {
                    self.uploaded(r)?;
                    if let Some(c) = conn.as_deref_mut() {
                        self.send_status(c, false)
                            .await
                            .map_err(session.pg("sending a status update"))?;
                    }
                }
                _ = ticker.tick() => {
                    if let Some(c) = conn.as_deref_mut() {
                        self.send_status(c, false)
                            .await
                            .map_err(session.pg("sending a status update"))?;
                    }
                }
            }
        }
        if waited {
            // Nothing was read meanwhile: the silence was not the server's.
            self.last_message = Instant::now();
        }
        Ok(())
    }

    /// Waits for the upload in flight without a connection (it may be
    /// gone); its failure, if any.
    async fn settle(&mut self) -> Step<()> {
        match self.upload.as_mut() {
            Some(up) => {
                let r = (&mut up.handle).await;
                self.uploaded(r)
            }
            None => Ok(()),
        }
    }

    fn uploaded(
        &mut self,
        r: std::result::Result<Result<PushOutcome>, tokio::task::JoinError>,
    ) -> Step<()> {
        let up = self.upload.take().expect("an upload in flight");
        match r {
            Ok(Ok(_)) => {
                self.durable = self.durable.max(up.end);
                tracing::debug!("wal-receive: {} stored; durable up to {}", up.name, up.end);
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!("wal-receive: storing {} failed: {e}", up.name);
                Err(repo_failure(e))
            }
            Err(e) => Err(Failure::Fatal(Error::Internal(format!(
                "the upload of {}: {e}",
                up.name
            )))),
        }
    }

    /// A standby status update: written = received, flushed = applied =
    /// stored. A ping answered while caught up reports no flush position:
    /// a server shutting down waits until its WAL senders confirm all WAL
    /// (PostgreSQL's WalSndDone takes the write position when flush is
    /// invalid), and the partial segment is never stored. An invalid flush
    /// position does not move the slot.
    async fn send_status(&self, conn: &mut PgConn, ping: bool) -> Result<(), PgError> {
        self.send_status_full(conn, ping, false).await
    }

    /// A status update that asks the server to answer when `ask`.
    async fn send_status_asking(&self, conn: &mut PgConn, ask: bool) -> Result<(), PgError> {
        self.send_status_full(conn, false, ask).await
    }

    async fn send_status_full(
        &self,
        conn: &mut PgConn,
        ping: bool,
        ask: bool,
    ) -> Result<(), PgError> {
        let status = status_update(self.received(), self.server_end, self.durable, ping, ask);
        tracing::trace!("wal-receive: status {status:?}");
        conn.send_copy_data(&status.encode(SystemTime::now())).await
    }

    /// The server finished a historic timeline: store what is complete,
    /// end the copy, read the next timeline.
    async fn end_of_timeline(
        &mut self,
        session: &Session<'_>,
        conn: &mut PgConn,
        ticker: &mut Interval,
    ) -> Step<StreamEnd> {
        self.wait_upload(session, Some(conn), ticker).await?;
        let pg = |what: &str| session.pg(what);
        self.send_status(conn, false)
            .await
            .map_err(pg("sending a status update"))?;
        conn.send_copy_done()
            .await
            .map_err(pg("ending the replication stream"))?;
        let next = read_timeline_end(conn)
            .await
            .map_err(pg("ending the replication stream"))?;
        if !self.buf.is_empty() {
            tracing::debug!(
                "wal-receive: timeline {} ends at {} inside segment {}; that segment is \
                 archived complete on the next timeline",
                self.tli,
                self.received(),
                WalSegmentName::from_lsn(self.tli, self.seg_start, self.seg_size)
            );
        }
        match next {
            Some((next, start)) => Ok(StreamEnd::Timeline { next, start }),
            None => Err(Failure::Retry(Error::Server(format!(
                "{} ended the replication stream on timeline {}",
                session.opts.conn.target(),
                self.tli
            )))),
        }
    }

    /// A clean stop: the upload in flight finishes, the server hears what
    /// is stored, the stream ends. The partial segment is dropped.
    async fn stop(
        &mut self,
        session: &Session<'_>,
        conn: &mut PgConn,
        ticker: &mut Interval,
    ) -> Step<()> {
        self.wait_upload(session, Some(conn), ticker).await?;
        if !self.buf.is_empty() {
            tracing::info!(
                "wal-receive: stopping; the partial segment {} ({} bytes received) is not \
                 archived: the slot keeps it for the next start",
                WalSegmentName::from_lsn(self.tli, self.seg_start, self.seg_size),
                self.buf.len()
            );
        }
        let ended = async {
            self.send_status(conn, false).await?;
            conn.send_copy_done().await?;
            loop {
                if conn.next_message().await? == BackendMessage::ReadyForQuery {
                    return Ok::<(), PgError>(());
                }
            }
        };
        match tokio::time::timeout(STOP_TIMEOUT, ended).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("wal-receive: ending the stream: {e}"),
            Err(_) => tracing::debug!("wal-receive: the server did not end the stream in time"),
        }
        Ok(())
    }
}

/// The status update for WAL received up to `received`, stored up to
/// `durable`, with the server at `server_end`; `ping`: answering the
/// server's request; `ask`: asking it to answer.
fn status_update(
    received: Lsn,
    server_end: Lsn,
    durable: Lsn,
    ping: bool,
    ask: bool,
) -> StandbyStatus {
    // See Receiver::send_status_full: a caught-up answer to a ping lets a
    // server shut down without moving the slot.
    let flush = if ping && received >= server_end && durable < received {
        Lsn::INVALID
    } else {
        durable
    };
    StandbyStatus {
        write: received,
        flush,
        apply: flush,
        reply_requested: ask,
    }
}

/// How long a streaming connection may stay silent, while asked to answer,
/// before it is given up as dead.
fn dead_after(status_interval: Duration) -> Duration {
    (status_interval * 6).max(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_flush_position_is_only_what_is_stored() {
        let (seg, mid, end) = (Lsn(0x0300_0000), Lsn(0x0300_4000), Lsn(0x0300_8000));
        // Regular updates: written = received, flushed = stored.
        let s = status_update(mid, end, seg, false, false);
        assert_eq!((s.write, s.flush, s.apply), (mid, seg, seg));
        assert!(!s.reply_requested);
        assert!(status_update(mid, end, seg, false, true).reply_requested);
        // Answering a ping while behind the server: still what is stored.
        assert_eq!(status_update(mid, end, seg, true, false).flush, seg);
        // Caught up with part of a segment unstored: no flush position, so
        // a server shutting down does not wait for it; the slot stays.
        let s = status_update(end, end, seg, true, false);
        assert_eq!(
            (s.write, s.flush, s.apply),
            (end, Lsn::INVALID, Lsn::INVALID)
        );
        // Caught up with everything stored: that.
        assert_eq!(status_update(seg, seg, seg, true, false).flush, seg);
    }

    #[test]
    fn positions() {
        assert_eq!(dead_after(Duration::from_secs(10)), Duration::from_secs(60));
        assert_eq!(dead_after(Duration::from_secs(1)), Duration::from_secs(10));
    }
}
