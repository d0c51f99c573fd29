//! Fixtures for deskbroker's black-box tests: real processes on real sockets. Edges are the built
//! `deskbroker-edge` binary, guacd is the project's `test-guacd`, VNC servers are the demo desktop or
//! Debian's Xvnc. Clients speak what noVNC and guacamole-common-js speak, from their sources.
//!
//! Processes are killed when their handle drops. A missing tool is a loud failure with the install hint
//! when `CI` is set, and a skip with the same hint otherwise.

// What these fixtures expect of the processes they start is what the tests assert: a fixture that
// cannot get it fails the test there, with the message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures: a failed expectation is a failed test"
)]

pub mod browser;
pub mod clients;
pub mod flood;
pub mod flows;
pub mod guac_flows;
pub mod logs;
pub mod platform;
pub mod process;
pub mod proxy;
pub mod raw_ws;
pub mod redis;
pub mod upstreams;

pub use process::{Broker, Edge, TestGuacd, Xvnc};
