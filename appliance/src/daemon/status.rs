//! `GET /v1/status`: the appliance at a glance, from state the daemon holds (nothing is read from disk or
//! the network, so it answers at once however busy the appliance is).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::mounts::Manager;
use crate::api_types::StatusInfo;

struct Status {
    manager: Arc<Manager>,
    started: Instant,
    library: String,
    remote_api: Option<String>,
}

pub fn routes(manager: Arc<Manager>, library: String, remote_api: Option<String>) -> OpenApiRouter {
    let status = Arc::new(Status { manager, started: Instant::now(), library, remote_api });
    OpenApiRouter::new().routes(routes!(status_now)).with_state(status)
}

/// The appliance at a glance (`livemount status`).
#[utoipa::path(get, path = "/v1/status", tag = "status", responses((status = 200, description = "The appliance now", body = StatusInfo)))]
async fn status_now(State(s): State<Arc<Status>>) -> Json<StatusInfo> {
    let m = &s.manager;
    Json(StatusInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: s.started.elapsed().as_secs(),
        library: s.library.clone(),
        portal: m.portal().advertise.clone(),
        remote_api: s.remote_api.clone(),
        mounts: m.count().await,
        iscsi_sessions: m.portal().session_count(),
        jobs_running: m.jobs().running_count(),
        chunk_cache: m.chunk_cache().map(|c| c.stats()),
    })
}
