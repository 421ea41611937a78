//! The `weir` command line: parses arguments and dispatches, one module per concern:
//! [`serve`] runs the server, [`admin`] drives a running one through its management API.

mod admin;
mod experiment;
mod feedback;
mod profile;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

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
    /// Opens the store in the data directory, serves every pipeline active there, deploys
    /// each MANIFEST given when it changed since it was last deployed from the command line
    /// (so a restart keeps swaps and rollbacks made since), then listens. Log verbosity
    /// follows RUST_LOG (default: info).
    Serve(serve::ServeArgs),
    /// Push a component (.wasm) or a model artifact to the store as NAME@VERSION.
    ///
    /// Versions are immutable: the same bytes again is a no-op, other bytes are refused.
    /// A component is checked first: it must be a component that fits a stage world.
    Push(admin::PushArgs),
    /// Deploy a manifest as the pipeline's next version.
    ///
    /// Files the manifest names (component `path`, artifact files) are pushed first. The new
    /// version is compiled, type-checked and warmed up before it serves; if any step fails,
    /// the old version keeps serving.
    Deploy(admin::DeployArgs),
    /// Replace one stage's component, artifacts or config, as the next version.
    Swap(admin::SwapArgs),
    /// Serve an earlier version of a pipeline again.
    Rollback(admin::RollbackArgs),
    /// List a pipeline's versions, with what each pins.
    Versions(admin::VersionsArgs),
    /// Show the server's pipelines, active versions and store contents.
    Status(admin::StatusArgs),
    /// Profile reference data (CSV with a header, or JSON lines) for the drift monitor, and
    /// print a starting validation schema for its columns.
    ///
    /// Writes the reference profile (quantile bins per numeric column, shares per category)
    /// to OUTPUT; name it in the manifest's [observe] reference. Prints `columns = [...]` with
    /// ranges and categories to paste into the manifest's [[inputs]].
    Profile(profile::ProfileArgs),
    /// Send truth for a [quality] pipeline's predictions in bulk, from CSV or JSON lines.
    ///
    /// Each row names a request `id` (the V2 `id` the request sent, or the one Weir returned)
    /// and its `target`: the true label or value (a list of one per row for a request of many
    /// rows). Prints how many matched, and how many were unknown ids, expired records,
    /// duplicates (the first truth wins) or did not fit.
    Feedback(feedback::FeedbackArgs),
    /// Start a shadow experiment: a candidate version also runs a sample of requests, after
    /// the active version answered them, and the answers are compared. Clients only ever get
    /// the active version's answers.
    Shadow(experiment::ShadowArgs),
    /// Start a canary: a candidate version answers a share of requests, raised step by step
    /// while the gates (error rate, p99 latency, quality) pass; promoted after the last step.
    Canary(experiment::CanaryArgs),
    /// Show a pipeline's experiment: state, step, both arms, agreement, last decision.
    Experiment(experiment::ExperimentArgs),
    /// Make the experiment's candidate the active version, and end the experiment.
    Promote(experiment::EndArgs),
    /// End the experiment: the candidate gets no more traffic; the active version stays.
    Abort(experiment::EndArgs),
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
        Command::Serve(args) => {
            return match serve::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Push(args) => admin::push(args),
        Command::Deploy(args) => admin::deploy(args),
        Command::Swap(args) => admin::swap(args),
        Command::Rollback(args) => admin::rollback(args),
        Command::Versions(args) => admin::versions(args),
        Command::Status(args) => admin::status(args),
        Command::Profile(args) => profile::run(args),
        Command::Feedback(args) => feedback::run(args),
        Command::Shadow(args) => experiment::shadow(args),
        Command::Canary(args) => experiment::canary(args),
        Command::Experiment(args) => experiment::status(args),
        Command::Promote(args) => experiment::promote(args),
        Command::Abort(args) => experiment::abort(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
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
