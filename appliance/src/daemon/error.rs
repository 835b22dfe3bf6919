//! The daemon's error: what went wrong, with the cause as its source, and the HTTP status each kind maps
//! to, decided in one match (`ApiError::status`) so that a new kind cannot be added without a status.

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api_types::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No such mount, boot script, backup, ...
    #[error("{0}")]
    NotFound(String),

    /// The request clashes with the state things are in (a browsed mount, a name of several mounts, a
    /// backup without what the request needs).
    #[error("{0}")]
    Conflict(String),

    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),

    /// A file or folder of the daemon's state could not be handled; the path says which.
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tool the daemon runs (losetup, mount, ...) could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    /// A tool the daemon runs ended in failure.
    #[error("{program} failed: {stderr}")]
    CommandFailed { program: String, stderr: String },

    /// The guest of a boot mount could not be prepared.
    #[error("cannot prepare the guest on {device}: {source}")]
    Guest {
        device: String,
        #[source]
        source: image::guest::GuestError,
    },

    #[error(transparent)]
    Library(#[from] dedup::Error),

    #[error(transparent)]
    Disk(#[from] blockdev::Error),

    #[error(transparent)]
    Cloud(#[from] crate::cloud::CloudError),

    /// A fault of the daemon itself (a task that panicked).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound(message.into())
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::Internal(message.into())
    }

    /// For `map_err`: an I/O error of `op` (a verb: "create", "write") on `path`.
    pub fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ApiError {
        let path = path.to_path_buf();
        move |source| ApiError::Io { op, path, source }
    }

    /// The HTTP status of the error: 4xx when the request can be changed to succeed, 5xx when the machine
    /// or the daemon failed.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::Guest { .. } => StatusCode::CONFLICT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Io { .. } | ApiError::Spawn { .. } | ApiError::CommandFailed { .. } | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Library(e) => match e {
                dedup::Error::BackupNotFound { .. } | dedup::Error::DiskNotFound { .. } => StatusCode::NOT_FOUND,
                dedup::Error::AmbiguousBackupId { .. } | dedup::Error::NotALibrary { .. } => StatusCode::BAD_REQUEST,
                dedup::Error::BackupHeld { .. } => StatusCode::CONFLICT,
                dedup::Error::OutOfRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
                // The rest are faults of the library's files or the machine (I/O, space, damage); the enum
                // is non-exhaustive, so kinds added later land here too.
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Cloud(e) => {
                use crate::cloud::CloudError as C;
                match e {
                    C::UnknownAccount(_) | C::Missing(_) => StatusCode::NOT_FOUND,
                    C::BadRequest(_) => StatusCode::BAD_REQUEST,
                    C::Conflict(_) => StatusCode::CONFLICT,
                    // AWS refused or failed: the request may be fine, the far side is not.
                    C::AssumeRole { .. } | C::Aws { .. } | C::Timeout { .. } | C::Unfinished { .. } => {
                        StatusCode::BAD_GATEWAY
                    }
                    C::Io { .. } | C::BootDisk(_) => StatusCode::INTERNAL_SERVER_ERROR,
                }
            }
            ApiError::Disk(e) => match e {
                // Writing to a mount made read-only clashes with the mount's state.
                blockdev::Error::ReadOnly => StatusCode::CONFLICT,
                blockdev::Error::OutOfRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
                // Store and recall failures are the machine's; the enum is non-exhaustive, so kinds added
                // later land here too.
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::BadRequest(format!("the request body is not what this route takes: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::PermissionDenied)
    }

    #[test]
    fn kinds_map_to_their_status() {
        let cases: Vec<(ApiError, StatusCode)> = vec![
            (ApiError::not_found("no mount x"), StatusCode::NOT_FOUND),
            (ApiError::conflict("mount x is browsed"), StatusCode::CONFLICT),
            (ApiError::BadRequest("bad".into()), StatusCode::BAD_REQUEST),
            (ApiError::internal("task panicked"), StatusCode::INTERNAL_SERVER_ERROR),
            (ApiError::io("create", Path::new("/state/mounts/x"))(io()), StatusCode::INTERNAL_SERVER_ERROR),
            (ApiError::Spawn { command: "losetup".into(), source: io() }, StatusCode::INTERNAL_SERVER_ERROR),
            (
                ApiError::CommandFailed { program: "\"mount\"".into(), stderr: "no".into() },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (dedup::Error::BackupNotFound { id: "b".into() }.into(), StatusCode::NOT_FOUND),
            (dedup::Error::DiskNotFound { backup: "b".into(), disk: 3 }.into(), StatusCode::NOT_FOUND),
            (dedup::Error::AmbiguousBackupId { prefix: "a".into(), count: 2 }.into(), StatusCode::BAD_REQUEST),
            (dedup::Error::NotALibrary { path: "/l".into() }.into(), StatusCode::BAD_REQUEST),
            (dedup::Error::BackupHeld { id: "b".into(), holders: "m".into() }.into(), StatusCode::CONFLICT),
            (dedup::Error::OutOfRange { offset: 10, len: 1, size: 10 }.into(), StatusCode::RANGE_NOT_SATISFIABLE),
            (dedup::Error::io("read", "/l/x", io()).into(), StatusCode::INTERNAL_SERVER_ERROR),
            (blockdev::Error::ReadOnly.into(), StatusCode::CONFLICT),
            (crate::cloud::CloudError::UnknownAccount("x".into()).into(), StatusCode::NOT_FOUND),
            (
                crate::cloud::CloudError::Aws {
                    account: "m".into(),
                    action: "RunInstances",
                    code: Some("Unsupported".into()),
                    message: "no".into(),
                }
                .into(),
                StatusCode::BAD_GATEWAY,
            ),
            (blockdev::Error::OutOfRange { offset: 10, len: 1, size: 10 }.into(), StatusCode::RANGE_NOT_SATISFIABLE),
            (
                blockdev::Error::Store { op: "write", store: "private", source: io() }.into(),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(e.status(), status, "{e}");
        }
    }

    #[test]
    fn io_errors_name_their_path() {
        let e = ApiError::io("create", Path::new("/state/mounts/x"))(io());
        assert!(e.to_string().contains("/state/mounts/x"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn the_response_has_the_status() {
        let resp = ApiError::not_found("no mount x").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
