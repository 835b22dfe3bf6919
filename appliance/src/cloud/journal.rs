//! The journal of cloud resources: every resource the appliance makes is written down, durably, before
//! the call that makes it (its kind, account, Region, what it is for and the client token that makes the
//! call idempotent), again when the call returned its id, and once more when it is gone. After a crash
//! the daemon reads the journal back and knows exactly what may exist: a resource whose intent is
//! recorded but whose id is not may or may not have been made, and is found by its client token or tags.
//!
//! `<state>/cloud/journal.jsonl` holds one JSON record per line, appended and fsynced one at a time; a
//! torn last line (a crash while appending) is ignored. The file is rewritten (atomically) without the
//! resources that are gone when it has grown long.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::error::CloudError;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Instance,
    Image,
    Snapshot,
    Volume,
    /// A snapshot's create-volume permission given to the service account (id: the snapshot's): kept
    /// snapshots a job shares must not stay shared after it.
    Share,
    /// An object in a bucket of the service account (id: `BUCKET/KEY`, known before it exists).
    Object,
    /// A bucket-policy statement letting a member account read objects (id: `BUCKET/SID`).
    Grant,
}

impl Kind {
    /// Whether it is an S3 resource (an object or a grant) rather than an EC2 one.
    pub fn is_s3(self) -> bool {
        matches!(self, Kind::Object | Kind::Grant)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Instance => "instance",
            Kind::Image => "image",
            Kind::Snapshot => "snapshot",
            Kind::Volume => "volume",
            Kind::Share => "share",
            Kind::Object => "object",
            Kind::Grant => "grant",
        })
    }
}

/// What a resource is for: a live mount (gone with it), the appliance's iPXE image (kept), a job such
/// as a streaming backup (gone when the job ends; a job does not outlive its daemon), or a backup whose
/// data it holds (a snapshot backup's image and snapshots: kept while the library lists the backup).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "for", content = "id")]
pub enum Purpose {
    Mount(String),
    IpxeImage(String),
    /// The access node's own image, by the BLAKE3 of its disk.
    AccessNodeImage(String),
    Job(String),
    Backup(String),
}

impl Purpose {
    /// The mount, job or backup id, or an image's content hash.
    pub fn id(&self) -> &str {
        match self {
            Purpose::Mount(id)
            | Purpose::IpxeImage(id)
            | Purpose::AccessNodeImage(id)
            | Purpose::Job(id)
            | Purpose::Backup(id) => id,
        }
    }
}

/// One resource as the journal knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    pub account: String,
    pub region: String,
    pub purpose: Purpose,
    /// The client token of the call that makes it (unique per resource; the journal's key).
    pub token: String,
    /// Its AWS id, once the call that made it returned.
    pub id: Option<String>,
}

