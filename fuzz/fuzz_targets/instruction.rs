//! The Guacamole instruction scanner and decoder, on bytes from a browser or a guacd.
//!
//! Checks: the same stream, read whole or in arbitrary reads, gives the same error and, without one, the
//! same instructions and bytes held (with one, a prefix of them); the buffer never holds more than one bounded instruction; every instruction
//! is within guacd's limits, decodes to values that sit where their lengths say (in code points), and
//! re-encodes to its own bytes (up to leading zeros in the lengths); the quick checks that skip decoding
//! (`opcode`, `is_internal`, `from_browser`) agree with the decoder; nothing panics on arbitrary bytes.

#![no_main]

use deskbroker_fuzz::Split;
use deskbroker_shared::instruction::{self, FromBrowser, Instruction};
use deskbroker_shared::scanner::{MAX_ELEMENT_LENGTH, MAX_ELEMENTS, MAX_INSTRUCTION_BYTES};
use deskbroker_shared::{InstructionBuffer, ParseError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Split::read(data);
    let whole = Outcome::one_by_one(&[&input.stream]);
    let split = Outcome::in_batches(&input.chunks());
    assert_eq!(whole.error, split.error, "same error whatever the reads");
    if whole.error.is_none() {
        assert_eq!(
            whole.bytes, split.bytes,
            "same instructions whatever the reads"
        );
        assert_eq!(whole.held, split.held, "same bytes held whatever the reads");
    } else {
        // A batch that meets the error is not handed out: it is lost with the connection.
        assert!(
            whole.bytes.starts_with(&split.bytes),
            "a prefix before an error"
        );
    }
    for bytes in &whole.instructions {
        check_instruction(bytes);
    }

    // The decoder and the quick checks on arbitrary bytes, not only on what the scanner let through.
    let stream = &input.stream[..];
    if let Ok(decoded) = Instruction::parse(stream) {
        assert_eq!(
            whole.instructions,
            [stream],
            "parse accepts one whole instruction"
        );
        assert_eq!(Instruction::parse(decoded.encode().as_bytes()), Ok(decoded));
    }
    let _ = instruction::opcode(stream);
    let _ = instruction::from_browser(stream, input.flags[0]);
});

/// What a receive buffer made of a stream.
struct Outcome {
    instructions: Vec<Vec<u8>>,
    bytes: Vec<u8>,
    error: Option<ParseError>,
    held: usize,
}

impl Outcome {
    /// Each read's instructions taken one at a time.
    fn one_by_one(reads: &[&[u8]]) -> Self {
        Self::run(reads, |_| false)
    }

    /// Alternately all of a read's instructions at once and one at a time.
    fn in_batches(reads: &[&[u8]]) -> Self {
        Self::run(reads, |read| read % 2 == 0)
    }

    fn run(reads: &[&[u8]], batch: impl Fn(usize) -> bool) -> Self {
        let mut buffer = InstructionBuffer::default();
        let mut outcome = Self {
            instructions: Vec::new(),
            bytes: Vec::new(),
            error: None,
            held: 0,
        };
        for (read, bytes) in reads.iter().enumerate() {
            buffer.extend_from_slice(bytes);
            let taken = if batch(read) {
                buffer.take_instructions().map(|run| {
                    if let Some(run) = run {
                        outcome.bytes.extend_from_slice(&run);
                    }
                })
            } else {
                loop {
                    match buffer.next_instruction() {
                        Ok(Some(one)) => {
                            outcome.bytes.extend_from_slice(&one);
                            outcome.instructions.push(one.to_vec());
                        }
                        Ok(None) => break Ok(()),
                        Err(error) => break Err(error),
                    }
                }
            };
            if let Err(error) = taken {
                // The stream is out of step: the connection would be closed here.
                outcome.error = Some(error);
                break;
            }
            assert!(
                buffer.len() <= MAX_INSTRUCTION_BYTES,
                "holds {} bytes after taking what is whole",
                buffer.len()
            );
        }
        outcome.held = buffer.len();
        outcome
    }
}

/// One instruction the scanner let through.
fn check_instruction(bytes: &[u8]) {
    assert!(
        bytes.len() <= MAX_INSTRUCTION_BYTES,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(bytes.last(), Some(&b';'));
    let decoded = match Instruction::parse(bytes) {
        Ok(decoded) => decoded,
        Err(error) => {
            // Only what the scanner does not check (overlong forms, surrogates) may fail to decode.
            assert_eq!(error, ParseError::BadUtf8);
            assert!(std::str::from_utf8(bytes).is_err());
            return;
        }
    };
    let elements: Vec<&str> = std::iter::once(decoded.opcode.as_str())
        .chain(decoded.args.iter().map(String::as_str))
        .collect();
    assert!(elements.len() <= MAX_ELEMENTS);

    // Walk the bytes with the decoded values: each sits after its length, which counts its code points.
    let mut canonical = Vec::new();
    let mut rest = bytes;
    for (index, value) in elements.iter().enumerate() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let length: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.trim_start_matches('0').parse().ok())
            .unwrap_or(0);
        assert_eq!(length, value.chars().count(), "element {index}");
        assert!(length <= MAX_ELEMENT_LENGTH);
        assert_eq!(rest[digits], b'.');
        rest = &rest[digits + 1..];
        assert!(rest.starts_with(value.as_bytes()), "element {index}");
        rest = &rest[value.len()..];
        let last = index + 1 == elements.len();
        assert_eq!(rest[0], if last { b';' } else { b',' });
        rest = &rest[1..];
        canonical.extend_from_slice(format!("{length}.{value}").as_bytes());
        canonical.push(if last { b';' } else { b',' });
    }
    assert!(rest.is_empty());
    assert_eq!(
        decoded.encode().as_bytes(),
        canonical,
        "re-encodes to itself"
    );

    // The quick checks agree with the decoder.
    assert_eq!(
        instruction::is_internal(bytes),
        decoded.is_internal(),
        "is_internal"
    );
    let opcode = instruction::opcode(bytes);
    if decoded.opcode.is_ascii() {
        assert_eq!(opcode, decoded.opcode.as_bytes(), "opcode");
    }
    assert_eq!(
        instruction::viewer_may_send(opcode),
        instruction::viewer_may_send(decoded.opcode.as_bytes()),
        "viewer_may_send"
    );
    for read_only in [false, true] {
        let expected = if decoded.is_internal() {
            let ping = decoded.args.len() >= 2 && decoded.args[0] == "ping";
            if ping {
                FromBrowser::Ping
            } else {
                FromBrowser::Drop
            }
        } else if read_only && !instruction::viewer_may_send(decoded.opcode.as_bytes()) {
            FromBrowser::Drop
        } else {
            FromBrowser::Relay
        };
        assert_eq!(
            instruction::from_browser(bytes, read_only),
            expected,
            "from_browser, read-only {read_only}"
        );
    }
}
