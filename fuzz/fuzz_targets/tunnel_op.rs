//! The HTTP tunnel's operation, read from the raw query string of `/tunnel`.
//!
//! Checks: nothing panics; the operation agrees with the servlet's rules computed another way (on bytes);
//! a refused query is quoted in the error as at most its first 64 characters, cut on a character boundary.

#![no_main]

use deskbroker_shared::tunnel_op::{MAX_SHOWN, Operation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let expected = match data {
        b"connect" => Some(Operation::Connect),
        [b'r', b'e', b'a', b'd', b':', ..] => Some(Operation::Read),
        [b'w', b'r', b'i', b't', b'e', b':', ..] => Some(Operation::Write),
        _ => None,
    };
    match Operation::parse(query) {
        Ok(operation) => assert_eq!(Some(operation), expected),
        Err(error) => {
            assert_eq!(expected, None, "{query:?} refused");
            let shown = error.shown();
            assert!(query.starts_with(shown));
            assert_eq!(shown.chars().count(), query.chars().count().min(MAX_SHOWN));
            assert_eq!(
                error.to_string(),
                format!("Invalid tunnel operation: {shown}")
            );
        }
    }
});
