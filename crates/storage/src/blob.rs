//! The blob store: raw messages, content-addressed by SHA-256 so identical
//! bodies are stored once. A blob is written to a temporary file, fsynced,
//! renamed into place and its directory fsynced before anything in Postgres
//! points at it: after a crash, metadata never refers to a missing blob.
//!
//! Durable on return in every case: a new shard directory (`<2 hex>/`) is
//! fsynced in the root before a blob is renamed into it; a write that
//! finds its content already there (stored before, or renamed a moment ago
//! by a concurrent writer who may not have fsynced the directory yet)
//! fsyncs that file and its directory itself. Such a write also refreshes
//! the file's modification time, which is the age the sweep goes by: a
//! blob stored again is young again.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Where raw message bytes live. The local filesystem implementation is the
/// default; an S3-compatible one can implement the same trait.
#[tonic::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Begin writing a blob; bytes are hashed as they arrive.
    async fn writer(&self) -> std::io::Result<Box<dyn BlobWriter>>;
    /// Store a whole blob, durable on return; its id. The default goes
    /// through `writer`; a store can do it in one go.
    async fn put(&self, data: bytes::Bytes) -> std::io::Result<String> {
        let mut writer = self.writer().await?;
        writer.write(&data).await?;
        Ok(writer.finish().await?.0)
    }
    /// Read `[offset, offset+len)` (or to the end).
    async fn reader(&self, id: &str, offset: u64, len: Option<u64>) -> std::io::Result<Pin<Box<dyn AsyncRead + Send>>>;
    /// Read several small ranges `(id, offset, len)` whole, in order. The
    /// default goes through `reader`; a store can do better in one go.
    async fn read_many(&self, ranges: Vec<(String, u64, u64)>) -> std::io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(ranges.len());
        for (id, offset, len) in ranges {
            let mut data = Vec::with_capacity(len as usize);
            self.reader(&id, offset, Some(len)).await?.read_to_end(&mut data).await?;
            out.push(data);
        }
        Ok(out)
    }
    async fn exists(&self, id: &str) -> std::io::Result<bool>;
    async fn delete(&self, id: &str) -> std::io::Result<()>;
    /// Every blob id with its age in seconds (for the sweeper): the time
    /// since it was last stored (a write of the same content refreshes it).
    async fn list(&self) -> std::io::Result<Vec<(String, u64)>>;
    /// One blob's age as `list` gives it; `None` when it is not there.
    async fn age(&self, id: &str) -> std::io::Result<Option<u64>>;
}

#[tonic::async_trait]
pub trait BlobWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    fn written(&self) -> u64;
    /// Make the blob durable and return (id, size).
    async fn finish(self: Box<Self>) -> std::io::Result<(String, u64)>;
}

pub struct FsBlobStore {
    root: PathBuf,
    shards: Arc<Shards>,
}

/// Where blobs go, and which shard directories this process has seen to be
/// durable (created, or found, and the root fsynced since).
struct Shards {
    root: PathBuf,
    durable: [AtomicBool; 256],
}

impl Shards {
    /// The directory of blob `id`, created if needed and durable in the
    /// root: once per shard per process the root is fsynced after the
    /// directory is there, whoever created it (a directory a concurrent
    /// writer just made is not durable before that writer's fsync).
    fn dir_of(&self, id: &str) -> std::io::Result<PathBuf> {
        let dir = self.root.join(&id[..2]);
        let index = usize::from_str_radix(&id[..2], 16).map_err(|_| malformed())?;
        if !self.durable[index].load(Ordering::Acquire) {
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            sync_dir(&self.root)?;
            self.durable[index].store(true, Ordering::Release);
        }
        Ok(dir)
    }

    /// Move the finished, fsynced temporary file `tmp` into place as blob
    /// `id`, durably (see the module doc).
    fn place(&self, tmp: &Path, id: &str) -> std::io::Result<()> {
        let dir = self.dir_of(id)?;
        let dest = dir.join(id);
        if dest.try_exists()? {
            // Identical content is there already: keep one copy.
            std::fs::remove_file(tmp)?;
            return refresh(&dir, &dest);
        }
        std::fs::rename(tmp, &dest)?;
        // The rename is durable only once the directory entry is.
        sync_dir(&dir)
    }
}

fn malformed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "malformed blob id")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A blob stored again: young again for the sweep, and durable before the
/// caller goes on, even if the writer who renamed it there a moment ago has
/// not fsynced it and its directory yet.
fn refresh(dir: &Path, dest: &Path) -> std::io::Result<()> {
    let file = std::fs::File::options().write(true).open(dest)?;
    file.set_modified(SystemTime::now())?;
    file.sync_all()?;
    sync_dir(dir)
}

