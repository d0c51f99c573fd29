//! What the two WebSocket endpoints share: accepting the upgrade as a tracked tunnel, reading the offered
//! subprotocols, telling a failure from a browser that sent too much, and the closing frame.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tracing::{Instrument, Span};

use deskbroker_shared::connect::ConnectRequest;

use crate::client::Peer;
use crate::defaults::{
    BROWSER_PING_AFTER, CONTROL_FRAME_BURST, CONTROL_FRAME_REFILL, WS_CLOSE_TIMEOUT,
    WS_FIRST_MESSAGE_TIMEOUT, WS_MAX_WRITE_BUFFER, WS_READ_BUFFER,
};
use crate::error::TunnelError;
use crate::local::Stamp;
use crate::node::Node;

/// What a WebSocket endpoint speaks.
pub struct Endpoint {
    /// The subprotocol echoed to the client.
    pub protocol: &'static str,
    /// The largest message (and frame) accepted from the browser.
    pub max_message: usize,
}

/// Accepts the upgrade as `endpoint` says, and runs the tunnel, with the connect data from the query
/// string, as a tracked task in `span`. The token is checked in the tunnel, after the upgrade, so that a
/// refusal reaches the browser as a close code and reason instead of an undiagnosable 1006.
pub fn accept<F, Fut>(
    node: Node,
    upgrade: WebSocketUpgrade,
    query: Option<String>,
    client: Option<IpAddr>,
    endpoint: Endpoint,
    span: Span,
    tunnel: F,
) -> Response
where
    F: FnOnce(Node, WebSocket, ConnectRequest) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut request = ConnectRequest::parse(query.unwrap_or_default().as_bytes());
    request.client_addr = client;
    upgrade
        .protocols([endpoint.protocol])
        .max_message_size(endpoint.max_message)
        .max_frame_size(endpoint.max_message)
        .read_buffer_size(WS_READ_BUFFER)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let tracked = node.clone();
            tracked.track_tunnel(tunnel(node, socket, request).instrument(span))
        })
}

/// The browser's address, as its connection's peer says (see `client.rs`).
pub fn client_addr(peer: Option<Extension<Peer>>, headers: &HeaderMap) -> Option<IpAddr> {
    peer.map(|Extension(peer)| peer.client(headers))
}

/// The subprotocols a WebSocket client offered, in its order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
        .collect()
}

/// Classifies an error reading from or writing to the browser's WebSocket.
pub fn downstream_error(error: axum::Error) -> TunnelError {
    let source = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>());
    match source {
        Some(tungstenite::Error::Capacity(_)) => TunnelError::TooLarge,
        _ => TunnelError::Downstream(error.to_string()),
    }
}

/// Ends the WebSocket with the closing handshake (RFC 6455 §5.5.1), within [`WS_CLOSE_TIMEOUT`] in all.
/// When the browser closed first, the WebSocket layer has queued the answer to its close frame, and this
/// sends it. Otherwise this sends `code` and `reason`, then reads until the browser's answer, discarding
/// what it sent meanwhile: a socket dropped with unread bytes is reset, and a reset can destroy the close
/// frame before the browser reads it.
pub async fn close(socket: &mut WebSocket, code: u16, reason: impl Into<Utf8Bytes>) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let handshake = async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            // Closed by the browser (the send is refused after its close): flush the queued answer.
            let _ = socket.flush().await;
            return;
        }
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    // The browser may be gone already, or not reading: there is nobody left to tell.
    let _ = tokio::time::timeout(WS_CLOSE_TIMEOUT, handshake).await;
}

/// A data message from the browser.
pub enum Data {
    Binary(Bytes),
    Text(Utf8Bytes),
}

/// What the browser sends, as a tunnel reads it: data messages only. Control frames are answered by the
/// WebSocket layer and counted against a [`ControlBudget`]; a close, or the end of the stream, is `None`.
/// The first message must come within [`WS_FIRST_MESSAGE_TIMEOUT`] of the tunnel opening. Every frame,
/// pongs included, is [`Heard`].
pub struct Incoming<S> {
    messages: S,
    control: ControlBudget,
    first_by: Option<Instant>,
    heard: Arc<Heard>,
}

impl<S> Incoming<S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    pub fn new(messages: S) -> Self {
        Self {
            messages,
            control: ControlBudget::default(),
            first_by: Some(Instant::now() + WS_FIRST_MESSAGE_TIMEOUT),
            heard: Arc::new(Heard::default()),
        }
    }

    /// When the browser last sent a frame, for [`liveness`].
    pub fn heard(&self) -> Arc<Heard> {
        self.heard.clone()
    }

    pub async fn next(&mut self) -> Result<Option<Data>, TunnelError> {
        loop {
            // Control frames are not a first message: a client sending only pings is still silent.
            let message = match self.first_by {
                Some(deadline) => tokio::time::timeout_at(deadline, self.messages.next())
                    .await
                    .map_err(|_| TunnelError::Silent)?,
                None => self.messages.next().await,
            };
            self.heard.set();
            let data = match message.transpose().map_err(downstream_error)? {
                None | Some(Message::Close(_)) => return Ok(None),
                Some(Message::Ping(_) | Message::Pong(_)) => {
                    self.control.spend()?;
                    continue;
                }
                Some(Message::Binary(bytes)) => Data::Binary(bytes),
                Some(Message::Text(text)) => Data::Text(text),
            };
            self.first_by = None;
            return Ok(Some(data));
        }
    }
}

