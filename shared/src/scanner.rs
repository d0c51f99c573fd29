//! Finding instruction boundaries in a byte stream, incrementally and within fixed bounds.
//!
//! The relay never decodes what it passes through: it only needs to know where each instruction ends, so it
//! can forward whole instructions (a WebSocket frame or an HTTP read response never holds half of one). The
//! [`Scanner`] walks the bytes once, resuming where the previous call stopped, so an instruction split across
//! any number of reads costs no rescanning. Element lengths count Unicode code points, counted from UTF-8
//! lead bytes as libguac does, so a multi-byte character split across reads is handled like any other byte.
//!
//! The limits are guacd's own (`parser-constants.h`, `parser.h`): what guacd would drop a user for, we refuse
//! before it reaches guacd, and a peer can never make us buffer more than one bounded instruction.

use bytes::{Bytes, BytesMut};

/// Longest element value, in code points: guacd's `GUAC_INSTRUCTION_MAX_LENGTH`.
pub const MAX_ELEMENT_LENGTH: usize = 8192;
/// Most elements in one instruction, opcode included: guacd's `GUAC_INSTRUCTION_MAX_ELEMENTS`.
pub const MAX_ELEMENTS: usize = 128;
/// Longest instruction in bytes, its `;` included: guacd's parser buffer (`__instructionbuf[32768]`).
pub const MAX_INSTRUCTION_BYTES: usize = 32768;

/// Why a byte stream is not a sequence of valid instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("non-numeric character {0:#04x} in element length")]
    BadLength(u8),
    #[error("element longer than {MAX_ELEMENT_LENGTH} characters")]
    ElementTooLong,
    #[error("instruction has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("instruction longer than {MAX_INSTRUCTION_BYTES} bytes")]
    InstructionTooLong,
    #[error("expected ',' or ';' after an element, found {0:#04x}")]
    BadTerminator(u8),
    #[error("invalid UTF-8 in an element value")]
    BadUtf8,
}

impl ParseError {
    /// True when the input broke a size limit rather than the grammar (Guacamole CLIENT_OVERRUN).
    pub fn is_overrun(self) -> bool {
        matches!(
            self,
            Self::ElementTooLong | Self::TooManyElements | Self::InstructionTooLong
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading the decimal length of an element.
    Length { value: usize, digits: bool },
    /// Inside an element value: whole characters still to come, and continuation bytes of the current one.
    Value { chars: usize, continuation: u8 },
    /// After a value: expecting `,` or `;`.
    Terminator,
}

const START: State = State::Length {
    value: 0,
    digits: false,
};

/// Resumable scanner over a buffer that only grows at the end and loses whole instructions at the front.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Where the current (incomplete) instruction starts.
    start: usize,
    /// How far the buffer has been scanned.
    pos: usize,
    /// Elements completed in the current instruction.
    elements: usize,
    state: State,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            start: 0,
            pos: 0,
            elements: 0,
            state: START,
        }
    }
}

impl Scanner {
    /// Scans on from where the last call stopped and returns the end offset of the next complete instruction,
    /// or `None` when `buf` ends inside one. `buf` must hold what it held last time, plus more at the end.
    pub fn next_end(&mut self, buf: &[u8]) -> Result<Option<usize>, ParseError> {
        // Never look past the longest instruction: a byte beyond it is an overrun whatever it is, so the
        // error does not depend on how the bytes arrived, and the terminator counts like any other byte.
        let whole = buf;
        let buf = &whole[..whole.len().min(self.start + MAX_INSTRUCTION_BYTES)];
        while self.pos < buf.len() {
            match self.state {
                State::Length { value, digits } => {
                    let byte = buf[self.pos];
                    self.pos += 1;
                    self.state = match byte {
                        b'0'..=b'9' => {
                            let value = value * 10 + usize::from(byte - b'0');
                            if value > MAX_ELEMENT_LENGTH {
                                return Err(ParseError::ElementTooLong);
                            }
                            State::Length {
                                value,
                                digits: true,
                            }
                        }
                        b'.' if digits && value == 0 => State::Terminator,
                        b'.' if digits => State::Value {
                            chars: value,
                            continuation: 0,
                        },
                        other => return Err(ParseError::BadLength(other)),
                    };
                }
                State::Value {
                    chars,
                    continuation,
                } => {
                    self.state = self.scan_value(buf, chars, continuation)?;
                }
                State::Terminator => {
                    let byte = buf[self.pos];
                    self.pos += 1;
                    self.elements += 1;
                    match byte {
                        b',' if self.elements >= MAX_ELEMENTS => {
                            return Err(ParseError::TooManyElements);
                        }
                        b',' => self.state = START,
                        b';' => {
                            self.start = self.pos;
                            self.elements = 0;
                            self.state = START;
                            return Ok(Some(self.pos));
                        }
                        other => return Err(ParseError::BadTerminator(other)),
                    }
                }
            }
        }
        if whole.len() > buf.len() {
            return Err(ParseError::InstructionTooLong);
        }
        Ok(None)
    }

