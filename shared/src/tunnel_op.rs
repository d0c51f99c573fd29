//! The HTTP tunnel's operations, as the unmodified `Guacamole.HTTPTunnel` names them in the raw query
//! string of `/tunnel`: `connect`, `read:<uuid>:<n>` and `write:<uuid>`.
//!
//! Only the prefix is read. The UUID is never trusted (a tunnel is found by its `Guacamole-Tunnel-Token`
//! header alone) and `<n>` only defeats caches, so neither is parsed. The error text is the Java servlet's,
//! which the stock client shows; what it quotes of the query is bounded, since the query is the browser's.

/// The header that names an HTTP tunnel after `connect` (its value is the tunnel's secret token): the
/// only thing a read or a write is found by.
pub const TUNNEL_TOKEN_HEADER: &str = "guacamole-tunnel-token";

/// Most characters of a rejected query quoted back in the error.
pub const MAX_SHOWN: usize = 64;

/// One request of the HTTP tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `connect`: open a tunnel with the connect data in the body.
    Connect,
    /// `read:…`: stream guacd's output.
    Read,
    /// `write:…`: send the body's instructions to guacd.
    Write,
}

/// A query that names no operation (or one the listener does not serve).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid tunnel operation: {shown}")]
pub struct InvalidOperation {
    shown: String,
}

impl InvalidOperation {
    /// The error for `query`, quoting at most its first [`MAX_SHOWN`] characters.
    pub fn new(query: &str) -> Self {
        Self {
            shown: query.chars().take(MAX_SHOWN).collect(),
        }
    }

    /// What the error quotes of the query.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl Operation {
    /// Reads the operation from the raw (not percent-decoded) query string.
    pub fn parse(query: &str) -> Result<Self, InvalidOperation> {
        if query == "connect" {
            Ok(Self::Connect)
        } else if query.starts_with("read:") {
            Ok(Self::Read)
        } else if query.starts_with("write:") {
            Ok(Self::Write)
        } else {
            Err(InvalidOperation::new(query))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_servlets_operations() {
        assert_eq!(Operation::parse("connect"), Ok(Operation::Connect));
        assert_eq!(
            Operation::parse("read:0f7c1d2e-0000-4000-8000-000000000000:3"),
            Ok(Operation::Read)
        );
        assert_eq!(Operation::parse("read:x"), Ok(Operation::Read));
        assert_eq!(Operation::parse("write:"), Ok(Operation::Write));
    }

    #[test]
    fn quotes_a_bounded_part_of_what_it_refuses() {
        let error = Operation::parse("banana").unwrap_err();
        assert_eq!(error.to_string(), "Invalid tunnel operation: banana");
        for query in ["", "connect:", "Connect", "read", "write", "readx:1"] {
            assert!(Operation::parse(query).is_err(), "{query:?}");
        }
        let long = "\u{e9}".repeat(100);
        let shown = Operation::parse(&long).unwrap_err();
        assert_eq!(shown.shown().chars().count(), MAX_SHOWN);
        assert!(long.starts_with(shown.shown()));
    }
}
