//! deskbroker's edge: the data-plane node. It terminates browser WebSocket and HTTP-tunnel connections and
//! owns the upstream sockets they lead to: `/websockify` relays raw VNC for noVNC, `/websocket-tunnel` and
//! `/tunnel` carry the Guacamole protocol to guacd for guacamole-common-js. Sessions (what a token grants)
//! come from the registry; the edge never lets the browser choose a host or port.

pub mod config;
pub mod defaults;
pub mod error;
pub mod forward;
mod guac;
pub mod http_tunnel;
pub mod local;
mod page;
pub mod peer;
pub mod server;
pub mod standalone;
mod upstream;
mod websockify;
mod ws;
mod ws_tunnel;

pub use server::{Config, Edge, router, run};
