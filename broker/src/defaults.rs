//! Every timeout and limit of the registry and the control plane, each with the reason for its value. Those
//! an operator may need to change are flags or configuration; the rest are facts of the design.

use std::time::Duration;

/// Default address of the control plane's API: loopback, so a broker exposes nothing until told to.
pub const LISTEN: &str = "127.0.0.1:8090";

/// Deadline for one Redis command: long enough for a loaded Redis, short enough that a browser waiting on a
/// lookup gets its 503 before its own timeouts fire.
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Deadline for (re)connecting to Redis, for the same reason.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Longest pause between attempts to reconnect to Redis: a Redis that is back is used within this.
pub const REDIS_MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Lease renewals per lease: a live node may miss two in a row (Redis slow or briefly away) and still never
/// look lapsed to the others.
pub const RENEWALS_PER_LEASE: u32 = 3;

/// How soon a node tries again after a renewal failed (at most a renewal period): a registry that is back
/// (a Sentinel's new master, a restarted Redis) has the node's lease running again within this, rather
/// than within a period, whose wait can outlast the lease after an outage about as long.
pub const RENEWAL_RETRY: Duration = REDIS_MAX_RECONNECT_DELAY;

/// Tunnels the nodes of a cluster record again per second, together, after the registry may have lost
/// them (each takes its share by the number of live leases): about 40,000 commands a second as Redis
/// counts them (script internals included), well under what one Redis serves on one core, so that
/// renewals and connects find it answering while a million records come back in under four minutes
/// (docs/scale.md).
pub const REFILL_RATE: u32 = 5_000;

/// How many tunnels a node records again at once in a refill: its share then takes a few round trips, not
/// one per tunnel, when Redis answers slowly under every node's refill.
pub const REFILL_AT_ONCE: usize = 32;

/// At most this many lapsed nodes are named to a renewing node, which removes their records: more are
/// named at the next renewals (and to the other nodes meanwhile).
pub const LAPSED_PER_RENEWAL: usize = 16;

/// How long a node removing a lapsed node's records keeps that node from renewing (its fence): enough for
/// tens of thousands of tunnels at a few commands each; a fence left by a node that stopped half-way
/// delays the lapsed node's return, and the next cleanup, by no more than this.
pub const LAPSED_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a broker (and an edge with a session file) checks that the registry still holds what the
/// operator configured: a Redis that restarted empty has its tenants back within this.
pub const RESTORE_PERIOD: Duration = Duration::from_secs(2);

/// How long the registry remembers that a session was closed, for nodes that were cut off from the control
/// channel when it happened: longer than any outage a node survives with its tunnels.
pub const REVOCATION_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);

/// How often a node sweeps what has expired out of its registry (the in-memory one; Redis expires keys
/// itself): a sweep with nothing due looks at the first entry of two indexes, so sweeping often costs
/// nothing, and an expired session's memory comes back within this.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Records one step of a sweep drops with the in-memory registry's lock held: some tens of microseconds,
/// so lookups never wait long behind a sweep, however much expired at once.
pub const SWEEP_BATCH: usize = 256;

/// Control events the in-memory registry buffers for a slow subscriber before it misses some.
pub const CONTROL_BUFFER: usize = 1024;

/// How long the live view waits for a node's byte counts before showing its tunnels' as unknown: a slow
/// node must not make the session list slow. Every node is asked at once, so this is also the longest a
/// list waits for all of them.
pub const TRAFFIC_TIMEOUT: Duration = Duration::from_millis(500);

/// Deadline for opening a connection to a node's peer listener when asking for byte counts: within the
/// traffic deadline, so a node that drops packets costs no more than one that refuses.
pub const PEER_CONNECT_TIMEOUT: Duration = TRAFFIC_TIMEOUT;

/// A tenant's concurrent tunnels when its configuration says nothing.
pub const MAX_TUNNELS: u32 = 10;

/// A session's longest life when its tenant's configuration says nothing: a working day.
pub const MAX_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The longest `max_lifetime` a tenant may be given, so the longest any session lives: a year (365.25 days,
/// as `1y` reads). Longer is a typo (`300000000000y`), and the bound keeps every expiry far inside what
/// `SystemTime`, the records' Unix milliseconds and Redis's `PX` can hold.
pub const LONGEST_LIFETIME: Duration = Duration::from_secs(31_557_600);

/// The shortest lifetime a session or a share may ask for, and the least `max_lifetime`: a shorter token is
/// dead before a browser can connect with it, and expiry is shown to the second.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// The shortest idle timeout a tenant may be given or a session may ask for: a tunnel must live long
/// enough for a browser to connect and a person to start using it, not die at birth.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest idle timeout a tenant may be given, and what a longer ask is cut to: the longest a session
/// lives, since its tunnels end with it anyway. It keeps the records' milliseconds far from overflowing.
pub const LONGEST_IDLE_TIMEOUT: Duration = LONGEST_LIFETIME;

/// How long a stopping broker waits for API requests in progress before it exits anyway: every request is a
/// few registry commands, each with its own deadline.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest session record the API stores: the session's JSON, as Redis holds it, with its connection
/// parameters percent-encoded in its target's URL form and the tenant's own `guacd_params` among them. A
/// real session is a few KiB (an RDP desktop with every parameter a tenant may set, with ordinary values,
/// is about 2 KiB; the longest single value, an SSH private key, is 3.3 KiB for RSA-4096, 13 KiB for
/// RSA-16384), so the size of a whole request body is far above any of them, and bounds what each live
/// session holds in the registry's memory: 10,000 sessions at the limit are 640 MiB, where nothing
/// bounded them before.
pub const MAX_SESSION_RECORD: usize = 64 * 1024;

/// Largest request body the API reads: a session's target with its parameters, or a tenant's policy, is a
/// few KiB; 64 KiB leaves room for a long policy and bounds what one request makes the broker hold.
pub const MAX_BODY: usize = 64 * 1024;
