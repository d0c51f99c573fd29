//! What the two Guacamole tunnels share: opening a tunnel (token, session kind, guacd handshake), tunnel
//! ids and tokens from the OS's CSPRNG, and error responses in the servlet's form.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::info;

use deskbroker_shared::GuacStatus;
use deskbroker_shared::connect::ConnectRequest;
use deskbroker_shared::ids::{SessionId, TunnelId};
use deskbroker_shared::session::{Session, Target};

use crate::error::TunnelError;
use crate::server::Edge;
use crate::upstream::{self, Guacd, GuacdRequest};

pub const STATUS_CODE: HeaderName = HeaderName::from_static("guacamole-status-code");
pub const ERROR_MESSAGE: HeaderName = HeaderName::from_static("guacamole-error-message");
pub const TUNNEL_TOKEN: HeaderName = HeaderName::from_static("guacamole-tunnel-token");

/// A tunnel past its guacd handshake, not yet recorded.
pub struct Opened {
    pub id: TunnelId,
    pub guacd: Guacd,
    pub session: Session,
}

/// Checks the token, then connects to the session's guacd and runs the handshake.
pub async fn open(edge: &Edge, request: &ConnectRequest) -> Result<Opened, TunnelError> {
    let session = edge.session(request.token.as_ref()).await?;
    let Target::Guacd {
        addr,
        protocol,
        params,
    } = &session.target
    else {
        return Err(TunnelError::WrongKind(session.target.kind()));
    };
    // A share joins the running connection of the session it shares: guacd's `select` with its id.
    let joined = match &session.join {
        Some(parent) => Some(running_connection(edge, parent).await?),
        None => None,
    };
    let guacd = upstream::guacd(GuacdRequest {
        addr,
        protocol: joined.as_deref().unwrap_or(protocol),
        params,
        client: &request.client,
    })
    .await?;
    let id = TunnelId::random();
    info!(tunnel = %id, tenant = %session.tenant, guacd = %addr, connection = %guacd.connection_id, "tunnel open");
    Ok(Opened { id, guacd, session })
}

/// The guacd connection id of a live tunnel of `session`, wherever it runs.
async fn running_connection(edge: &Edge, session: &SessionId) -> Result<String, TunnelError> {
    let tunnels = edge
        .membership()
        .registry()
        .session_tunnels(session)
        .await?;
    for tunnel in tunnels {
        if tunnel.connection.is_some() && edge.membership().live_owner(&tunnel).await?.is_some() {
            return Ok(tunnel.connection.unwrap_or_default());
        }
    }
    Err(TunnelError::NothingToJoin)
}

/// An error in the Java servlet's form, with an HTTP status of its own (the table's is the default).
pub fn error_response_with(http: StatusCode, status: GuacStatus, message: &str) -> Response {
    let mut response = error_response(status, message);
    *response.status_mut() = http;
    response
}

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
