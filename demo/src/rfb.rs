//! The RFB side of the demo desktop (RFC 6143): the version and security handshake (security type None),
//! ServerInit, and the client messages a viewer sends. Updates use the raw encoding in whatever pixel format
//! the client asked for; incremental requests are answered at the next animation tick, so a viewer gets a
//! steady frame rate instead of a flood. It reads and changes the desktop's `State`; serving sockets and
//! spawning a task per viewer is `DemoDesktop`'s.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::{Instant, sleep_until};

use crate::picture::Picture;
use crate::state::{InputState, State, TICK};

/// Longest ClientCutText accepted; a longer one closes the connection.
pub const MAX_CUT_TEXT: u32 = 1024 * 1024;

/// Why a viewer's connection ended: its socket, or something it sent that this server does not speak.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported RFB version")]
    Version,
    #[error("client chose a security type other than None")]
    Security,
    #[error("unsupported pixel format")]
    PixelFormat,
    #[error("unknown client message type {0}")]
    UnknownMessage(u8),
    #[error("ClientCutText of {0} bytes is over the limit")]
    CutTextTooLong(u32),
}

/// How a client wants its pixels (RFC 6143 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub true_colour: bool,
    pub max: [u16; 3],
    pub shift: [u8; 3],
}

impl PixelFormat {
    /// The server's own: 32 bits, depth 24, little-endian, 8 bits per channel.
    pub const DEFAULT: Self = Self {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        max: [255; 3],
        shift: [16, 8, 0],
    };

    fn to_bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[0] = self.bits_per_pixel;
        out[1] = self.depth;
        out[2] = u8::from(self.big_endian);
        out[3] = u8::from(self.true_colour);
        for i in 0..3 {
            out[4 + 2 * i..6 + 2 * i].copy_from_slice(&self.max[i].to_be_bytes());
            out[10 + i] = self.shift[i];
        }
        out
    }

    fn from_bytes(b: &[u8; 16]) -> Result<Self, DemoError> {
        let format = Self {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            max: [0, 1, 2].map(|i| u16::from_be_bytes([b[4 + 2 * i], b[5 + 2 * i]])),
            shift: [b[10], b[11], b[12]],
        };
        let supported = matches!(format.bits_per_pixel, 8 | 16 | 32)
            && format.true_colour
            && format.shift.iter().all(|s| *s < 32);
        supported.then_some(format).ok_or(DemoError::PixelFormat)
    }

    fn bytes_per_pixel(self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    fn encode(self, rgb: [u8; 3], out: &mut Vec<u8>) {
        let value = (0..3).fold(0u32, |acc, i| {
            let channel = u32::from(rgb[i]) * u32::from(self.max[i]) / 255;
            acc | channel << self.shift[i]
        });
        let bytes = if self.big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        };
        match (self.bytes_per_pixel(), self.big_endian) {
            (4, _) => out.extend_from_slice(&bytes),
            (2, false) => out.extend_from_slice(&bytes[..2]),
            (2, true) => out.extend_from_slice(&bytes[2..]),
            (_, false) => out.push(bytes[0]),
            (_, true) => out.push(bytes[3]),
        }
    }
}

/// Runs one client connection to the end.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    desktop: &State,
    stream: S,
) -> Result<(), DemoError> {
    let mut stream = BufReader::new(stream);
    let config = desktop.config();
    stream.write_all(b"RFB 003.008\n").await?;
    let mut version = [0; 12];
    stream.read_exact(&mut version).await?;
    match &version {
        b"RFB 003.003\n" => stream.write_all(&1u32.to_be_bytes()).await?,
        b"RFB 003.007\n" | b"RFB 003.008\n" => {
            stream.write_all(&[1, 1]).await?;
            if stream.read_u8().await? != 1 {
                return Err(DemoError::Security);
            }
            if &version == b"RFB 003.008\n" {
                stream.write_all(&0u32.to_be_bytes()).await?;
            }
        }
        _ => return Err(DemoError::Version),
    }
    let _shared = stream.read_u8().await?;
    let mut init = Vec::with_capacity(24 + config.name.len());
    init.extend_from_slice(&config.width.to_be_bytes());
    init.extend_from_slice(&config.height.to_be_bytes());
    init.extend_from_slice(&PixelFormat::DEFAULT.to_bytes());
    init.extend_from_slice(&(config.name.len() as u32).to_be_bytes());
    init.extend_from_slice(config.name.as_bytes());
    stream.write_all(&init).await?;
    stream.flush().await?;

    let mut format = PixelFormat::DEFAULT;
    let mut picture = Picture::new(usize::from(config.width), usize::from(config.height));
    let mut update = Vec::new();
    let mut next_tick = Instant::now();
    loop {
        match stream.read_u8().await? {
            0 => {
                let mut body = [0; 19];
                stream.read_exact(&mut body).await?;
                format = PixelFormat::from_bytes(
                    body[3..].try_into().map_err(|_| DemoError::PixelFormat)?,
                )?;
            }
            2 => {
                let _padding = stream.read_u8().await?;
                let count = stream.read_u16().await?;
                for _ in 0..count {
                    let _encoding = stream.read_i32().await?;
                }
            }
            3 => {
                let incremental = stream.read_u8().await? != 0;
                let rect = [
                    stream.read_u16().await?,
                    stream.read_u16().await?,
                    stream.read_u16().await?,
                    stream.read_u16().await?,
                ];
                if incremental {
                    sleep_until(next_tick).await;
                }
                next_tick = Instant::now() + TICK;
                picture.render(desktop.frame(), &desktop.input_state());
                raw_update(&picture, format, rect, &mut update);
                stream.write_all(&update).await?;
                stream.flush().await?;
            }
            4 => {
                let down = stream.read_u8().await? != 0;
                let _padding = stream.read_u16().await?;
                let key = stream.read_u32().await?;
                if down {
                    desktop.update_input(|input| input.last_key = Some(key));
                }
            }
            5 => {
                let buttons = stream.read_u8().await?;
                let (x, y) = (stream.read_u16().await?, stream.read_u16().await?);
                desktop.update_input(|input| {
                    *input = InputState {
                        x,
                        y,
                        buttons,
                        ..*input
                    }
                });
            }
            6 => {
                let mut padding = [0; 3];
                stream.read_exact(&mut padding).await?;
                let len = stream.read_u32().await?;
                if len > MAX_CUT_TEXT {
                    return Err(DemoError::CutTextTooLong(len));
                }
                tokio::io::copy(
                    &mut (&mut stream).take(u64::from(len)),
                    &mut tokio::io::sink(),
                )
                .await?;
            }
            other => return Err(DemoError::UnknownMessage(other)),
        }
    }
}

/// A FramebufferUpdate with one raw rectangle: the requested one, clipped to the screen.
fn raw_update(picture: &Picture, format: PixelFormat, [x, y, w, h]: [u16; 4], out: &mut Vec<u8>) {
    let (x, y) = (
        usize::from(x).min(picture.width),
        usize::from(y).min(picture.height),
    );
    let w = usize::from(w).min(picture.width - x);
    let h = usize::from(h).min(picture.height - y);
    out.clear();
    out.extend_from_slice(&[0, 0, 0, 1]);
    for value in [x, y, w, h] {
        out.extend_from_slice(&(value as u16).to_be_bytes());
    }
    out.extend_from_slice(&0i32.to_be_bytes());
    for row in y..y + h {
        for pixel in &picture.pixels[row * picture.width + x..row * picture.width + x + w] {
            format.encode(*pixel, out);
        }
    }
}
