//! Read-only enforcement for raw VNC: a filter over the bytes a viewer sends to a VNC server (RFC 6143 and
//! the extensions noVNC uses) that passes everything a viewer needs to watch and drops every message that
//! would control the desktop: KeyEvent, PointerEvent, ClientCutText, QEMU key events, SetDesktopSize, xvp.
//!
//! The filter follows the viewer's side of the handshake (ProtocolVersion, its choice of security type,
//! the VNC Authentication response, ClientInit) and then frames messages by their type. It supports RFB
//! 3.7 and 3.8 with security types None and VNC Authentication: anything it cannot frame it refuses, since
//! an unparsed stream could smuggle input. It can also force ClientInit's shared flag, so that a second
//! viewer joins instead of disconnecting the first. It never buffers more than one message header.

/// Why the filter refused the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RfbError {
    #[error("RFB version not supported for read-only viewing")]
    Version,
    #[error("security type {0} not supported for read-only viewing")]
    Security(u8),
    #[error("client message type {0} not supported for read-only viewing")]
    Message(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the 12-byte ProtocolVersion.
    Version,
    /// The one byte naming the security type.
    Security,
    /// The 16-byte VNC Authentication response.
    AuthResponse,
    /// The one-byte ClientInit.
    ClientInit,
    /// A message header: enough bytes to know the message's length.
    Header,
    /// The rest of a message: `left` bytes to pass on or drop.
    Body { left: usize, pass: bool },
}

#[derive(Debug, Clone)]
pub struct ReadOnlyFilter {
    state: State,
    header: Vec<u8>,
    read_only: bool,
    force_shared: bool,
    /// A person's input came by since [`ReadOnlyFilter::take_input`] last asked (dropped or not).
    input: bool,
    /// The last PointerEvent's buttons and position: one that repeats them is no input.
    pointer: Option<[u8; 5]>,
}

/// Longest header the filter holds: SetDesktopSize's fixed part.
const MAX_HEADER: usize = 8;

impl ReadOnlyFilter {
    /// A filter that drops input when `read_only`, and sets ClientInit's shared flag when `force_shared`.
    pub fn new(read_only: bool, force_shared: bool) -> Self {
        Self {
            state: State::Version,
            header: Vec::with_capacity(MAX_HEADER),
            read_only,
            force_shared,
            input: false,
            pointer: None,
        }
    }

    /// Whether a person's input came by since the last call: a KeyEvent (or QEMU's), ClientCutText, or a
    /// PointerEvent that moved the pointer or changed its buttons. Update requests, encodings, pixel
    /// formats and fences are the client's own business.
    pub fn take_input(&mut self) -> bool {
        std::mem::take(&mut self.input)
    }

