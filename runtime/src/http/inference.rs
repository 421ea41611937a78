//! The Open Inference Protocol (KServe V2) REST routes: health, server and model metadata,
//! readiness and inference, each model route also under `/versions/{v}`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admission::BodyReservation;
use super::{App, AppState, body};
use crate::error::Error;
use crate::experiment::settings::Mode;
use crate::experiment::{Arm, Experiment, ShadowRequest};
use crate::pipeline::manifest::TensorSpec;
use crate::pipeline::{Pipeline, Trace};
use crate::protocol;
use crate::stages::log;
use crate::tensor::Batch;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

/// The `platform` reported in model metadata.
pub const PLATFORM: &str = "weir_wasm_pipeline";

/// The V2 routes; inference needs the inference token when the server has one (health and
/// metadata stay open for probes).
pub fn routes(state: &AppState) -> Router<AppState> {
    let mut infer = Router::new()
        .route("/v2/models/{model}/infer", post(infer_route))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_route),
        );
    // Without an inference token there is nothing to check: no layer, no cost per request.
    if state.inference_token.is_some() {
        infer = infer.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::require_inference,
        ));
    }
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
        .merge(infer)
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
    let pipeline = pipeline(&app, &path)?;
    let stages: Vec<Value> = pipeline
        .stages()
        .iter()
        .map(|s| {
            let mut stage = json!({ "stage": s.kind().name(), "component": s.component(), "digest": s.digest() });
            let backends = s.graph_backends();
            if !backends.is_empty() {
                stage["graphs"] = json!(backends);
            }
            stage
        })
        .collect();
    Ok(Json(json!({
        "name": pipeline.name,
        "versions": [pipeline.version],
        "platform": PLATFORM,
        "inputs": tensor_metadata(pipeline.inputs()),
        "outputs": tensor_metadata(pipeline.outputs()),
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
    let pipeline = pipeline(&app, &path)?;
    Ok(Json(json!({ "name": pipeline.name, "ready": true })))
}

/// The pipeline a model route names. The 404 for an unknown model lists the served ones,
/// unless inference needs a token: the metadata routes stay open for probes, and should not
/// tell a stranger what is served.
fn pipeline(app: &App, path: &ModelPath) -> Result<Arc<Pipeline>, Error> {
    let found = app.registry.get(&path.model, path.version.as_deref());
    match found {
        Err(Error::NotFound(message))
            if app.inference_token.is_none() && !app.registry.serves(&path.model) =>
        {
            let served = app.registry.names().join(", ");
            Err(Error::NotFound(format!("{message} (served: {served})")))
        }
        other => other,
    }
}

/// The binary extension's `Inference-Header-Content-Length`, if sent; read alone, where the
/// `HeaderMap` extractor would copy every header of every request.
struct HeaderLength(Option<String>);

impl<S: Sync> FromRequestParts<S> for HeaderLength {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<HeaderLength, Error> {
        let Some(value) = parts.headers.get(protocol::HEADER_LENGTH) else {
            return Ok(HeaderLength(None));
        };
        let text = value.to_str().map_err(|_| {
            Error::InvalidInput("Inference-Header-Content-Length is not text".into())
        })?;
        Ok(HeaderLength(Some(text.to_owned())))
    }
}

async fn infer_route(
    State(app): State<AppState>,
    Path(path): Path<ModelPath>,
    HeaderLength(header_length): HeaderLength,
    request: Request,
) -> Result<Response, Error> {
    let active = pipeline(&app, &path)?;
    // The versioned routes bypass experiments.
    let experiment = match path.version {
        None => app.registry.experiments().live(&path.model),
        Some(_) => None,
    };
    let route_key = experiment.as_ref().and_then(|e| {
        let value = request.headers().get(e.route_header())?;
        value.to_str().ok().map(str::to_owned)
    });
    let started = Instant::now();
    let mut trace = Trace::default();
    let mut reservation = app.admission.reserve_body();
    let routing = Routing {
        experiment: experiment.as_ref(),
        key: route_key,
    };
    let result = admit_and_infer(
        &app,
        &active,
        routing,
        request,
        header_length.as_deref(),
        &mut reservation,
        &mut trace,
    )
    .await;
    let status = result.as_ref().map_or_else(Error::status, |_| 200);
    let error = result.as_ref().err().map(ToString::to_string);
    // Who answered: in a canary, the arm the request was routed to.
    let pipeline = match (&experiment, trace.arm) {
        (Some(experiment), Some(Arm::Candidate)) => experiment.candidate().clone(),
        _ => active.clone(),
    };
    if let (Some(experiment), Some(arm)) = (&experiment, trace.arm) {
        experiment.count(arm, status < 500, started.elapsed().as_secs_f64());
        app.metrics
            .record_experiment(&pipeline.name, arm.name(), status);
    }
    let record = log::RequestRecord {
        id: trace.request_id.as_deref(),
        pipeline: &pipeline.name,
        version: &pipeline.version,
        arm: trace.arm.map(Arm::name),
        status,
        duration: started.elapsed(),
        stages: &trace.stages,
        error: error.as_deref(),
    };
    log::request(&record);
    app.metrics.record(
        &pipeline.name,
        &pipeline.version,
        status,
        record.duration.as_secs_f64(),
        &trace,
    );
    let (body, response) = result?;
    if let Some(payloads) = &app.payload_log {
        payloads.record(&record, &body, &response.body);
    }
    Ok(match response.header_length {
        None => ([(header::CONTENT_TYPE, "application/json")], response.body).into_response(),
        Some(length) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    HeaderName::from_static(protocol::HEADER_LENGTH),
                    length.to_string(),
                ),
            ],
            response.body,
        )
            .into_response(),
    })
}

