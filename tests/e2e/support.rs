//! A server per test, in-process on 127.0.0.1 with an ephemeral port, sharing one engine whose
//! compile cache lives in the target directory so components compile once per build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use weir::alerts::Alerts;
use weir::engine::Engine;
use weir::http::admission::{Admission, Bounds};
use weir::http::connections::ConnectionLimits;
use weir::http::metrics::Metrics;
use weir::http::{self, App, AppState, RequestLimits};
use weir::pipeline::Registry;
use weir::pipeline::manifest::Manifest;
use weir::quality::Quality;
use weir::quality::records::RecordBounds;
use weir::store::Store;

/// The admin token of in-process test servers.
pub const TOKEN: &str = "test-admin-token";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The engine all in-process test servers share.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compiled");
        Engine::new(Some(cache)).expect("engine")
    })
}

/// The Python of a virtualenv under the target directory with `packages` installed, made once
/// per target directory. A marker file records a finished install, so one cut short is done
/// again; installs run one at a time.
pub fn python_with(name: &str, packages: &[&str]) -> PathBuf {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let marker = venv.join("weir-installed.txt");
    let wanted = packages.join(" ");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 runs");
    assert!(ok.success(), "python3 -m venv {} failed", venv.display());
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet"])
        .args(packages)
        .status()
        .unwrap();
    assert!(ok.success(), "pip install {wanted} failed");
    std::fs::write(&marker, &wanted).unwrap();
    python
}

/// The iris example's manifest.
pub fn iris() -> Manifest {
    Manifest::load(&repo_root().join("examples/iris/pipeline.toml")).expect("iris manifest")
}

/// A pipeline named `name` whose model stage is the faulty test component in `mode`, with
/// extra manifest text (e.g. a `[limits]` table). It misbehaves only on requests with the
/// parameter `fault`, so it passes its warm-up.
pub fn faulty(name: &str, mode: &str, extra: &str) -> Manifest {
    faulty_with(name, &format!("mode = \"{mode}\""), extra)
}

/// [`faulty`] with more config fields (`mode = "busy", ms = 400`).
pub fn faulty_with(name: &str, config: &str, extra: &str) -> Manifest {
    let text = format!(
        "name = \"{name}\"\n{extra}\n[model]\ncomponent = \"faulty-stage@0.1.0\"\n\
         path = \"faulty_stage.wasm\"\nconfig = {{ {config}, on_request = true }}\n"
    );
    Manifest::parse(&text, Path::new(env!("WEIR_TEST_COMPONENTS"))).expect("faulty manifest")
}

/// A registry on a fresh store in a temporary directory, with `manifests` deployed.
pub fn registry(manifests: &[Manifest]) -> (Arc<Registry>, tempfile::TempDir) {
    registry_on(engine(), manifests)
}

/// [`registry`] on `engine`.
pub fn registry_on(engine: &Engine, manifests: &[Manifest]) -> (Arc<Registry>, tempfile::TempDir) {
    registry_with(
        engine,
        manifests,
        RecordBounds::default(),
        Alerts::log_only(),
    )
}

/// [`registry_on`] keeping prediction records within `records`, alerting to `alerts`.
pub fn registry_with(
    engine: &Engine,
    manifests: &[Manifest],
    records: RecordBounds,
    alerts: Alerts,
) -> (Arc<Registry>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let quality = Quality::open(dir.path(), records, alerts).unwrap();
    let registry = Arc::new(Registry::open_with(engine.clone(), store, quality).unwrap());
    for manifest in manifests {
        registry.deploy(manifest).expect("pipeline deploys");
    }
    (registry, dir)
}

/// Server options a test may change.
pub struct Options {
    pub engine: &'static Engine,
    pub limits: RequestLimits,
    pub admission: Bounds,
    pub connections: ConnectionLimits,
    pub inference_token: Option<&'static str>,
    pub records: RecordBounds,
    pub alerts: Alerts,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: engine(),
            limits: RequestLimits::default(),
            admission: Bounds::new(4, 256, 512 << 20),
            connections: ConnectionLimits::default(),
            inference_token: None,
            records: RecordBounds::default(),
            alerts: Alerts::log_only(),
        }
    }
}