    /// Advances through an element value as far as `buf` allows.
    fn scan_value(
        &mut self,
        buf: &[u8],
        mut chars: usize,
        mut continuation: u8,
    ) -> Result<State, ParseError> {
        while self.pos < buf.len() {
            if continuation > 0 {
                if buf[self.pos] & 0xC0 != 0x80 {
                    return Err(ParseError::BadUtf8);
                }
                continuation -= 1;
                self.pos += 1;
                continue;
            }
            if chars == 0 {
                break;
            }
            // Most values (base64 blobs, numbers) are ASCII: skip a run of them at once.
            let run = &buf[self.pos..buf.len().min(self.pos + chars)];
            let ascii = if run.is_ascii() {
                run.len()
            } else {
                run.iter().take_while(|b| b.is_ascii()).count()
            };
            if ascii > 0 {
                self.pos += ascii;
                chars -= ascii;
                continue;
            }
            continuation = match buf[self.pos] {
                0xC2..=0xDF => 1,
                0xE0..=0xEF => 2,
                0xF0..=0xF4 => 3,
                _ => return Err(ParseError::BadUtf8),
            };
            chars -= 1;
            self.pos += 1;
        }
        Ok(if chars == 0 && continuation == 0 {
            State::Terminator
        } else {
            State::Value {
                chars,
                continuation,
            }
        })
    }

    /// Forgets the first `n` bytes, which the caller has removed from the front of the buffer.
    /// `n` must not pass the end of the last complete instruction.
    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.start, "consumed past a complete instruction");
        self.start -= n;
        self.pos -= n;
    }

    /// End of the last complete instruction found so far.
    fn complete(&self) -> usize {
        self.start
    }
}

/// A receive buffer that hands out whole instructions and holds at most one partial one.
///
/// After an error the stream is out of step and the buffer must be dropped with its connection.
#[derive(Debug, Default)]
pub struct InstructionBuffer {
    buf: BytesMut,
    scanner: Scanner,
}

