//! The control API's mount and browse routes, and the cloud ones (`cloud_api`), in one place; handlers are
//! thin and call the manager. A request body that is not the JSON a route takes is answered like every
//! other error (400, with the message in the body). Each route is registered with its documentation
//! (`daemon/openapi.rs`).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::jobs::JobInfo;
use super::mounts::Manager;
use super::openapi::{BadGateway, BadRequest, Conflict, JobRefused, NotFound, ServerError, JOB_STARTED};
use crate::api_types::{BrowseRequest, CommitRequest, Health, MountInfo, MountRequest};

/// The control API's mount, browse and cloud routes, each with its documentation.
pub fn control_routes(manager: Arc<Manager>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(list_mounts, create_mount))
        .routes(routes!(get_mount, remove_mount))
        .routes(routes!(commit_mount))
        .routes(routes!(browse))
        .routes(routes!(unbrowse))
        .merge(super::cloud_api::routes())
        .with_state(manager)
}

/// The HTTP server iPXE talks to: the entry script's answer and the per-mount scripts. Served on the
/// separate HTTP port for iPXE firmware, these are not the control API and not in its OpenAPI document.
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

/// How a mount is named in a path.
const MOUNT_KEY: &str = "The mount's id, a unique prefix of it, or its name";

/// Whether the daemon answers.
#[utoipa::path(get, path = "/v1/health", tag = "status", responses((status = 200, description = "It does", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// The live mounts.
#[utoipa::path(get, path = "/v1/mounts", tag = "mounts", responses((status = 200, description = "Every mount", body = Vec<MountInfo>)))]
async fn list_mounts(State(m): State<Arc<Manager>>) -> Json<Vec<MountInfo>> {
    Json(m.list().await)
}

/// Mounts a backup: its disks as pseudo-disks, served over iSCSI and in the FUSE view; with `boot`, made
/// ready for a VM to boot from (in AWS with `boot.cloud`).
#[utoipa::path(
    post,
    path = "/v1/mounts",
    tag = "mounts",
    request_body = MountRequest,
    responses(
        (status = 200, description = "The new mount", body = MountInfo),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = ServerError),
        (status = 502, response = BadGateway),
    )
)]
async fn create_mount(
    State(m): State<Arc<Manager>>,
    req: Result<Json<MountRequest>, JsonRejection>,
) -> Result<Json<MountInfo>, ApiError> {
    let Json(req) = req?;
    m.create(&req, false).await.map(Json)
}

/// A mount, by id or name.
#[utoipa::path(
    get,
    path = "/v1/mounts/{id}",
    tag = "mounts",
    params(("id" = String, Path, description = MOUNT_KEY)),
    responses(
        (status = 200, description = "The mount", body = MountInfo),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
async fn get_mount(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Result<Json<MountInfo>, ApiError> {
    m.get(&id).await.map(Json)
}

/// Removes a mount: its target and files go and its writes are deleted (the backup is not touched); the
/// VM of a cloud mount is terminated first.
#[utoipa::path(
    delete,
    path = "/v1/mounts/{id}",
    tag = "mounts",
    params(("id" = String, Path, description = MOUNT_KEY)),
    responses(
        (status = 200, description = "The mount as it was", body = MountInfo),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = ServerError),
        (status = 502, response = BadGateway),
    )
)]
async fn remove_mount(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Result<Json<MountInfo>, ApiError> {
    m.remove(&id).await.map(Json)
}

/// Starts committing a mount as a new backup (a job: `GET /v1/jobs/{id}` follows it).
#[utoipa::path(
    post,
    path = "/v1/mounts/{id}/commit",
    tag = "mounts",
    params(("id" = String, Path, description = MOUNT_KEY)),
    request_body = CommitRequest,
    responses((status = 202, description = JOB_STARTED, body = JobInfo), JobRefused)
)]
async fn commit_mount(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    req: Result<Json<CommitRequest>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(req) = req?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_commit(&id, req.name).await?)))
}

/// Mounts a backup read-only and its file systems on the appliance, for file recovery.
#[utoipa::path(
    post,
    path = "/v1/browse",
    tag = "browse",
    request_body = BrowseRequest,
    responses(
        (status = 200, description = "The mount, with where its file systems are", body = MountInfo),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = ServerError),
        (status = 502, response = BadGateway),
    )
)]
async fn browse(
    State(m): State<Arc<Manager>>,
    req: Result<Json<BrowseRequest>, JsonRejection>,
) -> Result<Json<MountInfo>, ApiError> {
    let Json(req) = req?;
    m.browse(&req.backup, req.account.as_deref()).await.map(Json)
}

/// Unmounts a browsed mount's file systems; a mount made by `POST /v1/browse` goes too.
#[utoipa::path(
    delete,
    path = "/v1/browse/{id}",
    tag = "browse",
    params(("id" = String, Path, description = MOUNT_KEY)),
    responses(
        (status = 200, description = "The mount as it was", body = MountInfo),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = ServerError),
    )
)]
async fn unbrowse(State(m): State<Arc<Manager>>, Path(id): Path<String>) -> Result<Json<MountInfo>, ApiError> {
    m.unbrowse(&id).await.map(Json)
}

/// The routes as a plain router, as the tests in api_tests.rs serve them.
#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
