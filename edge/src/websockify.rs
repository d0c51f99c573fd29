//! `GET /websockify?token=T`: the WebSocket-to-TCP relay noVNC expects, as websockify does it.
//!
//! The `binary` subprotocol is echoed when offered; a client offering only other subprotocols is refused
//! (websockify does the same). The upgrade is accepted before the token is checked, so a refusal reaches
//! the browser as a close code and reason instead of an undiagnosable 1006. The VNC address comes from the
//! session, never from the request. Bytes are relayed as they come, one read per binary frame, with one
//! bounded buffer per direction: a browser that stops reading stops the relay reading from VNC. The VNC
//! server's first bytes (its greeting) must come within `--vnc-greeting-timeout`: a server that accepts
//! and says nothing would otherwise hold the tunnel, and the tenant's slot, for good.

use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info_span, warn};

use deskbroker_shared::RelayClose;
use deskbroker_shared::cluster::TunnelKind;
use deskbroker_shared::connect::ConnectRequest;
use deskbroker_shared::ids::TunnelId;
use deskbroker_shared::rfb::{InputWatch, ReadOnlyFilter};
use deskbroker_shared::session::{HostPort, Target};

use crate::client::Peer;
use crate::defaults::{FLUSH_AFTER, RELAY_MAX_MESSAGE};
use crate::error::TunnelError;
use crate::local::Traffic;
use crate::metrics::metrics;
use crate::node::Node;
use crate::registration::{Registration, Tunnel};
use crate::upstream;
use crate::ws::{self, Data, Endpoint, Incoming, PingDue, downstream_error, offered_protocols};

pub async fn handle(
    State(node): State<Node>,
    RawQuery(query): RawQuery,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let offered = offered_protocols(&headers);
    if !offered.is_empty() && !offered.contains(&"binary") {
        return (
            StatusCode::BAD_REQUEST,
            "the only supported subprotocol is \"binary\"\n",
        )
            .into_response();
    }
    let endpoint = Endpoint {
        protocol: "binary",
        max_message: RELAY_MAX_MESSAGE,
    };
    let span = info_span!("websockify", tunnel = tracing::field::Empty);
    let client = ws::client_addr(peer, &headers);
    ws::accept(node, upgrade, query, client, endpoint, span, run)
}

async fn run(node: Node, mut socket: WebSocket, request: ConnectRequest) {
    let vnc = match open(&node, &request).await {
        Ok(vnc) => vnc,
        Err(error) => {
            warn!(side = %error.side(), %error, "relay refused");
            metrics().tunnel_refused(TunnelKind::Websockify, &error);
            close(&mut socket, error.relay_close()).await;
            return;
        }
    };
    let Opened {
        tunnel,
        vnc,
        filter,
        addr,
        idle,
    } = vnc;
    let greeting = Greeting {
        from: addr,
        by: Instant::now() + node.timeouts().vnc_greeting,
    };
    let watch = (node.timeouts().browser_liveness, idle);
    let end = tokio::select! {
        end = relay(&mut socket, vnc, filter, greeting, watch, tunnel.traffic()) => end,
        stop = tunnel.stopped() => Err(stop),
    };
    tunnel.close(&end).await;
    match end {
        Ok(()) => debug!("relay ended"),
        Err(ref error) => debug!(side = %error.side(), %error, "relay ended"),
    }
    close(
        &mut socket,
        end.map_or_else(|error| error.relay_close(), |()| RelayClose::Normal),
    )
    .await;
}

/// What [`open`] returns.
struct Opened {
    tunnel: Registration,
    vnc: TcpStream,
    /// What the browser's bytes must pass, if the session is read-only or joins another.
    filter: Option<ReadOnlyFilter>,
    /// The VNC server's address.
    addr: HostPort,
    /// The session has an idle timeout.
    idle: bool,
}

/// Checks the token, connects to the session's VNC server and registers the tunnel.
async fn open(node: &Node, request: &ConnectRequest) -> Result<Opened, TunnelError> {
    let session = node.session(request.token.as_ref()).await?;
    let Target::Vnc { addr } = &session.target else {
        return Err(TunnelError::WrongKind(session.target.kind()));
    };
    let id = TunnelId::random();
    tracing::Span::current().record("tunnel", tracing::field::display(id));
    let tunnel = Tunnel {
        id,
        kind: TunnelKind::Websockify,
        http_token: None,
        client: request.client_addr,
        replaces: request.replaces,
    };
    // The slot is taken before the VNC server is dialled: a refused tunnel costs it nothing.
    let mut tunnel = node.register(tunnel, &session).await?;
    let vnc = upstream::connect(addr, node.deny_for(&session)).await?;
    tunnel.connected(addr, None).await?;
    let filter = (session.read_only || session.join.is_some())
        .then(|| ReadOnlyFilter::new(session.read_only, session.join.is_some()));
    Ok(Opened {
        tunnel,
        vnc,
        filter,
        addr: addr.clone(),
        idle: session.idle_timeout.is_some(),
    })
}

