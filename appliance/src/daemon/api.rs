//! The control API: every route in one place; handlers are thin and call the manager. A request body that
//! is not the JSON a route takes is answered like every other error (400, with the message in the body).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::ApiError;
use super::mounts::Manager;
use crate::api_types::{BrowseRequest, CommitRequest, MountInfo, MountRequest};

pub fn routes(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/v1/mounts", get(list_mounts).post(create_mount))
        .route("/v1/mounts/{id}", get(get_mount).delete(remove_mount))
        .route("/v1/mounts/{id}/commit", post(commit_mount))
        .route("/v1/browse", post(browse))
        .route("/v1/browse/{id}", axum::routing::delete(unbrowse))
        .merge(super::cloud_api::routes())
        .with_state(manager)
}

/// The HTTP server iPXE talks to: the entry script's answer and the per-mount scripts.
pub fn ipxe_routes(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/ipxe/entry.ipxe", get(ipxe_entry))
        .route("/ipxe/m/{file}", get(ipxe_mount_script))
        .with_state(manager)
}

async fn ipxe_entry(
    State(m): State<Arc<Manager>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> String {
    m.entry_for(q.get("mac").map(String::as_str).unwrap_or("")).await
}

async fn ipxe_mount_script(State(m): State<Arc<Manager>>, Path(file): Path<String>) -> Result<String, ApiError> {
    let token = file.strip_suffix(".ipxe").unwrap_or(&file);
    m.script_by_token(token).await.ok_or_else(|| ApiError::not_found("no such boot script"))
}

async fn list_mounts(State(m): State<Arc<Manager>>) -> Json<Vec<MountInfo>> {
    Json(m.list().await)
}

async fn create_mount(
    State(m): State<Arc<Manager>>,
    req: Result<Json<MountRequest>, JsonRejection>,
) -> Result<Json<MountInfo>, ApiError> {
    let Json(req) = req?;
    m.create(&req, false).await.map(Json)
}

async fn get_mount(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Result<Json<MountInfo>, ApiError> {
    m.get(&id).await.map(Json)
}

async fn remove_mount(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Result<Json<MountInfo>, ApiError> {
    m.remove(&id).await.map(Json)
}

/// Starts committing a mount as a new backup (a job: `GET /v1/jobs/{id}` follows it).
async fn commit_mount(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    req: Result<Json<CommitRequest>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<super::jobs::JobInfo>), ApiError> {
    let Json(req) = req?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_commit(&id, req.name).await?)))
}

async fn browse(
    State(m): State<Arc<Manager>>,
    req: Result<Json<BrowseRequest>, JsonRejection>,
) -> Result<Json<MountInfo>, ApiError> {
    let Json(req) = req?;
    m.browse(&req.backup, req.account.as_deref()).await.map(Json)
}

async fn unbrowse(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Result<Json<MountInfo>, ApiError> {
    m.unbrowse(&id).await.map(Json)
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
