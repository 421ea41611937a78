//! What the benchmarks share: a registry on a scratch store, the reused-instances variant of
//! a pipeline, a way to run a request's future as a server's worker would, and the V2 types
//! a plain-Rust baseline decodes and encodes.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use weir::engine::Engine;
use weir::http::inference::infer;
use weir::pipeline::manifest::Manifest;
use weir::pipeline::{Pipeline, Registry, Trace};
use weir::store::Store;

/// The server's allocator (`src/main.rs`), so in-process numbers match what it serves.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The response limit the benchmarks serve with: `weir serve`'s default.
pub const RESPONSE_LIMIT: usize = 64 << 20;

/// A registry on a store in a temporary directory (kept alive by the returned guard), with ONNX
/// Runtime beside tract when it is given.
pub fn registry(onnxruntime: Option<Arc<weir::nn::OnnxRuntime>>) -> (Registry, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(data_dir.path()).unwrap());
    let mut engine = Engine::new(None).unwrap();
    if let Some(runtime) = onnxruntime {
        engine = engine.with_onnxruntime(runtime);
    }
    (Registry::open(engine, store).unwrap(), data_dir)
}

/// One request through `pipeline` as the server answers it (decode → stages → encode), on
/// this thread; the response body. `header_length`: the binary extension's header, if sent.
pub fn respond(pipeline: &Arc<Pipeline>, body: &[u8], header_length: Option<&str>) -> Vec<u8> {
    let mut trace = Trace::default();
    block_on(infer(
        pipeline,
        body,
        header_length,
        RESPONSE_LIMIT,
        &mut trace,
    ))
    .unwrap()
    .body
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

/// A V2 request of one input, as a plain-Rust server would type it.
#[derive(Deserialize)]
pub struct Request<T> {
    pub id: Option<String>,
    pub inputs: Vec<Input<T>>,
}

#[derive(Deserialize)]
pub struct Input<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// A V2 response whose `outputs` is a tuple of [`Output`]s.
#[derive(Serialize)]
pub struct Response<'a, O> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: Option<String>,
    pub outputs: O,
}

#[derive(Serialize)]
pub struct Output<T> {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

pub fn output<T>(
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    data: Vec<T>,
) -> Output<T> {
    Output {
        name,
        datatype,
        shape,
        data,
    }
}
