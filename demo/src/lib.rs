//! The built-in demo desktop: a small RFB 3.8 server (security type None, raw encoding) showing a moving
//! test pattern, the last key typed and the pointer. `deskbroker-edge --demo` serves it as the session
//! `demo`; tests and benchmarks use it as a VNC server that needs nothing installed.
//!
//! Input is shared by every viewer of one desktop, so a second viewer sees the first one's pointer.

mod picture;
mod rfb;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use rfb::PixelFormat;

/// Time between animation frames, and the pace of answers to incremental update requests.
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Config {
    pub width: u16,
    pub height: u16,
    pub name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            width: 800,
            height: 600,
            name: "deskbroker demo".into(),
        }
    }
}

/// What viewers have done: the last key pressed (an X keysym), the pointer and its buttons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputState {
    pub last_key: Option<u32>,
    pub x: u16,
    pub y: u16,
    pub buttons: u8,
}

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

#[derive(Clone)]
pub struct DemoDesktop {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    input: Mutex<InputState>,
    started: tokio::time::Instant,
}

impl DemoDesktop {
    pub fn new(config: Config) -> Self {
        let inner = Inner {
            config,
            input: Mutex::default(),
            started: tokio::time::Instant::now(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Serves RFB clients on `listener` until `shutdown`, then waits for every client task to end.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) {
        let clients = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let Ok((stream, peer)) = accepted else {
                continue;
            };
            let (desktop, stop) = (self.clone(), shutdown.clone());
            clients.spawn(async move {
                tokio::select! {
                    result = desktop.serve_client(stream) => match result {
                        Ok(()) => debug!(%peer, "demo viewer left"),
                        Err(error) => debug!(%peer, %error, "demo viewer closed"),
                    },
                    () = stop.cancelled() => {}
                }
            });
        }
        clients.close();
        clients.wait().await;
    }

    /// Serves one connected client to the end; a client leaving is `Ok`.
    pub async fn serve_client<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> Result<(), DemoError> {
        match rfb::serve(self, stream).await {
            Err(DemoError::Io(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                Ok(())
            }
            other => other,
        }
    }

    pub fn input_state(&self) -> InputState {
        *self.inner.input.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update_input(&self, change: impl FnOnce(&mut InputState)) {
        change(&mut self.inner.input.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The animation frame for now: one per tick since the desktop started.
    fn frame(&self) -> u64 {
        (self.inner.started.elapsed().as_millis() / TICK.as_millis()) as u64
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    async fn viewer(
        desktop: &DemoDesktop,
        version: &[u8; 12],
    ) -> (DuplexStream, tokio::task::JoinHandle<Result<(), DemoError>>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let desktop = desktop.clone();
        let task = tokio::spawn(async move { desktop.serve_client(server).await });
        let mut banner = [0; 12];
        client.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"RFB 003.008\n");
        client.write_all(version).await.unwrap();
        (client, task)
    }

    async fn server_init(client: &mut DuplexStream) -> (u16, u16) {
        client.write_all(&[1]).await.unwrap();
        let (width, height) = (
            client.read_u16().await.unwrap(),
            client.read_u16().await.unwrap(),
        );
        let mut format = [0; 16];
        client.read_exact(&mut format).await.unwrap();
        assert_eq!(format[0], 32, "32 bits per pixel");
        let mut name = vec![0; client.read_u32().await.unwrap() as usize];
        client.read_exact(&mut name).await.unwrap();
        assert_eq!(name, b"deskbroker demo");
        (width, height)
    }

    #[tokio::test]
    async fn a_38_viewer_gets_frames_and_its_input_is_seen() {
        let desktop = DemoDesktop::new(Config::default());
        let (mut client, _task) = viewer(&desktop, b"RFB 003.008\n").await;
        assert_eq!(client.read_u8().await.unwrap(), 1, "one security type");
        assert_eq!(client.read_u8().await.unwrap(), 1, "None");
        client.write_all(&[1]).await.unwrap();
        assert_eq!(client.read_u32().await.unwrap(), 0, "security result OK");
        assert_eq!(server_init(&mut client).await, (800, 600));

        for incremental in [0, 1] {
            client
                .write_all(&[3, incremental, 0, 0, 0, 0, 3, 32, 2, 88])
                .await
                .unwrap();
            let mut header = [0; 16];
            client.read_exact(&mut header).await.unwrap();
            assert_eq!(&header[..4], &[0, 0, 0, 1], "one rectangle");
            let mut pixels = vec![0; 800 * 600 * 4];
            client.read_exact(&mut pixels).await.unwrap();
        }
        client
            .write_all(&[4, 1, 0, 0, 0, 0, 0, 0x61, 5, 1, 0, 10, 0, 20])
            .await
            .unwrap();
        client.write_all(&[2, 0, 0, 1, 0, 0, 0, 0]).await.unwrap(); // SetEncodings: raw
        client
            .write_all(&[6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i'])
            .await
            .unwrap();
        client
            .write_all(&[3, 0, 0, 0, 0, 0, 0, 1, 0, 1])
            .await
            .unwrap();
        let mut update = [0; 16 + 4];
        client.read_exact(&mut update).await.unwrap();
        assert_eq!(
            desktop.input_state(),
            InputState {
                last_key: Some(0x61),
                x: 10,
                y: 20,
                buttons: 1
            }
        );
    }

    #[tokio::test]
    async fn a_33_viewer_and_a_16_bit_pixel_format_work() {
        let desktop = DemoDesktop::new(Config {
            width: 16,
            height: 8,
            name: "deskbroker demo".into(),
        });
        let (mut client, _task) = viewer(&desktop, b"RFB 003.003\n").await;
        assert_eq!(
            client.read_u32().await.unwrap(),
            1,
            "security None, chosen by the server"
        );
        assert_eq!(server_init(&mut client).await, (16, 8));
        let rgb565 = [
            0, 0, 0, 0, 16, 16, 0, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0,
        ];
        client.write_all(&rgb565).await.unwrap();
        client
            .write_all(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 8])
            .await
            .unwrap();
        let mut update = vec![0; 16 + 16 * 8 * 2];
        client.read_exact(&mut update).await.unwrap();
    }

    #[tokio::test]
    async fn bad_messages_close_the_connection_without_panicking() {
        let desktop = DemoDesktop::new(Config::default());
        for message in [vec![99u8], vec![6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]] {
            let (mut client, task) = viewer(&desktop, b"RFB 003.003\n").await;
            client.read_u32().await.unwrap();
            server_init(&mut client).await;
            client.write_all(&message).await.unwrap();
            assert!(task.await.unwrap().is_err());
        }
        let (_client, task) = viewer(&desktop, b"HTTP/1.1 20\n").await;
        assert!(matches!(task.await.unwrap(), Err(DemoError::Version)));
    }
}
