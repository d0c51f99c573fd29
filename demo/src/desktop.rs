//! `DemoDesktop`, the handle a caller holds: it owns one desktop's state and serves RFB viewers from it,
//! each in a task of its own that ends with the viewer or at shutdown. The protocol is `rfb`'s and the
//! state is `state`'s; this module accepts viewers, runs each to its end and waits for them at shutdown.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::rfb::{self, DemoError};
use crate::state::{Config, InputState, State};

#[derive(Clone)]
pub struct DemoDesktop {
    state: Arc<State>,
}

impl DemoDesktop {
    pub fn new(config: Config) -> Self {
        Self {
            state: Arc::new(State::new(config)),
        }
    }

    pub fn config(&self) -> &Config {
        self.state.config()
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
        match rfb::serve(&self.state, stream).await {
            Err(DemoError::Io(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                Ok(())
            }
            other => other,
        }
    }

    pub fn input_state(&self) -> InputState {
        self.state.input_state()
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
