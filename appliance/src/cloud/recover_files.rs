//! Agentless file recovery (`livemount cloud recover-files`): files of a backup, found in its browsed
//! file systems, uploaded into a bucket of the service account under one prefix, with their mode, owner
//! and modification time as object metadata; then the member account may read that prefix (a statement
//! of the bucket policy), and the caller gets the `s3://` addresses and, when asked, presigned URLs.
//! Nothing runs in the member's instances. A job that fails or dies takes back what it uploaded and
//! granted; one that succeeds hands the objects and the grant over to their users.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use serde::{Deserialize, Serialize};

use super::journal::{Kind, Resource};
use super::s3_objects;
use super::workflow::{Made, Report, Workflow};
use super::{accounts::SERVICE, sdk, Cloud, CloudError};
use crate::api_types::BrowsedFs;

/// Presigned URLs live at most this long (SigV4 query signing allows 7 days).
pub const MAX_PRESIGN_SECONDS: u64 = 7 * 24 * 3600;
/// S3 keys are at most 1,024 bytes.
const MAX_KEY: usize = 1024;
/// Files uploading at once (each large one in parts of its own).
const FILES_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = RecoverFilesRequest)]
pub struct Request {
    pub backup: String,
    /// Paths as the guest has them (`/etc/hostname`), or within one file system (`disk0p1:/etc`). A
    /// directory is recovered with everything under it.
    pub paths: Vec<String>,
    /// The member account that may read what is recovered.
    pub account: String,
    /// A bucket of the service account, in the member account's Region.
    pub bucket: String,
    /// Where under the bucket (default `recovered/BACKUP-ID`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Presigned GET URLs valid this long, when given.
    #[serde(default)]
    pub presign_seconds: Option<u64>,
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recovered {
    pub backup: String,
    pub account: String,
    pub account_id: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub files: Vec<RecoveredFile>,
    /// What was found but not uploaded (symbolic links and special files inside directories), and why.
    pub skipped: Vec<Skipped>,
    pub bytes: u64,
    pub seconds: f64,
    /// The bucket-policy statement that lets the member account read the prefix.
    pub statement: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveredFile {
    /// The file's path in the guest.
    pub path: String,
    pub url: String,
    pub size: u64,
    /// Permission bits, in octal.
    pub mode: String,
    pub mtime: String,
    #[serde(default)]
    pub presigned_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub why: String,
}

/// Where the files go, checked before the backup is browsed.
pub struct Target {
    region: String,
    member_id: String,
    s3: aws_sdk_s3::Client,
    prefix: String,
}

/// Checks the request against AWS: the member account, the bucket and its Region.
pub async fn prepare(cloud: &Cloud, backup_id: &str, req: &Request) -> Result<Target, CloudError> {
    if req.paths.is_empty() {
        return Err(CloudError::BadRequest("name at least one file or folder of the backup to recover".into()));
    }
    if let Some(p) = req.paths.iter().find(|p| guest_path(p).is_none()) {
        return Err(CloudError::BadRequest(format!(
            "{p}: give a path as the guest has it, from its root (/etc/hostname), or within one file system (disk0p1:/etc/hostname)"
        )));
    }
    if req.presign_seconds.is_some_and(|s| s == 0 || s > MAX_PRESIGN_SECONDS) {
        return Err(CloudError::BadRequest(format!(
            "a presigned URL lives from 1 s to 7 days ({MAX_PRESIGN_SECONDS} s)"
        )));
    }
    let prefix = req.prefix.clone().unwrap_or_else(|| format!("recovered/{backup_id}"));
    let prefix = prefix.trim_matches('/').to_string();
    if prefix.is_empty() {
        return Err(CloudError::BadRequest("--prefix must name a folder of the bucket".into()));
    }
    let region = cloud.accounts.region_of(&req.account, req.region.as_deref()).await?;
    let member_id = cloud.accounts.account_id(&req.account, &region).await?;
    let s3 = sdk::s3(&cloud.accounts.config(SERVICE, &region, "files").await?);
    let bucket_region = s3_objects::bucket_region(&s3, &req.bucket).await?;
    if bucket_region != region {
        return Err(CloudError::BadRequest(format!(
            "bucket {} is in {bucket_region}, account {} works in {region}: name a bucket in {region} (files would cross Regions)",
            req.bucket, req.account
        )));
    }
    Ok(Target { region, member_id, s3, prefix })
}

/// One file to upload.
struct LocalFile {
    guest: String,
    host: PathBuf,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
}

/// Uploads the files `req` names from the browsed file systems `fss` of backup `backup_id`, grants the
/// member account read, and hands both over. `job_id` names what the job makes.
pub async fn run(
    cloud: &Cloud,
    job_id: &str,
    backup_id: &str,
    fss: Vec<BrowsedFs>,
    req: &Request,
    target: Target,
    report: Arc<dyn Report>,
) -> Result<Recovered, CloudError> {
    let started = Instant::now();
    let flow = Workflow::new(cloud, job_id, &req.account, Some(&target.region)).await?;
    report.step("finding the files in the backup");
    let paths = req.paths.clone();
    let backup = backup_id.to_string();
    let (files, skipped) = tokio::task::spawn_blocking(move || find_files(&fss, &paths, &backup))
        .await
        .map_err(|e| CloudError::Conflict(format!("finding the files stopped: {e}")))??;
    let mut made = Made::default();
    let result = upload_and_grant(&flow, backup_id, req, &target, files, skipped, &mut made, report).await;
    let result = match result {
        Ok(r) => flow.hand_over(&mut made).await.map(|()| r),
        Err(e) => Err(e),
    };
    let recovered = flow.finish(result, &made, &flow.purpose, |r| format!("{} files recovered", r.files.len())).await?;
    Ok(Recovered { seconds: started.elapsed().as_secs_f64(), ..recovered })
}

#[allow(clippy::too_many_arguments)]
async fn upload_and_grant(
    flow: &Workflow<'_>,
    backup_id: &str,
    req: &Request,
    target: &Target,
    files: Vec<LocalFile>,
    skipped: Vec<Skipped>,
    made: &mut Made,
    report: Arc<dyn Report>,
) -> Result<Recovered, CloudError> {
    let (s3, bucket, region) = (&target.s3, req.bucket.as_str(), target.region.as_str());
    let key_of = |f: &LocalFile| format!("{}{}", target.prefix, f.guest);
    let mut keys = BTreeSet::new();
    for f in &files {
        let key = key_of(f);
        if key.len() > MAX_KEY {
            return Err(CloudError::BadRequest(format!(
                "{}: its S3 key would be longer than {MAX_KEY} bytes",
                f.guest
            )));
        }
        if !keys.insert(key.clone()) {
            return Err(CloudError::BadRequest(format!("{} is named twice (in two file systems?)", f.guest)));
        }
        if s3_objects::exists(s3, bucket, &key).await? {
            return Err(CloudError::Conflict(format!(
                "s3://{bucket}/{key} exists already: recover into another --prefix, or remove it first"
            )));
        }
    }
    // Every object is journaled (its id is its address) before any upload starts.
    for (n, f) in files.iter().enumerate() {
        let token = format!("{}-object-{n}", flow.job_id);
        let id = s3_objects::object_id(bucket, &key_of(f));
        flow.cloud.journal.intent(&Resource::planned(Kind::Object, SERVICE, region, &flow.purpose, &token))?;
        flow.cloud.journal.made(&token, &id)?;
        made.add(Kind::Object, false, &token, &id);
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    report.step(&format!("uploading {} file(s) to s3://{bucket}/{}/", files.len(), target.prefix));
    report.bytes(0, total);
    let done = Arc::new(AtomicU64::new(0));
    let progress = report.clone();
    let sent: Arc<dyn Fn(u64) + Send + Sync> = {
        let done = done.clone();
        Arc::new(move |n| progress.bytes(done.fetch_add(n, Ordering::Relaxed) + n, total))
    };
    let mut running = tokio::task::JoinSet::new();
    let mut queue = files.iter();
    let mut failed = None;
    // The first failure starts no more uploads; those in flight are waited for, so that the undo comes
    // after every one of them.
    loop {
        while running.len() < FILES_IN_FLIGHT && failed.is_none() {
            let Some(f) = queue.next() else { break };
            let (s3, bucket, key, host, size) = (s3.clone(), bucket.to_string(), key_of(f), f.host.clone(), f.size);
            let (metadata, sent) = (metadata_of(f, backup_id), sent.clone());
            running.spawn(async move { s3_objects::upload(&s3, &bucket, &key, &host, size, metadata, sent).await });
        }
        let Some(joined) = running.join_next().await else { break };
        match joined.map_err(|e| CloudError::Conflict(format!("an upload stopped: {e}"))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let mut recovered = Vec::new();
    for f in &files {
        let key = key_of(f);
        let presigned_url = match req.presign_seconds {
            Some(s) => Some(presign(s3, bucket, &key, s).await?),
            None => None,
        };
        recovered.push(RecoveredFile {
            path: f.guest.clone(),
            url: format!("s3://{bucket}/{key}"),
            size: f.size,
            mode: format!("{:04o}", f.mode & 0o7777),
            mtime: mtime_text(f.mtime),
            presigned_url,
        });
    }
    report.step(&format!("letting account {} ({}) read the files", req.account, target.member_id));
    let sid = s3_objects::grant_sid(&target.member_id, &target.prefix);
    let token = format!("{}-grant", flow.job_id);
    let id = s3_objects::grant_id(bucket, &sid);
    let journal = &flow.cloud.journal;
    let added = s3_objects::grant_read(s3, bucket, &target.prefix, &target.member_id, region, || {
        journal.intent(&Resource::planned(Kind::Grant, SERVICE, region, &flow.purpose, &token))?;
        journal.made(&token, &id)
    })
    .await?;
    if added {
        made.add(Kind::Grant, false, &token, &id);
    }
    Ok(Recovered {
        backup: backup_id.to_string(),
        account: req.account.clone(),
        account_id: target.member_id.clone(),
        region: region.to_string(),
        bucket: bucket.to_string(),
        prefix: target.prefix.clone(),
        files: recovered,
        skipped,
        bytes: total,
        seconds: 0.0,
        statement: sid,
    })
}

async fn presign(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, seconds: u64) -> Result<String, CloudError> {
    let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(seconds))
        .map_err(|e| CloudError::BadRequest(format!("cannot presign for {seconds} s: {e}")))?;
    let signed = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(config)
        .await
        .map_err(CloudError::aws(SERVICE, "GetObject (presign)"))?;
    Ok(signed.uri().to_string())
}

/// What S3 keeps of a file besides its bytes (user metadata, `x-amz-meta-*`).
fn metadata_of(f: &LocalFile, backup_id: &str) -> HashMap<String, String> {
    HashMap::from([
        ("mode".to_string(), format!("{:04o}", f.mode & 0o7777)),
        ("uid".to_string(), f.uid.to_string()),
        ("gid".to_string(), f.gid.to_string()),
        ("mtime".to_string(), mtime_text(f.mtime)),
        ("livemount-backup".to_string(), backup_id.to_string()),
    ])
}

/// Seconds since the epoch with nanoseconds, as `1733350000.123456789`.
fn mtime_text((secs, nanos): (i64, i64)) -> String {
    format!("{secs}.{nanos:09}")
}

/// The guest path of a requested path: (file system name if given, absolute path).
fn guest_path(p: &str) -> Option<(Option<&str>, &str)> {
    let (fs, path) = match p.split_once(":/") {
        Some((fs, _)) if fs.starts_with("disk") && !fs.contains('/') => (Some(fs), &p[fs.len() + 1..]),
        _ => (None, p),
    };
    (path.starts_with('/') && !path.split('/').any(|c| c == "..")).then_some((fs, path))
}

fn fs_name(fs: &BrowsedFs) -> String {
    format!("disk{}p{}", fs.disk, fs.partition)
}

/// Finds each requested path in the file systems (a directory: every regular file under it).
fn find_files(
    fss: &[BrowsedFs],
    paths: &[String],
    backup_id: &str,
) -> Result<(Vec<LocalFile>, Vec<Skipped>), CloudError> {
    let (mut files, mut skipped) = (Vec::new(), Vec::new());
    for p in paths {
        let (only, path) = guest_path(p).ok_or_else(|| CloudError::BadRequest(format!("{p}: not a path")))?;
        let candidates: Vec<&BrowsedFs> = fss.iter().filter(|f| only.is_none_or(|o| o == fs_name(f))).collect();
        if candidates.is_empty() {
            let names: Vec<String> = fss.iter().map(fs_name).collect();
            return Err(CloudError::BadRequest(format!(
                "backup {backup_id} has no file system {}: it has {}",
                only.unwrap_or_default(),
                names.join(", ")
            )));
        }
        let mut found = Vec::new();
        for fs in &candidates {
            if let Some(host) = resolve_in(Path::new(&fs.path), path)? {
                found.push((fs, host));
            }
        }
        let (_, host) = match found.len() {
            1 => found.remove(0),
            0 => {
                let looked: Vec<String> = candidates.iter().map(|f| format!("{} ({})", fs_name(f), f.fstype)).collect();
                return Err(CloudError::Missing(format!(
                    "{p} is not in backup {backup_id} (looked in {})",
                    looked.join(", ")
                )));
            }
            _ => {
                let names: Vec<String> = found.iter().map(|(f, _)| fs_name(f)).collect();
                return Err(CloudError::BadRequest(format!(
                    "{p} is in more than one file system of backup {backup_id} ({}): name one, as {}:{path}",
                    names.join(", "),
                    names[0]
                )));
            }
        };
        collect(&host, path.trim_end_matches('/'), true, &mut files, &mut skipped)?;
    }
    Ok((files, skipped))
}

/// The host path of `path` inside the file system mounted at `root`, symbolic links resolved as the
/// guest would (inside its root: an absolute link never leads out of the backup); None when absent.
fn resolve_in(root: &Path, path: &str) -> Result<Option<PathBuf>, CloudError> {
    let dir = std::fs::File::open(root).map_err(CloudError::io("open", root))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match nix::fcntl::openat2(dir.as_raw_fd(), path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(CloudError::io("look up", &root.join(path.trim_start_matches('/')))(e.into())),
    };
    // SAFETY: openat2 just returned this descriptor, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let host = std::fs::read_link(&link).map_err(CloudError::io("read", &link))?;
    Ok(Some(host))
}

/// Adds the file at `host` (guest path `guest`), or every regular file under it when it is a directory.
/// Inside directories symbolic links are not followed (they are listed as skipped).
fn collect(
    host: &Path,
    guest: &str,
    asked: bool,
    files: &mut Vec<LocalFile>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), CloudError> {
    let meta = std::fs::symlink_metadata(host).map_err(CloudError::io("stat", host))?;
    let kind = meta.file_type();
    if kind.is_file() {
        files.push(LocalFile {
            guest: guest.to_string(),
            host: host.to_path_buf(),
            size: meta.len(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        });
    } else if kind.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(host)
            .map_err(CloudError::io("list", host))?
            .collect::<Result<_, _>>()
            .map_err(CloudError::io("list", host))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                let why = "its name is not UTF-8, which an S3 key must be".to_string();
                skipped.push(Skipped { path: format!("{guest}/{}", e.file_name().to_string_lossy()), why });
                continue;
            };
            collect(&e.path(), &format!("{guest}/{name}"), false, files, skipped)?;
        }
    } else if asked {
        return Err(CloudError::BadRequest(format!("{guest} is not a file or a folder")));
    } else {
        let why = if kind.is_symlink() {
            let target = std::fs::read_link(host).map(|t| t.display().to_string()).unwrap_or_default();
            format!("a symbolic link (to {target}); name its target to recover it")
        } else {
            "not a regular file".to_string()
        };
        skipped.push(Skipped { path: guest.to_string(), why });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_guest_paths_optionally_in_one_file_system() {
        assert_eq!(guest_path("/etc/hostname"), Some((None, "/etc/hostname")));
        assert_eq!(guest_path("disk0p1:/etc"), Some((Some("disk0p1"), "/etc")));
        assert_eq!(guest_path("etc/hostname"), None);
        assert_eq!(guest_path("/etc/../../x"), None);
        assert_eq!(guest_path("/a:/b"), Some((None, "/a:/b")));
    }

    #[test]
    fn a_link_never_leads_out_of_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), b"guest\n").unwrap();
        std::fs::write(dir.path().join("outside"), b"host secret").unwrap();
        // An absolute link, as guests have them: it means the guest's /etc/hostname, not the host's.
        std::os::unix::fs::symlink("/etc/hostname", root.join("name")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("etc/up")).unwrap();
        let name = resolve_in(&root, "/name").unwrap().unwrap();
        assert_eq!(std::fs::read(name).unwrap(), b"guest\n");
        assert_eq!(resolve_in(&root, "/etc/up").unwrap(), None, "../.. stops at the backup's root");
        assert_eq!(resolve_in(&root, "/nothing").unwrap(), None);
    }

    #[test]
    fn a_folder_gives_its_files_and_lists_its_links_as_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d/sub")).unwrap();
        std::fs::write(dir.path().join("d/a"), b"1").unwrap();
        std::fs::write(dir.path().join("d/sub/b"), b"22").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("d/link")).unwrap();
        let (mut files, mut skipped) = (Vec::new(), Vec::new());
        collect(&dir.path().join("d"), "/d", true, &mut files, &mut skipped).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.guest.as_str()).collect();
        assert_eq!(names, ["/d/a", "/d/sub/b"]);
        assert_eq!(files[1].size, 2);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, "/d/link");
    }
}