/// When the browser last sent a frame, any frame: a relaxed atomic store per frame.
pub type Heard = Stamp;

/// A ping the liveness check asks the tunnel's writer to send: at most one waits, and it takes no
/// allocation of its own.
#[derive(Default)]
pub struct PingDue(Notify);

impl PingDue {
    fn ask(&self) {
        self.0.notify_one();
    }

    /// Waits until a ping is due, and gives the frame to send.
    pub async fn due(&self) -> Message {
        self.0.notified().await;
        Message::Ping(Bytes::from_static(b"deskbroker"))
    }
}

/// Pings the browser (through `ping`, which the tunnel's writer sends) whenever it has been quiet for
/// [`BROWSER_PING_AFTER`] (a third of `timeout` if that is less), and returns once it has sent nothing
/// for `timeout`: a browser that is there answers a ping at once, so one that does not is gone (a laptop
/// suspended, a network cut without a FIN). A writer stuck behind a browser that does not read sends no
/// ping either: that browser is gone too. Costs a timer per ping period, nothing per frame.
pub async fn liveness(heard: &Heard, timeout: Duration, ping: &PingDue) -> TunnelError {
    let ping_after = BROWSER_PING_AFTER.min(timeout / 3);
    loop {
        let quiet = heard.at().elapsed();
        if quiet >= timeout {
            return TunnelError::Unresponsive;
        }
        let wait = match quiet.checked_sub(ping_after) {
            Some(_) => {
                // A ping still due is as good as this one.
                ping.ask();
                ping_after.min(timeout - quiet)
            }
            None => ping_after - quiet,
        };
        tokio::time::sleep(wait).await;
    }
}

/// The control frames (pings, pongs) a client may still send: [`CONTROL_FRAME_BURST`] at once, one more
/// every [`CONTROL_FRAME_REFILL`]. Each ping is owed a pong, so a client that sends them faster than it
/// could need is flooding, whether or not it reads the answers.
pub struct ControlBudget {
    left: u32,
    counted: Instant,
}

impl Default for ControlBudget {
    fn default() -> Self {
        Self {
            left: CONTROL_FRAME_BURST,
            counted: Instant::now(),
        }
    }
}

impl ControlBudget {
    /// Spends one frame of the budget; fails when none is left.
    pub fn spend(&mut self) -> Result<(), TunnelError> {
        let earned = self.counted.elapsed().as_nanos() / CONTROL_FRAME_REFILL.as_nanos();
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if self.left.saturating_add(earned) >= CONTROL_FRAME_BURST {
            (self.left, self.counted) = (CONTROL_FRAME_BURST, Instant::now());
        } else if earned > 0 {
            self.left += earned;
            self.counted += CONTROL_FRAME_REFILL * earned;
        }
        self.left = self.left.checked_sub(1).ok_or(TunnelError::ControlFlood)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_websocket_silent_after_its_upgrade_is_given_up() {
        let silent = futures_util::stream::pending::<Result<Message, axum::Error>>();
        let mut incoming = Incoming::new(silent);
        let waited = tokio::time::Instant::now();
        assert!(matches!(incoming.next().await, Err(TunnelError::Silent)));
        assert_eq!(waited.elapsed(), WS_FIRST_MESSAGE_TIMEOUT);

        // Once the first message came, silence is the client's right.
        let first = futures_util::stream::iter([Ok(Message::Binary(Bytes::from_static(b"x")))]);
        let mut incoming = Incoming::new(first.chain(futures_util::stream::pending()));
        assert!(matches!(incoming.next().await, Ok(Some(Data::Binary(_)))));
        let later = tokio::time::timeout(2 * WS_FIRST_MESSAGE_TIMEOUT, incoming.next()).await;
        assert!(later.is_err(), "still waiting, without a deadline");

        // Pings within the budget are no first message: the deadline holds.
        let ping = || Ok(Message::Ping(Bytes::from_static(b"p")));
        let pings = futures_util::stream::iter([ping(), ping()]);
        let mut incoming = Incoming::new(pings.chain(futures_util::stream::pending()));
        assert!(matches!(incoming.next().await, Err(TunnelError::Silent)));
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_are_allowed_in_bursts_and_at_the_refill_rate() {
        let mut budget = ControlBudget::default();
        for _ in 0..CONTROL_FRAME_BURST {
            budget.spend().unwrap();
        }
        assert!(matches!(budget.spend(), Err(TunnelError::ControlFlood)));
        // One a second, for as long as it takes.
        for _ in 0..100 {
            tokio::time::advance(CONTROL_FRAME_REFILL).await;
            budget.spend().unwrap();
            assert!(budget.spend().is_err());
        }
        // A quiet minute earns a whole burst back, and no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..CONTROL_FRAME_BURST {
            budget.spend().unwrap();
        }
        assert!(budget.spend().is_err());
    }
}
