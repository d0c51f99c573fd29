//! One decoded Guacamole instruction: an opcode and its arguments, with the wire encoding both ways.
//!
//! Decoding is for the few instructions deskbroker looks inside (the guacd handshake, the tunnel-internal
//! messages with the empty opcode); relayed traffic is passed on as bytes, with boundaries found by
//! [`crate::scanner`]. Lengths are counted in Unicode code points, as every Guacamole implementation since
//! 1.5.2 does.

use std::fmt::{self, Write};

use crate::scanner::{ParseError, Scanner};

/// The opcode of tunnel-internal messages (`Guacamole.Tunnel.INTERNAL_DATA_OPCODE`): never sent to guacd.
pub const INTERNAL_OPCODE: &str = "";

/// The end-of-response marker of an HTTP tunnel read: the internal opcode with no arguments.
pub const END_OF_RESPONSE: &[u8] = b"0.;";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub opcode: String,
    pub args: Vec<String>,
}

impl Instruction {
    pub fn new<I, S>(opcode: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            opcode: opcode.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// Decodes exactly one complete instruction; trailing bytes are an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let end = Scanner::default().next_end(bytes)?;
        if end != Some(bytes.len()) {
            return Err(match end {
                Some(end) => ParseError::BadTerminator(bytes[end]),
                None => ParseError::BadTerminator(b';'),
            });
        }
        // The scanner checked lead and continuation bytes; this also rejects overlong forms and surrogates.
        let text = std::str::from_utf8(bytes).map_err(|_| ParseError::BadUtf8)?;
        let mut elements = Elements { rest: text };
        let opcode = elements.next().unwrap_or_default().to_owned();
        let args = elements.map(str::to_owned).collect();
        Ok(Self { opcode, args })
    }

    /// True for the tunnel-internal messages (`0.,…;`), which a tunnel server consumes itself.
    pub fn is_internal(&self) -> bool {
        self.opcode == INTERNAL_OPCODE
    }

    /// The wire form, e.g. `4.size,1.0,4.1024,3.768;`.
    pub fn encode(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_element(f, &self.opcode)?;
        for arg in &self.args {
            f.write_char(',')?;
            write_element(f, arg)?;
        }
        f.write_char(';')
    }
}

fn write_element(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    write!(f, "{}.{value}", value.chars().count())
}

/// True when `bytes` (one whole instruction) has the internal opcode, without decoding it. The length may
/// be written with leading zeros (`00.`), as every Guacamole parser reads it.
pub fn is_internal(bytes: &[u8]) -> bool {
    match bytes.iter().position(|&b| b == b'.') {
        Some(dot) => dot > 0 && bytes[..dot].iter().all(|&b| b == b'0'),
        None => false,
    }
}

/// What a read-only viewer may send to guacd: keep-alives, frame acknowledgements, stream
/// acknowledgements and leaving. Everything else (key, mouse, touch, clipboard, file and pipe streams,
/// size, argv, get, put, …) controls the desktop and is dropped.
pub fn viewer_may_send(opcode: &[u8]) -> bool {
    matches!(opcode, b"nop" | b"sync" | b"ack" | b"disconnect")
}

/// What a person does, for an idle timeout: keys, the mouse, touches, the clipboard, and the streams a
/// user sends (file uploads, pipes, objects, and any stream's data). Never what the client sends by
/// itself: `sync` (frame acknowledgements), `nop`, `ack`, `size` (a resized window), the tunnel's pings.
pub fn is_user_input(opcode: &[u8]) -> bool {
    matches!(
        opcode,
        b"key" | b"mouse" | b"touch" | b"clipboard" | b"file" | b"pipe" | b"put" | b"blob" | b"end"
    )
}

/// What a tunnel does with one whole instruction from the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromBrowser {
    /// Relay it to guacd, unchanged.
    Relay,
    /// A tunnel-internal ping (`0.,4.ping,<timestamp>;`): a WebSocket tunnel answers it with itself, as the
    /// Java endpoint does.
    Ping,
    /// Drop it: other tunnel-internal messages are never guacd's business, and a read-only viewer's input
    /// would control the desktop.
    Drop,
}

/// The one rule both Guacamole tunnels apply to what the browser sends.
pub fn from_browser(bytes: &[u8], read_only: bool) -> FromBrowser {
    if is_internal(bytes) {
        let ping =
            Instruction::parse(bytes).is_ok_and(|i| i.args.len() >= 2 && i.args[0] == "ping");
        return if ping {
            FromBrowser::Ping
        } else {
            FromBrowser::Drop
        };
    }
    if read_only && !viewer_may_send(opcode(bytes)) {
        return FromBrowser::Drop;
    }
    FromBrowser::Relay
}

