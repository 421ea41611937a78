//! `weir serve`: open the store, deploy the manifests given, serve until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::alerts::{Alerts, MinStatus};
use crate::engine::{Engine, MAX_RUNNING_REQUESTS};
use crate::http::admission::{Admission, Bounds, MAX_QUEUE};
use crate::http::auth::{self, TokenSource};
use crate::http::connections::{self, ConnectionLimits};
use crate::http::metrics::Metrics;
use crate::http::{self, App, AppState, RequestLimits};
use crate::nn::OnnxRuntime;
use crate::pipeline::Registry;
use crate::pipeline::manifest::Manifest;
use crate::quality::Quality;
use crate::quality::records::RecordBounds;
use crate::stages::log::PayloadLog;
use crate::store::Store;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Use 0.0.0.0:8080 to accept connections from other machines.
    #[arg(long, default_value = "127.0.0.1:8080", env = "WEIR_LISTEN")]
    pub listen: SocketAddr,

    /// The data directory: the store (components, artifacts, pipeline versions; weir.db and
    /// blobs/), the compile cache (compiled/) and the generated admin token. Created if missing.
    /// A restart serves exactly what was active.
    #[arg(long, default_value = "weir-data", env = "WEIR_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Largest request body accepted, in bytes; larger ones get 413 (a declared
    /// Content-Length over it before any byte is read).
    #[arg(long, default_value_t = RequestLimits::default().max_body_bytes, env = "WEIR_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,

    /// Largest response body sent, in bytes: a request whose answer would be larger gets 413
    /// (ask for fewer rows or outputs, or binary outputs).
    #[arg(long, default_value_t = RequestLimits::default().max_response_bytes,
          env = "WEIR_MAX_RESPONSE_BYTES")]
    pub max_response_bytes: usize,

    /// Request body bytes all admitted requests (running or waiting) may hold at once, beyond
    /// the first 64 KiB of each (which come with the request's place, so that large uploads
    /// cannot turn small requests away). Bytes are reserved as a body arrives, so a stalled
    /// upload holds only what it sent; a body that does not fit gets 503 with Retry-After.
    #[arg(long, default_value_t = 512 << 20, env = "WEIR_MAX_INFLIGHT_BODY_BYTES")]
    pub max_inflight_body_bytes: u64,

    /// File holding the bearer token for the management routes (/v1, /v2/repository). Without
    /// it, the WEIR_ADMIN_TOKEN environment variable; without that, a token generated on first
    /// start into DATA_DIR/admin-token (readable only by its owner), where the CLI looks.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Most requests running their stages at once; more wait in the queue. Stages are
    /// CPU-bound, so more than about two per core adds latency, not throughput. At most 333:
    /// each running request holds up to three of the 1000 instance-pool slots. A pipeline with
    /// [batching] runs one batch at a time outside this count; its requests still count
    /// against it plus --max-queue while they wait.
    /// Default: twice the number of cores (at most 333).
    #[arg(long, env = "WEIR_MAX_CONCURRENCY",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RUNNING_REQUESTS)))]
    pub max_concurrency: Option<u32>,

    /// Most requests waiting for a turn (or for their body to arrive); beyond it the server
    /// answers 503 with Retry-After at once instead of queueing without bound.
    #[arg(long, default_value_t = 256, env = "WEIR_MAX_QUEUE",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_QUEUE)))]
    pub max_queue: u32,

    /// Most requests of one pipeline running at once, so that a slow or hostile pipeline
    /// fills its own share and leaves turns to the others. Default: half of
    /// --max-concurrency, rounded up (set it equal to serve one pipeline with every turn).
    #[arg(long, env = "WEIR_MAX_CONCURRENCY_PER_PIPELINE",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RUNNING_REQUESTS)))]
    pub max_concurrency_per_pipeline: Option<u32>,

    /// Most requests of one pipeline waiting at once; beyond it that pipeline's requests get
    /// 503. Default: half of --max-queue, rounded up.
    #[arg(long, env = "WEIR_MAX_QUEUE_PER_PIPELINE",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_QUEUE)))]
    pub max_queue_per_pipeline: Option<u32>,

    /// Most client connections open at once; beyond it a connection is answered 503 and
    /// closed (logged once a second). Lowered at start to fit the open-file limit, which is
    /// raised to its hard limit first.
    #[arg(long, default_value_t = ConnectionLimits::default().max_connections as u32,
          env = "WEIR_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Seconds a request may take to send all of its headers, from its first byte; a slower
    /// client's connection is closed.
    #[arg(long, default_value_t = ConnectionLimits::default().header_timeout.as_secs(),
          value_name = "SECONDS", env = "WEIR_HEADER_TIMEOUT",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,

    /// Seconds a request's body may take to arrive whole; past it the request gets 408.
    #[arg(long, default_value_t = RequestLimits::default().body_timeout.as_secs(),
          value_name = "SECONDS", env = "WEIR_BODY_TIMEOUT",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout: u64,

    /// Seconds an open connection may wait for its next request (or its first) before the
    /// server closes it.
    #[arg(long, default_value_t = ConnectionLimits::default().idle_timeout.as_secs(),
          value_name = "SECONDS", env = "WEIR_IDLE_TIMEOUT",
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout: u64,

    /// File holding a bearer token that inference requests must carry. Without it, inference
    /// is open (health and metadata always are, for probes).
    #[arg(long, value_name = "FILE")]
    pub inference_token_file: Option<PathBuf>,

    /// How long, after SIGTERM or SIGINT, in-flight requests may take to finish before the
    /// server exits anyway.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub shutdown_timeout: u64,

    /// Write a sample of request and response bodies to this file as JSON lines (the payload
    /// log), through a bounded queue that drops (and counts) rather than slow a request.
    #[arg(long, value_name = "FILE")]
    pub payload_log: Option<PathBuf>,

    /// Share of requests the payload log records, in (0, 1].
    #[arg(long, default_value_t = 1.0, value_name = "RATE")]
    pub payload_log_sample: f64,

    /// Size at which the payload log rotates (FILE.1 … FILE.3 kept), MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub payload_log_max_mib: u64,

    /// POST drift and quality status changes (see --alert-min-status) as JSON to this
    /// http:// URL, retried with backoff from a queue of its own, never on a request's path.
    /// Every change is logged either way.
    #[arg(long, value_name = "URL", env = "WEIR_ALERT_WEBHOOK")]
    pub alert_webhook: Option<String>,

    /// The webhook gets the changes into, or back from, this status or a worse one (`warn`
    /// also sends every warning; a small window's noise can make some).
    #[arg(long, value_enum, default_value_t = MinStatus::Alert, requires = "alert_webhook")]
    pub alert_min_status: MinStatus,

    /// Prediction records ([quality] pipelines) kept for truth to join, at most; the oldest
    /// are evicted first (truth for them then counts as expired).
    #[arg(long, default_value_t = 1_000_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub quality_record_rows: u64,

    /// How long a prediction record waits for its truth, seconds (default: a week).
    #[arg(long, default_value_t = 7 * 24 * 3600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub quality_record_seconds: u64,

    /// The ONNX Runtime shared library (libonnxruntime.so) for model stages' ONNX graphs.
    /// Without it, the one in the onnxruntime Python package that python3 imports (the active
    /// environment's), else one in the usual library directories; without any, models run on
    /// tract alone. Weir never downloads it: `pip install onnxruntime` is one way to get it.
    #[arg(long, value_name = "PATH", env = "WEIR_ONNXRUNTIME_LIB")]
    pub onnxruntime_lib: Option<PathBuf>,

    /// Run every model on tract, even where ONNX Runtime is installed.
    #[arg(long, conflicts_with = "onnxruntime_lib")]
    pub no_onnxruntime: bool,

    /// Intra-op threads of each ONNX Runtime session (one session per model artifact; a
    /// session runs one batch at a time). Default: the number of cores.
    #[arg(long, value_name = "N", env = "WEIR_ONNXRUNTIME_THREADS",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub onnxruntime_threads: Option<u32>,

    /// Pipeline manifests (pipeline.toml) to deploy, e.g. examples/iris/pipeline.toml. A
    /// manifest is deployed only when it resolves to something else (its file, or a file it
    /// names, changed) than the last time it was deployed from here; otherwise the version the
    /// store has active keeps serving, so swaps, rollbacks and unloads made through the API
    /// since survive a restart with the same command line.
    #[arg(value_name = "MANIFEST")]
    pub manifests: Vec<PathBuf>,
}

