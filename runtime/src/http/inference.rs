//! The Open Inference Protocol (KServe V2) REST routes: health, server and model metadata,
//! readiness and inference, each model route also under `/versions/{v}`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::pipeline::manifest::TensorSpec;
use crate::protocol;

/// The `platform` reported in model metadata.
pub const PLATFORM: &str = "weir_wasm_pipeline";

/// Header that marks a request in Triton's binary tensor format.
const BINARY_HEADER: &str = "inference-header-content-length";

/// The V2 routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
}

/// `{model}` and the optional `{version}` of a model route.
#[derive(Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "weir",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// Ready: the server starts listening only once every pipeline has loaded.
async fn ready() -> Json<Value> {
    Json(json!({ "ready": true }))
}

async fn model_metadata(
    State(app): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>, Error> {
    let pipeline = app.registry.get(&path.model, path.version.as_deref())?;
    let stages: Vec<Value> = pipeline
        .stages()
        .iter()
        .map(|s| json!({ "stage": s.kind().name(), "component": s.component(), "digest": s.digest() }))
        .collect();
    Ok(Json(json!({
        "name": pipeline.name,
        "versions": [pipeline.version],
        "platform": PLATFORM,
        "inputs": tensor_metadata(&pipeline.inputs),
        "outputs": tensor_metadata(&pipeline.outputs),
        "parameters": { "weir_stages": stages },
    })))
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<Value> {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": s.datatypes[0].name(), "shape": s.shape }))
        .collect()
}

async fn model_ready(
    State(app): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>, Error> {
    let pipeline = app.registry.get(&path.model, path.version.as_deref())?;
    Ok(Json(json!({ "name": pipeline.name, "ready": true })))
}

async fn infer(
    State(app): State<AppState>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let pipeline = app.registry.get(&path.model, path.version.as_deref())?;
    if headers.contains_key(BINARY_HEADER) {
        return Err(protocol::binary_extension_unsupported());
    }
    let body = body.map_err(|rejection| body_error(rejection, app.max_body_bytes))?;
    // Stages run on the blocking pool: a stage may run up to its deadline, and WASI's
    // synchronous host calls (a guest writing to stderr) must not run on an async worker.
    let response = tokio::task::spawn_blocking(move || run(&pipeline, &body))
        .await
        .map_err(|e| Error::StageFailed(format!("the request's worker failed: {e}")))??;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        response,
    )
        .into_response())
}

/// Decode, run the pipeline, select the requested outputs and encode. Blocking.
fn run(pipeline: &Pipeline, body: &[u8]) -> Result<Vec<u8>, Error> {
    let request = protocol::decode_request(body)?;
    let batch = pipeline.infer(request.batch)?;
    let available: Vec<_> = batch.tensors.iter().collect();
    let outputs = protocol::select_outputs(&available, request.outputs.as_deref())?;
    protocol::encode_response(
        &pipeline.name,
        &pipeline.version,
        request.id.as_deref(),
        &outputs,
    )
}

fn body_error(rejection: BytesRejection, limit: usize) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::BodyTooLarge(format!(
            "request body is over the limit of {limit} bytes (weir serve --max-body-bytes)"
        ))
    } else {
        Error::InvalidInput(format!(
            "could not read the request body: {}",
            rejection.body_text()
        ))
    }
}
