//! The login phase (RFC 7143, sections 6 and 11.12-11.13): security negotiation (CHAP), operational
//! negotiation, and the move to full feature phase. One login per connection; failures get a login
//! response with a status class and detail, then the connection closes.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::chap;
use super::params::{self, SessionParams, OUR_MAX_RECV_DSL};
use super::pdu::{Digests, InitiatorOp, Pdu, PduError, TargetOp};
use super::target::{Portal, Target};
use super::text;

/// Commands an initiator may have outstanding (the CmdSN window).
pub const QUEUE_DEPTH: u32 = 128;
/// Largest login data we take (login keys are small).
const MAX_LOGIN_DATA: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Security,
    Operational,
    FullFeature,
}

impl Stage {
    fn from_bits(b: u8) -> Option<Stage> {
        match b {
            0 => Some(Stage::Security),
            1 => Some(Stage::Operational),
            3 => Some(Stage::FullFeature),
            _ => None,
        }
    }
    fn bits(self) -> u8 {
        match self {
            Stage::Security => 0,
            Stage::Operational => 1,
            Stage::FullFeature => 3,
        }
    }
}

/// Login status (class, detail), section 11.13.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginStatus(pub u8, pub u8);

impl LoginStatus {
    const SUCCESS: LoginStatus = LoginStatus(0, 0);
    const INITIATOR_ERROR: LoginStatus = LoginStatus(2, 0x00);
    const AUTH_FAILED: LoginStatus = LoginStatus(2, 0x01);
    const NOT_AUTHORIZED: LoginStatus = LoginStatus(2, 0x02);
    const NOT_FOUND: LoginStatus = LoginStatus(2, 0x03);
    const MISSING_PARAMETER: LoginStatus = LoginStatus(2, 0x07);
    const UNSUPPORTED_VERSION: LoginStatus = LoginStatus(2, 0x05);
    const NO_SESSION: LoginStatus = LoginStatus(2, 0x0a);
    const INVALID_REQUEST: LoginStatus = LoginStatus(2, 0x0b);
    const TARGET_ERROR: LoginStatus = LoginStatus(3, 0x00);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// A logged-in connection, ready for full feature phase.
pub struct Session {
    pub kind: SessionType,
    pub initiator: String,
    /// The session's initiator part (ISID): with the name, the SCSI initiator port.
    pub isid: [u8; 6],
    pub target: Option<Arc<Target>>,
    pub tsih: u16,
    pub params: SessionParams,
    pub exp_cmd_sn: u32,
    pub stat_sn: u32,
    /// Becomes true when the session must end (reinstated elsewhere, target removed).
    pub stop: watch::Receiver<bool>,
}

enum Auth {
    /// No authentication needed, or done.
    Done,
    /// CHAP required; AuthMethod not agreed yet.
    Required,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    MethodChosen,
    /// Challenge sent; waiting for CHAP_N and CHAP_R.
    Challenged { id: u8, challenge: Vec<u8> },
}

struct LoginState {
    stage: Stage,
    initiator: Option<String>,
    kind: SessionType,
    target: Option<Arc<Target>>,
    isid: [u8; 6],
    auth: Auth,
    params: SessionParams,
    declared: bool,
    tpgt_sent: bool,
    stat_sn: u32,
    exp_cmd_sn: u32,
    first: bool,
    partial: Vec<u8>,
}

/// Runs the login phase. `Ok(None)` when the login failed (the initiator was told why).
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    portal: &Portal,
) -> Result<Option<Session>, PduError> {
    let mut st = LoginState {
        stage: Stage::Security,
        initiator: None,
        kind: SessionType::Normal,
        target: None,
        isid: [0; 6],
        auth: Auth::Done,
        params: SessionParams::default(),
        declared: false,
        tpgt_sent: false,
        stat_sn: 0,
        exp_cmd_sn: 0,
        first: true,
        partial: Vec::new(),
    };
    loop {
        let req = Pdu::read(stream, Digests::default(), MAX_LOGIN_DATA).await?;
        if req.opcode() != InitiatorOp::Login {
            // Anything but a login before full feature phase ends the connection.
            let mut rsp = response_to(&req, &st, LoginStatus::INVALID_REQUEST);
            rsp.write(stream, Digests::default()).await?;
            return Ok(None);
        }
        match step(&req, &mut st, portal) {
            Step::Continue(mut rsp) => {
                rsp.write(stream, Digests::default()).await?;
            }
            Step::Fail(status, keys) => {
                let mut rsp = response_to(&req, &st, status);
                rsp.data = text::encode(&keys).into();
                rsp.write(stream, Digests::default()).await?;
                return Ok(None);
            }
            Step::Done(mut rsp, session) => {
                rsp.write(stream, Digests::default()).await?;
                return Ok(Some(session));
            }
        }
    }
}

enum Step {
    Continue(Pdu),
    Fail(LoginStatus, Vec<(String, String)>),
    Done(Pdu, Session),
}