impl Resource {
    /// A resource about to be made (no id yet): what the journal records as an intent.
    pub fn planned(kind: Kind, account: &str, region: &str, purpose: &Purpose, token: &str) -> Resource {
        Resource {
            kind,
            account: account.into(),
            region: region.into(),
            purpose: purpose.clone(),
            token: token.into(),
            id: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
enum Record {
    /// About to make it.
    Intent { at: String, resource: Resource },
    /// Made: its id.
    Made { at: String, token: String, id: String },
    /// Gone (deleted, terminated, or never made).
    Gone { at: String, token: String },
}

/// Rewrite the file once it holds this many more records than live resources.
const COMPACT_AFTER: usize = 256;

pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    live: BTreeMap<String, Resource>,
    records: usize,
}

impl Journal {
    pub fn open(cloud_dir: &Path) -> Result<Journal, CloudError> {
        let path = cloud_dir.join("journal.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(CloudError::io("read", &path)(e)),
        };
        // A crash while appending leaves a last line without its newline: cut it off, so that the next
        // record starts a line of its own.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            let f = std::fs::OpenOptions::new().write(true).open(&path).map_err(CloudError::io("open", &path))?;
            f.set_len(whole as u64).and_then(|()| f.sync_data()).map_err(CloudError::io("truncate", &path))?;
        }
        let text = &text[..whole];
        let mut live = BTreeMap::new();
        let mut records = 0;
        for line in text.lines() {
            // A line that does not parse is the torn tail of a crash during an append.
            let Ok(record) = serde_json::from_str::<Record>(line) else { continue };
            records += 1;
            apply(&mut live, record);
        }
        Ok(Journal { path, inner: Mutex::new(Inner { live, records }) })
    }

    /// Records that `resource` is about to be made. Call before the call that makes it.
    pub fn intent(&self, resource: &Resource) -> Result<(), CloudError> {
        self.append(Record::Intent { at: now(), resource: Resource { id: None, ..resource.clone() } })
    }

    /// Records the id the call that made the resource of `token` returned.
    pub fn made(&self, token: &str, id: &str) -> Result<(), CloudError> {
        self.append(Record::Made { at: now(), token: token.to_string(), id: id.to_string() })
    }

    /// Records that the resource of `token` no longer exists (or never came to be).
    pub fn gone(&self, token: &str) -> Result<(), CloudError> {
        if !self.inner.lock().expect("not poisoned").live.contains_key(token) {
            return Ok(());
        }
        self.append(Record::Gone { at: now(), token: token.to_string() })
    }

    /// The resources that may exist, in token order.
    pub fn live(&self) -> Vec<Resource> {
        self.inner.lock().expect("not poisoned").live.values().cloned().collect()
    }

    pub fn get(&self, token: &str) -> Option<Resource> {
        self.inner.lock().expect("not poisoned").live.get(token).cloned()
    }

    fn append(&self, record: Record) -> Result<(), CloudError> {
        let mut inner = self.inner.lock().expect("not poisoned");
        let mut line = serde_json::to_vec(&record).expect("records are plain data");
        line.push(b'\n');
        let new_file = !self.path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(CloudError::io("open", &self.path))?;
        f.write_all(&line).and_then(|()| f.sync_data()).map_err(CloudError::io("append to", &self.path))?;
        if new_file {
            if let Some(dir) = self.path.parent() {
                dedup::durable::sync_dir(dir).map_err(CloudError::io("sync", dir))?;
            }
        }
        inner.records += 1;
        apply(&mut inner.live, record);
        if inner.records > inner.live.len() + COMPACT_AFTER {
            self.compact(&mut inner)?;
        }
        Ok(())
    }

    /// Rewrites the file with only the live resources (their intent and, when known, their id).
    fn compact(&self, inner: &mut Inner) -> Result<(), CloudError> {
        let mut out = Vec::new();
        let mut records = 0;
        for r in inner.live.values() {
            let mut push = |rec: &Record| {
                out.extend(serde_json::to_vec(rec).expect("plain data"));
                out.push(b'\n');
                records += 1;
            };
            push(&Record::Intent { at: now(), resource: Resource { id: None, ..r.clone() } });
            if let Some(id) = &r.id {
                push(&Record::Made { at: now(), token: r.token.clone(), id: id.clone() });
            }
        }
        dedup::durable::write_file(&self.path, &out).map_err(CloudError::io("rewrite", &self.path))?;
        inner.records = records;
        Ok(())
    }
}

fn apply(live: &mut BTreeMap<String, Resource>, record: Record) {
    match record {
        Record::Intent { resource, .. } => {
            live.entry(resource.token.clone()).or_insert(resource);
        }
        Record::Made { token, id, .. } => {
            if let Some(r) = live.get_mut(&token) {
                r.id = Some(id);
            }
        }
        Record::Gone { token, .. } => {
            live.remove(&token);
        }
    }
}

fn now() -> String {
    dedup::library::now_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(token: &str) -> Resource {
        Resource {
            kind: Kind::Instance,
            account: "member".into(),
            region: "us-east-1".into(),
            purpose: Purpose::Mount("m1".into()),
            token: token.into(),
            id: None,
        }
    }

    #[test]
    fn what_was_recorded_comes_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.intent(&instance("t1")).unwrap();
        j.intent(&instance("t2")).unwrap();
        j.made("t1", "i-1").unwrap();
        j.gone("t2").unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let live = j.live();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].id.as_deref(), Some("i-1"));
        assert_eq!(live[0].purpose, Purpose::Mount("m1".into()));
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.intent(&instance("t1")).unwrap();
        drop(j);
        let path = dir.path().join("journal.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"event\":\"made\",\"at\":\"x\",\"tok");
        std::fs::write(&path, text).unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.live().len(), 1);
        assert_eq!(j.live()[0].id, None, "the torn record did not count");
        j.made("t1", "i-9").unwrap();
        assert_eq!(Journal::open(dir.path()).unwrap().live()[0].id.as_deref(), Some("i-9"));
    }

    #[test]
    fn a_long_journal_is_compacted_to_what_lives() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.intent(&instance("keep")).unwrap();
        j.made("keep", "i-keep").unwrap();
        for n in 0..400 {
            let t = format!("t{n}");
            j.intent(&instance(&t)).unwrap();
            j.gone(&t).unwrap();
        }
        let lines = std::fs::read_to_string(dir.path().join("journal.jsonl")).unwrap().lines().count();
        assert!(lines < COMPACT_AFTER + 10, "{lines} lines");
        let live = Journal::open(dir.path()).unwrap().live();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].id.as_deref(), Some("i-keep"));
    }
}
