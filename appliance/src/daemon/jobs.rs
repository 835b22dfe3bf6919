//! Jobs: work the daemon does in the background for a caller that follows it (a streaming backup). Each
//! has an id, a step, bytes done out of a total, and in the end a result or an error. Jobs live in memory:
//! a job does not outlive its daemon, and what a dead job made in AWS is removed at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobInfo {
    pub id: String,
    pub kind: String,
    /// "running", "succeeded" or "failed".
    pub state: String,
    pub step: String,
    pub done: u64,
    pub total: u64,
    pub started: String,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
}

pub struct Job {
    info: Mutex<JobInfo>,
    /// Other ids whose cloud resources are the job's while it runs (the snapshot backup it is making).
    owns: Mutex<Vec<String>>,
    /// Wakes the callers waiting for the job to end (`Jobs::wait`).
    ended: tokio::sync::Notify,
}

impl Job {
    pub fn info(&self) -> JobInfo {
        self.info.lock().expect("not poisoned").clone()
    }

    pub fn id(&self) -> String {
        self.info.lock().expect("not poisoned").id.clone()
    }

    /// Makes what carries `id` (a backup being made) the job's while it runs.
    pub fn own(&self, id: &str) {
        self.owns.lock().expect("not poisoned").push(id.to_string());
    }

    fn finish(&self, outcome: Result<serde_json::Value, String>) {
        let mut info = self.info.lock().expect("not poisoned");
        match outcome {
            Ok(v) => {
                info.state = "succeeded".into();
                info.result = Some(v);
                info.step = "done".into();
            }
            Err(e) => {
                info.state = "failed".into();
                info.error = Some(e);
            }
        }
        drop(info);
        self.ended.notify_waiters();
    }
}

impl crate::cloud::workflow::Report for Job {
    fn step(&self, what: &str) {
        tracing::info!(job = %self.id(), "{what}");
        self.info.lock().expect("not poisoned").step = what.to_string();
    }

    fn bytes(&self, done: u64, total: u64) {
        let mut info = self.info.lock().expect("not poisoned");
        info.done = done;
        info.total = total;
    }
}

/// At most this many finished jobs are kept for their callers to read.
const KEEP_FINISHED: usize = 64;

#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
}

impl Jobs {
    /// Starts `work` as a new job of `kind`; gives the job at once.
    pub fn start<F, Fut>(&self, kind: &str, work: F) -> Arc<Job>
    where
        F: FnOnce(Arc<Job>) -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, String>> + Send + 'static,
    {
        let id = format!("job-{}", crate::random::hex(6));
        let job = Arc::new(Job {
            info: Mutex::new(JobInfo {
                id: id.clone(),
                kind: kind.to_string(),
                state: "running".into(),
                step: "starting".into(),
                done: 0,
                total: 0,
                started: dedup::library::now_rfc3339(),
                result: None,
                error: None,
            }),
            owns: Mutex::new(Vec::new()),
            ended: tokio::sync::Notify::new(),
        });
        {
            let mut jobs = self.jobs.lock().expect("not poisoned");
            let finished: Vec<String> =
                jobs.iter().filter(|(_, j)| j.info().state != "running").map(|(id, _)| id.clone()).collect();
            for old in finished.iter().take(finished.len().saturating_sub(KEEP_FINISHED)) {
                jobs.remove(old);
            }
            jobs.insert(id, job.clone());
        }
        let fut = work(job.clone());
        let running = job.clone();
        tokio::spawn(async move {
            let outcome = fut.await;
            if let Err(e) = &outcome {
                tracing::warn!(job = %running.id(), "failed: {e}");
            }
            running.finish(outcome);
        });
        job
    }

    /// The job once it has ended or `longest` has passed, whichever comes first: a caller following a
    /// job learns that it ended at once, not at its next look.
    pub async fn wait(&self, id: &str, longest: std::time::Duration) -> Option<JobInfo> {
        let job = self.jobs.lock().expect("not poisoned").get(id).cloned()?;
        let ended = job.ended.notified();
        tokio::pin!(ended);
        // Registered before the state is read, so an end between the two is not missed.
        ended.as_mut().enable();
        if job.info().state == "running" {
            let _ = tokio::time::timeout(longest, ended).await;
        }
        Some(job.info())
    }

    pub fn list(&self) -> Vec<JobInfo> {
        self.jobs.lock().expect("not poisoned").values().map(|j| j.info()).collect()
    }

    /// How many jobs are running.
    pub fn running_count(&self) -> usize {
        self.jobs.lock().expect("not poisoned").values().filter(|j| j.info().state == "running").count()
    }

    /// The ids of the jobs still running, and the ids they own.
    pub fn running(&self) -> BTreeSet<String> {
        let jobs = self.jobs.lock().expect("not poisoned");
        let mut ids = BTreeSet::new();
        for j in jobs.values().filter(|j| j.info().state == "running") {
            ids.insert(j.id());
            ids.extend(j.owns.lock().expect("not poisoned").iter().cloned());
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_waiting_caller_learns_at_once_that_the_job_ended() {
        let jobs = Jobs::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let job = jobs.start("test", |_| async move {
            let _ = rx.await;
            Ok(serde_json::json!("made"))
        });
        let id = job.id();
        // Still running: the wait ends when its time is up.
        let started = Instant::now();
        let info = jobs.wait(&id, Duration::from_millis(50)).await.unwrap();
        assert_eq!(info.state, "running");
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Ends while a caller waits a long time: the caller hears of it as soon as it ends.
        let started = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(());
        });
        let info = jobs.wait(&id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(info.state, "succeeded");
        assert!(started.elapsed() < Duration::from_secs(5), "woken by the end, not the time limit");
        assert!(jobs.wait("job-none", Duration::from_millis(1)).await.is_none());
    }
}
