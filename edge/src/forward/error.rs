//! Why a forward to a tunnel's owner failed: always the peer's side, named by the step that failed.
//!
//! Before the response head, every one of them means the tunnel is gone for this client (404 with
//! Guacamole status 516); after it, the response can only be cut.

use std::time::Duration;

use deskbroker_shared::ids::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("forwarding to {peer}: {source}")]
    Request {
        peer: NodeId,
        source: hyper_util::client::legacy::Error,
    },
    #[error("{peer} sent no response head within {deadline:?} of the request")]
    NoHead { peer: NodeId, deadline: Duration },
    #[error("{peer}'s lease lapsed")]
    Lapsed { peer: NodeId },
    #[error("{peer} sent nothing of a response body for {deadline:?}")]
    Stalled { peer: NodeId, deadline: Duration },
    #[error("{peer}'s response body failed: {source}")]
    Body {
        peer: NodeId,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ForwardError {
    /// True for a peer that looks alive and does not answer, which is worth a warning; a lapsed lease or a
    /// broken connection is how a node that crashed, restarted or stopped looks.
    pub fn is_unanswered(&self) -> bool {
        matches!(self, Self::NoHead { .. } | Self::Stalled { .. })
    }
}
