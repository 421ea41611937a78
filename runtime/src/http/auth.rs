//! The admin token that guards the management routes: from `--admin-token-file` or
//! `WEIR_ADMIN_TOKEN`, else generated on first start into the data directory, readable only
//! by its owner, where the CLI finds it. The token itself is never logged.

use std::path::{Path, PathBuf};

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::error::Error;

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "admin-token";

/// Where the token came from, for the startup log line (never the token).
pub enum TokenSource {
    File(PathBuf),
    Environment,
    Generated(PathBuf),
}

/// The admin token: `file`'s contents, else `env`, else the data directory's token file,
/// created with a fresh random token if missing.
pub fn load_or_create(
    file: Option<&Path>,
    env: Option<String>,
    data_dir: &Path,
) -> anyhow::Result<(String, TokenSource)> {
    if let Some(file) = file {
        let token = read_token(file)?;
        return Ok((token, TokenSource::File(file.to_path_buf())));
    }
    if let Some(token) = env.filter(|t| !t.trim().is_empty()) {
        return Ok((token.trim().to_owned(), TokenSource::Environment));
    }
    let path = data_dir.join(TOKEN_FILE);
    if !path.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
        std::fs::create_dir_all(data_dir)?;
        crate::store::write_atomically(data_dir, &path, hex::encode(bytes).as_bytes())?;
        crate::store::restrict_to_owner(&path)?;
    }
    Ok((read_token(&path)?, TokenSource::Generated(path)))
}

/// The token in `path`, trimmed.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token from {}", path.display()))?;
    let token = token.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the admin token file {} is empty",
        path.display()
    );
    Ok(token.to_owned())
}

/// Middleware: let the request through only with `Authorization: Bearer <admin token>`.
pub async fn require_admin(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    if !bearer_matches(&request, &app.admin_token) {
        return Err(Error::Unauthorized(
            "management routes need `Authorization: Bearer <admin token>` (see weir serve --help)"
                .into(),
        ));
    }
    Ok(next.run(request).await)
}

/// Middleware: when the server has an inference token, let inference through only with it.
pub async fn require_inference(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    if let Some(token) = &app.inference_token
        && !bearer_matches(&request, token)
    {
        return Err(Error::Unauthorized(
            "inference needs `Authorization: Bearer <inference token>` (weir serve --inference-token-file)"
                .into(),
        ));
    }
    Ok(next.run(request).await)
}

/// Whether the request carries `Authorization: Bearer <token>`; the scheme's name is
/// case-insensitive (RFC 9110), so `bearer` does too.
/// Middleware: feedback comes from business systems, which hold the inference token when the
/// server has one; otherwise it needs the admin token.
pub async fn require_feedback(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let (token, which) = match &app.inference_token {
        Some(token) => (token, "inference"),
        None => (&app.admin_token, "admin"),
    };
    if !bearer_matches(&request, token) {
        return Err(Error::Unauthorized(format!(
            "feedback needs `Authorization: Bearer <{which} token>` (see weir serve --help)"
        )));
    }
    Ok(next.run(request).await)
}

fn bearer_matches(request: &Request, token: &str) -> bool {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, given)| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

/// Compare without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
