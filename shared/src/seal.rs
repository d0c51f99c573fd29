//! Sealed session tokens: the session's record itself, encrypted and authenticated (XChaCha20-Poly1305)
//! with a key that the broker and every node hold, so that any node can check a token and read its session
//! without the registry. A registry that lost its data (a Redis restarted without persistence) then costs
//! no issued token, as with Guacamole's encrypted JSON authentication. Keys rotate: the first key seals,
//! every key opens.
//!
//! A token is `s1.` and the URL-safe Base64 (unpadded) of a random 24-byte nonce followed by the sealed JSON
//! of the [`Session`] (its 16-byte tag at the end). The version is authenticated with it. A token is about
//! 4/3 of its session's JSON plus 58 characters.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::ids::{SessionToken, random_bytes};
use crate::session::Session;

/// What every sealed token starts with: the format's version.
const PREFIX: &str = "s1.";
/// Bound into every seal, so that no other use of the key can produce a token.
const CONTEXT: &[u8] = b"deskbroker session token s1";
const NONCE: usize = 24;

/// One sealing key: 32 bytes.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(****)")
    }
}

impl SealKey {
    /// A key given as standard Base64 of 32 bytes (`openssl rand -base64 32`).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = STANDARD.decode(text.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// The key derived from the cluster's secret (HKDF-SHA256), for a cluster configured with no keys of
    /// its own: one secret to set, at the price of rotating both together.
    pub fn from_secret(secret: &str) -> Self {
        let mut key = [0; 32];
        let derived = hkdf::Hkdf::<sha2::Sha256>::new(None, secret.as_bytes())
            .expand(b"deskbroker session seal v1", &mut key);
        // 32 bytes is far below HKDF-SHA256's limit of 8160.
        debug_assert!(derived.is_ok());
        Self(key)
    }
}

/// A session key that is not standard Base64 of 32 bytes; which one, counted from 1.
#[derive(Debug, thiserror::Error)]
#[error("session key {0} is not the Base64 of 32 bytes (make one with `openssl rand -base64 32`)")]
pub struct BadKey(pub usize);

/// Keys as an operator writes them: standard Base64 of 32 bytes each, comma-separated.
pub fn parse_keys(text: &str) -> Result<Vec<SealKey>, BadKey> {
    text.split(',')
        .enumerate()
        .map(|(i, key)| SealKey::parse(key).ok_or(BadKey(i + 1)))
        .collect()
}

/// The sealer a process runs with: the keys it was given (the first seals), or else the key derived from
/// the cluster's secret, or else none.
pub fn configured(keys: Option<&[SealKey]>, secret: Option<&str>) -> Option<Sealer> {
    match keys {
        Some(keys) => Sealer::new(keys),
        None => Sealer::new(&[SealKey::from_secret(secret?)]),
    }
}

/// The keys a broker seals with and a node opens with.
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<XChaCha20Poly1305>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer({} keys)", self.keys.len())
    }
}

