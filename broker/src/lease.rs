//! Whether a node known to be alive a moment ago still is, by a node's view of the cluster: pure rules, no
//! I/O. [`crate::Membership`] holds the view and the times of its reads, and asks.
//!
//! A lapse is concluded only from a registry read made after the lease ran out: a node whose record, read
//! after its expiry, still shows that expiry failed to renew; one the read no longer shows was removed (by
//! whoever saw it lapse first, or as it left); one with another incarnation restarted, and its tunnels went
//! with the old one. Between reads nothing lapses, so a node that cannot read the registry (Redis away)
//! keeps using the owners it knows, as it keeps its own tunnels. Every read a node makes comes within a
//! renewal period (lease/3), so a node that stopped renewing is seen lapsed within a lease and a third of
//! its last renewal.

use std::time::Duration;

use deskbroker_shared::cluster::NodeRecord;

/// What the view says of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Its lease runs, as this record (the latest read) says.
    Live(NodeRecord),
    /// It is gone, and every tunnel it owned with it.
    Lapsed,
}

/// What the rules need besides a node's record and when it was read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reads {
    /// When this node last found its own record missing at a renewal (at its start, when the registry lost
    /// its data, or when another node had cleaned up after it), in Unix milliseconds.
    pub recreated_ms: Option<u64>,
}

impl Reads {
    /// What the view says of `known`, a node found live earlier, given `seen`, what the last read of its
    /// record returned, sent at `read_ms` (Unix ms). For one `lease` after the registry lost its data, a
    /// node the read no longer shows may just not have renewed yet: it is taken as live, as `known` says.
    pub fn judge(
        &self,
        known: &NodeRecord,
        seen: Option<&NodeRecord>,
        read_ms: u64,
        lease: Duration,
        now_ms: u64,
    ) -> Lease {
        match seen {
            Some(seen) if seen.incarnation != known.incarnation => Lease::Lapsed,
            Some(seen) if seen.expires_ms <= read_ms => Lease::Lapsed,
            Some(seen) => Lease::Live(seen.clone()),
            None if self.recreated_within(lease, now_ms) => Lease::Live(known.clone()),
            None => Lease::Lapsed,
        }
    }

    fn recreated_within(&self, lease: Duration, now_ms: u64) -> bool {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        self.recreated_ms
            .is_some_and(|at| now_ms < at.saturating_add(lease_ms))
    }
}

#[cfg(test)]
mod tests {
    use deskbroker_shared::cluster::Incarnation;
    use deskbroker_shared::ids::NodeId;

    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    fn node(expires_ms: u64) -> NodeRecord {
        NodeRecord {
            id: NodeId::new("b"),
            incarnation: Incarnation(uuid::Uuid::from_u128(1)),
            peer_url: "http://b".into(),
            expires_ms,
        }
    }

    #[test]
    fn a_node_whose_renewed_lease_was_read_is_live_with_the_newer_record() {
        let renewed = node(30_000);
        assert_eq!(
            Reads::default().judge(&node(15_000), Some(&renewed), 20_000, LEASE, 21_000),
            Lease::Live(renewed)
        );
    }

    #[test]
    fn an_expiry_passes_unnoticed_until_a_read_made_after_it_still_shows_it() {
        let seen = node(15_000);
        // Past its expiry by the clock, but the last read came before it: the node may have renewed since.
        assert_eq!(
            Reads::default().judge(&seen, Some(&seen), 14_000, LEASE, 60_000),
            Lease::Live(seen.clone())
        );
        assert_eq!(
            Reads::default().judge(&seen, Some(&seen), 15_000, LEASE, 15_001),
            Lease::Lapsed
        );
    }

    #[test]
    fn a_restarted_node_is_not_the_one_known() {
        let restarted = NodeRecord {
            incarnation: Incarnation(uuid::Uuid::from_u128(2)),
            ..node(30_000)
        };
        assert_eq!(
            Reads::default().judge(&node(25_000), Some(&restarted), 20_000, LEASE, 20_001),
            Lease::Lapsed
        );
    }

    #[test]
    fn a_node_the_registry_no_longer_holds_has_lapsed_unless_the_registry_just_lost_its_data() {
        let known = node(25_000);
        assert_eq!(
            Reads::default().judge(&known, None, 20_000, LEASE, 20_001),
            Lease::Lapsed
        );
        let after_loss = Reads {
            recreated_ms: Some(19_000),
        };
        assert_eq!(
            after_loss.judge(&known, None, 20_000, LEASE, 28_999),
            Lease::Live(known.clone())
        );
        assert_eq!(
            after_loss.judge(&known, None, 20_000, LEASE, 29_000),
            Lease::Lapsed
        );
    }
}
