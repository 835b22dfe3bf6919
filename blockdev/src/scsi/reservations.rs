//! Reservations of a LUN: persistent reservations (PERSISTENT RESERVE IN and OUT, SPC-4 5.13 and 6.15-6.16),
//! the older RESERVE and RELEASE (SPC-2 5.5.1), which commands they make conflict, and the unit attentions
//! they leave for other initiators. With APTPL the persistent state is kept in the pseudo-disk's folder and
//! comes back when the mount is opened again (a daemon restart).
//!
//! An initiator is known by its I_T nexus: for iSCSI the initiator port name `<initiator name>,i,0x<ISID>`
//! (SPC-4 7.6.4.6) on the target's one port. Registrations and the reservation belong to that name, so a
//! session that logs in again with the same ISID finds them.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{be16, be32, truncate, Outcome, Sense};

/// The status of a command refused because another initiator holds a reservation.
pub const RESERVATION_CONFLICT: u8 = 0x18;

/// The file that keeps the persistent state when APTPL is set.
const STATE_FILE: &str = "reservations.json";

/// One initiator port as the target sees it (an I_T nexus; the target has one port).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus(Arc<str>);

impl Nexus {
    /// The iSCSI initiator port of `initiator` logged in with `isid`.
    pub fn iscsi(initiator: &str, isid: [u8; 6]) -> Nexus {
        Nexus(format!("{initiator},i,0x{}", hex::encode(isid)).into())
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

/// What a command does to the medium, for the conflicts reservations make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Allowed whatever is reserved (INQUIRY, REPORT LUNS, REQUEST SENSE, the reservation commands...).
    Always,
    /// Asks after the LUN's state (TEST UNIT READY, READ CAPACITY): allowed through persistent reservations
    /// (REPORT CAPABILITIES says so), refused to others under a RESERVE(6/10).
    Status,
    /// Reads the medium or the LUN's state.
    Read,
    /// Changes the medium or the LUN's state.
    Write,
}

/// The six persistent reservation types (SPC-4 Table 173).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl Kind {
    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::WriteExclusive,
            3 => Kind::ExclusiveAccess,
            5 => Kind::WriteExclusiveRegistrantsOnly,
            6 => Kind::ExclusiveAccessRegistrantsOnly,
            7 => Kind::WriteExclusiveAllRegistrants,
            8 => Kind::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    fn code(self) -> u8 {
        match self {
            Kind::WriteExclusive => 1,
            Kind::ExclusiveAccess => 3,
            Kind::WriteExclusiveRegistrantsOnly => 5,
            Kind::ExclusiveAccessRegistrantsOnly => 6,
            Kind::WriteExclusiveAllRegistrants => 7,
            Kind::ExclusiveAccessAllRegistrants => 8,
        }
    }

    fn all_registrants(self) -> bool {
        matches!(self, Kind::WriteExclusiveAllRegistrants | Kind::ExclusiveAccessAllRegistrants)
    }

    /// Every registrant has access (registrants only, all registrants), not just the holder.
    fn registrants_share(self) -> bool {
        !matches!(self, Kind::WriteExclusive | Kind::ExclusiveAccess)
    }

    /// Others may not even read.
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            Kind::ExclusiveAccess | Kind::ExclusiveAccessRegistrantsOnly | Kind::ExclusiveAccessAllRegistrants
        )
    }
}

/// The persistent part, as kept on disk with APTPL.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persistent {
    generation: u32,
    /// Reservation key of each registered initiator port.
    registrations: BTreeMap<String, u64>,
    /// The reservation: its holder (any registrant for the all-registrants types) and its type.
    reservation: Option<(String, Kind)>,
    aptpl: bool,
}

#[derive(Default)]
struct State {
    persistent: Persistent,
    /// The holder of a RESERVE(6/10) reservation.
    legacy: Option<Nexus>,
    /// Unit attentions waiting for each initiator port, oldest first.
    attentions: HashMap<String, Vec<Sense>>,
}

/// The reservations of one LUN.
pub struct Reservations {
    state: Mutex<State>,
    /// Where the state is kept with APTPL (none: not kept).
    file: Option<PathBuf>,
    /// Something is reserved or a unit attention waits: the fast read path must go through the checks.
    engaged: AtomicBool,
}

