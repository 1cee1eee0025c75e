//! The content-addressed artifact cache on disk.
//!
//! Layout under the cache root:
//! - `blobs/sha256/<hex>`: manifests, configs and components, named by their digest;
//! - `tags/<registry>/<repository>/<tag>`: the digest a tag last resolved to, so a device that
//!   lost its uplink can still start what it ran before;
//! - `tmp/`: files being written.
//!
//! Nothing is trusted because it exists: every write goes to a temp file that is synced and then
//! renamed into place, and every read checks the content against its digest. A corrupt entry is
//! removed and reported as missing, so the caller fetches it again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use crate::digest::Digest;

/// Errors of the cache itself (disk, permissions), not of its contents.
#[derive(Debug, thiserror::Error)]
#[error("artifact cache at {}: {error}", path.display())]
pub struct CacheError {
    /// The file or directory involved.
    pub path: PathBuf,
    /// The I/O error (in the message, so not also a `source`).
    pub error: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |error| CacheError {
        path: path.to_owned(),
        error,
    }
}

/// A file of a cache, for a size budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its name: a digest's hex for blobs.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// When it was last used (its modification time).
    pub used: std::time::SystemTime,
}

/// The regular files directly in `dir`.
pub fn list_files(dir: &Path) -> Vec<CachedFile> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let metadata = entry.metadata().ok().filter(fs::Metadata::is_file)?;
            Some(CachedFile {
                path: entry.path(),
                name: entry.file_name().to_string_lossy().into_owned(),
                size: metadata.len(),
                used: metadata.modified().ok()?,
            })
        })
        .collect()
}

/// Sets a file's modification time to now (its last use, for a size budget).
pub fn touch(path: &Path) {
    if let Ok(file) = File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// What a verified read found.
#[derive(Debug)]
pub enum Lookup<T> {
    /// Present and matching its digest.
    Hit(T),
    /// Not in the cache.
    Miss,
    /// It was there but did not match its digest; it has been removed.
    Corrupt,
}

/// A content-addressed blob store with a tag index.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) a cache rooted at `root`.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let cache = Self { root: root.into() };
        for dir in [cache.blobs_dir(), cache.tmp_dir(), cache.root.join("tags")] {
            fs::create_dir_all(&dir).map_err(at(&dir))?;
        }
        Ok(cache)
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Every blob in the cache with its size and when it was last used (its modification
    /// time: reads through [`Cache::touch`] renew it), for a size budget.
    pub fn blobs(&self) -> Vec<CachedFile> {
        list_files(&self.blobs_dir())
    }

    /// Marks a blob as used now, so a size budget keeps it over older ones.
    pub fn touch(&self, digest: &Digest) {
        touch(&self.blob_path(digest));
    }

    /// The blobs an artifact is made of, as cached: its manifest, config and layers (what
    /// a host must keep to start it again without the registry).
    pub fn closure(&self, manifest: &Digest) -> Vec<Digest> {
        let mut digests = vec![manifest.clone()];
        if let Ok(Lookup::Hit(bytes)) = self.read(manifest)
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            let config = value.get("config").into_iter();
            let layers = value
                .get("layers")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten();
            digests.extend(
                config
                    .chain(layers)
                    .filter_map(|blob| blob.get("digest")?.as_str()?.parse::<Digest>().ok()),
            );
        }
        digests
    }

    /// Removes temporary files that have not been written for `idle` (what an interrupted
    /// write left; a write in progress, by this or another process, is younger); returns
    /// how many.
    pub fn sweep(&self, idle: std::time::Duration) -> usize {
        list_files(&self.tmp_dir())
            .into_iter()
            .filter(|file| file.used.elapsed().is_ok_and(|age| age >= idle))
            .filter(|file| fs::remove_file(&file.path).is_ok())
            .count()
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Reads a small blob (manifest, config) into memory, verified.
    ///
    /// # Errors
    /// On I/O errors other than the file being absent.
    pub fn read(&self, digest: &Digest) -> Result<Lookup<Vec<u8>>, CacheError> {
        let path = self.blob_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(error) => return Err(at(&path)(error)),
        };
        if Digest::of(&bytes) == *digest {
            Ok(Lookup::Hit(bytes))
        } else {
            self.evict(digest, &path)?;
            Ok(Lookup::Corrupt)
        }
    }

    /// Checks a (possibly large) blob on disk against its digest without loading it whole,
    /// and returns its path.
    ///
    /// # Errors
    /// On I/O errors other than the file being absent.
    pub fn verify(&self, digest: &Digest) -> Result<Lookup<PathBuf>, CacheError> {
        let path = self.blob_path(digest);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(error) => return Err(at(&path)(error)),
        };
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = file.read(&mut buffer).map_err(at(&path))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        if Digest::from_hasher(hasher) == *digest {
            Ok(Lookup::Hit(path))
        } else {
            self.evict(digest, &path)?;
            Ok(Lookup::Corrupt)
        }
    }

    fn evict(&self, digest: &Digest, path: &Path) -> Result<(), CacheError> {
        tracing::debug!(%digest, path = %path.display(), "cache entry does not match its digest; removed it");
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(at(path)(error)),
        }
    }

    /// Stores bytes already verified against `digest`.
    ///
    /// # Errors
    /// On I/O errors. Panics never; a digest that does not match the bytes is a caller bug and
    /// is refused with [`io::ErrorKind::InvalidData`].
    pub fn write(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let mut writer = self.writer()?;
        writer.write(bytes)?;
        match writer.commit(digest)? {
            Ok(path) => Ok(path),
            Err(actual) => Err(CacheError {
                path: self.blob_path(digest),
                error: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("refused to store bytes of {actual} as {digest}"),
                ),
            }),
        }
    }

    /// Starts writing a blob whose bytes arrive in pieces.
    ///
    /// # Errors
    /// When the temp file cannot be created.
    pub fn writer(&self) -> Result<BlobWriter, CacheError> {
        let dir = self.tmp_dir();
        let file = NamedTempFile::new_in(&dir).map_err(at(&dir))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
            blobs_dir: self.blobs_dir(),
        })
    }

    fn tag_path(&self, registry: &str, repository: &str, tag: &str) -> PathBuf {
        // Registry, repository and tag come from a parsed reference: no `..`, no empty parts.
        self.root
            .join("tags")
            .join(registry)
            .join(repository)
            .join(tag)
    }

    /// Remembers that `registry/repository:tag` resolved to `digest`.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn record_tag(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        let path = self.tag_path(registry, repository, tag);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        let tmp = self.tmp_dir();
        let mut file = NamedTempFile::new_in(&tmp).map_err(at(&tmp))?;
        file.write_all(digest.as_str().as_bytes())
            .and_then(|()| file.as_file().sync_all())
            .map_err(at(&path))?;
        file.persist(&path)
            .map_err(|error| at(&path)(error.error))?;
        Ok(())
    }

    /// The digest `registry/repository:tag` last resolved to, if any.
    ///
    /// # Errors
    /// On I/O errors other than the entry being absent.
    pub fn lookup_tag(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<Digest>, CacheError> {
        let path = self.tag_path(registry, repository, tag);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(at(&path)(error)),
        }
    }
}