/// The experiment a request to the model route meets, if any, and its routing key.
struct Routing<'a> {
    experiment: Option<&'a Arc<Experiment>>,
    /// The routing header's value, if sent.
    key: Option<String>,
}

/// Admit the request, then read its body, then answer it when its turn comes. Nothing is
/// buffered before the request has a place: a body over the limit is refused from its
/// declared length, and the body's bytes are reserved from the server's budget as they
/// arrive. The body comes back with the answer, for the payload log.
async fn admit_and_infer(
    app: &App,
    pipeline: &Arc<Pipeline>,
    routing: Routing<'_>,
    request: Request,
    header_length: Option<&str>,
    reservation: &mut BodyReservation<'_>,
    trace: &mut Trace,
) -> Result<(Bytes, protocol::Response), Error> {
    let limit = body_limit(app, pipeline);
    let declared = body::declared_length(request.headers(), &limit)?;
    let ticket = app.admission.admit(&pipeline.name)?;
    let timeout = app.limits.body_timeout;
    let body = body::read(request.into_body(), declared, &limit, timeout, reservation).await?;
    // Stages run right here on the async worker, as many at once as admission allows (a
    // batching pipeline's, in its batch runner's task); a stage that computes for long yields
    // at every epoch tick, so it does not hold the worker.
    let work = async {
        let request = decode(pipeline, &body, header_length)?;
        let Some(experiment) = routing.experiment else {
            return Ok(
                respond(pipeline, request, app.limits.max_response_bytes, trace)
                    .await?
                    .0,
            );
        };
        let key = routing.key.as_deref().or(request.id.as_deref());
        let routed = experiment.route(key);
        let (answering, arm) = match (experiment.mode(), routed) {
            (Mode::Canary, Arm::Candidate) => (experiment.candidate(), Arm::Candidate),
            _ => (pipeline, Arm::Active),
        };
        trace.arm = Some(arm);
        let limit = app.limits.max_response_bytes;
        let (response, outputs) = respond(answering, request, limit, trace).await?;
        if experiment.mode() == Mode::Shadow && routed == Arm::Candidate {
            let copy = ShadowRequest {
                body: body.clone(),
                header_length: header_length.map(str::to_owned),
                id: trace.request_id.clone(),
                active: outputs.tensors,
            };
            (app.registry.experiments()).shadow(experiment, copy);
        }
        Ok(response)
    };
    let response = if pipeline.batches() {
        ticket.run_batched(work).await
    } else {
        ticket.run(work).await
    }?;
    Ok((body, response))
}

/// The body limit for `pipeline`: the server's, or the pipeline's own when lower.
fn body_limit(app: &App, pipeline: &Pipeline) -> body::Limit {
    let server = body::Limit {
        bytes: app.limits.max_body_bytes,
        setting: Cow::Borrowed("weir serve --max-body-bytes"),
    };
    match pipeline.spec.limits.max_body_mib {
        Some(mib) if (mib << 20) < server.bytes as u64 => body::Limit {
            bytes: (mib << 20) as usize,
            setting: Cow::Owned(format!(
                "pipeline '{}''s limits.max_body_mib",
                pipeline.name
            )),
        },
        _ => server,
    }
}

/// Answer a V2 request body with `pipeline`: decode, run, select the requested outputs,
/// encode (refusing a response over `max_response_bytes`). `header_length` is the binary
/// extension's header, if sent; `trace` gets the request id and the time in each stage. The
/// whole per-request cost outside HTTP.
pub async fn infer(
    pipeline: &Arc<Pipeline>,
    body: &[u8],
    header_length: Option<&str>,
    max_response_bytes: usize,
    trace: &mut Trace,
) -> Result<protocol::Response, Error> {
    let request = decode(pipeline, body, header_length)?;
    Ok(respond(pipeline, request, max_response_bytes, trace)
        .await?
        .0)
}

/// Decode a V2 request body within `pipeline`'s element limit.
fn decode(
    pipeline: &Pipeline,
    body: &[u8],
    header_length: Option<&str>,
) -> Result<protocol::Request, Error> {
    let limits = &pipeline.spec.limits;
    protocol::decode_request(body, header_length, limits.max_tensor_elements)
}

/// Run a decoded request through `pipeline` and encode its answer; the answer, and every
/// output the pipeline made (for a shadow's comparison).
async fn respond(
    pipeline: &Arc<Pipeline>,
    mut request: protocol::Request,
    max_response_bytes: usize,
    trace: &mut Trace,
) -> Result<(protocol::Response, Batch), Error> {
    if request.id.is_none() {
        request.id = pipeline.new_request_id();
    }
    trace.request_id = request.id.clone();
    let batch = pipeline
        .infer(std::mem::take(&mut request.batch), trace)
        .await?;
    let outputs = protocol::select_outputs(&batch.tensors, &request)?;
    let response = protocol::encode_response(
        &pipeline.name,
        &pipeline.version,
        request.id.as_deref(),
        &outputs,
        max_response_bytes,
    )?;
    Ok((response, batch))
}
