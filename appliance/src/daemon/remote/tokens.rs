//! The bearer tokens of the remote API. A token is shown once, when it is made; the appliance keeps only its
//! SHA-256 (in `STATE_DIR/tokens.json`, written atomically), so a copy of the state folder lets nobody in.
//! Revoking takes effect on the next request.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api_types::TokenInfo;
use crate::daemon::error::ApiError;

/// Every token starts so, which makes one easy to recognise in a leaked file (and for secret scanners).
const PREFIX: &str = "lmt_";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    name: String,
    /// Hex SHA-256 of the whole token.
    sha256: String,
    created: String,
}

pub struct Tokens {
    path: PathBuf,
    records: RwLock<Vec<Record>>,
}

impl Tokens {
    /// Loads the tokens kept in `state_dir` (none when the file does not exist yet).
    pub fn open(state_dir: &Path) -> Result<Tokens, ApiError> {
        let path = state_dir.join("tokens.json");
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("{} is damaged: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(ApiError::Io { op: "read", path, source }),
        };
        Ok(Tokens { path, records: RwLock::new(records) })
    }

    /// Makes a token named `name` and gives it (the only time it is shown).
    pub fn create(&self, name: &str) -> Result<String, ApiError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
            return Err(ApiError::BadRequest(format!("{name:?} is not a token name: use letters, digits and - _ . @")));
        }
        let mut records = self.records.write().unwrap();
        if records.iter().any(|r| r.name == name) {
            return Err(ApiError::Conflict(format!("a token named {name} exists: revoke it first")));
        }
        let token = format!("{PREFIX}{}", crate::random::hex(24));
        let created =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let mut next = records.clone();
        next.push(Record { name: name.to_string(), sha256: digest(&token), created });
        self.save(&next)?;
        *records = next;
        Ok(token)
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        let records = self.records.read().unwrap();
        records.iter().map(|r| TokenInfo { name: r.name.clone(), created: r.created.clone() }).collect()
    }

    pub fn revoke(&self, name: &str) -> Result<(), ApiError> {
        let mut records = self.records.write().unwrap();
        let next: Vec<Record> = records.iter().filter(|r| r.name != name).cloned().collect();
        if next.len() == records.len() {
            return Err(ApiError::NotFound(format!("no token named {name}")));
        }
        self.save(&next)?;
        *records = next;
        Ok(())
    }

    /// The name of the token `presented` is, when it is a live one.
    pub fn check(&self, presented: &str) -> Option<String> {
        let want = digest(presented);
        let records = self.records.read().unwrap();
        // Every record is compared in constant time, so the answer's timing tells nothing of the digests.
        let mut found = None;
        for r in records.iter() {
            if bool::from(r.sha256.as_bytes().ct_eq(want.as_bytes())) {
                found = Some(r.name.clone());
            }
        }
        found
    }

    fn save(&self, records: &[Record]) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec_pretty(records).expect("token records serialize");
        // Only root reads the digests: 0600 before the rename makes the file visible.
        write_private(&self.path, &bytes).map_err(|source| ApiError::Io {
            op: "write",
            path: self.path.clone(),
            source,
        })
    }
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Writes `data` atomically and durably to `path`, readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut f = dedup::durable::AtomicFile::create(path, None)?;
    f.file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_until_revoked_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let t = tokens.create("ci").unwrap();
        assert!(t.starts_with(PREFIX));
        assert_eq!(tokens.check(&t).as_deref(), Some("ci"));
        assert_eq!(tokens.check("lmt_guess"), None);
        assert!(matches!(tokens.create("ci"), Err(ApiError::Conflict(_))));
        assert!(matches!(tokens.create("bad name"), Err(ApiError::BadRequest(_))));
        let kept = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!kept.contains(&t), "the token itself is never kept");

        let reopened = Tokens::open(dir.path()).unwrap();
        assert_eq!(reopened.check(&t).as_deref(), Some("ci"));
        reopened.revoke("ci").unwrap();
        assert_eq!(reopened.check(&t), None);
        assert!(matches!(reopened.revoke("ci"), Err(ApiError::NotFound(_))));
        assert!(Tokens::open(dir.path()).unwrap().list().is_empty());
    }
}
