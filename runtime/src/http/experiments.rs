//! `/v1/pipelines/{name}/experiment`: start (PUT), read (GET), promote and abort an
//! experiment (see [`crate::experiment`]). All need the admin token.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::Value;

use super::AppState;
use super::admin::{blocking, json_body};
use crate::error::Error;
use crate::experiment::settings::Settings;

/// The experiment routes (the caller adds the token check).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/pipelines/{name}/experiment", get(status).put(start))
        .route("/v1/pipelines/{name}/experiment/promote", post(promote))
        .route("/v1/pipelines/{name}/experiment/abort", post(abort))
}

async fn status(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    Ok(Json(app.registry.experiments().get(&name)?.status()))
}

async fn start(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Error> {
    let settings: Settings = json_body(&body)?;
    let registry = app.registry.clone();
    let experiment = blocking(move || registry.start_experiment(&name, settings)).await?;
    Ok((StatusCode::CREATED, Json(experiment.status())))
}

async fn promote(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    let registry = app.registry.clone();
    let experiment = blocking(move || registry.promote(&name, "promoted by hand")).await?;
    Ok(Json(experiment.status()))
}

async fn abort(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    let registry = app.registry.clone();
    let experiment = blocking(move || registry.abort(&name)).await?;
    Ok(Json(experiment.status()))
}
