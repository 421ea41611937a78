//! The one wasmtime [`Engine`] of the process: how components are compiled, cached and
//! given fresh, bounded instances.
//!
//! Choices, and why:
//! - **Pooling allocator.** Instance slots, memories and tables are reserved once and reused,
//!   so a fresh instance per request costs microseconds instead of mmap/munmap calls
//!   (../shared/MEASURED.md: 26.6 µs on-demand, 14.2 µs pooled, 5.7 µs pooled with
//!   16 MiB kept resident and `pagemap_scan`). Fresh instances keep requests isolated.
//! - **Copy-on-write memory images** (wasmtime's default): a new instance maps its initial
//!   memory instead of copying the data segments.
//! - **Epoch interruption**, driven by one ticker thread per engine, never one per request:
//!   a stage's deadline is a count of ticks, checked at loop headers and function entries at
//!   a cost far below fuel metering. [`EPOCH_TICK`] sets the deadline's granularity.

mod cache;
pub mod host;
mod output;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::Component;
use wasmtime::{Config, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::nn::GraphCache;
use cache::CompileCache;

/// How often the epoch advances. 10 ms keeps the ticker's own cost negligible (100 wake-ups a
/// second) while a stage deadline still lands within one tick of its limit.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The most instances that may be alive at once, across all stages. Each slot reserves
/// address space only; memory is committed as instances use it.
pub const POOL_INSTANCES: u32 = 1000;

/// The most requests that may run their stages at once: a running request holds up to three
/// fresh instances (one per stage slot, in its store) until it is done.
pub const MAX_RUNNING_REQUESTS: u32 = POOL_INSTANCES / 3;

/// Stage instances alive now (each holds a pool slot), for the pool-use metric.
static LIVE_INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// Stage instances alive now, across every engine.
pub fn live_instances() -> usize {
    LIVE_INSTANCES.load(Ordering::Relaxed)
}

/// Counts one live instance while it exists.
pub(crate) struct InstanceCount;

impl InstanceCount {
    pub(crate) fn new() -> InstanceCount {
        LIVE_INSTANCES.fetch_add(1, Ordering::Relaxed);
        InstanceCount
    }
}

impl Drop for InstanceCount {
    fn drop(&mut self) {
        LIVE_INSTANCES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Linear memory kept resident (reset with memset instead of madvise) per pooled memory:
/// small stages then reuse warm pages instead of faulting them in again on every request.
const KEEP_RESIDENT: usize = 16 << 20;

/// The largest linear memory any stage may reach; per-pipeline caps (`limits.memory_mib`)
/// must stay below it.
pub const MAX_MEMORY: usize = 4 << 30;

/// The compiling engine, its on-disk cache of precompiled components, and the components
/// compiled and ONNX graphs loaded so far, shared by every pipeline version that uses them.
#[derive(Clone)]
pub struct Engine {
    wasmtime: wasmtime::Engine,
    cache: Option<CompileCache>,
    loaded: Arc<Mutex<HashMap<String, Component>>>,
    graphs: GraphCache,
}

impl Engine {
    /// An engine for the serving path. With `cache_dir`, compiled components are kept there,
    /// keyed by digest and engine compatibility, so a restart does not recompile.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Engine> {
        let mut pool = PoolingAllocationConfig::default();
        // A Rust component is three core instances (its module and two adapter shims) and two
        // tables: leave room for four of each per component.
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .max_memory_size(MAX_MEMORY)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let wasmtime = wasmtime::Engine::new(&config)?;
        spawn_epoch_ticker(&wasmtime);
        let cache = match cache_dir {
            Some(dir) => Some(CompileCache::open(dir, compatibility_key(&wasmtime))?),
            None => None,
        };
        Ok(Engine {
            wasmtime,
            cache,
            loaded: Arc::default(),
            graphs: GraphCache::new(None),
        })
    }

    /// This engine with ONNX Runtime beside tract for model stages' graphs.
    pub fn with_onnxruntime(mut self, runtime: Arc<crate::nn::OnnxRuntime>) -> Engine {
        self.graphs = GraphCache::new(Some(runtime));
        self
    }

    /// The wasmtime engine, for stores and linkers.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.wasmtime
    }

    /// The ONNX graphs a model stage's artifacts hold, each loaded once per artifact version.
    pub fn graphs(&self) -> &GraphCache {
        &self.graphs
    }

    /// The component with `digest`: already loaded, or from the disk cache, or compiled from
    /// the bytes `load` returns (called only then).
    pub fn compile(
        &self,
        digest: &str,
        load: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Component> {
        if let Some(component) = self.loaded.lock().unwrap().get(digest) {
            return Ok(component.clone());
        }
        let component = self.compile_uncached(digest, load)?;
        self.loaded
            .lock()
            .unwrap()
            .insert(digest.to_owned(), component.clone());
        Ok(component)
    }

    fn compile_uncached(
        &self,
        digest: &str,
        load: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Component> {
        if let Some(component) = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.wasmtime, digest))
        {
            return Ok(component);
        }
        let started = std::time::Instant::now();
        let component = Component::new(&self.wasmtime, load()?)
            .map_err(anyhow::Error::from)
            .context("compiling the component")?;
        tracing::info!(
            digest,
            compile_ms = started.elapsed().as_millis() as u64,
            "compiled component"
        );
        if let Some(cache) = &self.cache {
            // A cache write failure costs a recompile later, never this load.
            if let Err(e) = cache.store(digest, &component) {
                tracing::warn!(digest, error = %e, "could not cache the compiled component");
            }
        }
        Ok(component)
    }
}

/// A key that changes whenever compiled code from this engine would not load in another.
fn compatibility_key(engine: &wasmtime::Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}
