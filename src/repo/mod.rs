//! The repository: storage plus the codec, and the layout of what is in it.

pub mod catalog;
pub mod coverage;
pub mod delete;
pub mod garbage;
pub mod index;
pub mod layout;
pub mod lease;
mod meta;
pub mod retention;
pub mod verify;

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::codec::{Codec, Key, KeyIdentity};
use crate::config::{Config, StorageType};
use crate::error::{Error, Result};
use crate::storage::{ByteStream, DynStorage, FsStorage, S3Storage, StorageError};

pub use meta::{RepoMeta, REPO_FORMAT};

/// What `repo-init` found or did; each names the key kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    Created(&'static str),
    AlreadyThere(&'static str),
    Upgraded(&'static str),
}

/// Bytes moved by one object transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Plain (uncompressed, unencrypted) bytes.
    pub plain: u64,
    /// Bytes as stored.
    pub stored: u64,
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repo {
    pub storage: DynStorage,
    pub codec: Codec,
    /// The description, once [`Repo::check`] passed.
    checked: Arc<std::sync::OnceLock<RepoMeta>>,
}

/// Copies what `input` yields into the object writer `w` of object
/// `name`: a codec error inside the input (an object read back) stays a
/// codec error, anything else is an error reading the data for `name`.
pub(crate) fn copy_input(input: impl Read, w: &mut dyn Write, name: &str) -> Result<()> {
    let mut input = io::BufReader::with_capacity(1 << 20, input);
    io::copy(&mut input, w).map_err(|e| match e.get_ref() {
        Some(i) if i.is::<crate::codec::CodecError>() => {
            Error::Codec(crate::codec::CodecError::from_io(e, name))
        }
        _ => Error::io(format!("reading the data for {name}"), e),
    })?;
    Ok(())
}

impl Repo {
    /// Opens the repository the config names, with its key, and checks
    /// both (see [`Repo::check`]). Writes nothing.
    /// The content ids that have objects in the repository, in order (one
    /// listing of the top-level directories, not of every object).
    pub async fn content_ids(&self) -> Result<Vec<i32>> {
        let mut ids: Vec<i32> = self
            .storage
            .list_dirs("")
            .await?
            .iter()
            .filter_map(|d| layout::content_id_of_dir(d))
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub async fn open(config: &Config) -> Result<Repo> {
        let repo = Repo::open_unchecked(config).await?;
        repo.check().await?;
        Ok(repo)
    }

    /// Opens the storage and loads the key without looking at the
    /// repository (for `repo-init`). Creates nothing.
    pub async fn open_unchecked(config: &Config) -> Result<Repo> {
        let storage: DynStorage = match config.storage.kind {
            StorageType::Fs => Arc::new(FsStorage::open(&config.storage.path)),
            StorageType::S3 => Arc::new(S3Storage::new(&config.storage).await?),
        };
        let key = load_key(config)?;
        let codec = Codec::new(config.compression.method, config.compression.level, key);
        Ok(Repo::new(storage, codec))
    }

    pub fn new(storage: DynStorage, codec: Codec) -> Repo {
        Repo {
            storage,
            codec,
            checked: Arc::default(),
        }
    }

    /// Checks that the repository exists (exit 2 and the fix when it does
    /// not: a typo or an unmounted volume must not become a new, empty
    /// repository) and that the configured key is the one it records (exit
    /// 4), and loads the passphrase salt for new objects.
    pub async fn check(&self) -> Result<RepoMeta> {
        if let Some(meta) = self.checked.get() {
            return Ok(meta.clone());
        }
        let Some(meta) = meta::load(self.storage.as_ref()).await? else {
            return Err(Error::Usage(format!(
                "no cbdr repository at {}: create it once with `cbdr repo-init` (with the key it will use), \
                 or check the storage settings ([storage] path, or bucket and prefix): a typo or an unmounted volume looks like this",
                self.storage.location()
            )));
        };
        self.accept(meta)
    }

    /// Checks the configured key against the repository's description
    /// `meta`, loads the passphrase salt and remembers `meta` as checked.
    fn accept(&self, meta: RepoMeta) -> Result<RepoMeta> {
        let salt = meta.kdf_salt()?;
        if let Some(recorded) = meta.identity()? {
            let given = KeyIdentity::of(self.codec.key.as_deref(), salt)?;
            if given != recorded {
                let detail = if std::mem::discriminant(&given) == std::mem::discriminant(&recorded)
                {
                    format!(
                        "the configured key is not the repository's key (the repository uses {} with another check value)",
                        recorded.describe()
                    )
                } else {
                    format!(
                        "the repository uses {}, but the configuration gives {}",
                        recorded.describe(),
                        given.describe()
                    )
                };
                return Err(Error::Codec(crate::codec::CodecError::KeyMismatch {
                    location: self.storage.location(),
                    detail,
                }));
            }
        }
        if let Some(key) = &self.codec.key {
            if key.is_passphrase() {
                key.set_writer_salt(salt);
            }
        }
        let _ = self.checked.set(meta.clone());
        Ok(meta)
    }

    /// [`Repo::check`], and that the repository records its key: a
    /// repository made by an older cbdr (format 1) must be upgraded once,
    /// with `cbdr repo-init --upgrade`, before anything writes to it.
    pub async fn prepare_write(&self) -> Result<RepoMeta> {
        let meta = self.check().await?;
        if meta.identity()?.is_none() {
            return Err(self.not_upgraded(&meta));
        }
        Ok(meta)
    }

    /// The refusal of a format-1 repository, which records no key.
    fn not_upgraded(&self, meta: &RepoMeta) -> Error {
        Error::Usage(format!(
            "the repository at {} was made by an older cbdr (format {}) and does not record which key it uses: \
             run `cbdr repo-init --upgrade` once, with the repository's key, then retry",
            self.storage.location(),
            meta.format
        ))
    }

    /// `cbdr repo-init`: creates the repository with the configured key, or
    /// says that it is there with that key; `upgrade` records the key of a
    /// format-1 repository.
    pub async fn init(&self, upgrade: bool) -> Result<InitOutcome> {
        let storage = self.storage.as_ref();
        match meta::load(storage).await? {
            None => {
                storage.create_root().await?;
                let salt = crate::codec::random_bytes::<16>();
                let identity = KeyIdentity::of(self.codec.key.as_deref(), salt)?;
                let meta = RepoMeta::new(salt, identity);
                match meta::create(storage, &meta).await {
                    Err(Error::Storage(StorageError::AlreadyExists { .. })) => {
                        // Another repo-init won the race: judge by its key.
                        self.check().await?;
                        Ok(InitOutcome::AlreadyThere(identity.describe()))
                    }
                    Err(e) => Err(e),
                    Ok(()) => Ok(InitOutcome::Created(identity.describe())),
                }
            }
            Some(mut meta) => {
                if meta.identity()?.is_none() {
                    if !upgrade {
                        return Err(self.not_upgraded(&meta));
                    }
                    let identity = KeyIdentity::of(self.codec.key.as_deref(), meta.kdf_salt()?)?;
                    meta.set_identity(identity);
                    meta::replace(storage, &meta).await?;
                    return Ok(InitOutcome::Upgraded(identity.describe()));
                }
                let meta = self.accept(meta)?;
                let identity = meta.identity()?.expect("checked above");
                Ok(InitOutcome::AlreadyThere(identity.describe()))
            }
        }
    }

    /// Encodes everything `input` yields into the object `key`, streaming.
    /// The object exists only once the upload completed.
    pub async fn put_reader<R: Read + Send + 'static>(
        &self,
        key: &str,
        input: R,
    ) -> Result<TransferStats> {
        let name = key.to_string();
        self.put_with(key, move |w| copy_input(input, w, &name))
            .await
    }

    /// Encodes what `fill` writes into the object `key`, streaming; `fill`
    /// runs on a blocking thread (it may block, e.g. on a channel). The
    /// object exists only once the upload completed, and never if `fill`
    /// fails.
    pub async fn put_with(
        &self,
        key: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<()> + Send + 'static,
    ) -> Result<TransferStats> {
        self.put_with_mode(key, fill, false).await
    }

    /// [`Repo::put_with`], unless an object is under `key`: then
    /// [`StorageError::AlreadyExists`] and the object stays as it is.
    pub async fn put_new_with(
        &self,
        key: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<()> + Send + 'static,
    ) -> Result<TransferStats> {
        self.put_with_mode(key, fill, true).await
    }

    async fn put_with_mode(
        &self,
        key: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<()> + Send + 'static,
        new: bool,
    ) -> Result<TransferStats> {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let codec = self.codec.clone();
        let name = key.to_string();
        let encode = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut w = codec.writer(ChannelWriter::new(tx), &name)?;
            // On an error the writer is dropped unfinished: the upload is
            // aborted.
            fill(&mut w)?;
            let plain = w.plain_bytes();
            w.finish()?.close();
            Ok(plain)
        });
        let body: ByteStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let put = if new {
            self.storage.put_new(key, body).await
        } else {
            self.storage.put(key, body).await
        };
        let encoded = encode
            .await
            .map_err(|e| Error::Internal(format!("encoder task: {e}")))?;
        // The encoder's own error explains a failed upload better than the
        // aborted stream does, unless the encoder stopped only because the
        // upload did: then the storage's error (ENOSPC, EACCES, the
        // server's answer) is the cause.
        match (encoded, put) {
            (Err(e), Err(p)) if stopped_by_upload(&e) => Err(p.into()),
            (Err(e), _) => Err(e),
            (Ok(_), Err(p)) => Err(p.into()),
            (Ok(plain), Ok(stored)) => Ok(TransferStats { plain, stored }),
        }
    }

    /// Encodes a buffer into the object `key`.
    pub async fn put_bytes(&self, key: &str, data: Vec<u8>) -> Result<TransferStats> {
        self.put_reader(key, io::Cursor::new(data)).await
    }

    /// Decodes the object `key` into `out`, streaming, verifying every chunk.
    /// `out` has received only verified bytes when this returns, but may
    /// have received some before an error: write to a temp file.
    pub async fn get_into<W: Write + Send + 'static>(&self, key: &str, out: W) -> Result<(W, u64)> {
        let name = key.to_string();
        self.read_with(key, move |r| {
            let mut out = out;
            let n = copy_decoded(r, &mut out, &name)?;
            Ok((out, n))
        })
        .await
    }

    /// Runs `f` on a blocking thread with the object's decoded bytes as a
    /// `Read` (every chunk verified as it is read; read errors carry a
    /// [`crate::codec::CodecError`]).
    pub async fn read_with<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&mut crate::codec::ObjectReader) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let stream = self.storage.get(key).await?;
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        let codec = self.codec.clone();
        let name = key.to_string();
        tokio::task::spawn_blocking(move || -> Result<T> {
            let mut r = codec.reader(reader, &name)?;
            f(&mut r)
        })
        .await
        .map_err(|e| Error::Internal(format!("decoder task: {e}")))?
    }

    /// Reads and decodes a whole (small) object.
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self.get_into(key, Vec::new()).await?.0)
    }

    /// Whether the object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.storage.head(key).await?.is_some())
    }
}