    /// Filters the next bytes from the viewer, appending what may reach the server to `out`.
    pub fn filter(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RfbError> {
        while !input.is_empty() {
            if let State::Body { left, pass } = self.state {
                let take = left.min(input.len());
                if pass {
                    out.extend_from_slice(&input[..take]);
                }
                input = &input[take..];
                self.state = if left == take {
                    State::Header
                } else {
                    State::Body {
                        left: left - take,
                        pass,
                    }
                };
                continue;
            }
            let wanted = self.wanted()?;
            let take = (wanted - self.header.len()).min(input.len());
            self.header.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.header.len() == wanted && self.wanted()? == wanted {
                self.complete(out)?;
            }
        }
        Ok(())
    }

    /// Bytes the current unit needs before the filter can decide about it.
    fn wanted(&self) -> Result<usize, RfbError> {
        let h = &self.header;
        Ok(match self.state {
            State::Version => 12,
            State::Security | State::ClientInit => 1,
            State::AuthResponse => 16,
            State::Body { .. } => 0,
            State::Header => match h.first() {
                None => 1,
                Some(0) => 20,                 // SetPixelFormat
                Some(2) => 4,                  // SetEncodings: then 4 bytes per encoding
                Some(3) | Some(150) => 10,     // FramebufferUpdateRequest, EnableContinuousUpdates
                Some(4) => 8,                  // KeyEvent
                Some(5) => 6,                  // PointerEvent
                Some(6) => 8,                  // ClientCutText: then its text
                Some(248) => 9,                // ClientFence: then its payload
                Some(251) => 8,                // SetDesktopSize: then 16 bytes per screen
                Some(252) => 4,                // xvp
                Some(255) if h.len() < 2 => 2, // QEMU: the subtype decides
                Some(255) if h[1] == 0 => 12,  // QEMU extended key event
                Some(&other) => return Err(RfbError::Message(other)),
            },
        })
    }

    /// Acts on a complete handshake unit or message header.
    fn complete(&mut self, out: &mut Vec<u8>) -> Result<(), RfbError> {
        let header = std::mem::take(&mut self.header);
        let pass = |filter: &Self, control: bool| !(filter.read_only && control);
        let (next, forward, rest) = match self.state {
            State::Version => match &header[..] {
                b"RFB 003.007\n" | b"RFB 003.008\n" => (State::Security, true, 0),
                _ => return Err(RfbError::Version),
            },
            State::Security => match header[0] {
                1 => (State::ClientInit, true, 0),
                2 => (State::AuthResponse, true, 0),
                other => return Err(RfbError::Security(other)),
            },
            State::AuthResponse => (State::ClientInit, true, 0),
            State::ClientInit => {
                out.push(if self.force_shared { 1 } else { header[0] });
                self.state = State::Header;
                return Ok(());
            }
            State::Header => {
                let be16 = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
                let be32 = |i: usize| {
                    u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
                        as usize
                };
                match header[0] {
                    4 | 6 | 255 => self.input = true,
                    5 => {
                        let pointer = [header[1], header[2], header[3], header[4], header[5]];
                        self.input |= self.pointer.replace(pointer) != Some(pointer);
                    }
                    _ => {}
                }
                match header[0] {
                    2 => (State::Header, true, 4 * be16(2)),
                    6 => (State::Header, pass(self, true), be32(4)),
                    248 => (State::Header, true, usize::from(header[8])),
                    251 => (State::Header, pass(self, true), 16 * usize::from(header[6])),
                    4 | 5 | 252 | 255 => (State::Header, pass(self, true), 0),
                    _ => (State::Header, true, 0),
                }
            }
            State::Body { .. } => unreachable!("bodies are streamed, not collected"),
        };
        if forward {
            out.extend_from_slice(&header);
        }
        self.state = match rest {
            0 => next,
            left => State::Body {
                left,
                pass: forward,
            },
        };
        Ok(())
    }
}

/// Watches a viewer's bytes for a person's input without changing them, for the idle timeout of a session
/// that needs no filter. A stream it cannot frame (RFB 3.3, a security type that encrypts, a message it
/// does not know) is not refused: from then on every byte counts as input, so that an idle timeout never
/// ends a session whose input it cannot see.
#[derive(Debug, Clone)]
pub struct InputWatch {
    framer: ReadOnlyFilter,
    scratch: Vec<u8>,
    blind: bool,
}

impl Default for InputWatch {
    fn default() -> Self {
        Self {
            framer: ReadOnlyFilter::new(false, false),
            scratch: Vec::new(),
            blind: false,
        }
    }
}

impl InputWatch {
    /// Whether `bytes`, the viewer's next, carry a person's input.
    pub fn saw_input(&mut self, bytes: &[u8]) -> bool {
        if self.blind {
            return !bytes.is_empty();
        }
        self.scratch.clear();
        if self.framer.filter(bytes, &mut self.scratch).is_err() {
            self.blind = true;
            return true;
        }
        self.framer.take_input()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> Vec<u8> {
        let mut bytes = b"RFB 003.008\n".to_vec();
        bytes.extend_from_slice(&[2]); // VNC Authentication
        bytes.extend_from_slice(&[7; 16]);
        bytes.push(0); // ClientInit, exclusive
        bytes
    }

    fn viewing() -> Vec<u8> {
        let mut bytes = vec![0, 0, 0, 0];
        bytes.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]); // SetPixelFormat
        bytes.extend_from_slice(&[2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21]); // SetEncodings (2)
        bytes.extend_from_slice(&[3, 1, 0, 0, 0, 0, 3, 32, 2, 88]); // FramebufferUpdateRequest
        bytes.extend_from_slice(&[248, 0, 0, 0, 0, 0, 0, 3, 2, 9, 9]); // ClientFence with 2 bytes
        bytes.extend_from_slice(&[150, 1, 0, 0, 0, 0, 3, 32, 2, 88]); // EnableContinuousUpdates
        bytes
    }

