//! The control API's cloud routes: accounts, the iPXE image, the resources this appliance made and their
//! cleanup, the account workflows (jobs). Thin: each calls `crate::cloud` with the manager's cloud state.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::jobs::JobInfo;
use super::mounts::Manager;
use super::openapi::{BadGateway, BadRequest, Conflict, JobRefused, NotFound, ServerError, JOB_STARTED};
use crate::api_types::{
    AccessNodeImageRequest, AccountCheck, AccountRequest, CleanupRequest, Forgotten, IpxeImageRequest,
};
use crate::cloud::accounts::Account;
use crate::cloud::cleanup::{self, Inventory};
use crate::cloud::images::{self, IpxeImage};

pub fn routes() -> OpenApiRouter<Arc<Manager>> {
    OpenApiRouter::new()
        .routes(routes!(list_accounts, add_account))
        .routes(routes!(remove_account))
        .routes(routes!(check_account))
        .routes(routes!(publish_ipxe))
        .routes(routes!(publish_access_node))
        .routes(routes!(resources))
        .routes(routes!(cleanup))
        .routes(routes!(streaming_backup))
        .routes(routes!(snapshot_backup))
        .routes(routes!(ebs_backup))
        .routes(routes!(ebs_restore))
        .routes(routes!(forget_snapshot_backup))
        .routes(routes!(backup_copy))
        .routes(routes!(restore))
        .routes(routes!(recover_files))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
}

/// The member accounts.
#[utoipa::path(get, path = "/v1/cloud/accounts", tag = "cloud", responses((status = 200, description = "Every member account", body = Vec<Account>)))]
async fn list_accounts(State(m): State<Arc<Manager>>) -> Json<Vec<Account>> {
    Json(m.cloud().accounts.list())
}

/// Adds a member account: a role in it the appliance assumes.
#[utoipa::path(
    post,
    path = "/v1/cloud/accounts",
    tag = "cloud",
    request_body = AccountRequest,
    responses(
        (status = 200, description = "The account as recorded", body = Account),
        (status = 400, response = BadRequest),
        (status = 409, response = Conflict),
        (status = 500, response = ServerError),
    )
)]
async fn add_account(
    State(m): State<Arc<Manager>>,
    req: Result<Json<AccountRequest>, JsonRejection>,
) -> Result<Json<Account>, ApiError> {
    let Json(r) = req?;
    let account = Account { name: r.name, role_arn: Some(r.role_arn), external_id: r.external_id, region: r.region };
    m.cloud().accounts.add(account.clone())?;
    Ok(Json(account))
}

/// Removes a member account that holds nothing this appliance made.
#[utoipa::path(
    delete,
    path = "/v1/cloud/accounts/{name}",
    tag = "cloud",
    params(("name" = String, Path, description = "The account's name")),
    responses(
        (status = 200, description = "The account as it was", body = Account),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = ServerError),
    )
)]
async fn remove_account(State(m): State<Arc<Manager>>, Path(name): Path<String>) -> Result<Json<Account>, ApiError> {
    let in_use = m.cloud().journal.live().into_iter().filter(|r| r.account == name).count();
    if in_use > 0 {
        return Err(ApiError::conflict(format!(
            "account {name} still holds {in_use} resource(s) this appliance made: unmount its mounts or run `livemount cloud cleanup` first"
        )));
    }
    Ok(Json(m.cloud().accounts.remove(&name)?))
}

/// Checks that the appliance reaches an account: the identity its credentials get there.
#[utoipa::path(
    post,
    path = "/v1/cloud/accounts/{name}/check",
    tag = "cloud",
    params(("name" = String, Path, description = "The account's name, or `service`")),
    responses(
        (status = 200, description = "The identity reached", body = AccountCheck),
        (status = 404, response = NotFound),
        (status = 502, response = BadGateway),
    )
)]
async fn check_account(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
) -> Result<Json<AccountCheck>, ApiError> {
    let accounts = &m.cloud().accounts;
    let region = accounts.region_of(&name, None).await?;
    let (account_id, arn) = accounts.identity(&name, &region).await?;
    Ok(Json(AccountCheck { name, account_id, arn, region }))
}

