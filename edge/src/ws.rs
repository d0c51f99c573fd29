//! What the two WebSocket endpoints share: accepting the upgrade as a tracked tunnel, reading the offered
//! subprotocols, telling a failure from a browser that sent too much, and the closing frame.

use std::future::Future;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;
use axum::response::Response;
use tokio_tungstenite::tungstenite;
use tracing::{Instrument, Span};

use crate::defaults::WS_READ_BUFFER;
use crate::error::TunnelError;
use crate::node::Node;

/// Accepts the upgrade with `protocol` echoed and messages bounded by `max_message`, and runs the tunnel
/// as a tracked task in `span`.
pub fn accept<F, Fut>(
    node: &Node,
    upgrade: WebSocketUpgrade,
    protocol: &'static str,
    max_message: usize,
    span: Span,
    tunnel: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let node = node.clone();
    upgrade
        .protocols([protocol])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| node.track_tunnel(tunnel(socket).instrument(span)))
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

/// Ends the WebSocket with a close frame.
pub async fn close(socket: &mut WebSocket, code: u16, reason: impl Into<Utf8Bytes>) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // The browser may be gone already; there is nobody left to tell.
    let _ = socket.send(Message::Close(Some(frame))).await;
}
