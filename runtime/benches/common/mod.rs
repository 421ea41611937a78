//! What the benchmarks share: a registry on a scratch store, the reused-instances variant of
//! a pipeline, and a way to run a request's future as a server's worker would.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use weir::engine::Engine;
use weir::pipeline::manifest::Manifest;
use weir::pipeline::{Pipeline, Registry};
use weir::store::Store;

/// A registry on a store in a temporary directory (kept alive by the returned guard).
pub fn registry() -> (Registry, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(data_dir.path()).unwrap());
    (
        Registry::open(Engine::new(None).unwrap(), store).unwrap(),
        data_dir,
    )
}

/// Deploy the manifest at `path` twice: as it is, and as `<name>-reused` with every stage
/// opted into reusing warm instances. Returns both pipelines.
pub fn deploy_both(registry: &Registry, path: &Path) -> (Arc<Pipeline>, Arc<Pipeline>) {
    let manifest = Manifest::load(path).unwrap();
    let name = manifest.name.clone();
    registry.deploy(&manifest).unwrap();
    let mut reused = Manifest::load(path).unwrap();
    reused.name = format!("{name}-reused");
    for stage in reused.stages_mut() {
        stage.reuse_instances = true;
    }
    registry.deploy(&reused).unwrap();
    (
        registry.get(&name, None).unwrap(),
        registry.get(&reused.name, None).unwrap(),
    )
}

/// Run one request's future to completion on this thread, as a server's worker would.
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        })
        .block_on(future)
}