/// Copies decoded bytes, telling codec errors (integrity, key) from errors
/// writing the output.
fn copy_decoded(r: &mut impl Read, out: &mut impl Write, name: &str) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Codec(crate::codec::CodecError::from_io(e, name))),
        };
        out.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("writing {name} locally"), e))?;
        total += n as u64;
    }
}

/// Loads the encryption key: `[encryption] key_file`, else
/// `$CBDR_ENCRYPTION_KEY`; none means no encryption (said once).
pub fn load_key(config: &Config) -> Result<Option<Arc<Key>>> {
    if let Some(path) = &config.encryption.key_file {
        return Ok(Some(Arc::new(Key::from_file(path)?)));
    }
    match std::env::var("CBDR_ENCRYPTION_KEY") {
        Ok(text) if !text.is_empty() => {
            Ok(Some(Arc::new(Key::from_text(&text).map_err(|e| {
                Error::Usage(format!("CBDR_ENCRYPTION_KEY: {e}"))
            })?)))
        }
        _ => {
            tracing::info!(
                "encryption is off: no [encryption] key_file and no CBDR_ENCRYPTION_KEY"
            );
            Ok(None)
        }
    }
}

/// A `Write` that sends what it is given to an async receiver in ~1 MiB
/// pieces. Dropped without [`ChannelWriter::close`], it sends an error, so
/// the upload it feeds is aborted rather than stored short.
pub struct ChannelWriter {
    tx: Option<mpsc::Sender<io::Result<Bytes>>>,
    buf: BytesMut,
}

