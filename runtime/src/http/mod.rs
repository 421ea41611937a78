//! The HTTP surface: V2 inference routes ([`inference`]), with errors as `{"error": "..."}`
//! and the status code each [`Error`] maps to.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod inference;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::Error;
use crate::pipeline::Registry;

/// What every handler can reach, behind one `Arc`: axum clones the state for every request,
/// and one reference count costs less than one per field.
#[derive(Clone)]
pub struct AppState(Arc<App>);

/// The server's shared parts.
pub struct App {
    pub registry: Arc<Registry>,
    /// The largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// The bearer token the management routes require.
    pub admin_token: String,
    /// The bearer token inference routes require, if any.
    pub inference_token: Option<String>,
    /// The bound on requests running and waiting.
    pub admission: admission::Admission,
    /// The Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// The sampled payload log, when enabled.
    pub payload_log: Option<crate::stages::log::PayloadLog>,
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
    let limit = state.max_body_bytes;
    let admin = admin::routes().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_admin,
    ));
    inference::routes(&state)
        .merge(admin)
        .route("/metrics", axum::routing::get(metrics::scrape))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serve `state` on `listener` until `shutdown` completes; then stop accepting and let
/// in-flight requests finish, for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    // Small responses go out at once rather than waiting on Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping.send(());
    });
    tokio::select! {
        result = server => result,
        _ = async {
            let _ = stopped.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_s = grace.as_secs(), "in-flight requests did not finish in time");
            Ok(())
        }
    }
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
