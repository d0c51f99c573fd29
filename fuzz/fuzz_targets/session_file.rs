//! The session file of single-node mode, and the targets it names (`Target::parse`, `HostPort::parse`).
//!
//! Checks: nothing panics; a file that parses has one session per line that is neither blank nor a
//! comment, with a token that is that line's text before its first `:`; every target reads back from its
//! URL form (as the registry stores it) and every address from its display form; a session survives the
//! registry's JSON (to the millisecond its expiry is stored in); a refusal names a line that holds a
//! session.

#![no_main]

use deskbroker_broker::session_file;
use deskbroker_shared::session::{HostPort, Session, Target};
use deskbroker_shared::time::{from_unix_ms, unix_ms};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_target(text);
    for word in text.split_whitespace() {
        check_target(word);
        check_target(word.split_once(':').map_or(word, |(_, rest)| rest));
    }

    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .collect();
    match session_file::parse(text) {
        Ok(sessions) => {
            assert_eq!(sessions.len(), lines.len(), "one session per line");
            for ((token, session), (_, line)) in sessions.iter().zip(&lines) {
                let written = line.split_once(':').map(|(token, _)| token.trim());
                assert_eq!(Some(token.expose()), written);
                assert!(!token.expose().is_empty());
                check_target_value(&session.target);
                check_json(session);
            }
        }
        Err(error) => {
            assert!(
                lines.iter().any(|(index, _)| index + 1 == error.line),
                "line {} holds no session",
                error.line
            );
        }
    }
});

fn check_target(text: &str) {
    if let Ok(target) = Target::parse(text) {
        check_target_value(&target);
    }
    if let Ok(addr) = HostPort::parse(text) {
        check_addr(&addr);
    }
}

fn check_target_value(target: &Target) {
    let url = target.to_url();
    assert_eq!(
        Target::parse(&url).as_ref(),
        Ok(target),
        "reads back from {url:?}"
    );
    check_addr(target.addr());
    let _ = format!("{target:?}");
}

fn check_addr(addr: &HostPort) {
    assert!(!addr.host.is_empty());
    let shown = addr.to_string();
    assert_eq!(
        HostPort::parse(&shown).as_ref(),
        Ok(addr),
        "reads back from {shown:?}"
    );
}

fn check_json(session: &Session) {
    let json = match serde_json::to_string(session) {
        Ok(json) => json,
        Err(error) => panic!("a parsed session does not serialize: {error}"),
    };
    let stored = match serde_json::from_str::<Session>(&json) {
        Ok(stored) => stored,
        Err(error) => panic!("{json} does not read back: {error}"),
    };
    let mut expected = session.clone();
    expected.expires = session.expires.map(|t| from_unix_ms(unix_ms(t)));
    assert_eq!(stored, expected);
}
