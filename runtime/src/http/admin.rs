//! Management routes: `/v1` (components, artifacts, pipelines, versions, swap, rollback) and
//! the V2 repository extension (`/v2/repository/...`) that tools written for Triton or
//! MLServer use. All need the admin token. Compiling and warming up run on the blocking pool,
//! never on the threads that serve requests.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use semver::Version;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::error::Error;
use crate::pipeline::manifest::Manifest;
use crate::pipeline::registry::Swap;
use crate::pipeline::spec;
use crate::store::Kind;

/// The management routes (the caller adds the token check).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/components", get(list_components))
        .route(
            "/v1/components/{name}/{version}",
            put(push_component).delete(delete_component),
        )
        .route("/v1/artifacts", get(list_artifacts))
        .route(
            "/v1/artifacts/{name}/{version}",
            put(push_artifact).delete(delete_artifact),
        )
        .route("/v1/pipelines", get(list_pipelines).post(deploy))
        .route("/v1/pipelines/{name}/versions", get(versions))
        .route("/v1/pipelines/{name}/swap", post(swap))
        .route("/v1/pipelines/{name}/rollback", post(rollback))
        .route("/v1/pipelines/{name}/drift", get(drift))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/repository/models/{name}/unload", post(unload))
}

/// Decode a JSON body whatever its Content-Type (the CLI and curl users rarely set one).
pub(super) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidInput(format!("invalid JSON body: {e}")))
}

/// Run a management operation on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::StageFailed(format!("the operation's worker failed: {e}")))?
}

async fn status(State(app): State<AppState>) -> Result<Json<Value>, Error> {
    let store = app.registry.store();
    let count = |kind| {
        store
            .list(kind, None)
            .map(|l| l.len())
            .map_err(Error::refused)
    };
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "data_dir": store.dir(),
        "pipelines": app.registry.status(),
        "components": count(Kind::Component)?,
        "artifacts": count(Kind::Artifact)?,
    })))
}

async fn list_components(State(app): State<AppState>) -> Result<Json<Value>, Error> {
    list(&app, Kind::Component)
}

async fn list_artifacts(State(app): State<AppState>) -> Result<Json<Value>, Error> {
    list(&app, Kind::Artifact)
}

fn list(app: &AppState, kind: Kind) -> Result<Json<Value>, Error> {
    let objects = app
        .registry
        .store()
        .list(kind, None)
        .map_err(Error::refused)?;
    Ok(Json(json!(objects)))
}

fn parse_version(version: &str) -> Result<Version, Error> {
    version
        .parse()
        .map_err(|e| Error::InvalidInput(format!("'{version}' is not a semver version: {e}")))
}

/// 201 with the object when stored, 200 when the same bytes were already there.
fn pushed(object: crate::store::Object, created: bool) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({ "object": object, "created": created })),
    )
        .into_response()
}

async fn push_component(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Error> {
    let version = parse_version(&version)?;
    let registry = app.registry.clone();
    let (object, created) = blocking(move || {
        spec::push_component(registry.engine(), registry.store(), &name, &version, &body)
            .map_err(Error::refused)
    })
    .await?;
    Ok(pushed(object, created))
}

async fn push_artifact(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Error> {
    let version = parse_version(&version)?;
    let (object, created) = app
        .registry
        .store()
        .put(Kind::Artifact, &name, &version, "", &body)
        .map_err(Error::refused)?;
    Ok(pushed(object, created))
}

async fn delete_component(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    delete(&app, Kind::Component, &name, &version)
}

async fn delete_artifact(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    delete(&app, Kind::Artifact, &name, &version)
}

fn delete(app: &AppState, kind: Kind, name: &str, version: &str) -> Result<StatusCode, Error> {
    let version = parse_version(version)?;
    app.registry
        .store()
        .delete(kind, name, &version)
        .map_err(Error::refused)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_pipelines(State(app): State<AppState>) -> Json<Value> {
    Json(json!(app.registry.status()))
}

/// Deploy a manifest (TOML). Over HTTP it may name only stored components and artifacts:
/// `weir deploy` pushes a manifest's files first, so the server never reads paths a client
/// chose.
/// `POST /v1/pipelines?candidate=true` deploys without activating.
#[derive(Deserialize)]
struct DeployQuery {
    #[serde(default)]
    candidate: bool,
}

async fn deploy(
    State(app): State<AppState>,
    Query(query): Query<DeployQuery>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| Error::InvalidInput("the manifest is not UTF-8".into()))?;
    let manifest = Manifest::parse(text, std::path::Path::new("/nonexistent"))
        .map_err(|e| Error::InvalidInput(format!("invalid manifest: {e:#}")))?;
    if manifest.names_files() {
        return Err(Error::InvalidInput(
            "a manifest deployed over HTTP may only name stored components and artifacts; \
             `weir deploy` pushes the files a manifest names first"
                .into(),
        ));
    }
    let registry = app.registry.clone();
    let change = blocking(move || match query.candidate {
        true => registry.deploy_candidate(&manifest),
        false => registry.deploy(&manifest),
    })
    .await?;
    Ok(Json(json!(change)))
}

async fn versions(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    let active = app.registry.get(&name, None).ok().map(|p| p.number);
    let stored = app
        .registry
        .store()
        .versions(&name)
        .map_err(Error::refused)?;
    if stored.is_empty() {
        return Err(Error::NotFound(format!("unknown pipeline '{name}'")));
    }
    let versions: Vec<Value> = stored
        .into_iter()
        .map(|v| {
            let spec: Value = serde_json::from_str(&v.spec).unwrap_or(Value::Null);
            json!({
                "version": v.version,
                "active": active == Some(v.version),
                "created_at": v.created_at,
                "spec": spec,
            })
        })
        .collect();
    Ok(Json(json!({ "pipeline": name, "versions": versions })))
}

async fn swap(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let swap: Swap = json_body(&body)?;
    let registry = app.registry.clone();
    let change = blocking(move || registry.swap(&name, &swap)).await?;
    Ok(Json(json!(change)))
}

/// The drift report: per monitored column the score, method, thresholds, status and the
/// window's counts.
async fn drift(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    Ok(Json(json!(app.registry.drift(&name)?)))
}

#[derive(Deserialize)]
struct Rollback {
    version: u64,
    /// Even while an experiment is live (which ends it as superseded).
    #[serde(default)]
    force: bool,
}

async fn rollback(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let rollback: Rollback = json_body(&body)?;
    let registry = app.registry.clone();
    let change =
        blocking(move || registry.rollback(&name, rollback.version, rollback.force)).await?;
    Ok(Json(json!(change)))
}

/// `[{"name", "version", "state", "reason"}]`: READY when a version is active, else
/// UNAVAILABLE (unloaded).
async fn repository_index(State(app): State<AppState>) -> Json<Value> {
    let index: Vec<Value> = app
        .registry
        .status()
        .into_iter()
        .map(|p| match p.active {
            Some(v) => {
                json!({ "name": p.name, "version": v.to_string(), "state": "READY", "reason": "" })
            }
            None => json!({ "name": p.name, "state": "UNAVAILABLE", "reason": "unloaded" }),
        })
        .collect();
    Json(json!(index))
}

async fn load(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, Error> {
    let registry = app.registry.clone();
    let change = blocking(move || registry.load(&name)).await?;
    Ok(Json(json!(change)))
}

async fn unload(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    app.registry.unload(&name)?;
    Ok(Json(json!({ "name": name, "unloaded": true })))
}