/// Publishes the iPXE image that cloud mounts boot from, in a Region of the service account (kept when
/// it is current).
#[utoipa::path(
    post,
    path = "/v1/cloud/images/ipxe",
    tag = "cloud",
    request_body = IpxeImageRequest,
    responses(
        (status = 200, description = "The Region's image", body = IpxeImage),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 500, response = ServerError),
        (status = 502, response = BadGateway),
    )
)]
async fn publish_ipxe(
    State(m): State<Arc<Manager>>,
    req: Result<Json<IpxeImageRequest>, JsonRejection>,
) -> Result<Json<IpxeImage>, ApiError> {
    let Json(r) = req?;
    let cloud = m.cloud();
    let region = cloud.accounts.region_of(crate::cloud::accounts::SERVICE, r.region.as_deref()).await?;
    let work = cloud.dir.join("work").join(format!("ipxe-{}", crate::random::hex(4)));
    let result = images::publish_ipxe(cloud, &region, &r.share_with, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(Json(result?))
}

/// Publishes the access node's own disk image as a machine image in a Region of the service account
/// (found again, not uploaded again, when the same content was published before).
#[utoipa::path(
    post,
    path = "/v1/cloud/images/access-node",
    tag = "cloud",
    request_body = AccessNodeImageRequest,
    responses(
        (status = 200, description = "The image", body = IpxeImage),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 500, response = ServerError),
        (status = 502, response = BadGateway),
    )
)]
async fn publish_access_node(
    State(m): State<Arc<Manager>>,
    req: Result<Json<AccessNodeImageRequest>, JsonRejection>,
) -> Result<Json<IpxeImage>, ApiError> {
    let Json(r) = req?;
    let disk = std::path::Path::new(&r.disk);
    if !disk.is_file() {
        return Err(ApiError::NotFound(format!(
            "{} is not a disk image on the appliance (`livemount image appliance` makes one)",
            r.disk
        )));
    }
    let cloud = m.cloud();
    let region = cloud.accounts.region_of(crate::cloud::accounts::SERVICE, r.region.as_deref()).await?;
    Ok(Json(images::publish_access_node(cloud, &region, disk, &r.share_with).await?))
}

/// What this appliance made in AWS that may still exist, and whether each is in use.
#[utoipa::path(get, path = "/v1/cloud/resources", tag = "cloud", responses((status = 200, description = "What was found, and where looking failed", body = Inventory)))]
async fn resources(State(m): State<Arc<Manager>>) -> Json<Inventory> {
    let live = m.live_ids().await;
    Json(cleanup::inventory(m.cloud(), &live).await)
}

/// Removes what this appliance made in AWS and nothing uses.
#[utoipa::path(
    post,
    path = "/v1/cloud/cleanup",
    tag = "cloud",
    request_body = CleanupRequest,
    responses(
        (status = 200, description = "What was removed (with `dry_run`: would be)", body = Inventory),
        (status = 400, response = BadRequest),
        (status = 500, response = ServerError),
        (status = 502, response = BadGateway),
    )
)]
async fn cleanup(
    State(m): State<Arc<Manager>>,
    req: Result<Json<CleanupRequest>, JsonRejection>,
) -> Result<Json<Inventory>, ApiError> {
    let Json(r) = req?;
    let live = m.live_ids().await;
    Ok(Json(cleanup::cleanup(m.cloud(), &live, r.dry_run, r.images).await?))
}

/// Starts a streaming backup; the job's id comes back at once (`GET /v1/jobs/{id}` follows it).
#[utoipa::path(
    post,
    path = "/v1/cloud/backups",
    tag = "cloud",
    request_body = crate::cloud::streaming_backup::Request,
    responses((status = 202, description = JOB_STARTED, body = JobInfo), JobRefused)
)]
async fn streaming_backup(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::streaming_backup::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_streaming_backup(r)?)))
}

/// Starts a snapshot backup (a job).
#[utoipa::path(
    post,
    path = "/v1/cloud/snapshot-backups",
    tag = "cloud",
    request_body = crate::cloud::snapshot_backup::Request,
    responses((status = 202, description = JOB_STARTED, body = JobInfo), JobRefused)
)]
async fn snapshot_backup(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::snapshot_backup::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_snapshot_backup(r)?)))
}