fn response_to(req: &Pdu, st: &LoginState, status: LoginStatus) -> Pdu {
    let mut rsp = Pdu::new(TargetOp::LoginResponse);
    rsp.set_login_stages(req.current_stage(), None); // CSG echoed, T and NSG clear
    rsp.set_isid(req.isid());
    rsp.set_itt(req.itt());
    rsp.set_stat_sn(st.stat_sn);
    rsp.set_exp_cmd_sn(st.exp_cmd_sn);
    rsp.set_max_cmd_sn(st.exp_cmd_sn.wrapping_add(QUEUE_DEPTH - 1));
    rsp.set_login_status(status.0, status.1);
    rsp
}

fn step(req: &Pdu, st: &mut LoginState, portal: &Portal) -> Step {
    let transit = req.transit();
    let cont = req.continues();
    let Some(csg) = Stage::from_bits(req.current_stage()) else {
        return Step::Fail(LoginStatus::INITIATOR_ERROR, vec![]);
    };
    let nsg = Stage::from_bits(req.next_stage());
    let (version_max, version_min) = req.version_max_min();
    if st.first {
        if version_min > 0 || version_max < version_min {
            return Step::Fail(LoginStatus::UNSUPPORTED_VERSION, vec![]);
        }
        st.isid = req.isid();
        st.stat_sn = req.exp_stat_sn();
        st.exp_cmd_sn = req.cmd_sn();
        if req.tsih() != 0 {
            // Adding or reinstating a connection of a session: sessions have one connection here.
            return Step::Fail(LoginStatus::NO_SESSION, vec![]);
        }
    }
    if transit && cont {
        return Step::Fail(LoginStatus::INITIATOR_ERROR, vec![]);
    }
    if csg != st.stage
        && !(st.first && csg == Stage::Operational)
        && !(csg == Stage::Operational && st.stage == Stage::Security && matches!(st.auth, Auth::Done))
    {
        return Step::Fail(LoginStatus::INITIATOR_ERROR, vec![]);
    }
    st.partial.extend_from_slice(&req.data);
    if cont {
        // More text follows: acknowledge with an empty response.
        let mut rsp = response_to(req, st, LoginStatus::SUCCESS);
        rsp.set_login_stages(csg.bits(), None);
        return Step::Continue(rsp);
    }
    let Ok(keys) = text::parse(&std::mem::take(&mut st.partial)) else {
        return Step::Fail(LoginStatus::INITIATOR_ERROR, vec![]);
    };
    let mut answer: Vec<(String, String)> = Vec::new();
    let mut info = BTreeMap::new();

    if st.first {
        st.first = false;
        let get = |k: &str| keys.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let Some(initiator) = get("InitiatorName") else { return Step::Fail(LoginStatus::MISSING_PARAMETER, vec![]) };
        st.kind = match get("SessionType").as_deref() {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Step::Fail(LoginStatus::INITIATOR_ERROR, vec![]),
        };
        if st.kind == SessionType::Normal {
            let Some(name) = get("TargetName") else { return Step::Fail(LoginStatus::MISSING_PARAMETER, vec![]) };
            let Some(target) = portal.target(&name) else { return Step::Fail(LoginStatus::NOT_FOUND, vec![]) };
            if !target.allows(&initiator) {
                tracing::warn!(%initiator, target = %name, "login refused: initiator not on the allow-list");
                return Step::Fail(LoginStatus::NOT_AUTHORIZED, vec![]);
            }
            if target.chap.is_some() {
                st.auth = Auth::Required;
            }
            st.target = Some(target);
        }
        st.initiator = Some(initiator);
    }
    if csg == Stage::Operational && !matches!(st.auth, Auth::Done) {
        return Step::Fail(LoginStatus::AUTH_FAILED, vec![]); // security negotiation was skipped
    }
    st.stage = csg;

    match csg {
        Stage::Security => {
            if let Err(status) = security(&keys, st, &mut answer) {
                return Step::Fail(status, vec![]);
            }
            // Operational keys may come in the security stage too.
            let op_keys: Vec<(String, String)> =
                keys.iter().filter(|(k, _)| k != "AuthMethod" && !k.starts_with("CHAP_")).cloned().collect();
            answer.extend(params::negotiate(&op_keys, &mut st.params, &mut info));
        }
        Stage::Operational => answer.extend(params::negotiate(&keys, &mut st.params, &mut info)),
        Stage::FullFeature => return Step::Fail(LoginStatus::INITIATOR_ERROR, vec![]),
    }
    if st.kind == SessionType::Normal && !st.tpgt_sent {
        answer.push(("TargetPortalGroupTag".into(), "1".into()));
        st.tpgt_sent = true;
    }

    // Transit when asked, unless authentication is unfinished.
    let mut rsp = response_to(req, st, LoginStatus::SUCCESS);
    let next = match (transit, nsg) {
        (true, Some(n)) if n as u8 > csg as u8 || n == Stage::FullFeature => Some(n),
        (true, _) => return Step::Fail(LoginStatus::INITIATOR_ERROR, vec![]),
        (false, _) => None,
    };
    let next = next.filter(|_| matches!(st.auth, Auth::Done));
    if next.is_some() && !st.declared && (csg == Stage::Operational || next == Some(Stage::FullFeature)) {
        answer.push(("MaxRecvDataSegmentLength".into(), OUR_MAX_RECV_DSL.to_string()));
        st.declared = true;
    }
    rsp.set_login_stages(csg.bits(), next.map(Stage::bits));
    match next {
        Some(Stage::FullFeature) => {
            let initiator = st.initiator.clone().unwrap_or_default();
            let target_name = st.target.as_ref().map(|t| t.iqn.clone()).unwrap_or_default();
            let (tsih, stop) = portal.register_session(&initiator, st.isid, &target_name);
            rsp.set_tsih(tsih);
            rsp.data = text::encode(&answer).into();
            let session = Session {
                kind: st.kind,
                initiator,
                isid: st.isid,
                target: st.target.clone(),
                tsih,
                params: st.params.clone(),
                exp_cmd_sn: st.exp_cmd_sn,
                stat_sn: st.stat_sn.wrapping_add(1),
                stop,
            };
            tracing::info!(initiator = %session.initiator, target = %target_name, tsih, kind = ?session.kind, "login");
            Step::Done(rsp, session)
        }
        Some(stage) => {
            st.stage = stage;
            rsp.data = text::encode(&answer).into();
            st.stat_sn = st.stat_sn.wrapping_add(1);
            Step::Continue(rsp)
        }
        None => {
            rsp.data = text::encode(&answer).into();
            st.stat_sn = st.stat_sn.wrapping_add(1);
            Step::Continue(rsp)
        }
    }
}

