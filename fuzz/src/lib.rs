//! What the fuzz targets share: how a target's input becomes a byte stream and the reads it arrives in.
//!
//! The stream targets (instructions, the RFB filter) read their input as
//!
//! ```text
//! [control] [n chunk sizes] [stream …]
//! ```
//!
//! `control`'s low three bits give `n`; each size byte `s` is a read of `s + 1` bytes, used in turn until the
//! stream is used up (no sizes: one read). Bit 3 says the stream is run-length encoded ([`expand`]), so that
//! a small input can reach the limits of guacd's 32 KiB instructions; bits 4 and 5 are flags (read-only for
//! both targets, forced sharing for the RFB filter). A seed that is a plain stream in one read is `\0`
//! followed by the stream.

use std::borrow::Cow;

/// The decoded form of a stream target's input.
pub struct Split<'a> {
    pub sizes: Vec<usize>,
    pub stream: Cow<'a, [u8]>,
    pub flags: [bool; 2],
}

const RUN_LENGTH: u8 = 0x08;
/// Escape of a run in an expanded stream: `RUN, count low byte, count high byte, byte`.
pub const RUN: u8 = 0xfe;
/// Most bytes an expanded stream holds, so that no input takes more than a few milliseconds.
pub const MAX_EXPANDED: usize = 256 * 1024;

impl<'a> Split<'a> {
    pub fn read(data: &'a [u8]) -> Self {
        let Some((&control, rest)) = data.split_first() else {
            return Self {
                sizes: Vec::new(),
                stream: Cow::Borrowed(data),
                flags: [false; 2],
            };
        };
        let n = usize::from(control & 0x07).min(rest.len());
        let (sizes, stream) = rest.split_at(n);
        Self {
            sizes: sizes.iter().map(|&s| usize::from(s) + 1).collect(),
            stream: match control & RUN_LENGTH {
                0 => Cow::Borrowed(stream),
                _ => Cow::Owned(expand(stream)),
            },
            flags: [control & 0x10 != 0, control & 0x20 != 0],
        }
    }

    /// The stream cut into the reads it arrives in.
    pub fn chunks(&self) -> Vec<&[u8]> {
        let mut rest = &self.stream[..];
        if self.sizes.is_empty() {
            return vec![rest];
        }
        let mut chunks = Vec::new();
        for size in self.sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at((*size).min(rest.len()));
            chunks.push(chunk);
            rest = after;
        }
        chunks
    }
}

/// Expands runs (`RUN, lo, hi, byte` is `byte` repeated `lo + 256 * hi` times); every other byte stands
/// for itself. Stops at [`MAX_EXPANDED`] bytes.
pub fn expand(encoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = encoded;
    while let Some((&byte, after)) = rest.split_first() {
        match (byte, after) {
            (RUN, [lo, hi, repeated, after @ ..]) => {
                let count = usize::from(*lo) | usize::from(*hi) << 8;
                out.resize(out.len() + count, *repeated);
                rest = after;
            }
            _ => {
                out.push(byte);
                rest = after;
            }
        }
        if out.len() >= MAX_EXPANDED {
            out.truncate(MAX_EXPANDED);
            break;
        }
    }
    out
}
