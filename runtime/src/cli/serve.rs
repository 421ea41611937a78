//! `weir serve`: open the store, deploy the manifests given, serve until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::engine::{Engine, MAX_RUNNING_REQUESTS};
use crate::http::admission::Admission;
use crate::http::auth::{self, TokenSource};
use crate::http::metrics::Metrics;
use crate::http::{self, App, AppState};
use crate::pipeline::Registry;
use crate::pipeline::manifest::Manifest;
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

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 64 << 20, env = "WEIR_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,

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

    /// Most requests waiting for a turn; beyond it the server answers 503 with Retry-After at
    /// once instead of queueing without bound.
    #[arg(long, default_value_t = 256, env = "WEIR_MAX_QUEUE")]
    pub max_queue: usize,

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
    let engine = Engine::new(Some(args.data_dir.join("compiled")))?;
    let registry = Arc::new(Registry::open(engine, store)?);
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
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let concurrency = match args.max_concurrency {
        Some(n) => n as usize,
        None => (2 * cores).min(MAX_RUNNING_REQUESTS as usize),
    };
    let state = AppState::new(App {
        registry,
        max_body_bytes: args.max_body_bytes,
        admin_token: token,
        inference_token,
        admission: Admission::new(concurrency, args.max_queue),
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
            shutdown_signal(),
            Duration::from_secs(args.shutdown_timeout),
        )
        .await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
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
