//! Content-addressed blobs: each file named by the sha256 of its bytes, written so that a
//! crash leaves either the whole file or none.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A directory of blobs, `<dir>/<digest>`.
pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// Open (creating) the blob directory.
    pub fn open(dir: PathBuf) -> anyhow::Result<Blobs> {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Blobs { dir })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest)
    }

    /// Store `bytes`, returning their digest. Storing the same bytes again is a no-op.
    pub fn put(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = crate::digest(bytes);
        let path = self.path(&digest);
        if !path.exists() {
            write_atomically(&self.dir, &path, bytes)?;
        }
        Ok(digest)
    }

    /// The bytes stored under `digest`, checked against it.
    pub fn get(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let bytes = fs::read(self.path(digest))
            .with_context(|| format!("reading blob {digest} from {}", self.dir.display()))?;
        anyhow::ensure!(
            crate::digest(&bytes) == digest,
            "blob {digest} is corrupt: its bytes no longer match their digest"
        );
        Ok(bytes)
    }
}

/// Write `bytes` to `path` through a temporary file in `dir`: write, fsync, rename, fsync the
/// directory. Readers see the old file or the new one, never a part.
pub fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}
