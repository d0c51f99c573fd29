//! What the two WebSocket endpoints share: reading the offered subprotocols, and telling a failure from a
//! browser that sent too much.

use std::future::Future;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;
use axum::response::Response;
use tokio_tungstenite::tungstenite;
use tracing::{Instrument, Span};

use crate::defaults::WS_READ_BUFFER;
use crate::error::TunnelError;
use crate::server::Edge;

/// Accepts the upgrade with `protocol` echoed and messages bounded by `max_message`, and runs the tunnel
/// as a tracked task in `span`.
pub fn accept<F, Fut>(
    edge: &Edge,
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
    let edge = edge.clone();
    upgrade
        .protocols([protocol])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| edge.track_tunnel(tunnel(socket).instrument(span)))
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
