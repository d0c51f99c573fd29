//! deskbroker's edge: the data-plane node. It terminates browser WebSocket and HTTP-tunnel connections and
//! owns the upstream sockets they lead to: `/websockify` relays raw VNC for noVNC, `/websocket-tunnel` and
//! `/tunnel` carry the Guacamole protocol to guacd for guacamole-common-js. Sessions (what a token grants)
//! come from the registry; the edge never lets the browser choose a host or port.
//!
//! Modules stand in layers, and imports only run down (docs/architecture.md has the map): the lifecycle on
//! top, then the routers, the handlers, the node's shared state, and below it the tunnel's registration,
//! the upstream sockets, errors and defaults. This root only declares and re-exports.

mod client;
pub mod config;
pub mod control;
pub mod defaults;
pub mod deny;
pub mod error;
pub mod flags;
pub mod forward;
mod guac;
pub mod http_tunnel;
pub mod lifecycle;
mod listener;
pub mod local;
mod metrics;
pub mod node;
mod ops;
mod page;
pub mod peer;
pub mod registration;
pub mod revocations;
pub mod server;
pub mod standalone;
mod upstream;
mod websockify;
mod ws;
mod ws_tunnel;

pub use config::Config;
pub use lifecycle::{NodeHandle, StartError, start};
pub use node::Node;
