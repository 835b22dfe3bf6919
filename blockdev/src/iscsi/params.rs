//! Operational parameter negotiation (RFC 7143, sections 6.2 and 13) as data: each key the target knows,
//! its rule for combining the initiator's value with ours, and our value.

use std::collections::BTreeMap;

/// The largest data segment we accept in one PDU (declared to the initiator).
pub const OUR_MAX_RECV_DSL: u32 = 256 * 1024;
/// Bounds of the burst lengths we agree to.
pub const OUR_MAX_BURST: u32 = 1024 * 1024;
pub const OUR_FIRST_BURST: u32 = 256 * 1024;

/// The parameters of a session once negotiated (RFC defaults until then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// The initiator's MaxRecvDataSegmentLength: the largest data segment we may send it.
    pub max_send_dsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            initial_r2t: true,
            immediate_data: true,
            max_send_dsl: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Rule {
    /// A list of digests; we pick the first we support.
    Digest,
    /// Result is the initiator's OR ours.
    Or(bool),
    /// Result is the initiator's AND ours.
    And(bool),
    /// Result is the smaller of the initiator's and ours, within [min, ours].
    Min { min: u32, ours: u32 },
    /// Result is the larger of the initiator's and ours.
    Max { ours: u32, max: u32 },
    /// The initiator declares its value; we answer with our own declaration.
    DeclareMaxRecvDsl,
    /// Keys handled elsewhere (login names, authentication).
    Informational,
    /// Keys only a target may send.
    TargetOnly,
}

/// Every key the target understands, with its rule.
const KEYS: &[(&str, Rule)] = &[
    ("HeaderDigest", Rule::Digest),
    ("DataDigest", Rule::Digest),
    ("MaxConnections", Rule::Min { min: 1, ours: 1 }),
    ("InitialR2T", Rule::Or(false)),
    ("ImmediateData", Rule::And(true)),
    ("MaxRecvDataSegmentLength", Rule::DeclareMaxRecvDsl),
    ("MaxBurstLength", Rule::Min { min: 512, ours: OUR_MAX_BURST }),
    ("FirstBurstLength", Rule::Min { min: 512, ours: OUR_FIRST_BURST }),
    ("DefaultTime2Wait", Rule::Max { ours: 2, max: 3600 }),
    ("DefaultTime2Retain", Rule::Min { min: 0, ours: 20 }),
    ("MaxOutstandingR2T", Rule::Min { min: 1, ours: 1 }),
    ("DataPDUInOrder", Rule::Or(true)),
    ("DataSequenceInOrder", Rule::Or(true)),
    ("ErrorRecoveryLevel", Rule::Min { min: 0, ours: 0 }),
    ("IFMarker", Rule::And(false)),
    ("OFMarker", Rule::And(false)),
    ("InitiatorName", Rule::Informational),
    ("InitiatorAlias", Rule::Informational),
    ("TargetName", Rule::Informational),
    ("SessionType", Rule::Informational),
    ("AuthMethod", Rule::Informational),
    ("CHAP_A", Rule::Informational),
    ("CHAP_I", Rule::Informational),
    ("CHAP_C", Rule::Informational),
    ("CHAP_N", Rule::Informational),
    ("CHAP_R", Rule::Informational),
    ("TargetAlias", Rule::TargetOnly),
    ("TargetAddress", Rule::TargetOnly),
    ("TargetPortalGroupTag", Rule::TargetOnly),
];

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// Negotiates the operational keys of one request. Returns the answer keys; informational keys are left to
/// the caller (they are returned in `informational`). A value that breaks the rules is answered `Reject`.
pub fn negotiate(
    keys: &[(String, String)],
    params: &mut SessionParams,
    informational: &mut BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut answer = Vec::new();
    for (key, value) in keys {
        let Some((_, rule)) = KEYS.iter().find(|(k, _)| k == key) else {
            answer.push((key.clone(), "NotUnderstood".to_string()));
            continue;
        };
        let reply: Option<String> = match *rule {
            Rule::Informational => {
                informational.insert(key.clone(), value.clone());
                continue;
            }
            Rule::TargetOnly => Some("Irrelevant".to_string()),
            Rule::Digest => {
                let choice = value.split(',').map(str::trim).find(|d| *d == "CRC32C" || *d == "None");
                if let Some(c) = choice {
                    let on = c == "CRC32C";
                    if key == "HeaderDigest" {
                        params.header_digest = on;
                    } else {
                        params.data_digest = on;
                    }
                }
                Some(choice.unwrap_or("Reject").to_string())
            }
            Rule::Or(ours) => yes_no(value).map(|v| {
                let r = v || ours;
                if key == "InitialR2T" {
                    params.initial_r2t = r;
                }
                yn(r)
            }),
            Rule::And(ours) => yes_no(value).map(|v| {
                let r = v && ours;
                if key == "ImmediateData" {
                    params.immediate_data = r;
                }
                yn(r)
            }),
            Rule::Min { min, ours } => value.parse::<u32>().ok().filter(|v| *v >= min).map(|v| {
                let r = v.min(ours);
                match key.as_str() {
                    "MaxBurstLength" => params.max_burst_length = r,
                    "FirstBurstLength" => params.first_burst_length = r,
                    "DefaultTime2Retain" => params.default_time2retain = r,
                    _ => {}
                }
                r.to_string()
            }),
            Rule::Max { ours, max } => value.parse::<u32>().ok().filter(|v| *v <= max).map(|v| {
                let r = v.max(ours);
                params.default_time2wait = r;
                r.to_string()
            }),
            Rule::DeclareMaxRecvDsl => value.parse::<u32>().ok().filter(|v| (512..=16_777_215).contains(v)).map(|v| {
                params.max_send_dsl = v;
                OUR_MAX_RECV_DSL.to_string()
            }),
        };
        answer.push((key.clone(), reply.unwrap_or_else(|| "Reject".to_string())));
    }
    // FirstBurstLength may not exceed MaxBurstLength.
    params.first_burst_length = params.first_burst_length.min(params.max_burst_length);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn rules_combine_as_the_rfc_says() {
        let mut p = SessionParams::default();
        let mut info = BTreeMap::new();
        let answer = negotiate(
            &kv(&[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxRecvDataSegmentLength", "8192"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("MaxConnections", "8"),
                ("X-com.example.Foo", "1"),
                ("DefaultTime2Wait", "abc"),
                ("InitiatorName", "iqn.x"),
            ]),
            &mut p,
            &mut info,
        );
        let get = |k: &str| answer.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(get("DataDigest"), Some("None"));
        assert_eq!(get("InitialR2T"), Some("No"));
        assert_eq!(get("MaxRecvDataSegmentLength"), Some("262144"));
        assert_eq!(get("MaxBurstLength"), Some("1048576"));
        assert_eq!(get("MaxConnections"), Some("1"));
        assert_eq!(get("X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(get("DefaultTime2Wait"), Some("Reject"));
        assert_eq!(get("InitiatorName"), None);
        assert_eq!(info["InitiatorName"], "iqn.x");
        assert!(p.header_digest && !p.data_digest && !p.initial_r2t && p.immediate_data);
        assert_eq!(p.max_send_dsl, 8192);
        assert_eq!(p.first_burst_length, 262144);
    }
}