/// Open the store, deploy the manifests, then serve until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = Arc::new(Store::open(&args.data_dir)?);
    let mut engine = Engine::new(Some(args.data_dir.join("compiled")))?;
    if let Some(runtime) = onnxruntime(&args)? {
        engine = engine.with_onnxruntime(runtime);
    }
    let alerts = match &args.alert_webhook {
        Some(url) => Alerts::webhook(url, args.alert_min_status)?,
        None => Alerts::log_only(),
    };
    let bounds = RecordBounds {
        rows: args.quality_record_rows,
        seconds: args.quality_record_seconds,
    };
    let quality = Quality::open(&args.data_dir, bounds, alerts)?;
    let registry = Arc::new(Registry::open_with(engine, store, quality.clone())?);
    for path in &args.manifests {
        let manifest = Manifest::load(path)?;
        let change = registry
            .deploy_if_changed(&manifest)
            .with_context(|| format!("deploying {}", path.display()))?;
        match change {
            Some(change) => tracing::info!(
                pipeline = %change.pipeline,
                version = change.version,
                created = change.created,
                "deployed {}",
                path.display()
            ),
            None => tracing::info!(
                pipeline = %manifest.name,
                "{} is as it was last deployed from the command line: serving what the store \
                 has active",
                path.display()
            ),
        }
    }
    let status = registry.status();
    if status.is_empty() {
        tracing::warn!("no pipeline to serve yet: deploy one with `weir deploy MANIFEST`");
    }
    for pipeline in &status {
        let active = pipeline
            .active
            .map_or("none (unloaded)".to_owned(), |v| v.to_string());
        let versions = pipeline.versions.len();
        tracing::info!(pipeline = %pipeline.name, %active, versions, "serving");
    }
    let token_env = std::env::var("WEIR_ADMIN_TOKEN").ok();
    let (token, source) =
        auth::load_or_create(args.admin_token_file.as_deref(), token_env, &args.data_dir)?;
    match source {
        TokenSource::File(path) => tracing::info!("admin token from {}", path.display()),
        TokenSource::Environment => tracing::info!("admin token from WEIR_ADMIN_TOKEN"),
        TokenSource::Generated(path) => tracing::info!("admin token in {}", path.display()),
    }
    let inference_token = match &args.inference_token_file {
        Some(file) => Some(auth::read_token(file)?),
        None => None,
    };
    let state = AppState::new(App {
        registry,
        limits: RequestLimits {
            max_body_bytes: args.max_body_bytes,
            max_response_bytes: args.max_response_bytes,
            body_timeout: Duration::from_secs(args.body_timeout),
        },
        admin_token: token,
        inference_token,
        admission: Admission::new(admission_bounds(&args)),
        metrics: Metrics::default(),
        payload_log: match args.payload_log {
            Some(path) => Some(PayloadLog::open(
                path,
                args.payload_log_sample,
                args.payload_log_max_mib << 20,
            )?),
            None => None,
        },
    });
    let mut connections = ConnectionLimits {
        max_connections: args.max_connections as usize,
        header_timeout: Duration::from_secs(args.header_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
    };
    connections::fit_file_limit(&mut connections);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let ready_ms = started.elapsed().as_millis() as u64;
        tracing::info!(%addr, ready_ms, "listening on http://{addr}");
        http::serve(
            listener,
            state,
            connections,
            shutdown_signal(),
            Duration::from_secs(args.shutdown_timeout),
        )
        .await;
        // The prediction records still queued, so a graceful stop loses none.
        quality.flush();
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// ONNX Runtime, when the flags allow it and the machine has it; the log says which and why.
/// A library named on the command line must load; one found on the machine may fail to (an
/// old version, say), and then models run on tract.
fn onnxruntime(args: &ServeArgs) -> anyhow::Result<Option<Arc<OnnxRuntime>>> {
    if args.no_onnxruntime {
        tracing::info!("ONNX Runtime off (--no-onnxruntime): models run on tract");
        return Ok(None);
    }
    let Some((library, how)) = OnnxRuntime::find(args.onnxruntime_lib.as_deref()) else {
        tracing::info!(
            "ONNX Runtime not found (no --onnxruntime-lib, no onnxruntime Python package, \
             no libonnxruntime.so in the library directories): models run on tract"
        );
        return Ok(None);
    };
    let cores = crate::cores();
    let threads = args.onnxruntime_threads.map_or(cores, |n| n as usize);
    match OnnxRuntime::load(&library, threads) {
        Ok(runtime) => {
            tracing::info!(
                library = %library.display(),
                threads,
                "ONNX Runtime {how}: models run on it unless their manifest says backend = \"tract\""
            );
            Ok(Some(runtime))
        }
        Err(e) if args.onnxruntime_lib.is_some() => Err(e),
        Err(e) => {
            tracing::warn!(library = %library.display(), "ONNX Runtime {how} did not load ({e:#}): models run on tract");
            Ok(None)
        }
    }
}

/// The admission bounds the flags set, with their defaults: twice the cores running, each
/// pipeline half of the turns and of the queue.
fn admission_bounds(args: &ServeArgs) -> Bounds {
    let cores = crate::cores();
    let concurrency = match args.max_concurrency {
        Some(n) => n as usize,
        None => (2 * cores).min(MAX_RUNNING_REQUESTS as usize),
    };
    let mut bounds = Bounds::new(
        concurrency,
        args.max_queue as usize,
        args.max_inflight_body_bytes,
    );
    if let Some(n) = args.max_concurrency_per_pipeline {
        bounds.pipeline_concurrency = n as usize;
    }
    if let Some(n) = args.max_queue_per_pipeline {
        bounds.pipeline_queue = n as usize;
    }
    bounds
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}
