//! What every connection to the test guacd shares: the settings from the command line and the table of
//! open connections that `$id` joins look up. It sits below `connection`, which reads and fills it, and
//! `main`, which builds it from the flags; it does no I/O of its own (the record file is opened by `main`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// What every connection shares: the settings and the open connections, by id, with their protocol.
pub struct Guacd {
    pub version: Option<String>,
    pub nop_interval: Duration,
    pub client_timeout: Duration,
    pub connections: Mutex<HashMap<String, &'static str>>,
    pub record: Option<Mutex<std::fs::File>>,
}

impl Guacd {
    /// The open connections. Every critical section is one map operation: none leaves it half-updated.
    pub fn connections(&self) -> MutexGuard<'_, HashMap<String, &'static str>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
