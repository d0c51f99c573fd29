//! The RFB filter that keeps a read-only viewer's input from a VNC server, on bytes from the browser.
//!
//! Checks: nothing panics; the filter is a function of the bytes, not of the reads they arrive in (the
//! same output and the same error whole or split, and after every read a prefix of the whole output);
//! without read-only or forced sharing it passes its input unchanged, holding back at most one
//! incomplete header; and read-only filtering is
//! idempotent: what it let through, filtered again, comes out the same, so it let no input through that
//! a fresh filter would have dropped.

#![no_main]

use deskbroker_fuzz::Split;
use deskbroker_shared::rfb::{ReadOnlyFilter, RfbError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Split::read(data);
    let [read_only, force_shared] = input.flags;
    let (whole, whole_error) = filter(
        ReadOnlyFilter::new(read_only, force_shared),
        &[&input.stream],
    );

    let mut split = ReadOnlyFilter::new(read_only, force_shared);
    let mut out = Vec::new();
    let mut split_error = None;
    for chunk in input.chunks() {
        if let Err(error) = split.filter(chunk, &mut out) {
            split_error = Some(error);
            break;
        }
        assert!(
            whole.starts_with(&out),
            "after each read, a prefix of the whole output"
        );
    }
    assert_eq!(out, whole, "same output whatever the reads");
    assert_eq!(split_error, whole_error, "same error whatever the reads");

    if !read_only && !force_shared {
        assert!(input.stream.starts_with(&whole), "passes its input");
        if whole_error.is_none() {
            // All but a message header still incomplete (SetPixelFormat's 20 bytes are the longest).
            assert!(
                input.stream.len() - whole.len() < 20,
                "holds one header at most"
            );
        }
    }
    if read_only {
        let (again, _) = filter(ReadOnlyFilter::new(true, force_shared), &[&whole]);
        assert_eq!(again, whole, "read-only filtering is idempotent");
    }
});

fn filter(mut filter: ReadOnlyFilter, reads: &[&[u8]]) -> (Vec<u8>, Option<RfbError>) {
    let mut out = Vec::new();
    for read in reads {
        if let Err(error) = filter.filter(read, &mut out) {
            return (out, Some(error));
        }
    }
    (out, None)
}
