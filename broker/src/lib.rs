//! deskbroker's registry and control plane: sessions (what a token grants), nodes with their leases,
//! tunnels with their owners, tenants with their policies, and the API the platform's backend calls.
//!
//! The edge talks to the registry through the [`Registry`] trait only. Single-node mode uses the embedded
//! [`MemoryRegistry`]; a cluster shares a [`RedisRegistry`] (Redis or Redis Cluster). [`Membership`] runs
//! a node's side of the lease rules on top of either; [`sweep`] drops what expired from a registry that
//! keeps its records itself. [`service`] runs the control plane; [`process`] holds what both binaries do
//! as processes. This crate reads no files and no environment: callers hand it text and values. The crate
//! root only declares modules and re-exports; nothing imports it back.

pub mod api;
pub mod config;
pub mod defaults;
pub mod lease;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod probes;
pub mod process;
pub mod redis;
pub mod registry;
pub mod restore;
pub mod sentinel;
pub mod service;
pub mod session_file;
pub mod sweep;
pub mod tenants;

pub use membership::{Membership, Recorded};
pub use memory::MemoryRegistry;
pub use redis::RedisRegistry;
pub use registry::{BoxFuture, EventStream, Heartbeat, Registry, RegistryError, Renewal, Result};
