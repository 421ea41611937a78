//! Ground truth in: `POST /v1/pipelines/{name}/feedback` joins truth to the predictions of a
//! `[quality]` pipeline (see [`crate::quality`]), and `GET /v1/pipelines/{name}/quality`
//! reports each version's quality.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, auth};
use crate::error::Error;

/// Truth pieces one feedback request may carry.
pub const MAX_FEEDBACK: usize = 100_000;

/// The feedback route (inference token, else admin token) and the report (admin token).
pub fn routes(state: &AppState) -> Router<AppState> {
    let feedback = Router::new()
        .route("/v1/pipelines/{name}/feedback", post(feedback))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_feedback,
        ));
    let report = Router::new()
        .route("/v1/pipelines/{name}/quality", get(report))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    feedback.merge(report)
}

/// `{"feedback": [{"id": "...", "target": <label, number, or one per row>}, ...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Feedback {
    feedback: Vec<Truth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Truth {
    id: String,
    target: Value,
}

async fn feedback(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let feedback: Feedback = serde_json::from_slice(&body).map_err(|e| {
        Error::InvalidInput(format!(
            "invalid feedback: {e} (expected {{\"feedback\": [{{\"id\": \"...\", \"target\": ...}}]}})"
        ))
    })?;
    if feedback.feedback.len() > MAX_FEEDBACK {
        return Err(Error::TooLarge(format!(
            "{} pieces of feedback in one request; send at most {MAX_FEEDBACK} at a time",
            feedback.feedback.len()
        )));
    }
    monitored(&app, &name)?;
    let truths: Vec<(String, Value)> = (feedback.feedback.into_iter())
        .map(|t| (t.id, t.target))
        .collect();
    let quality = app.registry.quality().clone();
    let summary = tokio::task::spawn_blocking(move || quality.feedback(&name, &truths))
        .await
        .map_err(|e| Error::StageFailed(format!("the feedback worker failed: {e}")))?
        .map_err(|e| Error::StageFailed(format!("storing feedback failed: {e:#}")))?;
    Ok(Json(json!(summary)))
}

async fn report(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    monitored(&app, &name)?;
    Ok(Json(json!(app.registry.quality().report(&name))))
}

/// Refuse a pipeline that is not served (404) or has no version with `[quality]` (400).
fn monitored(app: &AppState, name: &str) -> Result<(), Error> {
    if !app.registry.serves(name) {
        return Err(Error::NotFound(format!("unknown pipeline '{name}'")));
    }
    if !app.registry.quality().watches(name) {
        return Err(Error::InvalidInput(format!(
            "pipeline '{name}' has no version with a [quality] section: declare one to \
             accept feedback"
        )));
    }
    Ok(())
}