/// Starts a backup of an EBS snapshot through EBS direct (a job).
#[utoipa::path(
    post,
    path = "/v1/cloud/ebs-backups",
    tag = "cloud",
    request_body = crate::cloud::ebs_backup::Request,
    responses((status = 202, description = JOB_STARTED, body = JobInfo), JobRefused)
)]
async fn ebs_backup(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::ebs_backup::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_ebs_backup(r)?)))
}

/// Starts restoring a backup into new EBS snapshots through EBS direct (a job).
#[utoipa::path(
    post,
    path = "/v1/cloud/ebs-restores",
    tag = "cloud",
    request_body = crate::cloud::ebs_restore::Request,
    responses((status = 202, description = JOB_STARTED, body = JobInfo), JobRefused)
)]
async fn ebs_restore(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::ebs_restore::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_ebs_restore(r)?)))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ForgetQuery {
    /// Forget it even while a live mount holds it.
    #[serde(default)]
    force: bool,
}

/// Forgets a snapshot backup and removes its image and snapshots.
#[utoipa::path(
    delete,
    path = "/v1/cloud/snapshot-backups/{id}",
    tag = "cloud",
    params(("id" = String, Path, description = "The snapshot backup's id, a unique prefix of it, or its name"), ForgetQuery),
    responses(
        (status = 200, description = "The backup forgotten", body = Forgotten),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = ServerError),
        (status = 502, response = BadGateway),
    )
)]
async fn forget_snapshot_backup(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Query(q): Query<ForgetQuery>,
) -> Result<Json<Forgotten>, ApiError> {
    let forgotten = m.forget_snapshot_backup(&id, q.force).await?;
    Ok(Json(Forgotten { forgotten: forgotten.id }))
}

/// Starts copying a snapshot backup into the library (a job).
#[utoipa::path(
    post,
    path = "/v1/cloud/backup-copies",
    tag = "cloud",
    request_body = crate::cloud::backup_copy::Request,
    responses((status = 202, description = JOB_STARTED, body = JobInfo), JobRefused)
)]
async fn backup_copy(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::backup_copy::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_backup_copy(r)?)))
}

/// Starts restoring a backup into a member account (a job).
#[utoipa::path(
    post,
    path = "/v1/cloud/restores",
    tag = "cloud",
    request_body = crate::cloud::restore::Request,
    responses((status = 202, description = JOB_STARTED, body = JobInfo), JobRefused)
)]
async fn restore(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::restore::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_restore(r)?)))
}

/// Starts recovering files of a backup into a bucket of the service account (a job).
#[utoipa::path(
    post,
    path = "/v1/cloud/file-recoveries",
    tag = "cloud",
    request_body = crate::cloud::recover_files::Request,
    responses((status = 202, description = JOB_STARTED, body = JobInfo), JobRefused)
)]
async fn recover_files(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::recover_files::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_recover_files(r)?)))
}

/// The jobs of this daemon (jobs do not outlive it).
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", responses((status = 200, description = "Every job", body = Vec<JobInfo>)))]
async fn list_jobs(State(m): State<Arc<Manager>>) -> Json<Vec<JobInfo>> {
    Json(m.jobs().list())
}

/// A job; with `wait_ms`, once it has ended or that many ms (at most 10 s) have passed, so that a caller
/// following it hears of its end at once.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), JobQuery),
    responses(
        (status = 200, description = "The job", body = JobInfo),
        (status = 404, response = NotFound),
    )
)]
async fn get_job(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Query(q): Query<JobQuery>,
) -> Result<Json<JobInfo>, ApiError> {
    let longest = std::time::Duration::from_millis(q.wait_ms.unwrap_or(0).min(10_000));
    m.jobs()
        .wait(&id, longest)
        .await
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job {id}; `livemount cloud jobs` lists them")))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct JobQuery {
    /// Answer once the job has ended or this many milliseconds (at most 10 000) have passed.
    #[serde(default)]
    wait_ms: Option<u64>,
}
