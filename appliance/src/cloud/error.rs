//! What can go wrong in the cloud half, each kind with what to do about it in its message.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("no cloud account {0}: `livemount cloud account list` shows the accounts, `livemount cloud account add` adds one")]
    UnknownAccount(String),

    #[error("cannot assume role {role_arn} (account {account}): {message}; the role's trust policy must allow sts:AssumeRole by the appliance's identity{external_id}")]
    AssumeRole { account: String, role_arn: String, external_id: String, message: String },

    /// An AWS call failed after the SDK's retries.
    #[error("{action} in account {account} failed: {}{message}", code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Aws { account: String, action: &'static str, code: Option<String>, message: String },

    /// Something the request names does not exist in AWS (a subnet, an image in a region).
    #[error("{0}")]
    Missing(String),

    #[error("{0}")]
    BadRequest(String),

    #[error("{0}")]
    Conflict(String),

    /// A job's work ended (`outcome`: what it made, or why it failed) but removing what it made in AWS
    /// failed: the journal still holds the rest, which `cloud cleanup` (or the next start) removes.
    #[error("{outcome}; removing what it made in AWS failed: {undo}; `livemount cloud cleanup` removes the rest")]
    Unfinished { outcome: String, undo: Box<CloudError> },

    /// A resource did not reach the state waited for.
    #[error("{what} did not become {state} within {seconds} s (last seen: {last})")]
    Timeout { what: String, state: String, seconds: u64, last: String },

    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Building the iPXE boot disk failed.
    #[error(transparent)]
    BootDisk(#[from] image::bootdisk::BootDiskError),
}

impl CloudError {
    pub fn io(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CloudError {
        let path = path.to_path_buf();
        move |source| CloudError::Io { op, path, source }
    }

    /// For `map_err` on an SDK call: the failure of `action` in `account`.
    pub fn aws<E, R>(
        account: &str,
        action: &'static str,
    ) -> impl FnOnce(aws_smithy_runtime_api::client::result::SdkError<E, R>) -> CloudError
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let account = account.to_string();
        move |e| {
            let (code, message) = super::sdk::describe(&e);
            CloudError::Aws { account, action, code, message }
        }
    }

    /// The AWS error code, when the failure was AWS answering with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Aws { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}
