//! Every way a tunnel can end, as the browser sees it.
//!
//! Guacamole tunnels report a [`GuacStatus`]: its decimal code travels as the WebSocket close reason or the
//! `Guacamole-Status-Code` header, and its HTTP status and WebSocket close code come from one table, the one
//! in Apache Guacamole's `GuacamoleStatus.java`. The raw VNC relay (`/websockify`) has no such vocabulary, so
//! it closes with a [`RelayClose`]: 4000 plus the HTTP status that fits, the convention websockify-style
//! relays use. docs/errors.md lists both.

/// Guacamole protocol status codes (`GuacamoleStatus.java`, `Status.js`, libguac `protocol-types.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum GuacStatus {
    Success = 0x0000,
    Unsupported = 0x0100,
    ServerError = 0x0200,
    ServerBusy = 0x0201,
    UpstreamTimeout = 0x0202,
    UpstreamError = 0x0203,
    ResourceNotFound = 0x0204,
    ResourceConflict = 0x0205,
    ResourceClosed = 0x0206,
    UpstreamNotFound = 0x0207,
    UpstreamUnavailable = 0x0208,
    SessionConflict = 0x0209,
    SessionTimeout = 0x020A,
    SessionClosed = 0x020B,
    ClientBadRequest = 0x0300,
    ClientUnauthorized = 0x0301,
    ClientForbidden = 0x0303,
    ClientTimeout = 0x0308,
    ClientOverrun = 0x030D,
    ClientBadType = 0x030F,
    ClientTooMany = 0x031D,
}

use GuacStatus::*;

const ALL: [GuacStatus; 21] = [
    Success,
    Unsupported,
    ServerError,
    ServerBusy,
    UpstreamTimeout,
    UpstreamError,
    ResourceNotFound,
    ResourceConflict,
    ResourceClosed,
    UpstreamNotFound,
    UpstreamUnavailable,
    SessionConflict,
    SessionTimeout,
    SessionClosed,
    ClientBadRequest,
    ClientUnauthorized,
    ClientForbidden,
    ClientTimeout,
    ClientOverrun,
    ClientBadType,
    ClientTooMany,
];

impl GuacStatus {
    /// The numeric code, as sent in `error` instructions, close reasons and headers.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Looks a code up; unknown codes (guacd may grow new ones) are `None`.
    pub fn from_code(code: u16) -> Option<Self> {
        ALL.into_iter().find(|status| status.code() == code)
    }

    /// The HTTP status the Java servlet answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Success => 200,
            Unsupported => 501,
            ServerError => 500,
            ServerBusy => 503,
            UpstreamTimeout => 504,
            UpstreamError | UpstreamNotFound | UpstreamUnavailable => 502,
            ResourceNotFound | ResourceClosed | SessionClosed => 404,
            ResourceConflict | SessionConflict => 409,
            SessionTimeout => 408,
            ClientBadRequest => 400,
            ClientUnauthorized | ClientForbidden => 403,
            ClientTimeout => 408,
            ClientOverrun => 413,
            ClientBadType => 415,
            ClientTooMany => 429,
        }
    }

    /// The WebSocket close code the Java endpoint closes with for this code.
    pub fn ws_close_code(self) -> u16 {
        match self {
            Success => 1000,
            Unsupported | ServerError | UpstreamTimeout | UpstreamError | UpstreamNotFound
            | UpstreamUnavailable => 1011,
            ServerBusy | ResourceConflict | SessionConflict | ClientUnauthorized
            | ClientForbidden | ClientTooMany => 1008,
            ResourceNotFound | ResourceClosed | SessionTimeout | SessionClosed
            | ClientBadRequest | ClientTimeout => 1002,
            ClientOverrun => 1009,
            ClientBadType => 1003,
        }
    }

    /// The WebSocket close reason: the decimal code, which the JS client reads with `parseInt`.
    pub fn ws_close_reason(self) -> String {
        self.code().to_string()
    }

    /// True for codes the JS client reports as errors (`Status.isError`).
    pub fn is_error(self) -> bool {
        self != Success
    }
}