/// Write a manifest file into `dir` for a pipeline `name` whose model stage is the faulty test
/// component (by absolute path) with config `config` (`mode = "echo"`), for `weir serve`.
pub fn faulty_manifest_file(dir: &Path, name: &str, config: &str) -> PathBuf {
    let wasm = Path::new(env!("WEIR_TEST_COMPONENTS")).join("faulty_stage.wasm");
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\n[model]\ncomponent = \"faulty-stage@0.1.0\"\npath = {:?}\n\
         config = {{ {config} }}\n",
        wasm.display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A running in-process server, stopped when dropped.
pub struct TestServer {
    pub base: String,
    pub registry: Arc<Registry>,
    _data_dir: tempfile::TempDir,
    client: reqwest::blocking::Client,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TestServer {
    /// Serve `manifests` with default options.
    pub fn start(manifests: &[Manifest]) -> TestServer {
        TestServer::with_options(manifests, Options::default())
    }

    /// Serve `manifests`, refusing bodies over `max_body_bytes`.
    pub fn with_body_limit(manifests: &[Manifest], max_body_bytes: usize) -> TestServer {
        let mut options = Options::default();
        options.limits.max_body_bytes = max_body_bytes;
        TestServer::with_options(manifests, options)
    }

    /// Serve `manifests` with `options`.
    pub fn with_options(manifests: &[Manifest], options: Options) -> TestServer {
        let (registry, data_dir) =
            registry_with(options.engine, manifests, options.records, options.alerts);
        let state = AppState::new(App {
            registry: registry.clone(),
            limits: options.limits,
            admin_token: TOKEN.to_owned(),
            inference_token: options.inference_token.map(str::to_owned),
            admission: Admission::new(options.admission),
            metrics: Metrics::default(),
            payload_log: None,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            runtime.block_on(http::serve(
                listener,
                state,
                options.connections,
                async {
                    let _ = stopped.await;
                },
                std::time::Duration::from_secs(5),
            ));
        });
        TestServer {
            base,
            registry,
            _data_dir: data_dir,
            client: reqwest::blocking::Client::new(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// GET `path`; the status and the JSON body.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .unwrap();
        status_and_json(response)
    }

    /// POST `body` (sent as is, JSON or not) to `path`; the status and the JSON body.
    pub fn post(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        status_and_json(response)
    }

    /// POST a JSON value to `path`.
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post(path, body.to_string())
    }

    /// POST a binary-extension body (`header` as the JSON part, then `binary`) to `path`; the
    /// status, the JSON part and the binary part of the answer.
    pub fn post_binary(&self, path: &str, header: &Value, binary: &[u8]) -> (u16, Value, Vec<u8>) {
        let json_part = header.to_string();
        let mut body = json_part.clone().into_bytes();
        body.extend_from_slice(binary);
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header(
                "Inference-Header-Content-Length",
                json_part.len().to_string(),
            )
            .body(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let length: Option<usize> = response
            .headers()
            .get("inference-header-content-length")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let bytes = response.bytes().unwrap().to_vec();
        let split = length.unwrap_or(bytes.len());
        (
            status,
            serde_json::from_slice(&bytes[..split]).unwrap(),
            bytes[split..].to_vec(),
        )
    }

    /// A management request with the admin token; the status and the JSON body (null if none).
    pub fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Into<reqwest::blocking::Body>,
    ) -> (u16, Value) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn status_and_json(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("response is not JSON ({e}): {text}"));
    (status, json)
}

/// The `error` message of an error response.
pub fn error_message(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The iris coefficients negated: a real artifact that answers differently.
pub fn flipped_weights() -> Vec<u8> {
    negated_weights("iris")
}

/// An example's logistic-regression coefficients negated.
pub fn negated_weights(example: &str) -> Vec<u8> {
    let file = repo_root().join(format!("examples/{example}/logistic_regression.json"));
    let text = std::fs::read_to_string(file).unwrap();
    let mut weights: Value = serde_json::from_str(&text).unwrap();
    for row in weights["coef"].as_array_mut().unwrap() {
        for w in row.as_array_mut().unwrap() {
            *w = json!(-w.as_f64().unwrap());
        }
    }
    weights.to_string().into_bytes()
}
