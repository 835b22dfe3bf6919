//! A library in S3, shared by any number of appliances.
//!
//! ```text
//! <prefix>library.json                 settings, created once with a conditional create
//! <prefix>packs/<name>.pack, .idx      the chunk store (see `store::S3PackStore`)
//! <prefix>backups/<id>/disk<N>.index   a backup's disk indexes, written first...
//! <prefix>backups/<id>/manifest.json   ...its manifest last: a backup is listed once its manifest exists
//! <prefix>holds/<holder>               what holds a backup (a live mount on some appliance)
//! <prefix>running/<id>                 a backup in progress: its start and a lease its process renews
//! <prefix>locks/gc                     gc's lock: taken with a conditional create, with a lease
//! <prefix>gc/condemned                 while gc holds its lock: the packs its sweep would delete or rewrite
//! <prefix>gc/acks/<id>                 a backup in progress's answer: which of those it uses
//! ```
//! Nothing is rewritten in place except the leases and the answers, which only their owner writes.
//!
//! Why gc is safe without a shared lock: S3 has no lock that many writers hold at once, and a reused chunk's
//! pack cannot be marked used (objects have no times to set). So the registry and gc's lock exclude each
//! other instead. A backup registers first and then waits while gc's lock is held; gc takes its lock first
//! and then reads the registry. S3 is strongly consistent (read after write, list after write), so whichever
//! of the two writes second sees the other: a backup that starts later waits for the gc, one that started
//! earlier is in the registry. With none registered, gc sweeps. With some, it writes what it would remove
//! (`gc/condemned`) and waits until each has answered: a backup checks for that every few seconds, stops
//! reusing anything of those packs in place (it copies what it finds there) and answers with those it has
//! used already (reused from, or written), which the sweep then spares. A backup that finished meanwhile
//! has published its manifest, read again before the sweep; one that does not answer within a lease stops
//! the sweep. A process that dies stops renewing its lease; once the lease has run out its entry counts for
//! nothing, so a dead appliance never blocks gc for good. (Leases are compared with each appliance's clock:
//! keep them in time.)

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::backend::{Backend, Guard};
use crate::durable;
use crate::error::{Error, Result};
use crate::formats::LIBRARY_CONFIG_FILE;
use crate::s3::S3Objects;
use crate::store::{ChunkStore, PackName};

/// How long a registration or gc's lock lasts without being renewed; renewed every third of it. (Tests
/// shorten it with `LIVEMOUNT_TEST_LEASE_SECS`, to see what a lapsed lease does without waiting minutes.)
const LEASE_DEFAULT: Duration = Duration::from_secs(60);

