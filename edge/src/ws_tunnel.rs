//! `GET /websocket-tunnel?token=T&GUAC_WIDTH=…`: the Guacamole WebSocket tunnel, as the unmodified
//! `Guacamole.WebSocketTunnel` expects it.
//!
//! The upgrade is accepted first (subprotocol `guacamole`), then the token is checked and the guacd handshake
//! run; a failure is a close frame whose reason is the decimal Guacamole status, so the client can tell the
//! user why, and ChainedTunnel does not retry the same token over HTTP after an undiagnosable 1006. On
//! success the first frame is `0.,36.<uuid>;`. After that guacd's output goes out as text frames of whole
//! instructions; the browser's instructions go to guacd, except the tunnel-internal ones: pings are answered
//! here, ahead of guacd's output, and the rest are dropped.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info_span, warn};

use deskbroker_shared::cluster::TunnelKind;
use deskbroker_shared::connect::ConnectRequest;
use deskbroker_shared::instruction::{self, Instruction};
use deskbroker_shared::{GuacStatus, InstructionBuffer};

use crate::defaults::{GUAC_MAX_MESSAGE, GUACD_SILENCE_TIMEOUT, PING_QUEUE};
use crate::error::TunnelError;
use crate::guac;
use crate::local::Traffic;
use crate::server::Edge;
use crate::upstream::{self, Guacd};
use crate::ws::{self, downstream_error, offered_protocols};

pub async fn handle(
    State(edge): State<Edge>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !offered_protocols(&headers).contains(&"guacamole") {
        return guac::error_response(
            GuacStatus::ClientBadRequest,
            "The \"guacamole\" WebSocket subprotocol is required.",
        );
    }
    let request = ConnectRequest::parse(query.unwrap_or_default().as_bytes());
    let span = info_span!("websocket_tunnel", tunnel = tracing::field::Empty);
    let tunnel = edge.clone();
    ws::accept(
        &edge,
        upgrade,
        "guacamole",
        GUAC_MAX_MESSAGE,
        span,
        move |socket| run(tunnel, socket, request),
    )
}

async fn run(edge: Edge, mut socket: WebSocket, request: ConnectRequest) {
    let opened = async {
        let guac::Opened { id, guacd, session } = guac::open(&edge, &request).await?;
        let tunnel = edge
            .record_tunnel(
                id,
                TunnelKind::WebsocketTunnel,
                &session,
                None,
                Some(guacd.connection_id.clone()),
            )
            .await?;
        Ok::<_, TunnelError>((tunnel, guacd, session.read_only))
    };
    let (tunnel, guacd, read_only) = match opened.await {
        Ok(opened) => opened,
        Err(error) => {
            warn!(side = %error.side(), %error, "tunnel refused");
            close(&mut socket, error.status()).await;
            return;
        }
    };
    let id = tunnel.record.id;
    tracing::Span::current().record("tunnel", tracing::field::display(id));
    let hello = Instruction::new(instruction::INTERNAL_OPCODE, [id.to_string()]).encode();
    let end = match socket.send(Message::Text(hello.into())).await {
        Ok(()) => tokio::select! {
            end = relay(&mut socket, guacd, read_only, &tunnel.traffic) => end,
            stop = tunnel.stopped() => Err(stop),
        },
        Err(error) => Err(downstream_error(error)),
    };
    edge.forget_tunnel(&tunnel).await;
    let status = match end {
        Ok(()) => GuacStatus::Success,
        Err(error) => {
            debug!(side = %error.side(), %error, "tunnel failed");
            error.status()
        }
    };
    debug!(status = status.code(), "tunnel closed");
    close(&mut socket, status).await;
}

/// Pumps both directions until either side ends; `Ok` is a normal end by either side.
async fn relay(
    socket: &mut WebSocket,
    guacd: Guacd,
    read_only: bool,
    traffic: &Traffic,
) -> Result<(), TunnelError> {
    let Guacd {
        stream, mut buffer, ..
    } = guacd;
    let (from_guacd, mut to_guacd) = stream.into_split();
    let (mut to_browser, mut from_browser) = socket.split();
    let (pings, mut ping_replies) = mpsc::channel::<Bytes>(PING_QUEUE);

    let downstream = async {
        let mut silent_until = Instant::now() + GUACD_SILENCE_TIMEOUT;
        loop {
            while let Ok(reply) = ping_replies.try_recv() {
                to_browser
                    .send(text(reply)?)
                    .await
                    .map_err(downstream_error)?;
            }
            if let Some(batch) = buffer
                .take_instructions()
                .map_err(TunnelError::UpstreamProtocol)?
            {
                to_browser
                    .send(text(batch)?)
                    .await
                    .map_err(downstream_error)?;
            }
            tokio::select! {
                biased;
                Some(reply) = ping_replies.recv() => {
                    to_browser.send(text(reply)?).await.map_err(downstream_error)?;
                }
                read = timeout_at(silent_until, upstream::read_some(&from_guacd, buffer.bytes_mut())) => {
                    match read.map_err(|_| TunnelError::UpstreamSilent)? {
                        Ok(0) => return Ok(()),
                        Ok(read) => {
                            traffic.received_upstream(read);
                            silent_until = Instant::now() + GUACD_SILENCE_TIMEOUT;
                        }
                        Err(error) => return Err(TunnelError::UpstreamIo(error)),
                    }
                }
            }
        }
    };
    let upstream = async {
        let mut input = InstructionBuffer::default();
        while let Some(message) = from_browser.next().await {
            match message.map_err(downstream_error)? {
                Message::Text(text) => input.extend_from_slice(text.as_bytes()),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Binary(_) => return Err(TunnelError::BadFrame),
            }
            while let Some(bytes) = input
                .next_instruction()
                .map_err(TunnelError::BadInstruction)?
            {
                if instruction::is_internal(&bytes) {
                    if is_ping(&bytes) {
                        // A flood of pings beyond the queue loses its excess; the client only times them.
                        let _ = pings.try_send(bytes);
                    }
                    continue;
                }
                if read_only && !instruction::viewer_may_send(instruction::opcode(&bytes)) {
                    continue;
                }
                to_guacd
                    .write_all(&bytes)
                    .await
                    .map_err(TunnelError::UpstreamIo)?;
                traffic.sent_upstream(bytes.len());
            }
        }
        Ok(())
    };
    tokio::select! {
        end = downstream => end,
        end = upstream => end,
    }
}

/// `0.,4.ping,<timestamp>;`: answered with itself, as the Java endpoint does.
fn is_ping(bytes: &[u8]) -> bool {
    Instruction::parse(bytes).is_ok_and(|ping| ping.args.len() >= 2 && ping.args[0] == "ping")
}

/// Whole instructions as a text frame; guacd must send UTF-8, and a text frame must be UTF-8.
fn text(bytes: Bytes) -> Result<Message, TunnelError> {
    Utf8Bytes::try_from(bytes)
        .map(Message::Text)
        .map_err(|_| TunnelError::UpstreamProtocol(deskbroker_shared::ParseError::BadUtf8))
}

async fn close(socket: &mut WebSocket, status: GuacStatus) {
    let frame = CloseFrame {
        code: status.ws_close_code(),
        reason: status.ws_close_reason().into(),
    };
    // The browser may be gone already; there is nobody left to tell.
    let _ = socket.send(Message::Close(Some(frame))).await;
}
