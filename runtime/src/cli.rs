//! The `weir` command line: parses arguments and dispatches to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::engine::Engine;
use crate::http::{self, AppState};
use crate::pipeline::manifest::Manifest;
use crate::pipeline::{Pipeline, Registry};

/// Serve machine-learning pipelines of sandboxed WebAssembly components over the Open
/// Inference Protocol (KServe V2).
///
/// A pipeline is preprocess → model → postprocess, each stage a WebAssembly component
/// described by a manifest (pipeline.toml). Clients call the V2 REST routes
/// (/v2/models/{name}/infer) with curl, tritonclient or the kserve SDK.
#[derive(Parser)]
#[command(name = "weir", version, about, long_about)]
pub struct Cli {
    /// How log lines are written: `auto` is human-readable on a terminal, JSON lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "WEIR_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve pipelines over the V2 REST protocol.
    ///
    /// Loads every MANIFEST (compiling its components, or reading them from the compile cache
    /// in the data directory), then listens. Log verbosity follows RUST_LOG (default: info).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Use 0.0.0.0:8080 to accept connections from other machines.
    #[arg(long, default_value = "127.0.0.1:8080", env = "WEIR_LISTEN")]
    pub listen: SocketAddr,

    /// The data directory: precompiled components are cached here, keyed by digest and
    /// engine build, so a restart skips compilation. Created if missing.
    #[arg(long, default_value = "weir-data", env = "WEIR_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 64 << 20, env = "WEIR_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,

    /// Pipeline manifests (pipeline.toml) to serve, e.g. examples/iris/pipeline.toml.
    #[arg(value_name = "MANIFEST")]
    pub manifests: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

/// Parse the command line and run it; errors print with their causes and exit 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Load every manifest, then serve until SIGINT or SIGTERM.
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.manifests.is_empty() {
        anyhow::bail!(
            "no pipeline to serve: give a manifest, e.g. weir serve examples/iris/pipeline.toml"
        );
    }
    let engine = Engine::new(Some(args.data_dir.join("compiled")))?;
    let mut registry = Registry::default();
    for path in &args.manifests {
        let manifest = Manifest::load(path)?;
        let started = std::time::Instant::now();
        let pipeline = Pipeline::load(&engine, &manifest, "1")?;
        tracing::info!(
            pipeline = %pipeline.name,
            version = %pipeline.version,
            stages = pipeline.stages().len(),
            load_ms = started.elapsed().as_millis() as u64,
            "pipeline loaded"
        );
        registry.insert(pipeline)?;
    }
    let state = AppState {
        registry: Arc::new(registry),
        max_body_bytes: args.max_body_bytes,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening on http://{addr}");
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