impl Sealer {
    /// Seals with the first key, opens with any; `None` without a key.
    pub fn new(keys: &[SealKey]) -> Option<Self> {
        let keys: Vec<_> = keys
            .iter()
            .map(|key| XChaCha20Poly1305::new(&key.0.into()))
            .collect();
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// A token that carries `session`.
    pub fn seal(&self, session: &Session) -> SessionToken {
        // Sessions are plain structs of strings, numbers and maps with string keys: serialising cannot
        // fail, and sealing fails only past 256 GiB.
        let json = serde_json::to_vec(session).unwrap_or_default();
        let nonce = random_bytes::<NONCE>();
        let payload = Payload {
            msg: &json,
            aad: CONTEXT,
        };
        let sealed = self.keys[0]
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut bytes = Vec::with_capacity(NONCE + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        SessionToken::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The session a token carries, if one of the keys sealed it (and nobody altered it since).
    pub fn open(&self, token: &SessionToken) -> Option<Session> {
        let encoded = token.expose().strip_prefix(PREFIX)?;
        let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
        if bytes.len() < NONCE {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE);
        let json = self.keys.iter().find_map(|key| {
            let payload = Payload {
                msg: sealed,
                aad: CONTEXT,
            };
            key.decrypt(XNonce::from_slice(nonce), payload).ok()
        })?;
        serde_json::from_slice(&json).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SessionId, TenantId};
    use crate::session::Target;

    fn session() -> Session {
        let target = Target::parse("guacd://10.0.0.1:4822/rdp?hostname=w&password=p%40ss").unwrap();
        Session::new(SessionId::new("s"), TenantId::new("acme"), target)
    }

    fn key(byte: u8) -> SealKey {
        SealKey([byte; 32])
    }

    #[test]
    fn a_sealed_session_opens_with_any_of_the_keys_and_only_them() {
        let old = Sealer::new(&[key(1)]).unwrap();
        let token = old.seal(&session());
        assert!(token.expose().starts_with("s1."), "{}", token.expose());
        assert!(
            !token.expose().contains("p%40ss"),
            "the target is encrypted"
        );
        assert_eq!(old.open(&token), Some(session()));
        // Rotation: the new key seals, the old one still opens.
        let rotated = Sealer::new(&[key(2), key(1)]).unwrap();
        assert_eq!(rotated.open(&token), Some(session()));
        assert_eq!(old.open(&rotated.seal(&session())), None);
        assert_eq!(Sealer::new(&[key(3)]).unwrap().open(&token), None);
    }

    #[test]
    fn a_sealed_session_keeps_its_idle_timeout() {
        let sealer = Sealer::new(&[key(1)]).unwrap();
        let idle = Session {
            idle_timeout: Some(std::time::Duration::from_secs(900)),
            ..session()
        };
        assert_eq!(sealer.open(&sealer.seal(&idle)), Some(idle));
    }

    #[test]
    fn an_altered_or_foreign_token_opens_nothing() {
        let sealer = Sealer::new(&[key(1)]).unwrap();
        let token = sealer.seal(&session());
        let mut bytes = token.expose().as_bytes().to_vec();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = SessionToken::new(String::from_utf8(bytes).unwrap());
        assert_eq!(sealer.open(&altered), None);
        for foreign in ["", "s1.", "s1.AAAA", "demo", "s2.AAAA", "s1.!!!!"] {
            assert_eq!(sealer.open(&SessionToken::new(foreign)), None, "{foreign}");
        }
    }

    #[test]
    fn a_process_takes_its_keys_or_else_the_cluster_secret() {
        let (a, b) = (STANDARD.encode([1; 32]), STANDARD.encode([2; 32]));
        let keys = parse_keys(&format!("{a}, {b}")).unwrap();
        let given = configured(Some(&keys), Some("s")).unwrap();
        let derived = configured(None, Some("s")).unwrap();
        let token = given.seal(&session());
        assert_eq!(
            Sealer::new(&[key(1)]).unwrap().open(&token),
            Some(session())
        );
        assert_eq!(derived.open(&token), None, "given keys win over the secret");
        assert!(configured(None, None).is_none());
        assert!(matches!(parse_keys(&format!("{a},nope")), Err(BadKey(2))));
        assert!(matches!(parse_keys(""), Err(BadKey(1))));
    }

    #[test]
    fn keys_parse_from_base64_and_derive_from_a_secret() {
        let text = STANDARD.encode([7; 32]);
        assert!(SealKey::parse(&text).is_some());
        assert!(SealKey::parse("c2hvcnQ=").is_none(), "too short");
        let a = Sealer::new(&[SealKey::from_secret("s3cret")]).unwrap();
        let b = Sealer::new(&[SealKey::from_secret("s3cret")]).unwrap();
        assert_eq!(b.open(&a.seal(&session())), Some(session()));
        let other = Sealer::new(&[SealKey::from_secret("other")]).unwrap();
        assert_eq!(other.open(&a.seal(&session())), None);
    }
}
