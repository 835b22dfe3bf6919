//! The portal: the targets it serves (one per mount, LUNs = the mount's disks), their access rules, and the
//! registry of sessions (TSIH, reinstatement).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use tokio::sync::watch;

use super::chap::ChapConfig;
use super::command::TaskContext;
use crate::scsi::LunSet;

/// A target: an IQN, its LUNs and who may log in.
pub struct Target {
    pub iqn: String,
    pub luns: LunSet,
    pub chap: Option<ChapConfig>,
    /// Initiator names allowed to log in; empty means everyone.
    pub allowed_initiators: Vec<String>,
    /// The sessions logged in to it: task management that reaches across sessions (CLEAR TASK SET, LOGICAL
    /// UNIT RESET) finds their tasks here.
    sessions: Mutex<Vec<Weak<TaskContext>>>,
}

impl Target {
    pub fn new(iqn: String, luns: LunSet, chap: Option<ChapConfig>, allowed_initiators: Vec<String>) -> Target {
        Target { iqn, luns, chap, allowed_initiators, sessions: Mutex::default() }
    }

    /// A session has logged in (its tasks are reachable from then on; it leaves when it is dropped).
    pub(super) fn joined(&self, session: &Arc<TaskContext>) {
        let mut sessions = self.sessions.lock().expect("not poisoned");
        sessions.retain(|s| s.strong_count() > 0);
        sessions.push(Arc::downgrade(session));
    }

    /// The sessions logged in now.
    pub(super) fn sessions(&self) -> Vec<Arc<TaskContext>> {
        self.sessions.lock().expect("not poisoned").iter().filter_map(Weak::upgrade).collect()
    }

    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty() || self.allowed_initiators.iter().any(|a| a == initiator)
    }
}

/// A live session: who it is for, and how to end it (reinstatement, target removal).
struct SessionEntry {
    initiator: String,
    isid: [u8; 6],
    target: String,
    stop: watch::Sender<bool>,
}

/// What the portal serves. Cheap to share; targets come and go while it runs.
pub struct Portal {
    targets: RwLock<BTreeMap<String, Arc<Target>>>,
    sessions: Mutex<BTreeMap<u16, SessionEntry>>,
    next_tsih: AtomicU16,
    /// Address given to initiators in SendTargets (TargetAddress=ADDR:PORT,1).
    pub advertise: String,
    /// The commands answered on every session, for metrics.
    pub stats: Arc<super::stats::CommandStats>,
}

impl Portal {
    pub fn new(advertise: String) -> Arc<Portal> {
        Arc::new(Portal {
            targets: RwLock::default(),
            sessions: Mutex::default(),
            next_tsih: AtomicU16::new(1),
            advertise,
            stats: Arc::default(),
        })
    }

    pub fn add_target(&self, target: Arc<Target>) {
        self.targets.write().expect("not poisoned").insert(target.iqn.clone(), target);
    }

    /// Removes a target and ends its sessions.
    pub fn remove_target(&self, iqn: &str) {
        self.targets.write().expect("not poisoned").remove(iqn);
        let sessions = self.sessions.lock().expect("not poisoned");
        for s in sessions.values().filter(|s| s.target == iqn) {
            let _ = s.stop.send(true);
        }
    }

    pub fn target(&self, iqn: &str) -> Option<Arc<Target>> {
        self.targets.read().expect("not poisoned").get(iqn).cloned()
    }

    /// Targets an initiator may see in discovery.
    pub fn visible_targets(&self, initiator: &str) -> Vec<Arc<Target>> {
        self.targets.read().expect("not poisoned").values().filter(|t| t.allows(initiator)).cloned().collect()
    }

    /// Registers a new session, ending an older one of the same initiator, ISID and target
    /// (session reinstatement). Returns the TSIH and the receiver that signals the session's end.
    pub fn register_session(&self, initiator: &str, isid: [u8; 6], target: &str) -> (u16, watch::Receiver<bool>) {
        let mut sessions = self.sessions.lock().expect("not poisoned");
        let old: Vec<u16> = sessions
            .iter()
            .filter(|(_, s)| s.initiator == initiator && s.isid == isid && s.target == target)
            .map(|(t, _)| *t)
            .collect();
        for tsih in old {
            if let Some(s) = sessions.remove(&tsih) {
                let _ = s.stop.send(true);
            }
        }
        let tsih = loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 && !sessions.contains_key(&t) {
                break t;
            }
        };
        let (tx, rx) = watch::channel(false);
        sessions.insert(
            tsih,
            SessionEntry { initiator: initiator.to_string(), isid, target: target.to_string(), stop: tx },
        );
        (tsih, rx)
    }

    pub fn end_session(&self, tsih: u16) {
        self.sessions.lock().expect("not poisoned").remove(&tsih);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("not poisoned").len()
    }
}
