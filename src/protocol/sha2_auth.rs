//! `caching_sha2_password`, MySQL 8's default auth plugin: the hashes, the cache and
//! the RSA key of its exchanges (the exchange itself is in `session::sha2_login`).
//!
//! The client first sends a *scramble*:
//! `XOR(SHA256(password), SHA256(SHA256(SHA256(password)) || nonce))`. A server that
//! has `SHA256(SHA256(password))` in its cache checks it at once (fast path, answered
//! `0x01 0x03`). Otherwise it asks for the password itself (`0x01 0x04`): over TLS the
//! client sends it in clear, NUL-terminated; without TLS it encrypts it with the
//! server's RSA public key (RSA-OAEP with SHA1), after XOR-ing it with the nonce, and
//! first asks for that key with `0x02` if it does not have it. A full authentication
//! that succeeds fills the cache, so the next login of that user is fast.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::RngCore;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// First byte of an AuthMoreData packet (the server's fast-auth result, its key).
pub const MORE_DATA: u8 = 0x01;
/// The client asks for the server's RSA public key.
pub const REQUEST_PUBLIC_KEY: u8 = 0x02;
/// Fast authentication succeeded; an OK packet follows.
pub const FAST_AUTH_SUCCESS: u8 = 0x03;
/// The cache could not vouch for the client: send the password itself.
pub const PERFORM_FULL_AUTHENTICATION: u8 = 0x04;

/// Bits of the RSA key shardgate generates when none is configured.
pub const GENERATED_KEY_BITS: usize = 2048;
/// Smallest RSA key accepted from the config.
pub const MIN_KEY_BITS: usize = 2048;

/// `SHA256(SHA256(password))`: what the cache holds for a user.
pub fn double_sha256(password: &[u8]) -> [u8; 32] {
    Sha256::digest(Sha256::digest(password)).into()
}

/// `SHA256(stage2 || nonce)`, the mask of both the client's and the server's side.
fn mask(stage2: &[u8], nonce: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(stage2);
    h.update(nonce);
    h.finalize().into()
}

/// The scramble a client sends for `password` (empty for an empty password).
pub fn sha2_token(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha256::digest(password);
    let stage2 = Sha256::digest(stage1);
    let m = mask(&stage2, nonce);
    stage1.iter().zip(m.iter()).map(|(a, b)| a ^ b).collect()
}

/// Checks a client's scramble against a cached `SHA256(SHA256(password))`: unmask it
/// into a candidate `SHA256(password)`, whose own hash must be the cached one.
pub fn verify_sha2(token: &[u8], nonce: &[u8], cached: &[u8; 32]) -> bool {
    if token.len() != 32 {
        return false;
    }
    let m = mask(cached, nonce);
    let stage1: Vec<u8> = token.iter().zip(m.iter()).map(|(a, b)| a ^ b).collect();
    let candidate: [u8; 32] = Sha256::digest(&stage1).into();
    ct_eq(&candidate, cached)
}

/// Constant-time equality of two hashes (timing tells nothing about how much matched).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// XORs `data` with `nonce` repeated over its length (how the password is masked
/// before RSA encryption).
fn xor_cycled(data: &mut [u8], nonce: &[u8]) {
    if nonce.is_empty() {
        return;
    }
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= nonce[i % nonce.len()];
    }
}

/// What checks a password sent in full: a salted SHA256 of it, with a random salt per
/// process. Not the cache's hash, so that the cache stays empty until a full
/// authentication proves the client knows the password itself (as MySQL does), and
/// not the clear text, which shardgate drops once started.
#[derive(Clone)]
pub struct PasswordVerifier {
    salt: [u8; 16],
    hash: [u8; 32],
}

impl PasswordVerifier {
    /// The verifier of `password`.
    pub fn new(password: &[u8]) -> PasswordVerifier {
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let hash = Self::salted(&salt, password);
        PasswordVerifier { salt, hash }
    }

    fn salted(salt: &[u8], password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(salt);
        h.update(password);
        h.finalize().into()
    }

    /// Whether `candidate` is the password.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        ct_eq(&Self::salted(&self.salt, candidate), &self.hash)
    }
}

impl std::fmt::Debug for PasswordVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordVerifier(..)")
    }
}