/// How the raw VNC relay (`/websockify`) closes: a WebSocket close code and a short reason for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayClose {
    /// 1000: either side ended the connection normally.
    Normal,
    /// 1003: the browser sent a text frame; RFB is binary.
    TextFrame,
    /// 1009: the browser sent a message larger than the relay accepts.
    TooLarge,
    /// 4400: the request has no token.
    MissingToken,
    /// 4400: the token names a session of another kind (a guacd session).
    WrongKind,
    /// 4403: the token is unknown, expired or revoked.
    BadToken,
    /// 4500: deskbroker itself failed.
    Internal,
    /// 4502: the VNC server could not be reached, or failed mid-stream.
    UpstreamError,
    /// 4400: a read-only viewer's client speaks RFB the relay cannot check.
    ReadOnlyUnsupported,
    /// 4409: a newer connection took over this exclusive session.
    TakenOver,
    /// 4429: the tenant's concurrent tunnel limit is reached.
    TooMany,
    /// 4410: the session was closed (revoked) by the control plane.
    SessionClosed,
    /// 4410: the session's lifetime ran out.
    SessionExpired,
    /// 4503: the node is shutting down, or the registry cannot be reached; try again.
    Unavailable,
    /// 4504: the VNC server did not accept the connection in time.
    UpstreamTimeout,
    /// 4504: the VNC server accepted the connection, but sent no greeting (its first bytes) in time.
    NoGreeting,
    /// 1008: the client sent WebSocket control frames (pings) faster than allowed.
    ControlFlood,
    /// 4408: the client sent nothing in time after the upgrade, or answered no ping in time.
    ClientTimeout,
    /// 4408: nobody typed, clicked or moved the pointer within the session's idle timeout.
    IdleTimeout,
    /// 4403: the session's target resolves only to addresses the operator denies.
    TargetDenied,
}

impl RelayClose {
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::TextFrame => 1003,
            Self::TooLarge => 1009,
            Self::MissingToken | Self::WrongKind | Self::ReadOnlyUnsupported => 4400,
            Self::BadToken => 4403,
            Self::Internal => 4500,
            Self::UpstreamError => 4502,
            Self::SessionClosed | Self::SessionExpired => 4410,
            Self::TakenOver => 4409,
            Self::TooMany => 4429,
            Self::Unavailable => 4503,
            Self::UpstreamTimeout | Self::NoGreeting => 4504,
            Self::ControlFlood => 1008,
            Self::ClientTimeout | Self::IdleTimeout => 4408,
            Self::TargetDenied => 4403,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "closed",
            Self::TextFrame => "text frames are not supported",
            Self::TooLarge => "message too large",
            Self::MissingToken => "missing token",
            Self::WrongKind => "session is not a VNC session",
            Self::BadToken => "unknown or expired token",
            Self::Internal => "internal error",
            Self::UpstreamError => "VNC server unreachable or failed",
            Self::SessionClosed => "session closed",
            Self::SessionExpired => "session expired",
            Self::TakenOver => "taken over by another connection",
            Self::TooMany => "too many connections",
            Self::ReadOnlyUnsupported => "client not supported for read-only viewing",
            Self::Unavailable => "service unavailable, try again",
            Self::UpstreamTimeout => "VNC server timed out",
            Self::NoGreeting => "VNC server sent no greeting in time",
            Self::ControlFlood => "too many control frames",
            Self::ClientTimeout => "no message from the client in time",
            Self::IdleTimeout => "closed after a period without input",
            Self::TargetDenied => "target not allowed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for status in ALL {
            assert_eq!(GuacStatus::from_code(status.code()), Some(status));
        }
        assert_eq!(GuacStatus::from_code(0x0301), Some(ClientUnauthorized));
        assert_eq!(GuacStatus::from_code(1), None);
    }

    #[test]
    fn maps_like_the_java_servlet() {
        assert_eq!(ClientUnauthorized.code(), 769);
        assert_eq!(ClientUnauthorized.http_status(), 403);
        assert_eq!(ClientUnauthorized.ws_close_code(), 1008);
        assert_eq!(ResourceNotFound.http_status(), 404);
        assert_eq!(ResourceNotFound.ws_close_code(), 1002);
        assert_eq!(ClientOverrun.ws_close_code(), 1009);
        assert_eq!(Success.ws_close_reason(), "0");
    }
}