const CHANNEL_PIECE: usize = 1024 * 1024;

/// What a [`ChannelWriter`] returns once its receiver went away: the
/// upload stopped, and the upload's own error says why.
#[derive(Debug, thiserror::Error)]
#[error("the upload stopped")]
pub struct UploadStopped;

/// Whether `e` is only the echo of a stopped upload (see [`UploadStopped`]).
fn stopped_by_upload(e: &Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err.is::<UploadStopped>() {
            return true;
        }
        if let Some(io_err) = err.downcast_ref::<io::Error>() {
            if io_err.get_ref().is_some_and(|i| i.is::<UploadStopped>()) {
                return true;
            }
        }
        current = err.source();
    }
    false
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> ChannelWriter {
        ChannelWriter {
            tx: Some(tx),
            buf: BytesMut::with_capacity(CHANNEL_PIECE),
        }
    }

    fn send(&mut self, item: io::Result<Bytes>) -> io::Result<()> {
        let tx = self.tx.as_ref().expect("not closed");
        tx.blocking_send(item)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, UploadStopped))
    }

    /// Sends what is buffered and ends the stream normally.
    pub fn close(mut self) {
        if !self.buf.is_empty() {
            let piece = self.buf.split().freeze();
            let _ = self.send(Ok(piece));
        }
        self.tx = None;
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHANNEL_PIECE {
            let piece = self.buf.split().freeze();
            self.buf.reserve(CHANNEL_PIECE);
            self.send(Ok(piece))?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.blocking_send(Err(io::Error::other("the writer stopped before the end")));
        }
    }
}