    fn control() -> Vec<u8> {
        let mut bytes = vec![4, 1, 0, 0, 0, 0, 0, 0x61]; // KeyEvent
        bytes.extend_from_slice(&[5, 1, 0, 10, 0, 20]); // PointerEvent
        bytes.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']); // ClientCutText
        bytes.extend_from_slice(&[255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 30]); // QEMU key event
        bytes.extend_from_slice(&[251, 0, 4, 0, 3, 0, 1, 0]); // SetDesktopSize, one screen
        bytes.extend_from_slice(&[0; 16]);
        bytes
    }

    fn run(filter: &mut ReadOnlyFilter, input: &[u8], chunk: usize) -> Result<Vec<u8>, RfbError> {
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            filter.filter(piece, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn drops_control_and_passes_viewing_however_split() {
        let mut input = handshake();
        input.extend(control());
        input.extend(viewing());
        input.extend(control());
        let mut expected = handshake();
        *expected.last_mut().unwrap() = 1; // shared forced
        expected.extend(viewing());
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let mut filter = ReadOnlyFilter::new(true, true);
            assert_eq!(
                run(&mut filter, &input, chunk),
                Ok(expected.clone()),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn passes_everything_when_not_read_only() {
        let mut input = handshake();
        input.extend(control());
        input.extend(viewing());
        let mut filter = ReadOnlyFilter::new(false, false);
        assert_eq!(run(&mut filter, &input, 5), Ok(input));
    }

    #[test]
    fn sees_a_persons_input_and_not_the_clients_own_messages() {
        let mut watch = InputWatch::default();
        assert!(!watch.saw_input(&handshake()));
        assert!(!watch.saw_input(&viewing()), "update requests are no input");
        let key = [4, 1, 0, 0, 0, 0, 0, 0x61];
        for chunk in key.chunks(3) {
            let _ = watch.saw_input(chunk);
        }
        assert!(!watch.saw_input(&viewing()), "taken once");
        let pointer = [5, 0, 0, 10, 0, 20];
        assert!(watch.saw_input(&pointer), "the pointer moved");
        assert!(
            !watch.saw_input(&pointer),
            "the same position and buttons again"
        );
        assert!(watch.saw_input(&[5, 1, 0, 10, 0, 20]), "a button went down");
        assert!(watch.saw_input(&[6, 0, 0, 0, 0, 0, 0, 1, b'x']), "a paste");

        let mut blind = InputWatch::default();
        assert!(
            blind.saw_input(b"RFB 003.003\n"),
            "unframable: everything counts"
        );
        assert!(blind.saw_input(&viewing()));
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        let mut filter = ReadOnlyFilter::new(true, false);
        assert_eq!(
            run(&mut filter, b"RFB 003.003\n", 12),
            Err(RfbError::Version)
        );
        let mut filter = ReadOnlyFilter::new(true, false);
        assert_eq!(
            run(&mut filter, b"RFB 003.008\n\x13", 13),
            Err(RfbError::Security(19))
        );
        let mut filter = ReadOnlyFilter::new(true, false);
        let mut input = b"RFB 003.008\n\x01\x01".to_vec();
        input.push(99);
        assert_eq!(run(&mut filter, &input, 4), Err(RfbError::Message(99)));
    }
}
