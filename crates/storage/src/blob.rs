//! The blob store: raw messages, content-addressed by SHA-256 so identical
//! bodies are stored once. A blob is written to a temporary file, fsynced,
//! renamed into place and its directory fsynced before anything in Postgres
//! points at it: after a crash, metadata never refers to a missing blob.

use std::path::{Path, PathBuf};
use std::pin::Pin;

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
    /// Every blob id with its age in seconds (for the sweeper).
    async fn list(&self) -> std::io::Result<Vec<(String, u64)>>;
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
}

impl FsBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(FsBlobStore { root })
    }

    fn path_of(&self, id: &str) -> std::io::Result<PathBuf> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "malformed blob id"));
        }
        Ok(self.root.join(&id[..2]).join(id))
    }
}

struct FsBlobWriter {
    root: PathBuf,
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
            root: self.root.clone(),
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
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || put_durably(&root, &data)).await.map_err(std::io::Error::other)?
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
}

/// Write `data` as the blob named by its SHA-256, durably: a temporary file,
/// fsynced, renamed into place, the directory fsynced (the rename is durable
/// only once the directory entry is). Content already stored is kept as is.
fn put_durably(root: &Path, data: &[u8]) -> std::io::Result<String> {
    use std::io::Write;
    let id = hex::encode(Sha256::digest(data));
    let dir = root.join(&id[..2]);
    let dest = dir.join(&id);
    if dest.try_exists()? {
        return Ok(id);
    }
    let tmp = root.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        match std::fs::rename(&tmp, &dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)?;
                std::fs::rename(&tmp, &dest)
            }
            other => other,
        }
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(id)
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
            let age = entry
                .metadata()?
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
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
        let (root, tmp, written) = (self.root.clone(), self.tmp.clone(), self.written);
        let hasher = std::mem::take(&mut self.hasher);
        let id = hex::encode(hasher.finalize());
        let dir = root.join(&id[..2]);
        tokio::fs::create_dir_all(&dir).await?;
        let dest = dir.join(&id);
        if tokio::fs::try_exists(&dest).await? {
            // Identical content is already durable: keep one copy.
            tokio::fs::remove_file(&tmp).await?;
        } else {
            tokio::fs::rename(&tmp, &dest).await?;
            // The rename is durable only once the directory entry is.
            tokio::fs::File::open(&dir).await?.sync_all().await?;
        }
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
}