/// A blob being written: hashed as it goes, renamed into place only if it matches its digest.
/// Dropping it without [`BlobWriter::commit`] deletes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    file: NamedTempFile,
    hasher: Sha256,
    written: u64,
    blobs_dir: PathBuf,
}

impl BlobWriter {
    /// Appends bytes.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        let path = self.file.path().to_owned();
        self.file.write_all(bytes).map_err(at(&path))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest of what was written so far.
    pub fn digest(&self) -> Digest {
        Digest::from_hasher(self.hasher.clone())
    }

    /// Moves the blob into the cache if its content matches `expected`; otherwise deletes it
    /// and returns the digest it actually had as `Ok(Err(actual))`.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn commit(self, expected: &Digest) -> Result<Result<PathBuf, Digest>, CacheError> {
        let actual = Digest::from_hasher(self.hasher);
        if actual != *expected {
            return Ok(Err(actual));
        }
        let target = self.blobs_dir.join(expected.hex());
        self.file.as_file().sync_all().map_err(at(&target))?;
        self.file
            .persist(&target)
            .map_err(|error| at(&target)(error.error))?;
        Ok(Ok(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        (dir, cache)
    }

    #[test]
    fn write_then_read_is_verified() {
        let (_dir, cache) = cache();
        let digest = Digest::of(b"component");
        cache.write(&digest, b"component").unwrap();
        assert!(
            matches!(cache.read(&digest).unwrap(), Lookup::Hit(bytes) if bytes == b"component")
        );
        assert!(matches!(cache.verify(&digest).unwrap(), Lookup::Hit(_)));
    }

    #[test]
    fn tampered_entries_are_evicted() {
        let (_dir, cache) = cache();
        let digest = Digest::of(b"component");
        let path = cache.write(&digest, b"component").unwrap();
        fs::write(&path, b"c0mponent").unwrap();
        assert!(matches!(cache.verify(&digest).unwrap(), Lookup::Corrupt));
        assert!(!path.exists());
        assert!(matches!(cache.read(&digest).unwrap(), Lookup::Miss));
    }

    #[test]
    fn a_writer_with_the_wrong_content_leaves_nothing_behind() {
        let (dir, cache) = cache();
        let mut writer = cache.writer().unwrap();
        writer.write(b"evil").unwrap();
        let expected = Digest::of(b"good");
        let actual = writer.commit(&expected).unwrap().unwrap_err();
        assert_eq!(actual, Digest::of(b"evil"));
        assert!(!cache.blob_path(&expected).exists());
        let leftovers = fs::read_dir(dir.path().join("cache/tmp")).unwrap().count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn an_abandoned_writer_is_not_a_cache_entry() {
        let (_dir, cache) = cache();
        let digest = Digest::of(b"component");
        {
            let mut writer = cache.writer().unwrap();
            writer.write(b"compo").unwrap();
        }
        assert!(matches!(cache.verify(&digest).unwrap(), Lookup::Miss));
    }

    #[test]
    fn tags_remember_their_last_digest() {
        let (_dir, cache) = cache();
        let first = Digest::of(b"1");
        let second = Digest::of(b"2");
        assert_eq!(
            cache
                .lookup_tag("localhost:5000", "team/hello", "1.0")
                .unwrap(),
            None
        );
        cache
            .record_tag("localhost:5000", "team/hello", "1.0", &first)
            .unwrap();
        cache
            .record_tag("localhost:5000", "team/hello", "1.0", &second)
            .unwrap();
        assert_eq!(
            cache
                .lookup_tag("localhost:5000", "team/hello", "1.0")
                .unwrap(),
            Some(second)
        );
    }
}