/// The deadline of the VNC server's first bytes: RFB servers speak first (`RFB 003.008\n`) and at once.
struct Greeting {
    from: HostPort,
    by: Instant,
}

/// Pumps both directions until either side ends. `Ok` is a normal end by either side. With a filter, the
/// browser's bytes pass through it (read-only viewing, shared joining). The VNC server's first read must
/// come within the greeting's deadline; later ones may take as long as they like. A browser that sends
/// nothing, answers to pings included, for `liveness` is gone.
async fn relay(
    socket: &mut WebSocket,
    vnc: TcpStream,
    mut filter: Option<ReadOnlyFilter>,
    greeting: Greeting,
    (liveness, idle): (Duration, bool),
    traffic: &Traffic,
) -> Result<(), TunnelError> {
    let (from_vnc, mut to_vnc) = vnc.into_split();
    let (mut to_browser, from_browser) = socket.split();
    let from_browser = Incoming::new(from_browser);
    let heard = from_browser.heard();
    let ping = PingDue::default();
    // Without a filter, the browser's bytes are framed only to see a person's input, for the idle timeout.
    let mut watch = idle.then(InputWatch::default);

    let downstream = async {
        let mut buffer = BytesMut::new();
        let mut greeting = Some(greeting);
        loop {
            let reading = async {
                let reading = upstream::read_some(&from_vnc, &mut buffer);
                match &greeting {
                    Some(Greeting { from, by }) => timeout_at(*by, reading)
                        .await
                        .map_err(|_| TunnelError::NoGreeting(from.clone()))?,
                    None => reading.await,
                }
                .map_err(TunnelError::UpstreamIo)
            };
            let read = tokio::select! {
                biased;
                frame = ping.due() => {
                    to_browser.send(frame).await.map_err(downstream_error)?;
                    continue;
                }
                read = reading => read?,
            };
            greeting = None;
            if read == 0 {
                return Ok(());
            }
            // While the VNC server has more ready, queue frames without flushing each one; flush when
            // it has nothing more, or when a flush's worth is queued (bounding what waits in memory).
            let mut queued = 0;
            loop {
                traffic.received_upstream(buffer.len());
                queued += buffer.len();
                let frame = Message::Binary(buffer.split().freeze());
                to_browser.feed(frame).await.map_err(downstream_error)?;
                if queued >= FLUSH_AFTER {
                    break;
                }
                match upstream::read_ready(&from_vnc, &mut buffer)
                    .map_err(TunnelError::UpstreamIo)?
                {
                    Some(0) => {
                        to_browser.flush().await.map_err(downstream_error)?;
                        return Ok(());
                    }
                    Some(_) => continue,
                    None => break,
                }
            }
            to_browser.flush().await.map_err(downstream_error)?;
        }
    };
    let to_upstream = async {
        let mut from_browser = from_browser;
        let mut filtered = Vec::new();
        while let Some(message) = from_browser.next().await? {
            match message {
                Data::Binary(bytes) => {
                    let bytes = match filter.as_mut() {
                        None => {
                            if watch.as_mut().is_some_and(|watch| watch.saw_input(&bytes)) {
                                traffic.user_input();
                            }
                            bytes
                        }
                        Some(filter) => {
                            filtered.clear();
                            filter
                                .filter(&bytes, &mut filtered)
                                .map_err(TunnelError::ReadOnly)?;
                            if filter.take_input() {
                                traffic.user_input();
                            }
                            bytes::Bytes::copy_from_slice(&filtered)
                        }
                    };
                    to_vnc
                        .write_all(&bytes)
                        .await
                        .map_err(TunnelError::UpstreamIo)?;
                    traffic.sent_upstream(bytes.len());
                }
                Data::Text(_) => return Err(TunnelError::BadFrame),
            }
        }
        Ok(())
    };
    tokio::select! {
        end = downstream => end,
        end = to_upstream => end,
        gone = ws::liveness(&heard, liveness, &ping) => Err(gone),
    }
}

async fn close(socket: &mut WebSocket, close: RelayClose) {
    ws::close(socket, close.code(), close.reason()).await;
}