/// The cache of fast authentication: user name → `SHA256(SHA256(password))`. Empty at
/// start; filled only by a successful full authentication, so it holds at most one
/// entry per configured user (users are fixed while shardgate runs, so an entry never
/// goes stale). Also counts the logins of
/// each path (for `/metrics`: a cache that keeps missing shows there).
#[derive(Debug, Default)]
pub struct Sha2Cache {
    hashes: Mutex<HashMap<String, [u8; 32]>>,
    fast: AtomicU64,
    full: AtomicU64,
}

impl Sha2Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u8; 32]>> {
        self.hashes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a successful login by the fast path (true) or full authentication.
    pub fn count(&self, fast: bool) {
        let c = if fast { &self.fast } else { &self.full };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Successful logins so far: (fast path, full authentication).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.fast.load(Ordering::Relaxed),
            self.full.load(Ordering::Relaxed),
        )
    }

    /// The cached hash of `user`.
    pub fn get(&self, user: &str) -> Option<[u8; 32]> {
        self.lock().get(user).copied()
    }

    /// Caches the hash of a password that just passed full authentication.
    pub fn insert(&self, user: &str, password: &[u8]) {
        self.lock()
            .insert(user.to_string(), double_sha256(password));
    }
}

/// The server's RSA key pair, for full authentication without TLS.
pub struct RsaKeys {
    private: RsaPrivateKey,
    public_pem: String,
}

impl std::fmt::Debug for RsaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaKeys({} bits)", self.private.size() * 8)
    }
}

impl RsaKeys {
    /// A fresh key pair of [`GENERATED_KEY_BITS`] (slow: seconds in a debug build
    /// without the dev profile's optimisation of the big-integer crates).
    pub fn generate() -> Result<RsaKeys, String> {
        let private = RsaPrivateKey::new(&mut rand::thread_rng(), GENERATED_KEY_BITS)
            .map_err(|e| format!("generating an RSA key: {e}"))?;
        Self::from_private(private)
    }

    /// A private key in PEM, PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(text: &str) -> Result<RsaKeys, String> {
        let private = RsaPrivateKey::from_pkcs8_pem(text)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(text))
            .map_err(|e| format!("not an RSA private key in PEM (PKCS#8 or PKCS#1): {e}"))?;
        if private.size() * 8 < MIN_KEY_BITS {
            return Err(format!(
                "the RSA key has {} bits; at least {MIN_KEY_BITS} are needed",
                private.size() * 8
            ));
        }
        Self::from_private(private)
    }

    fn from_private(private: RsaPrivateKey) -> Result<RsaKeys, String> {
        let public_pem = RsaPublicKey::from(&private)
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("encoding the RSA public key: {e}"))?;
        Ok(RsaKeys {
            private,
            public_pem,
        })
    }

    /// The public key as clients get it (`BEGIN PUBLIC KEY`, as MySQL sends it).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Length of a ciphertext under this key, in bytes.
    pub fn size(&self) -> usize {
        self.private.size()
    }

    /// The password in an RSA-encrypted full-authentication answer: decrypt (OAEP,
    /// SHA1), unmask with the nonce, drop the trailing NUL. None if anything is off
    /// (the caller answers access denied, as for a wrong password).
    pub fn decrypt_password(&self, ciphertext: &[u8], nonce: &[u8]) -> Option<Vec<u8>> {
        if ciphertext.len() != self.size() {
            return None;
        }
        // Blinded: the private-key operation's timing does not follow the ciphertext.
        let mut plain = self
            .private
            .decrypt_blinded(&mut rand::thread_rng(), Oaep::new::<Sha1>(), ciphertext)
            .ok()?;
        xor_cycled(&mut plain, nonce);
        match plain.split_last() {
            Some((0, password)) => Some(password.to_vec()),
            _ => None,
        }
    }
}

