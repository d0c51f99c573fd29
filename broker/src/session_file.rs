//! The session file of single-node mode: like websockify's token file, one session per line.
//!
//! ```text
//! # comments and blank lines are ignored
//! <token>: <target> [tenant=<id>] [expires=<RFC 3339 time>] [idle_timeout=<duration>] [exclusive] [read_only]
//! desk1: 10.0.0.5:5901
//! desk2: vnc://desk-2.desktops.svc:5900 tenant=acme idle_timeout=15m
//! win1: guacd://127.0.0.1:4822/rdp?hostname=10.0.0.9&username=bob&password=s%3Dcret expires=2027-01-01T00:00:00Z
//! ```
//!
//! Targets are written as [`Target::parse`] reads them. An idle timeout (`15m`, `1h`) is between 10s and
//! a year, and is the session's own: a tenant's limits do not apply to the operator's sessions. `exclusive`
//! and `read_only` are the API's session flags. A websockify token file (`token: host:port`) is a valid
//! session file. Tokens are secrets: treat the file like a password file.

use std::time::SystemTime;

use deskbroker_shared::ids::{SessionId, SessionToken, TenantId};
use deskbroker_shared::session::{BadTarget, Session, Target};

use crate::tenants::idle_timeout::{self, BadIdleTimeout};

/// Tenant of sessions whose line names none.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("session file line {line}: {problem}")]
pub struct SessionFileError {
    pub line: usize,
    pub problem: Problem,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("expected `<token>: <target>`")]
    MissingColon,
    #[error("empty token")]
    EmptyToken,
    #[error(transparent)]
    Target(#[from] BadTarget),
    #[error(
        "unknown option {0:?} (expected tenant=, expires=, idle_timeout=, exclusive or read_only)"
    )]
    UnknownOption(String),
    #[error("expires: {0}")]
    BadExpiry(String),
    #[error(transparent)]
    IdleTimeout(#[from] BadIdleTimeout),
}

/// Parses a whole session file.
pub fn parse(text: &str) -> Result<Vec<(SessionToken, Session)>, SessionFileError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(index, line)| {
            parse_line(line).map_err(|problem| SessionFileError {
                line: index + 1,
                problem,
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Result<(SessionToken, Session), Problem> {
    let (token, rest) = line.split_once(':').ok_or(Problem::MissingColon)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Problem::EmptyToken);
    }
    let mut words = rest.split_whitespace();
    let target = Target::parse(words.next().unwrap_or_default())?;
    let token = SessionToken::new(token);
    // A stable public id that reveals nothing about the token.
    let id = SessionId::new(format!("file-{}", &token.digest().to_hex()[..16]));
    let mut session = Session {
        // The operator wrote the file.
        trusted_target: true,
        ..Session::new(id, TenantId::new(DEFAULT_TENANT), target)
    };
    for option in words {
        match option.split_once('=') {
            Some(("tenant", tenant)) if !tenant.is_empty() => {
                session.tenant = TenantId::new(tenant)
            }
            Some(("expires", when)) => session.expires = Some(expiry(when)?),
            Some(("idle_timeout", idle)) => {
                session.idle_timeout = Some(idle_timeout::parse_bounded(idle)?)
            }
            None if option == "exclusive" => session.exclusive = true,
            None if option == "read_only" => session.read_only = true,
            _ => return Err(Problem::UnknownOption(option.to_owned())),
        }
    }
    Ok((token, session))
}

fn expiry(text: &str) -> Result<SystemTime, Problem> {
    humantime::parse_rfc3339_weak(text).map_err(|error| Problem::BadExpiry(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_websockify_and_extended_lines() {
        let sessions = parse(
            "# desktops\n\ndesk1: 10.0.0.5:5901\n\
             win: guacd://127.0.0.1:4822/rdp?hostname=w tenant=acme expires=2030-01-01T00:00:00Z\n",
        )
        .unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0].0.expose(), "desk1");
        assert_eq!(sessions[0].1.tenant.as_str(), DEFAULT_TENANT);
        assert_eq!(sessions[1].1.tenant.as_str(), "acme");
        assert!(sessions[1].1.expires.is_some());
        assert_eq!(sessions[0].1.idle_timeout, None);
    }

    #[test]
    fn reads_the_session_flags() {
        let sessions = parse("a: h:1 exclusive\nb: h:1 read_only tenant=t\nc: h:1\n").unwrap();
        let flags: Vec<_> = sessions
            .iter()
            .map(|(_, s)| (s.exclusive, s.read_only))
            .collect();
        assert_eq!(flags, [(true, false), (false, true), (false, false)]);
        assert!(matches!(
            parse("a: h:1 exclusive=yes").unwrap_err().problem,
            Problem::UnknownOption(_)
        ));
    }

    #[test]
    fn reads_an_idle_timeout_within_bounds() {
        let sessions = parse("t: h:1 idle_timeout=15m tenant=acme\n").unwrap();
        assert_eq!(
            sessions[0].1.idle_timeout,
            Some(std::time::Duration::from_secs(900))
        );
        for refused in ["5s", "2y", "soon", ""] {
            assert!(
                matches!(
                    parse(&format!("t: h:1 idle_timeout={refused}"))
                        .unwrap_err()
                        .problem,
                    Problem::IdleTimeout(_)
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn says_which_line_is_wrong() {
        let error = parse("ok: h:1\nbroken line\n").unwrap_err();
        assert_eq!((error.line, error.problem), (2, Problem::MissingColon));
        assert_eq!(parse(": h:1").unwrap_err().problem, Problem::EmptyToken);
        assert!(matches!(
            parse("t: h:1 colour=red").unwrap_err().problem,
            Problem::UnknownOption(_)
        ));
        assert!(matches!(
            parse("t: h:1 expires=soon").unwrap_err().problem,
            Problem::BadExpiry(_)
        ));
        assert!(matches!(
            parse("t: nowhere").unwrap_err().problem,
            Problem::Target(_)
        ));
    }
}