/// Sense of the unit attentions reservations raise.
const REGISTRATIONS_PREEMPTED: Sense = Sense::new(0x06, 0x2a, 0x05);
const RESERVATIONS_PREEMPTED: Sense = Sense::new(0x06, 0x2a, 0x03);
const RESERVATIONS_RELEASED: Sense = Sense::new(0x06, 0x2a, 0x04);
/// ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION.
const INVALID_RELEASE: Sense = Sense::new(0x05, 0x26, 0x04);

fn conflict() -> Outcome {
    Outcome { status: RESERVATION_CONFLICT, ..Outcome::good(Vec::new()) }
}

impl Reservations {
    /// The reservations of a LUN whose state folder is `dir` (what APTPL kept there, if anything); `None`
    /// keeps nothing across restarts.
    pub fn open(dir: Option<&Path>) -> Reservations {
        let file = dir.map(|d| d.join(STATE_FILE));
        let persistent: Persistent = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("persistent reservations in {} are unreadable and were dropped: {e}", STATE_FILE);
                    None
                }
            })
            .unwrap_or_default();
        let engaged = persistent.reservation.is_some();
        Reservations {
            state: Mutex::new(State { persistent, ..Default::default() }),
            file,
            engaged: AtomicBool::new(engaged),
        }
    }

    /// False when nothing is reserved and no unit attention waits: every command may run as it is.
    pub fn engaged(&self) -> bool {
        self.engaged.load(Ordering::Acquire)
    }

    /// Checks a command of `nexus` before it runs: a unit attention waiting for it (reported once, on any
    /// command but the few that never report one), or a reservation conflict. `None`: it may run.
    pub fn admit(&self, nexus: &Nexus, access: Access, reports_attention: bool) -> Option<Outcome> {
        if !self.engaged() {
            return None;
        }
        let mut st = self.state.lock().expect("not poisoned");
        if reports_attention {
            if let Some(waiting) = st.attentions.get_mut(nexus.name()) {
                let sense = waiting.remove(0);
                if waiting.is_empty() {
                    st.attentions.remove(nexus.name());
                }
                self.update_engaged(&st);
                return Some(Outcome::check(sense));
            }
        }
        if access == Access::Always {
            return None;
        }
        if st.legacy.as_ref().is_some_and(|holder| holder != nexus) {
            return Some(conflict());
        }
        if access == Access::Status {
            return None;
        }
        let p = &st.persistent;
        let (holder, kind) = p.reservation.as_ref()?;
        let has_access =
            if kind.registrants_share() { p.registrations.contains_key(nexus.name()) } else { holder == nexus.name() };
        let refused = !has_access && (access == Access::Write || kind.exclusive_access());
        refused.then(conflict)
    }

    /// The I_T nexus is gone (logout, dropped connection): its RESERVE(6/10) reservation goes with it.
    /// Persistent registrations stay (SPC-4 5.13.2).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        let mut st = self.state.lock().expect("not poisoned");
        if st.legacy.as_ref() == Some(nexus) {
            st.legacy = None;
        }
        self.update_engaged(&st);
    }

    /// A unit attention for `nexus`, reported with its next command (after those already waiting).
    pub fn raise(&self, nexus: &Nexus, sense: Sense) {
        let mut st = self.state.lock().expect("not poisoned");
        st.attentions.entry(nexus.name().to_string()).or_default().push(sense);
        self.update_engaged(&st);
    }

    /// LOGICAL UNIT RESET: RESERVE(6/10) reservations are released; persistent ones stay.
    pub fn reset(&self) {
        let mut st = self.state.lock().expect("not poisoned");
        st.legacy = None;
        self.update_engaged(&st);
    }

    fn update_engaged(&self, st: &State) {
        let engaged = st.legacy.is_some() || st.persistent.reservation.is_some() || !st.attentions.is_empty();
        self.engaged.store(engaged, Ordering::Release);
    }

    /// RESERVE(6) and RESERVE(10): the LUN reserved for `nexus` alone (third-party and extent reservations are
    /// not offered).
    pub fn reserve(&self, nexus: &Nexus, cdb: &[u8]) -> Outcome {
        if cdb[0] == 0x56 && cdb[1] & 0x12 != 0 {
            return Outcome::check(Sense::INVALID_FIELD_IN_CDB); // 3RDPTY, LONGID
        }
        let mut st = self.state.lock().expect("not poisoned");
        let p = &st.persistent;
        if p.reservation.is_some() || !p.registrations.is_empty() {
            return conflict(); // persistent reservations are in use (SPC-3 5.6.3)
        }
        match &st.legacy {
            Some(holder) if holder != nexus => return conflict(),
            _ => st.legacy = Some(nexus.clone()),
        }
        self.update_engaged(&st);
        Outcome::good(Vec::new())
    }

    /// RELEASE(6) and RELEASE(10): only the holder's releases anything; another's is a no-op.
    pub fn release(&self, nexus: &Nexus) -> Outcome {
        let mut st = self.state.lock().expect("not poisoned");
        let p = &st.persistent;
        if p.reservation.is_some() || !p.registrations.is_empty() {
            return conflict();
        }
        if st.legacy.as_ref() == Some(nexus) {
            st.legacy = None;
        }
        self.update_engaged(&st);
        Outcome::good(Vec::new())
    }

    /// PERSISTENT RESERVE IN: READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL STATUS.
    pub fn persistent_reserve_in(&self, cdb: &[u8]) -> Outcome {
        let alloc = usize::from(be16(&cdb[7..9]));
        let st = self.state.lock().expect("not poisoned");
        let p = &st.persistent;
        let mut body = Vec::new();
        let with_header = |body: Vec<u8>| {
            let mut out = p.generation.to_be_bytes().to_vec();
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
            out
        };
        let data = match cdb[1] & 0x1f {
            0 => {
                for key in p.registrations.values() {
                    body.extend_from_slice(&key.to_be_bytes());
                }
                with_header(body)
            }
            1 => {
                if let Some((holder, kind)) = &p.reservation {
                    // The all-registrants types have no one holder: their key reads as zero.
                    let key =
                        if kind.all_registrants() { 0 } else { p.registrations.get(holder).copied().unwrap_or(0) };
                    body.extend_from_slice(&key.to_be_bytes());
                    body.extend_from_slice(&[0, 0, 0, 0, 0, kind.code(), 0, 0]);
                }
                with_header(body)
            }
            2 => {
                // Length; CRH; PTPL_C (persistence offered); TMV with ALLOW COMMANDS 001b (TEST UNIT READY
                // allowed... as `admit` does); PTPL_A (active); the six types.
                let mut d = vec![0u8; 8];
                d[0..2].copy_from_slice(&8u16.to_be_bytes());
                d[2] = 0x10 | 0x01;
                d[3] = 0x80 | 0x10 | u8::from(p.aptpl);
                d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
                d[5] = 0x01;
                d
            }
            3 => {
                for (port, key) in &p.registrations {
                    let holds = p.reservation.as_ref().is_some_and(|(h, k)| k.all_registrants() || h == port);
                    let mut d = vec![0u8; 24];
                    d[0..8].copy_from_slice(&key.to_be_bytes());
                    d[12] = u8::from(holds); // R_HOLDER
                    d[13] = if holds { p.reservation.as_ref().map_or(0, |(_, k)| k.code()) } else { 0 };
                    d[18..20].copy_from_slice(&1u16.to_be_bytes()); // relative target port 1
                    let id = transport_id(port);
                    d[20..24].copy_from_slice(&(id.len() as u32).to_be_bytes());
                    body.extend_from_slice(&d);
                    body.extend_from_slice(&id);
                }
                with_header(body)
            }
            _ => return Outcome::check(Sense::INVALID_FIELD_IN_CDB),
        };
        truncate(data, alloc)
    }

    /// PERSISTENT RESERVE OUT: REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT, REGISTER AND
    /// IGNORE EXISTING KEY (REGISTER AND MOVE is not offered). The parameter list is the basic 24 bytes.
    pub fn persistent_reserve_out(&self, nexus: &Nexus, cdb: &[u8], data: &[u8]) -> Outcome {
        let action = cdb[1] & 0x1f;
        let (scope, kind) = (cdb[2] >> 4, cdb[2] & 0x0f);
        let list_len = be32(&cdb[5..9]) as usize;
        if action > 6 {
            return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
        }
        if list_len != 24 || data.len() < 24 {
            return Outcome::check(Sense::PARAMETER_LIST_LENGTH);
        }
        let key = u64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
        let sa_key = u64::from_be_bytes(data[8..16].try_into().expect("8 bytes"));
        let (spec_i_pt, all_tg_pt, aptpl) = (data[20] & 0x08 != 0, data[20] & 0x04 != 0, data[20] & 0x01 != 0);
        if spec_i_pt || all_tg_pt {
            return Outcome::check(Sense::INVALID_FIELD_IN_PARAMETERS); // SIP_C and ATP_C are not offered
        }
        // RESERVE, RELEASE and the preempts name a type, in the logical unit's scope.
        let kind = match action {
            1 | 2 | 4 | 5 => match (scope, Kind::from_code(kind)) {
                (0, Some(k)) => Some(k),
                _ => return Outcome::check(Sense::INVALID_FIELD_IN_CDB),
            },
            _ => None,
        };
        let mut st = self.state.lock().expect("not poisoned");
        if st.legacy.as_ref().is_some_and(|holder| holder != nexus) {
            return conflict();
        }
        let before = st.persistent.clone();
        let me = nexus.name().to_string();
        let registered = st.persistent.registrations.get(&me).copied();
        // Every action but REGISTER AND IGNORE needs the caller's own key (none: zero).
        if action != 6 && registered.unwrap_or(0) != key {
            return conflict();
        }
        let outcome = match action {
            0 | 6 => self.register(&mut st, &me, registered, sa_key, aptpl),
            _ if registered.is_none() => conflict(),
            1 => Self::reserve_persistent(&mut st, &me, kind.expect("typed")),
            2 => Self::release_persistent(&mut st, &me, kind.expect("typed")),
            3 => {
                let others: Vec<String> = st.persistent.registrations.keys().filter(|p| **p != me).cloned().collect();
                for port in others {
                    st.attentions.entry(port).or_default().push(RESERVATIONS_PREEMPTED);
                }
                let p = &mut st.persistent;
                p.registrations.clear();
                p.reservation = None;
                p.generation = p.generation.wrapping_add(1);
                Outcome::good(Vec::new())
            }
            _ => Self::preempt(&mut st, &me, sa_key, kind.expect("typed")),
        };
        if outcome.status == super::GOOD && (st.persistent.aptpl || before.aptpl) {
            if let Err(e) = self.keep(&st.persistent) {
                // Not kept: the change is undone, so that what the initiator was told holds after a restart.
                tracing::warn!("persistent reservations could not be kept: {e}");
                st.persistent = before;
                self.update_engaged(&st);
                return Outcome::check(Sense::INTERNAL_TARGET_FAILURE);
            }
        }
        self.update_engaged(&st);
        outcome
    }

    fn register(&self, st: &mut State, me: &str, registered: Option<u64>, sa_key: u64, aptpl: bool) -> Outcome {
        let p = &mut st.persistent;
        match (registered, sa_key) {
            // Unregistered, registering nothing: nothing happens.
            (None, 0) => return Outcome::good(Vec::new()),
            (_, 0) => {
                p.registrations.remove(me);
                if let Some((holder, kind)) = p.reservation.clone() {
                    let shared = kind.all_registrants();
                    if (!shared && holder == me) || (shared && p.registrations.is_empty()) {
                        p.reservation = None;
                        if kind.registrants_share() {
                            let others: Vec<String> = p.registrations.keys().cloned().collect();
                            for port in others {
                                st.attentions.entry(port).or_default().push(RESERVATIONS_RELEASED);
                            }
                        }
                    } else if shared && holder == me {
                        // Another registrant stands for the all-registrants reservation from now on.
                        let next = p.registrations.keys().next().expect("not empty").clone();
                        p.reservation = Some((next, kind));
                    }
                }
            }
            (_, key) => {
                p.registrations.insert(me.to_string(), key);
            }
        }
        p.aptpl = aptpl;
        p.generation = p.generation.wrapping_add(1);
        Outcome::good(Vec::new())
    }

    fn reserve_persistent(st: &mut State, me: &str, kind: Kind) -> Outcome {
        let p = &mut st.persistent;
        match &p.reservation {
            None => {
                p.reservation = Some((me.to_string(), kind));
                Outcome::good(Vec::new())
            }
            // Held already by this initiator (or by every registrant), with this type: nothing to do.
            Some((holder, k)) if *k == kind && (holder == me || k.all_registrants()) => Outcome::good(Vec::new()),
            Some(_) => conflict(),
        }
    }

    fn release_persistent(st: &mut State, me: &str, kind: Kind) -> Outcome {
        let p = &mut st.persistent;
        let Some((holder, k)) = p.reservation.clone() else { return Outcome::good(Vec::new()) };
        if holder != me && !k.all_registrants() {
            return Outcome::good(Vec::new()); // not the holder: nothing is released
        }
        if k != kind {
            return Outcome::check(INVALID_RELEASE);
        }
        p.reservation = None;
        if k.registrants_share() {
            let others: Vec<String> = p.registrations.keys().filter(|port| *port != me).cloned().collect();
            for port in others {
                st.attentions.entry(port).or_default().push(RESERVATIONS_RELEASED);
            }
        }
        Outcome::good(Vec::new())
    }

    /// PREEMPT (and PREEMPT AND ABORT, whose commands of the preempted initiators have all completed by the
    /// time this runs: every command here completes or is aborted by its own session).
    fn preempt(st: &mut State, me: &str, sa_key: u64, kind: Kind) -> Outcome {
        let p = &mut st.persistent;
        let reservation = p.reservation.clone();
        let holder_key = reservation.as_ref().and_then(|(h, _)| p.registrations.get(h).copied());
        let shared = reservation.as_ref().is_some_and(|(_, k)| k.all_registrants());
        let preempted: Vec<String> = if shared && sa_key == 0 {
            // All registrants: a zero key preempts every other registrant and takes the reservation.
            p.registrations.keys().filter(|port| *port != me).cloned().collect()
        } else {
            if sa_key == 0 {
                return Outcome::check(Sense::INVALID_FIELD_IN_PARAMETERS);
            }
            p.registrations
                .iter()
                .filter(|(port, key)| **key == sa_key && *port != me)
                .map(|(port, _)| port.clone())
                .collect()
        };
        let takes_reservation =
            (shared && sa_key == 0) || (!shared && reservation.is_some() && holder_key == Some(sa_key));
        if preempted.is_empty() && !takes_reservation {
            return conflict(); // no registration has that key
        }
        for port in &preempted {
            p.registrations.remove(port);
        }
        if takes_reservation {
            p.reservation = Some((me.to_string(), kind));
        }
        p.generation = p.generation.wrapping_add(1);
        for port in preempted {
            st.attentions.entry(port).or_default().push(REGISTRATIONS_PREEMPTED);
        }
        Outcome::good(Vec::new())
    }

    /// Writes the persistent state durably (temporary file, fsync, rename, fsync of the folder), or removes
    /// it when APTPL is off.
    fn keep(&self, p: &Persistent) -> std::io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let dir = file.parent().expect("a file in a folder");
        if !p.aptpl {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            let tmp = dir.join(format!("{STATE_FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(p).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)?;
        }
        std::fs::File::open(dir)?.sync_all()
    }
}

/// The TransportID of an iSCSI initiator port (SPC-4 7.6.4.6, format 01b): its name, NUL-terminated and
/// padded to a multiple of four bytes.
fn transport_id(port: &str) -> Vec<u8> {
    let mut name = port.as_bytes().to_vec();
    name.push(0);
    name.resize(name.len().next_multiple_of(4), 0);
    let mut id = vec![0x40 | 0x05, 0];
    id.extend_from_slice(&(name.len() as u16).to_be_bytes());
    id.extend_from_slice(&name);
    id
}
