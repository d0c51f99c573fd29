//! Why a tunnel could not open or had to end, which side is to blame, and how the browser is told.
//!
//! Each variant maps to one Guacamole status (for the Guacamole tunnels) and one relay close code (for
//! `/websockify`); docs/errors.md lists them. Messages name addresses and causes for the logs; what reaches
//! the browser is only the status and a fixed reason, never an internal address. HTTP error responses, in
//! the Java servlet's form, are made here and nowhere else.

use std::fmt;
use std::io;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use deskbroker_broker::RegistryError;
use deskbroker_shared::handshake::HandshakeError;
use deskbroker_shared::session::HostPort;
use deskbroker_shared::{GuacStatus, ParseError, RelayClose};

/// Which party a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The browser.
    Downstream,
    /// The VNC server or guacd.
    Upstream,
    /// The registry of sessions.
    Registry,
    /// deskbroker itself.
    Internal,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Registry => "registry",
            Side::Internal => "internal",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no session token in the request")]
    MissingToken,
    #[error("unknown or expired session token")]
    BadToken,
    #[error("the session's target is {0}, not what this endpoint serves")]
    WrongKind(&'static str),
    #[error("malformed instruction from the browser: {0}")]
    BadInstruction(ParseError),
    #[error("the browser sent a frame of the wrong type")]
    BadFrame,
    #[error("the browser sent a message over the size limit")]
    TooLarge,
    #[error("the browser sent WebSocket control frames faster than allowed")]
    ControlFlood,
    #[error("the browser sent nothing in time after the upgrade")]
    Silent,
    #[error("the browser answered no ping in time")]
    Unresponsive,
    #[error("the HTTP tunnel's client stopped writing while it read")]
    WritesStopped,
    #[error("browser connection failed: {0}")]
    Downstream(String),
    #[error("registry lookup failed: {0}")]
    Registry(#[from] RegistryError),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: HostPort, source: io::Error },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(HostPort),
    #[error("{0} resolves only to addresses the operator denies")]
    Denied(HostPort),
    #[error("guacd at {addr}: {source}")]
    Handshake {
        addr: HostPort,
        source: HandshakeError,
    },
    #[error("guacd at {0} did not finish the handshake in time")]
    HandshakeTimeout(HostPort),
    #[error("malformed instruction from guacd: {0}")]
    UpstreamProtocol(ParseError),
    #[error("upstream connection failed: {0}")]
    UpstreamIo(io::Error),
    #[error("guacd went silent")]
    UpstreamSilent,
    #[error("the VNC server at {0} sent no greeting in time")]
    NoGreeting(HostPort),
    #[error("no request for the tunnel within its idle timeout")]
    Idle,
    #[error("the session was closed")]
    SessionClosed,
    #[error("no running connection to join")]
    NothingToJoin,
    #[error("the tenant has no tunnel slot left")]
    TooMany,
    #[error("a newer connection took over the exclusive session")]
    TakenOver,
    #[error("read-only viewing: {0}")]
    ReadOnly(deskbroker_shared::rfb::RfbError),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the session expired")]
    SessionExpired,
    #[error("no input from the user within the session's idle timeout")]
    IdleTimeout,
    #[error("the node's lease lapsed and the tenant's slots were taken meanwhile")]
    LeaseLost,
}

impl TunnelError {
    pub fn side(&self) -> Side {
        use TunnelError::*;
        match self {
            MissingToken | BadToken | WrongKind(_) | BadInstruction(_) | BadFrame | TooLarge
            | ControlFlood | Silent | Unresponsive | WritesStopped | IdleTimeout
            | Downstream(_) | Idle | ReadOnly(_) | NothingToJoin | TooMany | TakenOver
            | Denied(_) => Side::Downstream,
            Registry(_) => Side::Registry,
            Connect { .. }
            | ConnectTimeout(_)
            | Handshake { .. }
            | HandshakeTimeout(_)
            | UpstreamProtocol(_)
            | UpstreamIo(_)
            | UpstreamSilent
            | NoGreeting(_) => Side::Upstream,
            ShuttingDown | SessionClosed | SessionExpired | LeaseLost => Side::Internal,
        }
    }

    /// Its name in the logs' and the metrics' `reason`: one per variant, stable, listed in
    /// docs/operations.md.
    pub fn reason(&self) -> &'static str {
        use TunnelError::*;
        match self {
            MissingToken => "missing_token",
            BadToken => "bad_token",
            WrongKind(_) => "wrong_kind",
            BadInstruction(_) => "bad_instruction",
            BadFrame => "bad_frame",
            TooLarge => "too_large",
            ControlFlood => "control_flood",
            Silent => "browser_silent",
            Unresponsive => "browser_unresponsive",
            WritesStopped => "writes_stopped",
            Downstream(_) => "browser_error",
            Registry(_) => "registry_unavailable",
            Connect { .. } => "upstream_unreachable",
            ConnectTimeout(_) => "upstream_connect_timeout",
            Denied(_) => "target_denied",
            Handshake { .. } => "guacd_refused",
            HandshakeTimeout(_) => "guacd_handshake_timeout",
            UpstreamProtocol(_) => "upstream_protocol",
            UpstreamIo(_) => "upstream_error",
            UpstreamSilent => "upstream_silent",
            NoGreeting(_) => "no_greeting",
            Idle => "no_requests",
            SessionClosed => "session_closed",
            NothingToJoin => "nothing_to_join",
            TooMany => "too_many",
            TakenOver => "taken_over",
            ReadOnly(_) => "read_only",
            ShuttingDown => "node_stopping",
            SessionExpired => "session_expired",
            IdleTimeout => "idle_timeout",
            LeaseLost => "lease_lost",
        }
    }

    /// The Guacamole status the browser is told.
    pub fn status(&self) -> GuacStatus {
        use TunnelError::*;
        match self {
            MissingToken | BadToken => GuacStatus::ClientUnauthorized,
            WrongKind(_) => GuacStatus::ClientBadRequest,
            BadInstruction(error) if error.is_overrun() => GuacStatus::ClientOverrun,
            BadInstruction(_) => GuacStatus::ClientBadRequest,
            BadFrame => GuacStatus::ClientBadType,
            TooLarge | ControlFlood => GuacStatus::ClientOverrun,
            Downstream(_) => GuacStatus::ClientBadRequest,
            Idle | Silent | Unresponsive => GuacStatus::ClientTimeout,
            Registry(_) => GuacStatus::UpstreamUnavailable,
            Connect { .. } => GuacStatus::UpstreamNotFound,
            ConnectTimeout(_) | HandshakeTimeout(_) | UpstreamSilent | NoGreeting(_) => {
                GuacStatus::UpstreamTimeout
            }
            Handshake { source, .. } => source.status(),
            UpstreamProtocol(_) | UpstreamIo(_) => GuacStatus::UpstreamError,
            ShuttingDown | LeaseLost | WritesStopped => GuacStatus::UpstreamUnavailable,
            SessionClosed => GuacStatus::SessionClosed,
            SessionExpired | IdleTimeout => GuacStatus::SessionTimeout,
            NothingToJoin => GuacStatus::ResourceNotFound,
            TooMany => GuacStatus::ClientTooMany,
            TakenOver => GuacStatus::SessionConflict,
            ReadOnly(_) | Denied(_) => GuacStatus::ClientForbidden,
        }
    }

    /// The HTTP tunnel's error response: the status's HTTP code, except 503 when the registry is away
    /// (retrying later may work, which is what 503 says to clients and load balancers).
    pub fn response(&self) -> Response {
        let mut response = error_response(self.status(), self.public_message());
        if let TunnelError::Registry(_) = self {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    }

    /// How the raw VNC relay closes for this failure.
    pub fn relay_close(&self) -> RelayClose {
        use TunnelError::*;
        match self {
            MissingToken => RelayClose::MissingToken,
            BadToken => RelayClose::BadToken,
            WrongKind(_) => RelayClose::WrongKind,
            BadFrame => RelayClose::TextFrame,
            TooLarge => RelayClose::TooLarge,
            ControlFlood => RelayClose::ControlFlood,
            Silent | Unresponsive => RelayClose::ClientTimeout,
            Denied(_) => RelayClose::TargetDenied,
            BadInstruction(_) | Downstream(_) | Idle => RelayClose::Normal,
            Registry(_) | ShuttingDown | LeaseLost | WritesStopped => RelayClose::Unavailable,
            SessionClosed => RelayClose::SessionClosed,
            SessionExpired => RelayClose::SessionExpired,
            IdleTimeout => RelayClose::IdleTimeout,
            NothingToJoin => RelayClose::BadToken,
            TooMany => RelayClose::TooMany,
            TakenOver => RelayClose::TakenOver,
            ReadOnly(_) => RelayClose::ReadOnlyUnsupported,
            Connect { .. } | Handshake { .. } | UpstreamProtocol(_) | UpstreamIo(_) => {
                RelayClose::UpstreamError
            }
            ConnectTimeout(_) | HandshakeTimeout(_) | UpstreamSilent => RelayClose::UpstreamTimeout,
            NoGreeting(_) => RelayClose::NoGreeting,
        }
    }

    /// A short, fixed message for the browser: the status says what happened, the logs say where.
    pub fn public_message(&self) -> &'static str {
        use TunnelError::*;
        match self {
            MissingToken => "A session token is required.",
            BadToken => "Unknown or expired session token.",
            WrongKind(_) => "This session cannot be opened with this tunnel.",
            BadInstruction(_) => "Malformed instruction.",
            BadFrame => "Unsupported message type.",
            TooLarge => "Message too large.",
            ControlFlood => "Too many control frames.",
            Silent => "Nothing received in time.",
            Unresponsive => "No answer from the browser in time.",
            WritesStopped => "The tunnel's writes stopped arriving; reconnect.",
            Denied(_) => "Target not allowed.",
            Downstream(_) => "Connection error.",
            Idle => "Tunnel closed after a period without requests.",
            Registry(_) => "Session registry unavailable.",
            Connect { .. } | ConnectTimeout(_) => "Remote desktop server unreachable.",
            Handshake { .. } | HandshakeTimeout(_) | NoGreeting(_) => {
                "Remote desktop server refused the connection."
            }
            UpstreamProtocol(_) | UpstreamIo(_) | UpstreamSilent => "Remote desktop server failed.",
            ShuttingDown => "Server shutting down.",
            LeaseLost => "Server lost its place in the cluster; reconnect.",
            SessionClosed => "The session was closed.",
            SessionExpired => "The session expired.",
            IdleTimeout => "Closed after a period without input.",
            NothingToJoin => "The shared session is not running.",
            TooMany => "Too many connections for this tenant.",
            TakenOver => "Another connection took over this session.",
            ReadOnly(_) => "Not supported for read-only viewing.",
        }
    }
}

