//! The reads this node forwards, listed while their responses stream: each one's owner, and the tunnel token
//! to name it by, so that a stopping node can ask the owners to end them (`Forwarder::release_reads`). A
//! read's entry is held by its response body and given up when the body is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::HeaderValue;

use deskbroker_shared::cluster::NodeRecord;

/// The list: a cheap `Clone` handle.
#[derive(Clone, Default)]
pub struct Reads {
    list: Arc<Mutex<List>>,
}

#[derive(Default)]
struct List {
    next: u64,
    reads: HashMap<u64, (NodeRecord, HeaderValue)>,
}

/// A forwarded read's place in the list, given up when it is dropped.
pub struct Listed {
    reads: Reads,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.reads.lock().reads.remove(&self.id);
    }
}

impl Reads {
    fn lock(&self) -> MutexGuard<'_, List> {
        // Single map operations only: the list cannot be left half-updated.
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lists a read being forwarded to `owner`, for as long as the returned value lives.
    pub fn list(&self, owner: &NodeRecord, token: HeaderValue) -> Listed {
        let mut list = self.lock();
        list.next += 1;
        let id = list.next;
        list.reads.insert(id, (owner.clone(), token));
        Listed {
            reads: self.clone(),
            id,
        }
    }

    /// The reads listed now: each one's owner and tunnel token.
    pub fn listed(&self) -> Vec<(NodeRecord, HeaderValue)> {
        self.lock().reads.values().cloned().collect()
    }
}
