//! The management commands: `push`, `deploy`, `swap`, `rollback`, `versions`, `status`, each
//! a client of a running server's `/v1` API.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;
use serde_json::{Map, Value, json};

use crate::engine::host::StageKind;
use crate::http::auth;
use crate::pipeline::manifest::{ArtifactSource, Manifest, split_reference};
use crate::pipeline::spec;

/// How to reach the server and prove the right to manage it.
#[derive(clap::Args)]
pub struct Connection {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "WEIR_SERVER")]
    pub server: String,
    /// File holding the admin token. Without it, WEIR_ADMIN_TOKEN; without that,
    /// DATA_DIR/admin-token, which `weir serve` generates on first start.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The server's data directory, where its generated admin token is.
    #[arg(long, default_value = "weir-data", env = "WEIR_DATA_DIR")]
    pub data_dir: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ObjectKind {
    /// A WebAssembly component (a stage).
    Component,
    /// A model artifact (weights, coefficients).
    Artifact,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// What to push.
    #[arg(value_enum)]
    pub kind: ObjectKind,
    /// NAME@VERSION, VERSION in semver (1.2.0).
    pub reference: String,
    /// The file to push.
    pub file: PathBuf,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct DeployArgs {
    /// The manifest (pipeline.toml).
    pub manifest: PathBuf,
    /// Deploy the new version without activating it: a candidate for `weir shadow` or
    /// `weir canary`.
    #[arg(long)]
    pub candidate: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct SwapArgs {
    /// The pipeline.
    pub pipeline: String,
    /// The stage to change.
    #[arg(long, value_parser = parse_stage)]
    pub stage: StageKind,
    /// The new component: NAME@VERSION or NAME@REQUIREMENT (e.g. label-map@^0.1), from the store.
    #[arg(long)]
    pub component: Option<String>,
    /// A new artifact: KEY=NAME@VERSION (from the store). Repeat for several.
    #[arg(long, value_name = "KEY=NAME@VERSION")]
    pub artifact: Vec<String>,
    /// A new config for the stage, as a JSON object (replaces the old one whole).
    #[arg(long, value_name = "JSON")]
    pub config: Option<String>,
    /// Swap even while an experiment is live on the pipeline (which ends it as superseded).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    /// The pipeline.
    pub pipeline: String,
    /// The version to serve again (see `weir versions`).
    pub version: u64,
    /// Roll back even while an experiment is live on the pipeline (which ends it as
    /// superseded).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct VersionsArgs {
    /// The pipeline.
    pub pipeline: String,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connection: Connection,
}

fn parse_stage(s: &str) -> Result<StageKind, String> {
    [
        StageKind::Preprocess,
        StageKind::Model,
        StageKind::Postprocess,
    ]
    .into_iter()
    .find(|k| k.name() == s)
    .ok_or_else(|| format!("'{s}' is not a stage (preprocess, model, postprocess)"))
}

/// The admin token: `--admin-token-file`, else WEIR_ADMIN_TOKEN, else the one the server
/// generated in its data directory.
pub(super) fn admin_token(connection: &Connection) -> anyhow::Result<String> {
    match (
        &connection.admin_token_file,
        std::env::var("WEIR_ADMIN_TOKEN"),
    ) {
        (Some(file), _) => auth::read_token(file),
        (None, Ok(token)) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        _ => auth::read_token(&connection.data_dir.join(auth::TOKEN_FILE)).context(
            "no admin token: give --admin-token-file, set WEIR_ADMIN_TOKEN, or point \
             --data-dir at the server's data directory",
        ),
    }
}

/// A client of the management API.
pub(super) struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client of the server `connection` names, with its admin token.
    pub(super) fn new(connection: &Connection) -> anyhow::Result<Client> {
        let token = admin_token(connection)?;
        Client::with_token(connection, token)
    }

    /// A client of the server `connection` names, sending `token`.
    pub(super) fn with_token(connection: &Connection, token: String) -> anyhow::Result<Client> {
        Ok(Client {
            base: connection.server.trim_end_matches('/').to_owned(),
            token,
            // Compiling a large component can take a while.
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?,
        })
    }

    /// Send a request, showing a spinner on a terminal while the server works; the JSON answer.
    fn send(
        &self,
        what: &str,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<Value> {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner().with_message(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        let response = request
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("{what}: cannot reach {}", self.base));
        if let Some(bar) = spinner {
            bar.finish_and_clear();
        }
        let response = response?;
        let status = response.status();
        let text = response.text()?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or(&text);
            bail!("{what}: {status}: {message}");
        }
        Ok(body)
    }

    fn push(&self, kind: &str, name: &str, version: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
        let url = format!("{}/v1/{kind}s/{name}/{version}", self.base);
        self.send(
            &format!("pushing {kind} {name}@{version}"),
            self.http.put(url).body(bytes),
        )
    }

    pub(super) fn post(
        &self,
        what: &str,
        path: &str,
        body: reqwest::blocking::Body,
    ) -> anyhow::Result<Value> {
        self.send(
            what,
            self.http.post(format!("{}{path}", self.base)).body(body),
        )
    }

    pub(super) fn put(&self, what: &str, path: &str, body: String) -> anyhow::Result<Value> {
        self.send(
            what,
            self.http.put(format!("{}{path}", self.base)).body(body),
        )
    }

    pub(super) fn get(&self, what: &str, path: &str) -> anyhow::Result<Value> {
        self.send(what, self.http.get(format!("{}{path}", self.base)))
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// "pushed component x@1.0.0 (sha256-...)", or "already stored".
fn report_push(answer: &Value) {
    let object = &answer["object"];
    let what = if answer["created"] == true {
        "pushed"
    } else {
        "already stored:"
    };
    println!(
        "{what} {} {}@{} ({})",
        object["kind"].as_str().unwrap_or(""),
        object["name"].as_str().unwrap_or(""),
        object["version"].as_str().unwrap_or(""),
        object["digest"].as_str().unwrap_or("")
    );
}

/// "iris now serves version 3", or "unchanged".
fn report_change(answer: &Value) {
    let pipeline = answer["pipeline"].as_str().unwrap_or("");
    let version = &answer["version"];
    if answer["created"] == true {
        println!("{pipeline} now serves version {version} (new)");
    } else {
        println!("{pipeline} serves version {version}");
    }
}

pub fn push(args: PushArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let (name, version) = split_reference(&args.reference, "reference")?;
    let kind = match args.kind {
        ObjectKind::Component => "component",
        ObjectKind::Artifact => "artifact",
    };
    report_push(&client.push(kind, name, version, read(&args.file)?)?);
    Ok(())
}

/// Push the files the manifest names, rewrite it to name the stored objects, deploy it.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let mut manifest = Manifest::load(&args.manifest)?;
    let pipeline = manifest.name.clone();
    for stage in manifest.stages_mut() {
        if let Some(path) = stage.path.take() {
            let (name, version) = split_reference(&stage.component, "component")?;
            report_push(&client.push("component", name, version, read(&path)?)?);
        }
        for (key, source) in stage.artifacts.iter_mut() {
            push_artifact_file(&client, &pipeline, key, source)?;
        }
    }
    if let Some(observe) = &mut manifest.observe {
        push_artifact_file(&client, &pipeline, "reference", &mut observe.reference)?;
    }
    let text = toml::to_string(&manifest)?;
    let path = match args.candidate {
        true => "/v1/pipelines?candidate=true",
        false => "/v1/pipelines",
    };
    let answer = client.post(&format!("deploying {pipeline}"), path, text.into())?;
    if args.candidate {
        let version = &answer["version"];
        println!(
            "{pipeline} version {version} is deployed as a candidate; the active version still \
             serves (compare them: weir shadow {pipeline} --candidate {version})"
        );
    } else {
        report_change(&answer);
    }
    Ok(())
}

/// Push an artifact file named in a manifest, as the server would store it, and make the
/// manifest name the stored artifact instead.
fn push_artifact_file(
    client: &Client,
    pipeline: &str,
    key: &str,
    source: &mut ArtifactSource,
) -> anyhow::Result<()> {
    if let ArtifactSource::File(path) = source {
        let bytes = read(path)?;
        let (name, version) = spec::file_artifact_name(pipeline, key, &bytes);
        report_push(&client.push("artifact", &name, &version.to_string(), bytes)?);
        *source = ArtifactSource::Stored {
            artifact: format!("{name}@{version}"),
        };
    }
    Ok(())
}

pub fn swap(args: SwapArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let mut artifacts = Map::new();
    for entry in &args.artifact {
        let (key, reference) = entry
            .split_once('=')
            .with_context(|| format!("--artifact '{entry}' must be KEY=NAME@VERSION"))?;
        artifacts.insert(key.to_owned(), json!(reference));
    }
    let mut body = json!({ "stage": args.stage, "artifacts": artifacts, "force": args.force });
    if let Some(component) = &args.component {
        body["component"] = json!(component);
    }
    if let Some(config) = &args.config {
        let config: Value =
            serde_json::from_str(config).context("--config must be a JSON object")?;
        body["config"] = config;
    }
    let path = format!("/v1/pipelines/{}/swap", args.pipeline);
    let what = format!("swapping {} of {}", args.stage.name(), args.pipeline);
    report_change(&client.post(&what, &path, body.to_string().into())?);
    Ok(())
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let path = format!("/v1/pipelines/{}/rollback", args.pipeline);
    let body = json!({ "version": args.version, "force": args.force }).to_string();
    report_change(&client.post(
        &format!("rolling back {}", args.pipeline),
        &path,
        body.into(),
    )?);
    Ok(())
}

pub fn versions(args: VersionsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let answer = client.get(
        "listing versions",
        &format!("/v1/pipelines/{}/versions", args.pipeline),
    )?;
    for version in answer["versions"].as_array().into_iter().flatten() {
        let marker = if version["active"] == true { "*" } else { " " };
        let stages: Vec<String> = version["spec"]["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let c = &s["component"];
                format!(
                    "{}={}@{}",
                    s["kind"].as_str().unwrap_or(""),
                    c["name"].as_str().unwrap_or(""),
                    c["version"].as_str().unwrap_or("")
                )
            })
            .collect();
        println!(
            "{marker} {:>4}  {}  {}",
            version["version"],
            version["created_at"].as_str().unwrap_or(""),
            stages.join("  ")
        );
    }
    Ok(())
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let answer = client.get("reading status", "/v1/status")?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
