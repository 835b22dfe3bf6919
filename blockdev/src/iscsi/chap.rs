//! CHAP with MD5 (RFC 1994, as iSCSI uses it in RFC 7143 section 12.1.3): the response is
//! MD5(identifier || secret || challenge). Values travel as `0x`-prefixed hex (base64 `0b` also accepted).

use md5::{Digest, Md5};

/// Secrets of a target: what initiators must prove, and (mutual CHAP) what the target proves back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChapConfig {
    pub user: String,
    pub secret: String,
    /// Mutual CHAP: the target's own name and secret.
    pub mutual: Option<(String, String)>,
}

pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Decodes a CHAP binary value (`0x...` hex or `0b...` base64).
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        let h = if h.len() % 2 == 1 { format!("0{h}") } else { h.to_string() };
        return hex::decode(h).ok();
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return base64_decode(b);
    }
    None
}

pub fn encode_binary(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

/// Base64 as RFC 7143 section 6.1 writes binary values after `0b`: the standard alphabet; the padding may
/// be there or not, as initiators differ.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose, DecodePaddingMode, Engine as _, GeneralPurpose};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::PAD
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    ENGINE.decode(s).ok()
}

/// Compares in constant time, so that timing tells nothing of the expected response.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    // Unequal lengths compare false at once: the length of a CHAP response is no secret.
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_chap_and_encodings() {
        // RFC 1321 test vector through the CHAP layout: MD5("abc") with id 'a', secret "b", challenge "c".
        assert_eq!(hex::encode(response(b'a', b"b", b"c")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(decode_binary("0x0102ff").unwrap(), vec![1, 2, 255]);
        assert_eq!(decode_binary("0bAQL/").unwrap(), vec![1, 2, 255]);
        assert_eq!(decode_binary("zz"), None);
        assert!(equal(b"abc", b"abc") && !equal(b"abc", b"abd") && !equal(b"ab", b"abc"));
    }

    #[test]
    fn base64_values_with_and_without_padding() {
        assert_eq!(decode_binary("0b").unwrap(), Vec::<u8>::new());
        assert_eq!(decode_binary("0bAQ==").unwrap(), vec![1]);
        assert_eq!(decode_binary("0bAQ").unwrap(), vec![1]);
        assert_eq!(decode_binary("0bAQI=").unwrap(), vec![1, 2]);
        assert_eq!(decode_binary("0BAQI").unwrap(), vec![1, 2]);
        let challenge: Vec<u8> = (0u8..16).map(|i| i * 17).collect();
        assert_eq!(decode_binary("0bABEiM0RVZneImaq7zN3u/w==").unwrap(), challenge);
        assert_eq!(decode_binary("0bAQ!="), None, "a character outside the alphabet");
        assert_eq!(decode_binary("0bA"), None, "a lone sextet is no byte");
    }
}