impl InstructionBuffer {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(capacity),
            scanner: Scanner::default(),
        }
    }

    /// The buffer to read more bytes into, with at least `chunk` bytes of spare capacity.
    pub fn read_buf(&mut self, chunk: usize) -> &mut BytesMut {
        self.buf.reserve(chunk);
        &mut self.buf
    }

    /// The underlying buffer, for readers that manage its capacity themselves. Only append to it; an empty
    /// buffer may be replaced (to release its memory) since it holds no partial instruction.
    pub fn bytes_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends bytes that arrived some other way (a WebSocket frame, a body chunk).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Removes and returns the next whole instruction, if one has arrived.
    pub fn next_instruction(&mut self) -> Result<Option<Bytes>, ParseError> {
        let Some(end) = self.scanner.next_end(&self.buf)? else {
            return Ok(None);
        };
        self.scanner.consume(end);
        Ok(Some(self.buf.split_to(end).freeze()))
    }

    /// Removes and returns every whole instruction that has arrived, as one run of bytes.
    pub fn take_instructions(&mut self) -> Result<Option<Bytes>, ParseError> {
        while self.scanner.next_end(&self.buf)?.is_some() {}
        let end = self.scanner.complete();
        if end == 0 {
            return Ok(None);
        }
        self.scanner.consume(end);
        Ok(Some(self.buf.split_to(end).freeze()))
    }

    /// Bytes held that do not yet make a whole instruction (or not yet scanned).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(input: &[u8]) -> Result<Vec<usize>, ParseError> {
        let mut scanner = Scanner::default();
        let mut ends = Vec::new();
        while let Some(end) = scanner.next_end(input)? {
            ends.push(end);
        }
        Ok(ends)
    }

    #[test]
    fn finds_each_instruction_end() {
        assert_eq!(ends(b"4.size,1.0,4.1024,3.768;3.nop;"), Ok(vec![24, 30]));
        assert_eq!(ends(b"0.;"), Ok(vec![3]));
        assert_eq!(ends(b"0.,4.ping,3.123;"), Ok(vec![16]));
    }

    #[test]
    fn counts_code_points_not_bytes() {
        let emoji = "4.name,1.\u{1F600};".as_bytes();
        assert_eq!(ends(emoji), Ok(vec![emoji.len()]));
        let mixed = "4.name,3.a\u{e9}\u{4e2d};".as_bytes();
        assert_eq!(ends(mixed), Ok(vec![mixed.len()]));
    }

    #[test]
    fn resumes_in_the_middle_of_a_character() {
        let input = "4.name,2.\u{1F600}x;".as_bytes();
        let mut scanner = Scanner::default();
        for cut in 1..input.len() {
            assert_eq!(scanner.next_end(&input[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(scanner.next_end(input), Ok(Some(input.len())));
    }

    #[test]
    fn rejects_bad_grammar() {
        assert_eq!(ends(b"x.nop;"), Err(ParseError::BadLength(b'x')));
        assert_eq!(ends(b".nop;"), Err(ParseError::BadLength(b'.')));
        assert_eq!(ends(b"3.nop:"), Err(ParseError::BadTerminator(b':')));
        assert_eq!(ends(b"3.no\xff;"), Err(ParseError::BadUtf8));
        assert_eq!(ends(b"3.n\xc3o;"), Err(ParseError::BadUtf8));
    }

    #[test]
    fn enforces_guacd_limits() {
        assert_eq!(ends(b"8193."), Err(ParseError::ElementTooLong));
        assert_eq!(
            ends(b"99999999999999999999999."),
            Err(ParseError::ElementTooLong)
        );
        let many = "1.a,".repeat(MAX_ELEMENTS) + "1.a;";
        assert_eq!(ends(many.as_bytes()), Err(ParseError::TooManyElements));
        let most = "1.a,".repeat(MAX_ELEMENTS - 1) + "1.a;";
        assert_eq!(ends(most.as_bytes()), Ok(vec![most.len()]));
        let wide = format!(
            "4.blob,8192.{},8192.{};",
            "a".repeat(8192),
            "\u{4e2d}".repeat(8192)
        );
        assert_eq!(ends(wide.as_bytes()), Err(ParseError::InstructionTooLong));
    }

    /// `4.blob` and four elements of `a`s, the last `last` long: 24601 bytes and the last element's.
    fn blob(last: usize) -> Vec<u8> {
        let a = |n: usize| format!(",{n}.{}", "a".repeat(n));
        format!("4.blob{}{}{}{};", a(8192), a(8192), a(8192), a(last)).into_bytes()
    }

    #[test]
    fn the_longest_instruction_is_guacds_buffer_terminator_included() {
        assert_eq!(blob(8161).len(), MAX_INSTRUCTION_BYTES);
        assert_eq!(ends(&blob(8161)), Ok(vec![MAX_INSTRUCTION_BYTES]));
        assert_eq!(ends(&blob(8162)), Err(ParseError::InstructionTooLong));
    }

    #[test]
    fn an_overlong_instruction_fails_the_same_however_it_is_split() {
        // A bad byte past the limit: read at once, the value's scan used to reach it before the length
        // check, so the error depended on how the bytes arrived.
        let mut input = blob(8190);
        let bad = input.len() - 10;
        input[bad] = 0xff;
        for cut in [1, 100, MAX_INSTRUCTION_BYTES, bad, input.len()] {
            let mut scanner = Scanner::default();
            let first = scanner.next_end(&input[..cut]);
            let result = first.and_then(|_| scanner.next_end(&input));
            assert_eq!(result, Err(ParseError::InstructionTooLong), "cut at {cut}");
        }
    }

    #[test]
    fn buffer_hands_out_whole_instructions() {
        let mut buf = InstructionBuffer::default();
        buf.extend_from_slice(b"3.nop;4.sync,3.1");
        assert_eq!(
            buf.take_instructions(),
            Ok(Some(Bytes::from_static(b"3.nop;")))
        );
        assert_eq!(buf.take_instructions(), Ok(None));
        buf.extend_from_slice(b"23;3.nop;3.nop;");
        assert_eq!(
            buf.next_instruction(),
            Ok(Some(Bytes::from_static(b"4.sync,3.123;")))
        );
        assert_eq!(
            buf.next_instruction(),
            Ok(Some(Bytes::from_static(b"3.nop;")))
        );
        assert_eq!(
            buf.next_instruction(),
            Ok(Some(Bytes::from_static(b"3.nop;")))
        );
        assert_eq!(buf.next_instruction(), Ok(None));
        assert!(buf.is_empty());
    }
}