/// The opcode of one whole, already scanned instruction, without decoding the rest. Opcodes are ASCII in
/// every Guacamole version, so the length in code points is the length in bytes.
pub fn opcode(bytes: &[u8]) -> &[u8] {
    let Some(dot) = bytes.iter().position(|&b| b == b'.') else {
        return b"";
    };
    let len = bytes[..dot].iter().fold(0usize, |n, d| {
        n.saturating_mul(10)
            .saturating_add(usize::from(d.wrapping_sub(b'0')))
    });
    // Checked slicing: `len` saturates on bytes the scanner never saw, and `dot + 1 + len` would overflow.
    bytes
        .get(dot + 1..)
        .and_then(|rest| rest.get(..len))
        .unwrap_or(b"")
}

/// Iterates over the element values of an instruction already checked by the scanner.
struct Elements<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Elements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let dot = self.rest.find('.')?;
        let chars: usize = self.rest[..dot].parse().ok()?;
        let value = &self.rest[dot + 1..];
        let len = value
            .char_indices()
            .nth(chars)
            .map_or(value.len(), |(at, _)| at);
        let (value, rest) = value.split_at(len);
        // Skip the terminator (`,` or `;`).
        self.rest = rest.get(1..).unwrap_or("");
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_code_point_lengths() {
        let size = Instruction::new("size", ["0", "1024", "768"]);
        assert_eq!(size.encode(), "4.size,1.0,4.1024,3.768;");
        let name = Instruction::new("name", ["caf\u{e9} \u{1F600}"]);
        assert_eq!(name.encode(), "4.name,6.caf\u{e9} \u{1F600};");
        assert_eq!(Instruction::new("", Vec::<String>::new()).encode(), "0.;");
    }

    #[test]
    fn parses_what_it_encodes() {
        let ping = Instruction::parse(b"0.,4.ping,13.1700000000000;").unwrap();
        assert!(ping.is_internal());
        assert_eq!(ping.args, ["ping", "1700000000000"]);
        let tricky = Instruction::new("x", ["a,b;c.d", "", "\u{1F600}"]);
        assert_eq!(Instruction::parse(tricky.encode().as_bytes()), Ok(tricky));
    }

    #[test]
    fn rejects_partial_or_trailing_input() {
        assert!(Instruction::parse(b"3.nop").is_err());
        assert!(Instruction::parse(b"3.nop;3.nop;").is_err());
        assert!(Instruction::parse(b"").is_err());
    }

    #[test]
    fn sorts_what_the_browser_sends() {
        let ping = b"0.,4.ping,13.1700000000000;";
        assert_eq!(from_browser(ping, false), FromBrowser::Ping);
        assert_eq!(from_browser(ping, true), FromBrowser::Ping);
        assert_eq!(from_browser(b"0.,3.foo;", false), FromBrowser::Drop);
        assert_eq!(
            from_browser(b"0.,4.ping;", false),
            FromBrowser::Drop,
            "no timestamp"
        );
        assert_eq!(from_browser(b"3.key,2.65,1.1;", false), FromBrowser::Relay);
        assert_eq!(from_browser(b"3.key,2.65,1.1;", true), FromBrowser::Drop);
        assert_eq!(from_browser(b"4.sync,1.5;", true), FromBrowser::Relay);
    }

    #[test]
    fn peeks_opcodes() {
        assert_eq!(opcode(b"5.mouse,1.1,1.2;"), b"mouse");
        assert_eq!(opcode(b"0.;"), b"");
        assert!(is_internal(b"0.,4.ping,1.1;"));
        assert!(!is_internal(b"3.nop;"));
    }

    #[test]
    fn knows_internal_messages_however_their_length_is_written() {
        // Found by fuzzing: `00.,4.ping,…;` decodes to the internal opcode, but went to guacd as input.
        assert!(is_internal(b"00.,4.ping,13.1700000000000;"));
        assert_eq!(
            from_browser(b"000.,4.ping,13.1700000000000;", false),
            FromBrowser::Ping
        );
        assert_eq!(from_browser(b"00.,3.foo;", false), FromBrowser::Drop);
        assert!(!is_internal(b"03.nop;"));
        assert!(!is_internal(b".;"));
    }

    #[test]
    fn peeks_nothing_out_of_arbitrary_bytes() {
        // Found by fuzzing: a length that saturates at usize::MAX overflowed the end of the opcode.
        assert_eq!(opcode(b"99999999999999999999999.nop;"), b"");
        assert_eq!(opcode(b"\xd3_op.;"), b"");
        assert_eq!(opcode(b"9.nop;"), b"");
    }
}
