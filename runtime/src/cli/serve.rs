//! `weir serve`: open the store, deploy the manifests given, serve until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::engine::Engine;
use crate::http::auth::{self, TokenSource};
use crate::http::{self, AppState};
use crate::pipeline::Registry;
use crate::pipeline::manifest::Manifest;
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

    /// Pipeline manifests (pipeline.toml) to deploy, e.g. examples/iris/pipeline.toml.
    /// Deploying one that matches the active version again is a no-op.
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
            .deploy(&manifest)
            .with_context(|| format!("deploying {}", path.display()))?;
        tracing::info!(
            pipeline = %change.pipeline,
            version = change.version,
            created = change.created,
            "deployed {}",
            path.display()
        );
    }
    let status = registry.status();
    if status.is_empty() {
        tracing::warn!("no pipeline to serve yet: deploy one with `weir deploy MANIFEST`");
    }
    for pipeline in &status {
        tracing::info!(pipeline = %pipeline.name, active = ?pipeline.active, versions = pipeline.versions.len(), "serving");
    }
    let token_env = std::env::var("WEIR_ADMIN_TOKEN").ok();
    let (token, source) =
        auth::load_or_create(args.admin_token_file.as_deref(), token_env, &args.data_dir)?;
    match source {
        TokenSource::File(path) => tracing::info!("admin token from {}", path.display()),
        TokenSource::Environment => tracing::info!("admin token from WEIR_ADMIN_TOKEN"),
        TokenSource::Generated(path) => tracing::info!("admin token in {}", path.display()),
    }
    let state = AppState {
        registry,
        max_body_bytes: args.max_body_bytes,
        admin_token: Arc::from(token),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let ready_ms = started.elapsed().as_millis() as u64;
        tracing::info!(%addr, ready_ms, "listening on http://{addr}");
        http::serve(listener, state, shutdown_signal()).await?;
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
