//! Precompiled components on disk, so a restart loads machine code instead of compiling.

use std::fs;
use std::path::PathBuf;

use anyhow::Context;
use wasmtime::component::Component;

/// A directory of `<digest>-<engine key>.cwasm` files, each written atomically.
#[derive(Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    /// Open (creating) the cache directory. `engine_key` keeps code from incompatible engine
    /// builds or settings apart.
    pub fn open(dir: PathBuf, engine_key: String) -> anyhow::Result<CompileCache> {
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating the compile cache {}", dir.display()))?;
        Ok(CompileCache { dir, engine_key })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The cached component for `digest`, if present and loadable by this engine.
    pub fn load(&self, engine: &wasmtime::Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store` below, from wasmtime's own serialization,
        // atomically (never half-written), into a directory only this server writes. wasmtime
        // still checks the header and engine compatibility and refuses a mismatch.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component");
                None
            }
        }
    }

    /// Write `component` for `digest`, atomically: a crash leaves the whole file or none.
    pub fn store(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize()?;
        crate::store::write_atomically(&self.dir, &self.path(digest), &bytes)
    }
}
