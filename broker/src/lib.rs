//! deskbroker's registry: where sessions (what a token grants) are kept and looked up.
//!
//! The edge talks to the registry through the [`Registry`] trait only. Single-node mode uses the embedded
//! [`MemoryRegistry`], filled from a session file ([`session_file`]) and the demo session; the Redis
//! implementation that lets many edges share sessions and tunnel owners arrives with the cluster. This crate
//! reads no files and no environment: callers hand it text and values.

pub mod memory;
pub mod session_file;

use std::future::Future;
use std::pin::Pin;

use deskbroker_shared::ids::SessionToken;
use deskbroker_shared::session::Session;

pub use memory::MemoryRegistry;

/// A boxed future, so that the edge can hold any registry as `Arc<dyn Registry>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The registry could not answer (as opposed to answering "no such session").
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

pub trait Registry: Send + Sync + 'static {
    /// The live session a token grants: `None` when the token is unknown, expired or revoked.
    fn session<'a>(
        &'a self,
        token: &'a SessionToken,
    ) -> BoxFuture<'a, Result<Option<Session>, RegistryError>>;
}
