//! Text keys (RFC 7143, section 6): `key=value` pairs, each ended by a NUL byte, in the data segment of
//! Login and Text PDUs.

/// Parses `key=value\0...`. Malformed pairs (no `=`, not UTF-8) are an error: the PDU is rejected.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let s = std::str::from_utf8(item).map_err(|_| "a text key is not UTF-8".to_string())?;
        let (k, v) = s.split_once('=').ok_or_else(|| format!("text key {s:?} has no value"))?;
        if k.is_empty() || k.len() > 63 {
            return Err(format!("text key {k:?} has a bad name"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_garbage() {
        let pairs = vec![("InitiatorName".to_string(), "iqn.x:y".to_string()), ("A".to_string(), "".to_string())];
        assert_eq!(parse(&encode(&pairs)).unwrap(), pairs);
        assert!(parse(b"novalue\0").is_err());
        assert!(parse(&[0xff, b'=', b'x', 0]).is_err());
        assert_eq!(parse(b"").unwrap(), vec![]);
    }
}
