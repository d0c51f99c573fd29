//! What the two WebSocket endpoints share: reading the offered subprotocols, and telling a failure from a
//! browser that sent too much.

use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite;

use crate::error::TunnelError;

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
