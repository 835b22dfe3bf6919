//! Unguessable names: mount ids, script tokens, CHAP secrets, the appliance id.

/// `bytes` random bytes from the kernel, as 2 x `bytes` lower-case hex digits.
pub fn hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("the kernel's random source is available");
    ::hex::encode(b)
}