fn lease_length() -> Duration {
    std::env::var("LIVEMOUNT_TEST_LEASE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(LEASE_DEFAULT, Duration::from_secs)
}
/// How often a backup looks again whether gc's lock has gone, and gc whether the backups have answered.
const LOCK_POLL: Duration = Duration::from_secs(1);
/// How often a backup in progress looks for a gc's condemnation (at most; more often with short leases).
const GC_POLL: Duration = Duration::from_secs(2);
/// What a gc condemned, and whose lock it was written under.
const CONDEMNED: &str = "gc/condemned";
const GC_LOCK: &str = "locks/gc";

pub(crate) struct S3Backend {
    objects: Arc<S3Objects>,
    /// This machine's copies of the library's disk indexes, and the backups being written.
    cache: PathBuf,
}

/// What a registration or gc's lock says of itself.
#[derive(Serialize, Deserialize)]
struct Lease {
    /// Seconds since the epoch.
    start: u64,
    until: u64,
    host: String,
    pid: u32,
}

impl Lease {
    fn new(start: u64) -> Lease {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        Lease { start, until: now_secs() + lease_length().as_secs(), host, pid: std::process::id() }
    }

    fn renewed(&self) -> Lease {
        Lease { until: now_secs() + lease_length().as_secs(), host: self.host.clone(), ..*self }
    }

    fn is_live(&self) -> bool {
        self.until > now_secs()
    }

    /// Who took it, and when: what a gc's condemnation and the answers to it name.
    fn holder(&self) -> String {
        format!("{}/{}/{}", self.host, self.pid, self.start)
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lease serializes")
    }
}

/// This machine's folder for the library in `objects`, under `cache_root`: one per bucket and prefix.
pub(crate) fn local_folder(objects: &S3Objects, cache_root: &Path) -> PathBuf {
    let url = objects.url();
    let mut folder = cache_root.join("s3").join(&url.bucket);
    for part in url.prefix.split('/').filter(|p| !p.is_empty()) {
        folder.push(part);
    }
    folder
}

/// `gc/condemned`: what the gc holding the lock `gc` (its `Lease::holder`) would delete or rewrite.
#[derive(Serialize, Deserialize)]
struct Condemnation {
    gc: String,
    packs: Vec<String>,
}

/// `gc/acks/<id>`: a backup's answer to the condemnation of gc `gc`: the condemned packs it has used.
#[derive(Serialize, Deserialize)]
struct Answer {
    gc: String,
    used: Vec<String>,
}

fn pack_names(names: &[String]) -> HashSet<PackName> {
    names.iter().filter_map(|n| PackName::parse(n)).collect()
}

/// A backup in progress's side of a sweep while it runs (see the module's notes).
struct Answering {
    id: String,
    store: Arc<dyn ChunkStore>,
    /// The gc answered last.
    answered: Option<String>,
}

impl Answering {
    /// Looks for a condemnation and answers it once.
    fn check(&mut self, objects: &S3Objects) {
        match condemnation(objects) {
            Ok(Some(c)) if self.answered.as_deref() != Some(c.gc.as_str()) => {
                // Avoided first, then answered: every use before the answer is in it, none comes after.
                let used = self.store.avoid(pack_names(&c.packs));
                let answer = Answer { gc: c.gc.clone(), used: used.iter().map(PackName::to_string).collect() };
                let object = format!("gc/acks/{}", self.id);
                match objects.put(&object, serde_json::to_vec(&answer).expect("an answer serializes")) {
                    Ok(()) => self.answered = Some(c.gc),
                    Err(e) => tracing::warn!("cannot answer the gc that condemned packs: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot look for a gc's condemnation: {e}"),
        }
    }
}

/// The condemnation in force: written by the gc that holds the lock now (one that died leaves its own).
fn condemnation(objects: &S3Objects) -> Result<Option<Condemnation>> {
    let Some(data) = objects.get(CONDEMNED)? else { return Ok(None) };
    let Ok(c) = serde_json::from_slice::<Condemnation>(&data) else { return Ok(None) };
    let lock = objects.get(GC_LOCK)?.and_then(|d| serde_json::from_slice::<Lease>(&d).ok());
    Ok(lock.filter(|l| l.is_live() && l.holder() == c.gc).map(|_| c))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl S3Backend {
    /// The backend of the library in `objects`, its local copies under `cache_root` (one folder per bucket and
    /// prefix).
    pub fn new(objects: Arc<S3Objects>, cache_root: &Path) -> Self {
        let cache = local_folder(&objects, cache_root);
        S3Backend { objects, cache }
    }

    fn read_lease(&self, name: &str) -> Result<Option<Lease>> {
        Ok(self.objects.get(name)?.and_then(|data| serde_json::from_slice(&data).ok()))
    }

    /// Writes `name` now and renews it every third of the lease until the guard is dropped, when it is
    /// removed with `also_remove`. A backup's registration also answers gc meanwhile (`answering`).
    fn keep_leased(
        &self,
        name: &str,
        lease: Lease,
        also_remove: Vec<String>,
        mut answering: Option<Answering>,
    ) -> Box<dyn Guard> {
        let (stop, stopped) = mpsc::channel::<()>();
        let (objects, object) = (self.objects.clone(), name.to_string());
        // Until when the last lease written holds (seconds since the epoch).
        let until = Arc::new(AtomicU64::new(lease.until));
        let renewed_until = until.clone();
        let renew_every = lease_length() / 3;
        let poll = if answering.is_some() { renew_every.min(GC_POLL) } else { renew_every };
        let remove = move |objects: &S3Objects| {
            for o in std::iter::once(&object).chain(&also_remove) {
                let _ = objects.delete(o);
            }
        };
        let object = name.to_string();
        let renewer = std::thread::Builder::new().name("lease".into()).spawn(move || {
            let mut renewed_at = Instant::now();
            loop {
                match stopped.recv_timeout(poll) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Some(a) = answering.as_mut() {
                            a.check(&objects);
                        }
                        if renewed_at.elapsed() < renew_every {
                            continue;
                        }
                        renewed_at = Instant::now();
                        let renewed = lease.renewed();
                        match objects.put(&object, renewed.encode()) {
                            // Renewed too late (the process was stopped, the store unreachable): it has lapsed
                            // for good, whatever is written now.
                            Ok(()) if renewed_until.load(Ordering::Acquire) <= now_secs() => {
                                tracing::warn!("the lease of {object} ran out before it was renewed");
                                renewed_until.store(0, Ordering::Release);
                                remove(&objects);
                                return;
                            }
                            Ok(()) => renewed_until.store(renewed.until, Ordering::Release),
                            Err(e) => tracing::warn!("cannot renew the lease of {object}: {e}"),
                        }
                    }
                    _ => {
                        remove(&objects);
                        return;
                    }
                }
            }
        });
        Box::new(Leased { stop: Some(stop), renewer: renewer.ok(), until })
    }

    /// The backups in progress whose lease holds; entries whose lease ran out are removed.
    fn live_registrations(&self) -> Result<Vec<String>> {
        let mut live = Vec::new();
        for o in self.objects.list("running/")? {
            match self.read_lease(&o.name)? {
                Some(lease) if lease.is_live() => live.extend(o.name.strip_prefix("running/").map(str::to_string)),
                // A backup whose process stopped renewing: gone.
                _ => self.objects.delete(&o.name)?,
            }
        }
        Ok(live)
    }

    fn local_index(&self, id: &str, index_file: &str) -> PathBuf {
        self.cache.join("indexes").join(id).join(index_file)
    }
}

/// A lease kept alive by its thread; dropping it stops the renewals and removes the object.
struct Leased {
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
    until: Arc<AtomicU64>,
}

impl Guard for Leased {
    /// Live while the last lease written has not run out (with a margin for the time its holder still
    /// needs): a process that was frozen, or could not reach the store, past its lease may have been taken
    /// for dead by a gc.
    fn is_live(&self) -> bool {
        self.until.load(Ordering::Acquire) > now_secs() + lease_length().as_secs() / 6
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
    }
}

impl Backend for S3Backend {
    fn location(&self) -> PathBuf {
        PathBuf::from(self.objects.url().to_string())
    }

    fn read_config(&self) -> Result<Option<Vec<u8>>> {
        self.objects.get(LIBRARY_CONFIG_FILE)
    }

    fn create_config(&self, data: Vec<u8>) -> Result<bool> {
        self.objects.create_new(LIBRARY_CONFIG_FILE, data)
    }

    fn backup_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .objects
            .list("backups/")?
            .into_iter()
            .filter_map(|o| o.name.strip_prefix("backups/")?.strip_suffix("/manifest.json").map(str::to_string))
            .collect())
    }

    fn read_manifest(&self, id: &str) -> Result<Option<Vec<u8>>> {
        self.objects.get(&format!("backups/{id}/manifest.json"))
    }

    fn index_file(&self, id: &str, index_file: &str) -> Result<PathBuf> {
        let local = self.local_index(id, index_file);
        if local.exists() {
            return Ok(local);
        }
        let name = format!("backups/{id}/{index_file}");
        let data = self.objects.get(&name)?.ok_or_else(|| Error::BadFormat {
            path: PathBuf::from(self.objects.url().object_url(&name)),
            reason: "the backup's disk index is missing".into(),
        })?;
        let dir = local.parent().expect("a file in a folder");
        durable::create_dir_durable(dir).map_err(|e| Error::io("create folder", dir, e))?;
        durable::write_file(&local, &data).map_err(|e| Error::io("write", &local, e))?;
        Ok(local)
    }

    fn start_backup(&self, id: &str) -> Result<PathBuf> {
        let staging = self.cache.join("staging").join(id);
        durable::create_dir_durable(&staging).map_err(|e| Error::io("create folder", &staging, e))?;
        Ok(staging)
    }

    fn publish(&self, id: &str, manifest: &[u8], staging: &Path, index_files: &[String]) -> Result<()> {
        for file in index_files {
            let path = staging.join(file);
            let data = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            self.objects.put(&format!("backups/{id}/{file}"), data)?;
        }
        self.objects.put(&format!("backups/{id}/manifest.json"), manifest.to_vec())?;
        // The indexes just written are this machine's copies from now on.
        let kept = self.cache.join("indexes").join(id);
        if let Some(parent) = kept.parent() {
            let _ = durable::create_dir_durable(parent);
        }
        if std::fs::rename(staging, &kept).is_err() {
            self.discard(staging);
        }
        Ok(())
    }

    fn discard(&self, staging: &Path) {
        let _ = std::fs::remove_dir_all(staging);
    }

    fn remove_backup(&self, id: &str) -> Result<()> {
        // The manifest first: the backup is gone in that one step; its indexes follow.
        self.objects.delete(&format!("backups/{id}/manifest.json"))?;
        for o in self.objects.list(&format!("backups/{id}/"))? {
            self.objects.delete(&o.name)?;
        }
        let _ = std::fs::remove_dir_all(self.cache.join("indexes").join(id));
        Ok(())
    }

    fn write_hold(&self, holder: &str, text: &str) -> Result<()> {
        self.objects.put(&format!("holds/{holder}"), text.as_bytes().to_vec())
    }

    fn remove_hold(&self, holder: &str) -> Result<()> {
        self.objects.delete(&format!("holds/{holder}"))
    }

    fn holds(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for o in self.objects.list("holds/")? {
            if let Some(data) = self.objects.get(&o.name)? {
                out.push(String::from_utf8_lossy(&data).into_owned());
            }
        }
        Ok(out)
    }

    fn register_running(&self, id: &str, store: Arc<dyn ChunkStore>) -> Result<Box<dyn Guard>> {
        let name = format!("running/{id}");
        let lease = Lease::new(now_secs());
        self.objects.put(&name, lease.encode())?;
        let answering = Answering { id: id.to_string(), store, answered: None };
        let registered = self.keep_leased(&name, lease, vec![format!("gc/acks/{id}")], Some(answering));
        // Registered first, then wait while a gc holds the library: a gc that took its lock before this
        // registration was written may not have seen it.
        let mut said = false;
        while let Some(gc) = self.read_lease(GC_LOCK)?.filter(Lease::is_live) {
            if !said {
                tracing::info!(
                    "waiting for the gc that {} (pid {}) runs on {}",
                    gc.host,
                    gc.pid,
                    self.location().display()
                );
                said = true;
            }
            std::thread::sleep(LOCK_POLL);
        }
        Ok(registered)
    }

    fn chunk_lock_file(&self) -> Result<Option<std::fs::File>> {
        Ok(None)
    }

    fn lock_chunks(&self) -> Result<Box<dyn Guard>> {
        let name = GC_LOCK;
        loop {
            let lease = Lease::new(now_secs());
            if self.objects.create_new(name, lease.encode())? {
                return Ok(self.keep_leased(name, lease, vec![CONDEMNED.to_string()], None));
            }
            match self.read_lease(name)? {
                Some(held) if held.is_live() => {
                    return Err(Error::LibraryBusy {
                        location: self.location().display().to_string(),
                        holder: format!("{} (pid {})", held.host, held.pid),
                    })
                }
                // Its holder stopped renewing it (or it was removed meanwhile): take it over.
                _ => self.objects.delete(name)?,
            }
        }
    }

    fn sweep_cutoff(&self, gc_start: SystemTime) -> Result<(Option<SystemTime>, u64)> {
        // Packs written since gc started are left alone; older ones that backups in progress use are spared
        // by their answers (`agree_on_sweep`).
        Ok((Some(gc_start), self.live_registrations()?.len() as u64))
    }

    fn agree_on_sweep(&self, condemned: &HashSet<PackName>) -> Result<Option<HashSet<PackName>>> {
        // Our own lock's holder names the condemnation: backups honour it only while that lock holds.
        let Some(lock) = self.read_lease(GC_LOCK)?.filter(Lease::is_live) else { return Ok(None) };
        let gc = lock.holder();
        let c = Condemnation { gc: gc.clone(), packs: condemned.iter().map(PackName::to_string).collect() };
        self.objects.put(CONDEMNED, serde_json::to_vec(&c).expect("a condemnation serializes"))?;
        let mut waiting = self.live_registrations()?;
        let deadline = Instant::now() + lease_length();
        let mut spared = HashSet::new();
        loop {
            let mut still = Vec::new();
            for id in waiting {
                let answer = self.objects.get(&format!("gc/acks/{id}"))?;
                match answer.and_then(|d| serde_json::from_slice::<Answer>(&d).ok()).filter(|a| a.gc == gc) {
                    Some(a) => spared.extend(pack_names(&a.used)),
                    // Finished (its manifest is read again before the sweep) or dead: nothing to wait for.
                    None if !self.read_lease(&format!("running/{id}"))?.is_some_and(|l| l.is_live()) => {}
                    None => still.push(id),
                }
            }
            if still.is_empty() {
                return Ok(Some(spared));
            }
            if Instant::now() >= deadline {
                tracing::warn!("no sweep: backups in progress did not answer gc in time: {}", still.join(", "));
                return Ok(None);
            }
            waiting = still;
            std::thread::sleep(LOCK_POLL);
        }
    }

    fn clean_up(&self, cutoff: SystemTime) -> Result<u64> {
        // Disk indexes of backups that never got their manifest.
        let objects = self.objects.list("backups/")?;
        let published: std::collections::HashSet<&str> =
            objects.iter().filter_map(|o| o.name.strip_prefix("backups/")?.strip_suffix("/manifest.json")).collect();
        let mut removed = 0;
        for o in &objects {
            let Some((id, _)) = o.name.strip_prefix("backups/").and_then(|rest| rest.split_once('/')) else { continue };
            if !published.contains(id) && o.modified < cutoff {
                self.objects.delete(&o.name)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
