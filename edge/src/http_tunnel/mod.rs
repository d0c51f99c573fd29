//! `/tunnel`: the Guacamole HTTP tunnel, as the unmodified `Guacamole.HTTPTunnel` expects it.
//!
//! The operation is the raw query string: `connect`, `read:<uuid>:<n>` or `write:<uuid>`, read by
//! [`deskbroker_shared::tunnel_op`]. After connect, a tunnel is found only by its `Guacamole-Tunnel-Token`
//! header; the UUID in the URL is never trusted. A read streams batches of whole instructions and ends with
//! `0.;` once it has sent something and a newer read is waiting (the takeover rule), or when guacd has
//! ended. A write queues the body's instructions for guacd after checking them against guacd's limits.
//! Errors carry `Guacamole-Status-Code` and `Guacamole-Error-Message`, with the HTTP status of the Java
//! servlet.

mod tunnel;

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tracing::{debug, warn};

use deskbroker_shared::cluster::TunnelKind;
use deskbroker_shared::connect::ConnectRequest;
use deskbroker_shared::ids::TunnelToken;
use deskbroker_shared::instruction::{self, END_OF_RESPONSE, FromBrowser};
use deskbroker_shared::tunnel_op::{self, InvalidOperation, Operation};
use deskbroker_shared::{GuacStatus, InstructionBuffer, ParseError};

pub use tunnel::{HttpTunnel, HttpTunnels};

use crate::client::Peer;
use crate::defaults::CONNECT_BODY_LIMIT;
use crate::error::{TunnelError, error_response};
use crate::forward::{OWNER_LOST, Owner};
use crate::guac;
use crate::metrics::metrics;
use crate::node::Node;

/// The header that identifies an HTTP tunnel after `connect`: the only thing a request is found by.
pub const TUNNEL_TOKEN: HeaderName = HeaderName::from_static(tunnel_op::TUNNEL_TOKEN_HEADER);

/// Where a request may be served: any tunnel in the cluster (browser requests), or only this node's own
/// (requests a peer forwarded, which are never forwarded again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    LocalOnly,
}

pub async fn handle(
    State(node): State<Node>,
    State(tunnels): State<HttpTunnels>,
    request: Request<Body>,
) -> Response {
    serve(&node, &tunnels, request, Scope::Cluster).await
}

pub async fn serve(
    node: &Node,
    tunnels: &HttpTunnels,
    request: Request<Body>,
    scope: Scope,
) -> Response {
    let Some(query) = request.uri().query().map(str::to_owned) else {
        return error_response(GuacStatus::ClientBadRequest, "No query string provided.");
    };
    let operation = match Operation::parse(&query) {
        // A peer forwards reads and writes of the tunnels this node owns; it never opens one here.
        Ok(Operation::Connect) if scope == Scope::LocalOnly => Err(InvalidOperation::new(&query)),
        parsed => parsed,
    };
    let read = match operation {
        Ok(Operation::Connect) => {
            let peer = request.extensions().get::<Peer>();
            let client = peer.map(|peer| peer.client(request.headers()));
            return connect(node, tunnels, request.into_body(), client).await;
        }
        Ok(Operation::Read) => true,
        Ok(Operation::Write) => false,
        Err(error) => return error_response(GuacStatus::ClientBadRequest, &error.to_string()),
    };
    let Some(token) = request
        .headers()
        .get(TUNNEL_TOKEN)
        .and_then(|v| v.to_str().ok())
    else {
        return error_response(
            GuacStatus::ClientBadRequest,
            "The HTTP tunnel session token is required for all requests after connecting.",
        );
    };
    let token = TunnelToken::new(token);
    let tunnel = match tunnels.get(&token) {
        Some(tunnel) if tunnel.is_closed() => {
            return error_response(GuacStatus::ResourceNotFound, "Tunnel is closed.");
        }
        Some(tunnel) => tunnel,
        None if scope == Scope::LocalOnly => {
            return error_response(GuacStatus::ResourceNotFound, "No such tunnel.");
        }
        None => return forward(node, &token, request).await,
    };
    tunnel.touch();
    if read {
        read_response(tunnel).await
    } else {
        write(tunnel, request.into_body()).await
    }
}

/// Serves a request for a tunnel this node does not hold, through its owner.
async fn forward(node: &Node, token: &TunnelToken, request: Request<Body>) -> Response {
    let digest = token.digest();
    match node.forwarder().owner(node.membership(), &digest).await {
        Ok(Owner::Peer(owner)) => {
            let forwarder = node.forwarder();
            forwarder
                .forward(node.membership(), &owner, &digest, request)
                .await
        }
        Ok(Owner::Lost) => error_response(GuacStatus::UpstreamUnavailable, OWNER_LOST),
        Ok(Owner::Gone) => error_response(GuacStatus::ResourceNotFound, "No such tunnel."),
        Err(error) => {
            warn!(side = %error.side(), %error, "tunnel lookup failed");
            error.response()
        }
    }
}

