//! The daemon's error: a message for the person and the HTTP status it maps to, in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api_types::ErrorBody;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, message: message.into() }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::CONFLICT, message: message.into() }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }
}

impl From<dedup::Error> for ApiError {
    fn from(e: dedup::Error) -> Self {
        let status = match &e {
            dedup::Error::BackupNotFound { .. } | dedup::Error::DiskNotFound { .. } => StatusCode::NOT_FOUND,
            dedup::Error::AmbiguousBackupId { .. } | dedup::Error::NotALibrary { .. } => StatusCode::BAD_REQUEST,
            dedup::Error::BackupHeld { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, message: e.to_string() }
    }
}

impl From<blockdev::Error> for ApiError {
    fn from(e: blockdev::Error) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody { error: self.message })).into_response()
    }
}
