//! The control API on TCP for other machines: TLS, and a bearer token on every request. It serves the same
//! routes as the local socket, except the tokens' own: those stay with local root, so a leaked token can
//! neither mint more nor hide itself.

pub mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use tokens::Tokens;

use super::error::ApiError;
use super::openapi::{BadRequest, Conflict, NotFound, ServerError};
use crate::api_types::{ErrorBody, Revoked, TokenCreated, TokenInfo, TokenRequest};

/// Where the remote API listens and which certificate it shows.
#[derive(Clone, Debug)]
pub struct RemoteApiOptions {
    pub listen: SocketAddr,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `livemount token create|list|revoke`, for the local socket only.
pub fn token_routes(tokens: Arc<Tokens>) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(list_tokens, create_token)).routes(routes!(revoke_token)).with_state(tokens)
}

/// The tokens that work (never the tokens themselves). Local socket only.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    security(()),
    responses((status = 200, description = "Every live token", body = Vec<TokenInfo>))
)]
async fn list_tokens(State(t): State<Arc<Tokens>>) -> Json<Vec<TokenInfo>> {
    Json(t.list())
}

/// Makes a token of the remote API; the answer is the only time it is shown. Local socket only.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    security(()),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The new token", body = TokenCreated),
        (status = 400, response = BadRequest),
        (status = 409, response = Conflict),
        (status = 500, response = ServerError),
    )
)]
async fn create_token(
    State(t): State<Arc<Tokens>>,
    req: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Json<TokenCreated>, ApiError> {
    let Json(req) = req?;
    let token = t.create(&req.name)?;
    tracing::info!(name = %req.name, "remote API token created");
    Ok(Json(TokenCreated { name: req.name, token }))
}

/// Revokes a token: requests with it are refused at once. Local socket only.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{name}",
    tag = "tokens",
    security(()),
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 200, description = "The token revoked", body = Revoked),
        (status = 404, response = NotFound),
        (status = 500, response = ServerError),
    )
)]
async fn revoke_token(
    State(t): State<Arc<Tokens>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    t.revoke(&name)?;
    tracing::info!(%name, "remote API token revoked");
    Ok(Json(Revoked { revoked: name }))
}

/// Starts serving `api` on the remote address, behind TLS and the token check; gives the address it listens
/// on and the task (aborted when the daemon stops).
pub async fn start(
    opts: &RemoteApiOptions,
    state_dir: &Path,
    names: &[String],
    api: Router,
    tokens: Arc<Tokens>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (cert, key) = tls::certificate_files(opts.cert.as_deref(), opts.key.as_deref(), state_dir, names)?;
    let acceptor = tls::acceptor(&cert, &key)?;
    let tcp = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding the remote API address {}", opts.listen))?;
    let listener = tls::TlsListener::start(tcp, acceptor)?;
    let addr = axum::serve::Listener::local_addr(&listener)?;
    let app = api.layer(axum::middleware::from_fn_with_state(tokens, require_token));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the remote API stopped: {e}");
        }
    });
    tracing::info!(%addr, cert = %cert.display(), "remote API listening (TLS, bearer tokens)");
    Ok((addr, task))
}

/// Lets a request through only with `Authorization: Bearer <live token>`.
async fn require_token(State(tokens): State<Arc<Tokens>>, req: Request, next: Next) -> Response {
    let presented =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        return refuse("this API needs a token: `Authorization: Bearer <token>` (`livemount token create NAME` on the appliance makes one)");
    };
    match tokens.check(presented.trim()) {
        Some(name) => {
            tracing::debug!(token = %name, method = %req.method(), path = %req.uri().path(), "remote API request");
            next.run(req).await
        }
        None => refuse("the token is not valid (unknown or revoked)"),
    }
}

fn refuse(message: &str) -> Response {
    let body = Json(ErrorBody { error: message.to_string() });
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
}
