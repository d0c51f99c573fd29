//! Every identifier and secret of deskbroker as a newtype, so that one can never be passed for another, and
//! a token can never be logged or compared by accident.
//!
//! Names ([`NodeId`], [`SessionId`], [`TenantId`]) are strings chosen by operators and the control plane;
//! [`TunnelId`] is a random UUID. Secrets ([`SessionToken`], [`TunnelToken`], [`ClusterSecret`]) print as a
//! mask in `Debug`. Tokens are looked up by their SHA-256 [`TokenDigest`]: a map keyed by the digest leaks
//! nothing useful through timing, and the final comparison of digests is constant-time. New ids and tokens
//! come from the operating system's CSPRNG.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// One tunnel: one browser connection and the upstream socket it owns. Shown lower-case and hyphenated,
/// as the Java servlet's `UUID.randomUUID()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TunnelId(Uuid);

impl TunnelId {
    /// A new, random tunnel id.
    pub fn random() -> Self {
        Self::from_random_bytes(random_bytes())
    }

    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    pub fn parse(text: &str) -> Option<Self> {
        Uuid::try_parse(text).ok().map(Self)
    }
}

impl fmt::Display for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// SHA-256 of a secret; the form in which secrets are stored and looked up.
#[derive(Clone, Copy, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads exactly 64 hex digits (either case); nothing else, so one digest has one spelling per case.
    pub fn from_hex(hex: &str) -> Option<Self> {
        // `from_str_radix` alone would also take a sign (`+f`).
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl Serialize for TokenDigest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenDigest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(deserializer)?;
        Self::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

impl PartialEq for TokenDigest {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::hash::Hash for TokenDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({}…)", &self.to_hex()[..8])
    }
}

macro_rules! secret {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub fn new(secret: impl Into<String>) -> Self {
                Self(secret.into())
            }

            pub fn expose(&self) -> &str {
                &self.0
            }

            pub fn digest(&self) -> TokenDigest {
                TokenDigest::of(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(****)"))
            }
        }
    };
}

secret!(
    /// What a session grants: handed to the browser by the platform's backend, presented on connect.
    SessionToken
);

secret!(
    /// The `Guacamole-Tunnel-Token` of an HTTP tunnel: the only thing that identifies it on read and write.
    TunnelToken
);

secret!(
    /// The secret every node of a cluster shares, presented on requests to a node's peer listener.
    ClusterSecret
);

impl SessionToken {
    /// A new token: 32 random bytes, URL-safe Base64 (43 characters), so it can sit in a query string.
    pub fn random() -> Self {
        use base64::Engine;
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
    }
}

impl TunnelToken {
    /// A new token, as the Java servlet makes them: 33 random bytes in standard Base64, 44 characters.
    pub fn random() -> Self {
        Self::from_random_bytes(random_bytes())
    }

    pub fn from_random_bytes(bytes: [u8; 33]) -> Self {
        use base64::Engine;
        Self(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

impl ClusterSecret {
    /// Whether `presented` is this secret, compared in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

macro_rules! name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name!(
    /// A node's stable name (its pod name in Kubernetes).
    NodeId
);

name!(
    /// A session's public id: what the control plane lists, kills and shares (never the token).
    SessionId
);

name!(
    /// The tenant a session belongs to.
    TenantId
);

impl SessionId {
    /// A new session id: a random UUID.
    pub fn random() -> Self {
        Self(
            uuid::Builder::from_random_bytes(random_bytes())
                .into_uuid()
                .to_string(),
        )
    }
}

/// Bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    #[allow(
        clippy::expect_used,
        reason = "the OS's CSPRNG does not fail on any platform deskbroker runs on; if it did, no token could be secure"
    )]
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let token = SessionToken::new("hunter2");
        assert_eq!(format!("{token:?}"), "SessionToken(****)");
        let secret = ClusterSecret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "ClusterSecret(****)");
        assert!(secret.matches(b"hunter2"));
        assert!(!secret.matches(b"hunter"));
    }

    #[test]
    fn random_ids_and_tokens_differ() {
        assert_ne!(TunnelId::random(), TunnelId::random());
        assert_ne!(SessionId::random(), SessionId::random());
        let token = SessionToken::random();
        assert_eq!(token.expose().len(), 43);
        assert_ne!(token, SessionToken::random());
        assert_eq!(TunnelToken::random().expose().len(), 44);
    }

    #[test]
    fn digests_compare_by_value() {
        let digest = TokenDigest::of("a");
        assert_eq!(TokenDigest::from_hex(&digest.to_hex()), Some(digest));
        assert_eq!(TokenDigest::from_hex("zz"), None);
        // Found by fuzzing: a `+` before a digit pair was read as a sign.
        let signed = format!("+f{}", &digest.to_hex()[2..]);
        assert_eq!(TokenDigest::from_hex(&signed), None);
        assert_eq!(
            TokenDigest::from_hex(&digest.to_hex().to_uppercase()),
            Some(digest)
        );
        assert_eq!(TokenDigest::of("a"), TokenDigest::of("a"));
        assert_ne!(TokenDigest::of("a"), TokenDigest::of("b"));
    }

    #[test]
    fn tunnel_tokens_look_like_the_servlets() {
        let token = TunnelToken::from_random_bytes([0xfb; 33]);
        assert_eq!(token.expose().len(), 44);
        assert!(token.expose().starts_with("+/v7"));
        let id = TunnelId::from_random_bytes([7; 16]).to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(TunnelId::parse(&id).map(|id| id.to_string()), Some(id));
    }
}