async fn connect(
    node: &Node,
    tunnels: &HttpTunnels,
    body: Body,
    client: Option<IpAddr>,
) -> Response {
    let Ok(form) = axum::body::to_bytes(body, CONNECT_BODY_LIMIT).await else {
        return error_response(GuacStatus::ClientOverrun, "Connect data too large.");
    };
    let mut request = ConnectRequest::parse(&form);
    request.client_addr = client;
    let token = TunnelToken::random();
    let kind = TunnelKind::HttpTunnel;
    let opened = guac::open(node, &request, kind, Some(token.digest())).await;
    match opened.map(|opened| HttpTunnel::open(node, tunnels, opened, &token)) {
        Ok(id) => {
            let mut response = id.to_string().into_response();
            let headers = response.headers_mut();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            // Base64 is always a valid header value.
            if let Ok(value) = HeaderValue::from_str(token.expose()) {
                headers.insert(TUNNEL_TOKEN, value);
            }
            response
        }
        Err(error) => {
            warn!(side = %error.side(), %error, "tunnel refused");
            metrics().tunnel_refused(kind, &error);
            error.response()
        }
    }
}

/// Streams guacd's output until the takeover rule or the end of the tunnel says stop, then `0.;`.
async fn read_response(tunnel: Arc<HttpTunnel>) -> Response {
    let output = tunnel.lock_output().await;
    debug!(tunnel = %tunnel.id, "read streaming");
    let state = Read {
        tunnel,
        output,
        sent: false,
        done: false,
    };
    let body = futures_util::stream::unfold(state, |mut read| async move {
        let chunk = read.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), read))
    });
    octet_stream(Body::from_stream(body))
}

/// A read dropped before its end lost its connection (the browser went, or the node that forwarded it
/// died): what it had taken of guacd's output is lost with it, and guacamole-common-js closes a tunnel
/// whose read failed. The tunnel is ended at once, so that it gives its slot back now, not after the idle
/// timeout, to the new tunnel the page opens.
impl Drop for Read {
    fn drop(&mut self) {
        if self.done {
            debug!(tunnel = %self.tunnel.id, "read released");
        } else {
            debug!(tunnel = %self.tunnel.id, "read abandoned before its end; closing the tunnel");
            self.tunnel.kill();
        }
    }
}

struct Read {
    tunnel: Arc<HttpTunnel>,
    output: tokio::sync::OwnedMutexGuard<tokio::sync::mpsc::Receiver<Bytes>>,
    /// At least one instruction went out: only then may a newer read take over.
    sent: bool,
    done: bool,
}

impl Read {
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            // A release is for the active read, whatever it has sent: its node is going away.
            if self.tunnel.take_release() || (self.sent && self.tunnel.readers_waiting()) {
                return self.end();
            }
            tokio::select! {
                biased;
                batch = self.output.recv() => match batch {
                    Some(batch) => {
                        self.sent = true;
                        return Some(batch);
                    }
                    None => {
                        self.tunnel.finish();
                        return self.end();
                    }
                },
                // A newer reader, or a release: the loop's first check decides.
                () = self.tunnel.reader_arrived() => {}
            }
        }
    }

    fn end(&mut self) -> Option<Bytes> {
        debug!(tunnel = %self.tunnel.id, "read ends");
        self.done = true;
        Some(Bytes::from_static(END_OF_RESPONSE))
    }
}

/// Checks the body's instructions and queues them for guacd, whole, in order.
async fn write(tunnel: Arc<HttpTunnel>, body: Body) -> Response {
    let _turn = tunnel.lock_writer().await;
    let mut input = InstructionBuffer::default();
    let mut body = body.into_data_stream();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return error_response(GuacStatus::ClientBadRequest, "Incomplete request body.");
        };
        input.extend_from_slice(&chunk);
        let batch = match whole_instructions(&mut input, tunnel.read_only) {
            Ok((batch, by_user)) => {
                if by_user {
                    tunnel.traffic.user_input();
                }
                batch
            }
            Err(error) => {
                let error = TunnelError::BadInstruction(error);
                debug!(tunnel = %tunnel.id, %error, "closing tunnel");
                tunnel.kill();
                return error_response(error.status(), error.public_message());
            }
        };
        if !batch.is_empty() && !tunnel.is_upstream_done() {
            tunnel.send(batch).await;
        }
    }
    if !input.is_empty() {
        tunnel.kill();
        return error_response(GuacStatus::ClientBadRequest, "Incomplete instruction.");
    }
    octet_stream(Body::empty())
}

/// A 200 response as the servlet sends reads and writes: raw bytes, never cached (and so never buffered
/// by proxies that honour it), and never sniffed. Chromium holds back the start of a response it may sniff
/// until it has more than a few bytes, so without `nosniff` guacamole-common-js learns of a read's first
/// instruction (and sends the next read, which ends this one) only with the second: on an idle desktop,
/// where guacd says `nop` every 5 s, a read then stays open 10 s instead of 5 (docs/benchmarks.md).
fn octet_stream(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The whole instructions in `input` that go to guacd: tunnel-internal ones are dropped, pings included
/// (only the WebSocket tunnel answers them), and so is a read-only viewer's input. Also whether a
/// person's input was among them (a viewer's too: a person is there).
fn whole_instructions(
    input: &mut InstructionBuffer,
    read_only: bool,
) -> Result<(Bytes, bool), ParseError> {
    let mut batch = BytesMut::new();
    let mut by_user = false;
    while let Some(bytes) = input.next_instruction()? {
        by_user |= instruction::is_user_input(instruction::opcode(&bytes));
        if instruction::from_browser(&bytes, read_only) == FromBrowser::Relay {
            batch.extend_from_slice(&bytes);
        }
    }
    Ok((batch.freeze(), by_user))
}