/// What a client sends in full authentication without TLS: `password` + NUL, masked
/// with the nonce, encrypted with the server's public key (a client's side, for tests
/// and tools).
pub fn encrypt_password(
    public_pem: &str,
    password: &[u8],
    nonce: &[u8],
) -> Result<Vec<u8>, String> {
    let key = RsaPublicKey::from_public_key_pem(public_pem)
        .map_err(|e| format!("not an RSA public key in PEM: {e}"))?;
    let mut plain = password.to_vec();
    plain.push(0);
    xor_cycled(&mut plain, nonce);
    key.encrypt(&mut rand::thread_rng(), Oaep::new::<Sha1>(), &plain)
        .map_err(|e| format!("RSA encryption: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn scramble_matches_an_independent_computation() {
        // python3 -c "import hashlib; s=lambda b: hashlib.sha256(b).digest();
        //   pw=b'app'; n=b'abcdefghijklmnopqrst';
        //   print(bytes(a^b for a,b in zip(s(pw), s(s(s(pw))+n))).hex()); print(s(s(pw)).hex())"
        let nonce = b"abcdefghijklmnopqrst";
        assert_eq!(
            hex(&sha2_token(b"app", nonce)),
            "cc0b57cf8fc973f71933fc35856fe7a0d8117e7ef1d678ae1cc8462c1e56ef9f"
        );
        assert_eq!(
            hex(&double_sha256(b"app")),
            "3bfc3d7ca254b2d951bd6aa00bbeb14ff3c0d8d703941aa643f506fee788ff55"
        );
    }

    #[test]
    fn fast_path_verifies_the_right_password_only() {
        let nonce = crate::protocol::auth::new_scramble();
        let cached = double_sha256(b"secret");
        let token = sha2_token(b"secret", &nonce);
        assert!(verify_sha2(&token, &nonce, &cached));
        assert!(!verify_sha2(
            &sha2_token(b"secreT", &nonce),
            &nonce,
            &cached
        ));
        let other = crate::protocol::auth::new_scramble();
        assert!(!verify_sha2(&token, &other, &cached));
        assert!(!verify_sha2(&token[..31], &nonce, &cached));
        assert!(!verify_sha2(&[], &nonce, &cached));
        assert!(sha2_token(b"", &nonce).is_empty());
    }

    #[test]
    fn verifier_matches_the_password_only() {
        let v = PasswordVerifier::new(b"pw");
        assert!(v.matches(b"pw"));
        assert!(!v.matches(b"pW"));
        assert!(!v.matches(b""));
        assert_eq!(format!("{v:?}"), "PasswordVerifier(..)");
    }

    #[test]
    fn cache_holds_the_double_hash() {
        let c = Sha2Cache::default();
        assert_eq!(c.get("u"), None);
        c.insert("u", b"pw");
        assert_eq!(c.get("u"), Some(double_sha256(b"pw")));
        c.count(true);
        c.count(false);
        c.count(false);
        assert_eq!(c.counts(), (1, 2));
    }

    #[test]
    fn rsa_roundtrip_and_malformed_ciphertexts() {
        let keys = RsaKeys::generate().expect("keygen");
        assert!(keys.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(keys.size(), GENERATED_KEY_BITS / 8);
        let nonce = b"abcdefghijklmnopqrst";
        // Longer than the nonce, so the mask wraps around.
        let pw = b"a password longer than twenty bytes";
        let ct = encrypt_password(keys.public_pem(), pw, nonce).expect("encrypt");
        assert_eq!(keys.decrypt_password(&ct, nonce).as_deref(), Some(&pw[..]));
        // Another nonce unmasks to garbage without the trailing NUL.
        assert_eq!(keys.decrypt_password(&ct, b"ABCDEFGHIJKLMNOPQRST"), None);
        assert_eq!(keys.decrypt_password(&ct[1..], nonce), None);
        assert_eq!(keys.decrypt_password(&[0; 256], nonce), None);
        assert_eq!(keys.decrypt_password(b"pw\0", nonce), None);
        assert_eq!(keys.decrypt_password(&[], nonce), None);
    }

    #[test]
    fn private_keys_load_from_pkcs8_and_pkcs1_pem() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePrivateKey;
        let keys = RsaKeys::generate().expect("keygen");
        let pkcs8 = keys.private.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
        let pkcs1 = keys.private.to_pkcs1_pem(LineEnding::LF).expect("pkcs1");
        for pem in [pkcs8.as_str(), pkcs1.as_str()] {
            let loaded = RsaKeys::from_pem(pem).expect("load");
            assert_eq!(loaded.public_pem(), keys.public_pem());
        }
        assert!(RsaKeys::from_pem("not a key").is_err());
        let small = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).expect("small key");
        let small = small.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
        let e = RsaKeys::from_pem(&small).expect_err("1024 bits is too small");
        assert!(e.contains("at least 2048"), "{e}");
    }
}