/// The security stage: AuthMethod and the CHAP exchange.
fn security(
    keys: &[(String, String)],
    st: &mut LoginState,
    answer: &mut Vec<(String, String)>,
) -> Result<(), LoginStatus> {
    let get = |k: &str| keys.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let chap = st.target.as_ref().and_then(|t| t.chap.clone());
    if let Some(methods) = get("AuthMethod") {
        let offered: Vec<&str> = methods.split(',').map(str::trim).collect();
        let choice = match (&chap, &st.auth) {
            (Some(_), Auth::Required) if offered.contains(&"CHAP") => {
                st.auth = Auth::MethodChosen;
                "CHAP"
            }
            (Some(_), _) => {
                tracing::warn!("login refused: CHAP is required and was not offered");
                return Err(LoginStatus::AUTH_FAILED);
            }
            (None, _) if offered.contains(&"None") => "None",
            (None, _) => "Reject",
        };
        answer.push(("AuthMethod".into(), choice.into()));
    }
    let Some(cfg) = chap else { return Ok(()) };
    if let Some(algs) = get("CHAP_A") {
        if !matches!(st.auth, Auth::MethodChosen) {
            return Err(LoginStatus::INITIATOR_ERROR);
        }
        if !algs.split(',').any(|a| a.trim() == "5") {
            answer.push(("CHAP_A".into(), "Reject".into()));
            return Err(LoginStatus::AUTH_FAILED);
        }
        let mut rnd = [0u8; 17];
        getrandom::getrandom(&mut rnd).map_err(|_| LoginStatus::TARGET_ERROR)?;
        let (id, challenge) = (rnd[0], rnd[1..].to_vec());
        answer.push(("CHAP_A".into(), "5".into()));
        answer.push(("CHAP_I".into(), id.to_string()));
        answer.push(("CHAP_C".into(), chap::encode_binary(&challenge)));
        st.auth = Auth::Challenged { id, challenge };
        return Ok(());
    }
    if let (Some(name), Some(resp)) = (get("CHAP_N"), get("CHAP_R")) {
        let Auth::Challenged { id, challenge } = &st.auth else { return Err(LoginStatus::INITIATOR_ERROR) };
        let expected = chap::response(*id, cfg.secret.as_bytes(), challenge);
        let given = chap::decode_binary(resp).ok_or(LoginStatus::AUTH_FAILED)?;
        if name != cfg.user || !chap::equal(&given, &expected) {
            tracing::warn!(user = %name, "login refused: wrong CHAP name or secret");
            return Err(LoginStatus::AUTH_FAILED);
        }
        // Mutual CHAP: the initiator challenges us in turn.
        if let (Some(i), Some(c)) = (get("CHAP_I"), get("CHAP_C")) {
            let Some((user, secret)) = &cfg.mutual else { return Err(LoginStatus::AUTH_FAILED) };
            let id: u8 = i.parse().map_err(|_| LoginStatus::AUTH_FAILED)?;
            let their = chap::decode_binary(c).ok_or(LoginStatus::AUTH_FAILED)?;
            if their == *challenge || their.is_empty() {
                return Err(LoginStatus::AUTH_FAILED); // a reflected challenge
            }
            answer.push(("CHAP_N".into(), user.clone()));
            answer.push(("CHAP_R".into(), chap::encode_binary(&chap::response(id, secret.as_bytes(), &their))));
        }
        st.auth = Auth::Done;
    }
    Ok(())
}
