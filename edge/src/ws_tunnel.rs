//! `GET /websocket-tunnel?token=T&GUAC_WIDTH=…`: the Guacamole WebSocket tunnel, as the unmodified
//! `Guacamole.WebSocketTunnel` expects it.
//!
//! The upgrade is accepted first (subprotocol `guacamole`), then the token is checked and the guacd
//! handshake run; a failure is a close frame whose reason is the decimal Guacamole status, so the client
//! can tell the user why instead of seeing an undiagnosable 1006 (a `ChainedTunnel` still retries over
//! HTTP, which answers with the same status: docs/errors.md). On success the first frame is
//! `0.,36.<uuid>;`. After that guacd's output goes out as text frames of whole instructions; the browser's
//! instructions go to guacd, except the tunnel-internal ones: pings are answered here, ahead of guacd's
//! output, and the rest are dropped.

use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{debug, info_span, warn};

use deskbroker_shared::cluster::TunnelKind;
use deskbroker_shared::connect::ConnectRequest;
use deskbroker_shared::instruction::{self, FromBrowser, Instruction};
use deskbroker_shared::{GuacStatus, InstructionBuffer};

use crate::client::Peer;
use crate::defaults::{GUAC_MAX_MESSAGE, PING_QUEUE};
use crate::error::{TunnelError, error_response};
use crate::guac;
use crate::local::Traffic;
use crate::metrics::metrics;
use crate::node::Node;
use crate::upstream::Guacd;
use crate::ws::{self, Data, Endpoint, Incoming, PingDue, downstream_error, offered_protocols};

pub async fn handle(
    State(node): State<Node>,
    RawQuery(query): RawQuery,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !offered_protocols(&headers).contains(&"guacamole") {
        return error_response(
            GuacStatus::ClientBadRequest,
            "The \"guacamole\" WebSocket subprotocol is required.",
        );
    }
    let endpoint = Endpoint {
        protocol: "guacamole",
        max_message: GUAC_MAX_MESSAGE,
    };
    let span = info_span!("websocket_tunnel", tunnel = tracing::field::Empty);
    let client = ws::client_addr(peer, &headers);
    ws::accept(node, upgrade, query, client, endpoint, span, run)
}

async fn run(node: Node, mut socket: WebSocket, request: ConnectRequest) {
    let opened = guac::open(&node, &request, TunnelKind::WebsocketTunnel, None).await;
    let (tunnel, guacd, read_only) = match opened {
        Ok(opened) => (opened.registration, opened.guacd, opened.session.read_only),
        Err(error) => {
            warn!(side = %error.side(), %error, "tunnel refused");
            metrics().tunnel_refused(TunnelKind::WebsocketTunnel, &error);
            close(&mut socket, error.status()).await;
            return;
        }
    };
    let id = tunnel.record().id;
    let hello = Instruction::new(instruction::INTERNAL_OPCODE, [id.to_string()]).encode();
    let end = match socket.send(Message::Text(hello.into())).await {
        Ok(()) => tokio::select! {
            end = relay(&mut socket, guacd, read_only, node.timeouts().browser_liveness, tunnel.traffic()) => end,
            stop = tunnel.stopped() => Err(stop),
        },
        Err(error) => Err(downstream_error(error)),
    };
    tunnel.close(&end).await;
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

/// Pumps both directions until either side ends; `Ok` is a normal end by either side. A browser that
/// sends nothing, answers to pings included, for `liveness` is gone.
async fn relay(
    socket: &mut WebSocket,
    guacd: Guacd,
    read_only: bool,
    liveness: Duration,
    traffic: &Traffic,
) -> Result<(), TunnelError> {
    let (mut output, mut to_guacd) = guacd.split();
    let (mut to_browser, from_browser) = socket.split();
    let (pings, mut ping_replies) = mpsc::channel::<Bytes>(PING_QUEUE);
    let mut from_browser = Incoming::new(from_browser);
    let heard = from_browser.heard();
    let keepalive = PingDue::default();

    let downstream = async {
        loop {
            // Pings are answered ahead of guacd's output, so the client measures the tunnel, not guacd.
            let frame = tokio::select! {
                biased;
                Some(reply) = ping_replies.recv() => text(reply)?,
                ping = keepalive.due() => ping,
                batch = output.next(traffic) => match batch? {
                    Some(batch) => text(batch)?,
                    None => return Ok(()),
                },
            };
            to_browser.send(frame).await.map_err(downstream_error)?;
        }
    };
    let upstream = async {
        let mut input = InstructionBuffer::default();
        while let Some(message) = from_browser.next().await? {
            match message {
                Data::Text(text) => input.extend_from_slice(text.as_bytes()),
                Data::Binary(_) => return Err(TunnelError::BadFrame),
            }
            while let Some(bytes) = input
                .next_instruction()
                .map_err(TunnelError::BadInstruction)?
            {
                if instruction::is_user_input(instruction::opcode(&bytes)) {
                    traffic.user_input();
                }
                match instruction::from_browser(&bytes, read_only) {
                    FromBrowser::Relay => {
                        to_guacd
                            .write_all(&bytes)
                            .await
                            .map_err(TunnelError::UpstreamIo)?;
                        traffic.sent_upstream(bytes.len());
                    }
                    // A flood of pings beyond the queue loses its excess; the client only times them.
                    FromBrowser::Ping => drop(pings.try_send(bytes)),
                    FromBrowser::Drop => {}
                }
            }
        }
        Ok(())
    };
    tokio::select! {
        end = downstream => end,
        end = upstream => end,
        gone = ws::liveness(&heard, liveness, &keepalive) => Err(gone),
    }
}

/// Whole instructions as a text frame; guacd must send UTF-8, and a text frame must be UTF-8.
fn text(bytes: Bytes) -> Result<Message, TunnelError> {
    Utf8Bytes::try_from(bytes)
        .map(Message::Text)
        .map_err(|_| TunnelError::UpstreamProtocol(deskbroker_shared::ParseError::BadUtf8))
}

async fn close(socket: &mut WebSocket, status: GuacStatus) {
    ws::close(socket, status.ws_close_code(), status.ws_close_reason()).await;
}
