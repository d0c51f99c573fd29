//! Opening a Guacamole tunnel, as both Guacamole tunnels do it: check the token and the session's kind,
//! find the running connection a share joins, register the tunnel, connect to the session's guacd and run
//! the handshake.

use std::collections::BTreeMap;

use deskbroker_shared::cluster::TunnelKind;
use deskbroker_shared::connect::ConnectRequest;
use deskbroker_shared::guacd_params;
use deskbroker_shared::ids::{SessionId, TokenDigest, TunnelId};
use deskbroker_shared::session::{HostPort, Session, Target};

use crate::error::TunnelError;
use crate::node::Node;
use crate::registration::{Registration, Tunnel};
use crate::upstream::{self, Guacd, GuacdRequest};

/// A registered tunnel past its guacd handshake.
pub struct Opened {
    pub guacd: Guacd,
    pub session: Session,
    pub registration: Registration,
}

/// Checks the token, registers the tunnel (its slot is taken before guacd is asked for anything), then
/// connects to the session's guacd and runs the handshake.
pub async fn open(
    node: &Node,
    request: &ConnectRequest,
    kind: TunnelKind,
    http_token: Option<TokenDigest>,
) -> Result<Opened, TunnelError> {
    let session = node.session(request.token.as_ref()).await?;
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
        Some(parent) => Some(running_connection(node, parent).await?),
        None => None,
    };
    let id = TunnelId::random();
    tracing::Span::current().record("tunnel", tracing::field::display(id));
    let tunnel = Tunnel {
        id,
        kind,
        http_token,
        client: request.client_addr,
        replaces: request.replaces,
    };
    let mut registration = node.register(tunnel, &session).await?;
    let params = checked_params(node, &session, params).await?;
    let guacd = upstream::guacd(GuacdRequest {
        addr,
        protocol: joined.as_deref().unwrap_or(protocol),
        params: &params,
        client: &request.client,
    })
    .await?;
    registration
        .connected(addr, Some(guacd.connection_id.clone()))
        .await?;
    Ok(Opened {
        guacd,
        session,
        registration,
    })
}

/// The connection parameters to give guacd. guacd resolves the hosts it is told to reach itself (the
/// desktop, and an SSH, SFTP, gateway or repeater host), so for a tenant's session the edge resolves each
/// first, checks it against the deny list, and gives guacd the checked address instead: a name cannot
/// resolve to one thing here and another there.
async fn checked_params(
    node: &Node,
    session: &Session,
    params: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, TunnelError> {
    let mut params = params.clone();
    if session.trusted_target {
        return Ok(params);
    }
    for param in guacd_params::HOSTS {
        let Some(host) = params.get(param.host).filter(|h| !h.is_empty()) else {
            continue;
        };
        let port = params.get(param.port).and_then(|p| p.parse().ok());
        let addr = HostPort {
            host: host.clone(),
            port: port.unwrap_or(param.default_port),
        };
        let checked = node.deny_for(session).resolve(&addr).await?;
        if let Some(first) = checked.first() {
            params.insert(param.host.into(), first.ip().to_string());
        }
    }
    Ok(params)
}

/// The guacd connection id of a live tunnel of `session`, wherever it runs.
async fn running_connection(node: &Node, session: &SessionId) -> Result<String, TunnelError> {
    let membership = node.membership();
    for tunnel in membership.registry().session_tunnels(session).await? {
        if let Some(connection) = &tunnel.connection
            && membership
                .live_owner(&tunnel.owner, tunnel.incarnation)
                .await?
                .is_some()
        {
            return Ok(connection.clone());
        }
    }
    Err(TunnelError::NothingToJoin)
}
