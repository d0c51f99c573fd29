//! The control plane, through its API only: a Redis, three edges, the broker, a test guacd and a VNC-like
//! echo server. The backend creates sessions, browsers connect anywhere, the backend lists and kills.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

mod access;
mod hostile;
mod idle_timeouts;
mod lifecycle;
mod limits;
mod live_view;
mod sessions;
mod sharing;

pub use deskbroker_tests::platform::{ACME, ADMIN, GLOBEX, LOOPBACK_ALLOWED, Platform, SECRET};