/// The status code of a failed request, in `Guacamole-Status-Code`.
pub const STATUS_CODE: HeaderName = HeaderName::from_static("guacamole-status-code");
/// Why the request failed, for people, in `Guacamole-Error-Message`.
pub const ERROR_MESSAGE: HeaderName = HeaderName::from_static("guacamole-error-message");

/// An error in the Java servlet's form: the HTTP status of `status`, its code in `Guacamole-Status-Code`,
/// and the message in `Guacamole-Error-Message` (ASCII only: header values are not UTF-8-safe).
pub fn error_response(status: GuacStatus, message: &str) -> Response {
    let http =
        StatusCode::from_u16(status.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let printable: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let mut response = (http, format!("{printable}\n")).into_response();
    let headers = response.headers_mut();
    headers.insert(STATUS_CODE, HeaderValue::from(status.code()));
    if let Ok(value) = HeaderValue::from_str(&printable) {
        headers.insert(ERROR_MESSAGE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_the_status_and_a_printable_message() {
        let response = error_response(GuacStatus::ClientTooMany, "Too many, caf\u{e9}.");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[STATUS_CODE], "797");
        assert_eq!(response.headers()[ERROR_MESSAGE], "Too many, caf?.");

        let unavailable = TunnelError::Registry(RegistryError::Unavailable("down".into()));
        let response = unavailable.response();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "retry later"
        );
        assert_eq!(response.headers()[STATUS_CODE], "520");
    }
}
