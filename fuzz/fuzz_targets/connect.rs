//! The connect data a Guacamole client sends (`ConnectRequest::parse`), the token digests tenants are
//! stored with (`TokenDigest::from_hex`) and the addresses targets name (`HostPort::parse`).
//!
//! Checks: nothing panics; connect data always yields values within their bounds, and the request, written
//! back as a form, parses to itself; a digest parses exactly from 64 hex digits and prints back as them
//! (lower-cased); an address that parses prints back to a form that parses to it.

#![no_main]

use deskbroker_shared::connect::{ConnectRequest, MAX_DIMENSION, MAX_MIMETYPES};
use deskbroker_shared::ids::TokenDigest;
use deskbroker_shared::session::HostPort;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_connect(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_digest(text);
    if let Ok(addr) = HostPort::parse(text) {
        assert!(!addr.host.is_empty());
        assert!(!addr.host.contains(|c: char| c.is_whitespace() || c == '/'));
        let shown = addr.to_string();
        assert_eq!(HostPort::parse(&shown).as_ref(), Ok(&addr), "{shown:?}");
    }
});

fn check_connect(form: &[u8]) {
    let request = ConnectRequest::parse(form);
    let client = &request.client;
    for value in [client.width, client.height, client.dpi] {
        assert!((1..=MAX_DIMENSION).contains(&value));
    }
    for list in [&client.audio, &client.video, &client.image] {
        assert!(list.len() <= MAX_MIMETYPES);
        assert!(list.iter().all(|mimetype| !mimetype.is_empty()));
    }
    assert!(client.timezone.as_ref().is_none_or(|tz| !tz.is_empty()));
    assert!(
        request
            .token
            .as_ref()
            .is_none_or(|t| !t.expose().is_empty())
    );

    let mut written = form_urlencoded::Serializer::new(String::new());
    if let Some(token) = &request.token {
        written.append_pair("token", token.expose());
    }
    written.append_pair("GUAC_WIDTH", &client.width.to_string());
    written.append_pair("GUAC_HEIGHT", &client.height.to_string());
    written.append_pair("GUAC_DPI", &client.dpi.to_string());
    if let Some(timezone) = &client.timezone {
        written.append_pair("GUAC_TIMEZONE", timezone);
    }
    for (name, list) in [
        ("GUAC_AUDIO", &client.audio),
        ("GUAC_VIDEO", &client.video),
        ("GUAC_IMAGE", &client.image),
    ] {
        for mimetype in list {
            written.append_pair(name, mimetype);
        }
    }
    if let Some(replaces) = &request.replaces {
        written.append_pair("replaces", &replaces.to_string());
    }
    let written = written.finish();
    assert_eq!(
        ConnectRequest::parse(written.as_bytes()),
        request,
        "{written}"
    );
}

fn check_digest(text: &str) {
    let hex = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
    let digest = TokenDigest::from_hex(text);
    assert_eq!(digest.is_some(), hex, "{text:?}");
    if let Some(digest) = digest {
        assert_eq!(digest.to_hex(), text.to_ascii_lowercase());
    }
}