impl FsBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp"))?;
        let shards = Arc::new(Shards { root: root.clone(), durable: std::array::from_fn(|_| AtomicBool::new(false)) });
        Ok(FsBlobStore { root, shards })
    }

    fn path_of(&self, id: &str) -> std::io::Result<PathBuf> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(malformed());
        }
        Ok(self.root.join(&id[..2]).join(id))
    }
}

struct FsBlobWriter {
    shards: Arc<Shards>,
    tmp: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    hasher: Sha256,
    written: u64,
}

#[tonic::async_trait]
impl BlobStore for FsBlobStore {
    async fn writer(&self) -> std::io::Result<Box<dyn BlobWriter>> {
        let tmp = self.root.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Box::new(FsBlobWriter {
            shards: self.shards.clone(),
            tmp,
            file: Some(tokio::io::BufWriter::with_capacity(256 * 1024, file)),
            hasher: Sha256::new(),
            written: 0,
        }))
    }

    /// One blocking task does it all (hash, write, fsync, rename, fsync the
    /// directory): tokio's async file calls would each hop to a worker
    /// thread, about ten hops per message received.
    async fn put(&self, data: bytes::Bytes) -> std::io::Result<String> {
        let shards = self.shards.clone();
        tokio::task::spawn_blocking(move || put_durably(&shards, &data)).await.map_err(std::io::Error::other)?
    }

    async fn reader(&self, id: &str, offset: u64, len: Option<u64>) -> std::io::Result<Pin<Box<dyn AsyncRead + Send>>> {
        let mut file = tokio::fs::File::open(self.path_of(id)?).await?;
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset)).await?;
        }
        Ok(match len {
            Some(n) => Box::pin(file.take(n)),
            None => Box::pin(file),
        })
    }

    /// One blocking task for the whole batch: tokio's async file reads
    /// hop to a worker thread for every call, which dominated the cost of
    /// serving many small messages.
    async fn read_many(&self, ranges: Vec<(String, u64, u64)>) -> std::io::Result<Vec<Vec<u8>>> {
        let paths = ranges
            .into_iter()
            .map(|(id, offset, len)| Ok((self.path_of(&id)?, offset, len)))
            .collect::<std::io::Result<Vec<_>>>()?;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            paths
                .into_iter()
                .map(|(path, offset, len)| {
                    // Open, read, close: a seek only for a range that does
                    // not start the file, and no read past the range (the
                    // `take` ends it without asking the file).
                    let mut file = std::fs::File::open(path)?;
                    if offset > 0 {
                        file.seek(std::io::SeekFrom::Start(offset))?;
                    }
                    let mut data = Vec::with_capacity(len as usize);
                    file.take(len).read_to_end(&mut data)?;
                    // A blob shorter than its recorded size is an error,
                    // never a short answer (a literal's size is already out).
                    if (data.len() as u64) < len {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "blob is shorter than recorded",
                        ));
                    }
                    Ok(data)
                })
                .collect()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// A stat of a local file whose directory entry is almost always
    /// cached: done in place, since handing it to a blocking thread (as
    /// `tokio::fs` does) costs more than the call, on every delivery.
    async fn exists(&self, id: &str) -> std::io::Result<bool> {
        std::fs::exists(self.path_of(id)?)
    }

    async fn delete(&self, id: &str) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path_of(id)?).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn list(&self) -> std::io::Result<Vec<(String, u64)>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || list_blobs(&root)).await.map_err(std::io::Error::other)?
    }

    async fn age(&self, id: &str) -> std::io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path_of(id)?).await {
            Ok(meta) => Ok(Some(age_of(&meta, SystemTime::now()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Seconds since the file was last written or refreshed.
fn age_of(meta: &std::fs::Metadata, now: SystemTime) -> u64 {
    meta.modified().ok().and_then(|m| now.duration_since(m).ok()).map(|d| d.as_secs()).unwrap_or(0)
}

/// Write `data` as the blob named by its SHA-256, durably: a temporary file,
/// fsynced, renamed into place, the directory fsynced (the rename is durable
/// only once the directory entry is). Content already stored is kept as is,
/// refreshed.
fn put_durably(shards: &Shards, data: &[u8]) -> std::io::Result<String> {
    use std::io::Write;
    let id = hex::encode(Sha256::digest(data));
    let dest = shards.root.join(&id[..2]).join(&id);
    if dest.try_exists()? {
        refresh(&shards.dir_of(&id)?, &dest)?;
        return Ok(id);
    }
    let tmp = shards.root.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        shards.place(&tmp, &id)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| id)
}

fn list_blobs(root: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let now = std::time::SystemTime::now();
    for shard in std::fs::read_dir(root)? {
        let shard = shard?;
        if shard.file_name() == "tmp" || !shard.file_type()?.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(shard.path())? {
            let entry = entry?;
            let age = age_of(&entry.metadata()?, now);
            if let Some(name) = entry.file_name().to_str() {
                out.push((name.to_string(), age));
            }
        }
    }
    Ok(out)
}

#[tonic::async_trait]
impl BlobWriter for FsBlobWriter {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        match self.file.as_mut() {
            Some(f) => f.write_all(chunk).await,
            None => Err(std::io::Error::other("blob writer already finished")),
        }
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn finish(mut self: Box<Self>) -> std::io::Result<(String, u64)> {
        let mut file = self.file.take().ok_or_else(|| std::io::Error::other("blob writer already finished"))?;
        file.flush().await?;
        let file = file.into_inner();
        file.sync_all().await?;
        drop(file);
        let (shards, tmp, written) = (self.shards.clone(), self.tmp.clone(), self.written);
        let hasher = std::mem::take(&mut self.hasher);
        let id = hex::encode(hasher.finalize());
        let placed = id.clone();
        tokio::task::spawn_blocking(move || shards.place(&tmp, &placed)).await.map_err(std::io::Error::other)??;
        Ok((id, written))
    }
}

impl Drop for FsBlobWriter {
    fn drop(&mut self) {
        // An abandoned write leaves no temporary file behind; after finish()
        // the path no longer exists and this is a no-op.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identical_content_is_stored_once_and_ranges_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        let mut w = store.writer().await.unwrap();
        w.write(b"hello ").await.unwrap();
        w.write(b"world").await.unwrap();
        let (id, size) = w.finish().await.unwrap();
        assert_eq!(size, 11);
        let mut w2 = store.writer().await.unwrap();
        w2.write(b"hello world").await.unwrap();
        let (id2, _) = w2.finish().await.unwrap();
        assert_eq!(id, id2);
        assert_eq!(store.list().await.unwrap().len(), 1);

        let mut r = store.reader(&id, 6, Some(3)).await.unwrap();
        let mut buf = String::new();
        r.read_to_string(&mut buf).await.unwrap();
        assert_eq!(buf, "wor");
        assert!(store.reader("../etc/passwd", 0, None).await.is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        // A whole blob in one go: the same id, stored once, no leftovers.
        assert_eq!(store.put(bytes::Bytes::from_static(b"hello world")).await.unwrap(), id);
        let other = store.put(bytes::Bytes::from_static(b"another blob")).await.unwrap();
        assert_eq!(other, hex::encode(Sha256::digest(b"another blob")));
        let mut r = store.reader(&other, 0, None).await.unwrap();
        let mut buf = String::new();
        r.read_to_string(&mut buf).await.unwrap();
        assert_eq!(buf, "another blob");
        assert_eq!(store.list().await.unwrap().len(), 2);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// Set a blob file's modification time `days` back.
    fn make_old(root: &Path, id: &str, days: u64) {
        let file = std::fs::File::options().write(true).open(root.join(&id[..2]).join(id)).unwrap();
        file.set_modified(SystemTime::now() - std::time::Duration::from_secs(days * 86_400)).unwrap();
    }

    #[tokio::test]
    async fn storing_a_blob_again_makes_it_young_for_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path()).unwrap();
        let id = store.put(bytes::Bytes::from_static(b"stored long ago")).await.unwrap();
        make_old(dir.path(), &id, 10);
        assert!(store.age(&id).await.unwrap().unwrap() >= 9 * 86_400);
        assert_eq!(store.list().await.unwrap()[0].1 / 86_400, 10);
        // The same content arrives again (a new message, a job is queued
        // for it): whatever the sweep goes by says "just stored".
        assert_eq!(store.put(bytes::Bytes::from_static(b"stored long ago")).await.unwrap(), id);
        assert!(store.age(&id).await.unwrap().unwrap() < 60);
        make_old(dir.path(), &id, 10);
        let mut w = store.writer().await.unwrap();
        w.write(b"stored long ago").await.unwrap();
        assert_eq!(w.finish().await.unwrap().0, id);
        assert!(store.list().await.unwrap()[0].1 < 60);
        assert_eq!(store.age(&"0".repeat(64)).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_of_one_content_into_a_new_shard_all_get_it_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsBlobStore::new(dir.path()).unwrap());
        let data = bytes::Bytes::from(vec![b'x'; 300_000]);
        let writers: Vec<_> = (0..16)
            .map(|i| {
                let (store, data) = (store.clone(), data.clone());
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        store.put(data).await
                    } else {
                        let mut w = store.writer().await?;
                        w.write(&data).await?;
                        Ok(w.finish().await?.0)
                    }
                })
            })
            .collect();
        let mut ids = Vec::new();
        for w in writers {
            ids.push(w.await.unwrap().expect("every writer succeeds"));
        }
        ids.dedup();
        assert_eq!(ids.len(), 1);
        assert_eq!(store.list().await.unwrap().len(), 1);
        let mut back = Vec::new();
        store.reader(&ids[0], 0, None).await.unwrap().read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
