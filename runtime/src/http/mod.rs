//! The HTTP surface: V2 inference routes ([`inference`]), with errors as `{"error": "..."}`
//! and the status code each [`Error`] maps to.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod body;
pub mod connections;
pub mod experiments;
pub mod feedback;
pub mod inference;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::Error;
use crate::pipeline::Registry;
use connections::ConnectionLimits;

/// What every handler can reach, behind one `Arc`: axum clones the state for every request,
/// and one reference count costs less than one per field.
#[derive(Clone)]
pub struct AppState(Arc<App>);

/// The server's shared parts.
pub struct App {
    pub registry: Arc<Registry>,
    /// Bounds on each request's body and response.
    pub limits: RequestLimits,
    /// The bearer token the management routes require.
    pub admin_token: String,
    /// The bearer token inference routes require, if any.
    pub inference_token: Option<String>,
    /// Places, turns and body bytes for requests.
    pub admission: admission::Admission,
    /// The Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// The sampled payload log, when enabled.
    pub payload_log: Option<crate::stages::log::PayloadLog>,
}

/// Bounds on one request (`weir serve` flags).
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// The largest request body accepted, bytes (a pipeline may set a lower one).
    pub max_body_bytes: usize,
    /// The largest response body sent, bytes.
    pub max_response_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
}

impl Default for RequestLimits {
    /// `weir serve`'s defaults.
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: 64 << 20,
            max_response_bytes: 64 << 20,
            body_timeout: Duration::from_secs(30),
        }
    }
}

impl AppState {
    pub fn new(app: App) -> AppState {
        AppState(Arc::new(app))
    }
}

impl std::ops::Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

/// The router for every route this server answers.
pub fn router(state: AppState) -> Router {
    let limit = state.limits.max_body_bytes;
    let admin = admin::routes().merge(experiments::routes()).route_layer(
        axum::middleware::from_fn_with_state(state.clone(), auth::require_admin),
    );
    inference::routes(&state)
        .merge(feedback::routes(&state))
        .merge(admin)
        .route("/metrics", axum::routing::get(metrics::scrape))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Serve `state` on `listener` within `limits` until `shutdown` completes; then stop
/// accepting and let in-flight requests finish, for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let metrics = state.metrics.connections.clone();
    let checks = tokio::spawn(check_experiments(state.registry.clone()));
    connections::serve(listener, router(state), limits, metrics, shutdown, grace).await;
    checks.abort();
}

/// Every second, judge the experiments whose interval is over (on the blocking pool: a check
/// may promote, which warms up a version and writes the store).
async fn check_experiments(registry: Arc<Registry>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let registry = registry.clone();
        let _ = tokio::task::spawn_blocking(move || registry.check_experiments()).await;
    }
}

/// Errors that axum's extractors and layers answer (a path segment that does not parse, a
/// body over the limit) come as plain text; every error of this API is `{"error": ...}`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !text || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let message = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let body = json!({ "error": String::from_utf8_lossy(&message) }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

async fn unknown_route(method: Method, uri: Uri) -> Error {
    Error::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = json!({ "error": format!("{method} is not allowed on {}", uri.path()) });
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = matches!(self, Error::Overloaded(_)).then_some([(header::RETRY_AFTER, "1")]);
        (
            status,
            retry,
            axum::Json(json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
