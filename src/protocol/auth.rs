//! `mysql_native_password`: the client proves it knows the password by sending
//! `SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))`. The server keeps only
//! `SHA1(SHA1(password))`. The other plugin, `caching_sha2_password`, is in
//! [`super::sha2_auth`].

use rand::Rng;
use sha1::{Digest, Sha1};

/// Name of the default auth plugin (the greeting offers it).
pub const NATIVE_PASSWORD: &str = "mysql_native_password";
/// Name of MySQL 8's default plugin, which shardgate also speaks.
pub const CACHING_SHA2_PASSWORD: &str = "caching_sha2_password";

/// The plugin a user logs in with (config `auth_plugin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthPlugin {
    /// `mysql_native_password` (SHA1 scramble).
    #[default]
    NativePassword,
    /// `caching_sha2_password` (SHA256 scramble, cache, full authentication).
    CachingSha2Password,
}

impl AuthPlugin {
    /// The plugin's name on the wire and in the config.
    pub fn name(self) -> &'static str {
        match self {
            AuthPlugin::NativePassword => NATIVE_PASSWORD,
            AuthPlugin::CachingSha2Password => CACHING_SHA2_PASSWORD,
        }
    }

    /// The plugin called `name`; None for a plugin shardgate does not speak.
    pub fn from_name(name: &str) -> Option<AuthPlugin> {
        match name {
            NATIVE_PASSWORD => Some(AuthPlugin::NativePassword),
            CACHING_SHA2_PASSWORD => Some(AuthPlugin::CachingSha2Password),
            _ => None,
        }
    }
}

/// A 20-byte scramble of printable, non-NUL bytes (some clients treat it as a C string).
pub fn new_scramble() -> [u8; 20] {
    let mut rng = rand::thread_rng();
    let mut s = [0u8; 20];
    for b in &mut s {
        *b = rng.gen_range(0x21..0x7f);
    }
    s
}

/// `SHA1(SHA1(password))`, what a server stores.
pub fn double_sha1(password: &[u8]) -> [u8; 20] {
    let stage1 = Sha1::digest(password);
    Sha1::digest(stage1).into()
}

/// The token a client sends for `password` (empty for an empty password).
pub fn native_token(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(scramble);
    h.update(stage2);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// Checks a client's token against the stored double hash (None = empty password).
pub fn verify_native(token: &[u8], scramble: &[u8], stored: Option<&[u8; 20]>) -> bool {
    let Some(stage2) = stored else {
        return token.is_empty();
    };
    if token.len() != 20 {
        return false;
    }
    let mut h = Sha1::new();
    h.update(scramble);
    h.update(stage2);
    let mix = h.finalize();
    let stage1: Vec<u8> = token.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect();
    let candidate: [u8; 20] = Sha1::digest(&stage1).into();
    // constant-time comparison
    candidate
        .iter()
        .zip(stage2.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_verifies_with_the_right_password_only() {
        let scramble = new_scramble();
        let stored = double_sha1(b"secret");
        let token = native_token(b"secret", &scramble);
        assert!(verify_native(&token, &scramble, Some(&stored)));
        let wrong = native_token(b"secreT", &scramble);
        assert!(!verify_native(&wrong, &scramble, Some(&stored)));
        assert!(!verify_native(&token, &new_scramble(), Some(&stored)));
        assert!(!verify_native(&[], &scramble, Some(&stored)));
        assert!(!verify_native(&token[..10], &scramble, Some(&stored)));
    }

    #[test]
    fn empty_password_means_empty_token() {
        let s = new_scramble();
        assert!(native_token(b"", &s).is_empty());
        assert!(verify_native(&[], &s, None));
        assert!(!verify_native(&[1; 20], &s, None));
    }

    #[test]
    fn double_sha1_matches_an_independent_computation() {
        // python3 -c "import hashlib;print(hashlib.sha1(hashlib.sha1(b'app').digest()).hexdigest())"
        let hex: String = double_sha1(b"app")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "5bcb3e6ac345b435c7c2e6b7949a04ce6f6563d3");
    }
}
