//! The control API's cloud routes: accounts, the iPXE image, the resources this appliance made and their
//! cleanup, the account workflows (jobs). Thin: each calls `crate::cloud` with the manager's cloud state.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::ApiError;
use super::jobs::JobInfo;
use super::mounts::Manager;
use crate::api_types::{AccountCheck, AccountRequest, CleanupRequest, IpxeImageRequest};
use crate::cloud::accounts::Account;
use crate::cloud::cleanup::{self, Inventory};
use crate::cloud::images::{self, IpxeImage};

pub fn routes() -> Router<Arc<Manager>> {
    Router::new()
        .route("/v1/cloud/accounts", get(list_accounts).post(add_account))
        .route("/v1/cloud/accounts/{name}", axum::routing::delete(remove_account))
        .route("/v1/cloud/accounts/{name}/check", post(check_account))
        .route("/v1/cloud/images/ipxe", post(publish_ipxe))
        .route("/v1/cloud/resources", get(resources))
        .route("/v1/cloud/cleanup", post(cleanup))
        .route("/v1/cloud/backups", post(streaming_backup))
        .route("/v1/cloud/snapshot-backups", post(snapshot_backup))
        .route("/v1/cloud/ebs-backups", post(ebs_backup))
        .route("/v1/cloud/ebs-restores", post(ebs_restore))
        .route("/v1/cloud/snapshot-backups/{id}", axum::routing::delete(forget_snapshot_backup))
        .route("/v1/cloud/backup-copies", post(backup_copy))
        .route("/v1/cloud/restores", post(restore))
        .route("/v1/cloud/file-recoveries", post(recover_files))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
}

async fn list_accounts(State(m): State<Arc<Manager>>) -> Json<Vec<Account>> {
    Json(m.cloud().accounts.list())
}

async fn add_account(
    State(m): State<Arc<Manager>>,
    req: Result<Json<AccountRequest>, JsonRejection>,
) -> Result<Json<Account>, ApiError> {
    let Json(r) = req?;
    let account = Account { name: r.name, role_arn: Some(r.role_arn), external_id: r.external_id, region: r.region };
    m.cloud().accounts.add(account.clone())?;
    Ok(Json(account))
}

async fn remove_account(State(m): State<Arc<Manager>>, Path(name): Path<String>) -> Result<Json<Account>, ApiError> {
    let in_use = m.cloud().journal.live().into_iter().filter(|r| r.account == name).count();
    if in_use > 0 {
        return Err(ApiError::conflict(format!(
            "account {name} still holds {in_use} resource(s) this appliance made: unmount its mounts or run `livemount cloud cleanup` first"
        )));
    }
    Ok(Json(m.cloud().accounts.remove(&name)?))
}

async fn check_account(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
) -> Result<Json<AccountCheck>, ApiError> {
    let accounts = &m.cloud().accounts;
    let region = accounts.region_of(&name, None).await?;
    let (account_id, arn) = accounts.identity(&name, &region).await?;
    Ok(Json(AccountCheck { name, account_id, arn, region }))
}

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

async fn resources(State(m): State<Arc<Manager>>) -> Json<Inventory> {
    let live = m.live_ids().await;
    Json(cleanup::inventory(m.cloud(), &live).await)
}

async fn cleanup(
    State(m): State<Arc<Manager>>,
    req: Result<Json<CleanupRequest>, JsonRejection>,
) -> Result<Json<Inventory>, ApiError> {
    let Json(r) = req?;
    let live = m.live_ids().await;
    Ok(Json(cleanup::cleanup(m.cloud(), &live, r.dry_run, r.images).await?))
}

/// Starts a streaming backup; the job's id comes back at once (`GET /v1/jobs/{id}` follows it).
async fn streaming_backup(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::streaming_backup::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_streaming_backup(r)?)))
}

/// Starts a snapshot backup (a job).
async fn snapshot_backup(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::snapshot_backup::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_snapshot_backup(r)?)))
}

/// Starts a backup of an EBS snapshot through EBS direct (a job).
async fn ebs_backup(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::ebs_backup::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_ebs_backup(r)?)))
}

/// Starts restoring a backup into new EBS snapshots through EBS direct (a job).
async fn ebs_restore(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::ebs_restore::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_ebs_restore(r)?)))
}

#[derive(Debug, serde::Deserialize)]
struct ForgetQuery {
    #[serde(default)]
    force: bool,
}

/// Forgets a snapshot backup and removes its image and snapshots.
async fn forget_snapshot_backup(
    State(m): State<Arc<Manager>>,
    Path(id): Path<String>,
    Query(q): Query<ForgetQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let forgotten = m.forget_snapshot_backup(&id, q.force).await?;
    Ok(Json(serde_json::json!({ "forgotten": forgotten.id })))
}

/// Starts copying a snapshot backup into the library (a job).
async fn backup_copy(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::backup_copy::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_backup_copy(r)?)))
}

/// Starts restoring a backup into a member account (a job).
async fn restore(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::restore::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_restore(r)?)))
}

/// Starts recovering files of a backup into a bucket of the service account (a job).
async fn recover_files(
    State(m): State<Arc<Manager>>,
    req: Result<Json<crate::cloud::recover_files::Request>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<JobInfo>), ApiError> {
    let Json(r) = req?;
    m.cloud().accounts.get(&r.account)?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(m.start_recover_files(r)?)))
}

async fn list_jobs(State(m): State<Arc<Manager>>) -> Json<Vec<JobInfo>> {
    Json(m.jobs().list())
}

/// `GET /v1/jobs/{id}[?wait_ms=N]`: the job; with `wait_ms`, once it has ended or N ms (at most 10 s) have
/// passed, so that a caller following it hears of its end at once.
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

#[derive(Debug, serde::Deserialize)]
struct JobQuery {
    #[serde(default)]
    wait_ms: Option<u64>,
}
