//! Every timeout and limit of the edge, each with the reason for its value. Those an operator may need to
//! change are flags (see `config.rs`); the rest are protocol facts.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// Default address to listen on: loopback, so a node exposes nothing until told to.
pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));

/// How long to wait for a TCP connection to a VNC server or guacd: Java's guacd socket uses 15 s.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a VNC server may take, once it accepted the connection, to send its first bytes (its RFB
/// greeting, `RFB 003.008\n`, which a server sends at once): one that says nothing holds a tunnel and a
/// tenant's slot for nobody. Shorter than [`WS_FIRST_MESSAGE_TIMEOUT`], since noVNC says nothing before the
/// greeting: a silent server is then blamed, not the browser. Also `--vnc-greeting-timeout`.
pub const VNC_GREETING_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive on upstream sockets (VNC and guacd): probes start after this long without traffic. An RFB
/// connection may rightly be silent for hours (a still screen, a client that asks for nothing), so silence
/// alone ends nothing; but a desktop that vanished without a word (powered off, cut off) would hold its
/// tunnel as long, and Linux's own keepalive starts only after 2 h. 30 s also keeps the connection in the
/// state tables of NATs and load balancers on the way, which forget idle connections after as little as
/// 350 s (AWS's NAT gateway) or 4 minutes (Azure's load balancer), for one empty segment each way per 30 s
/// of silence.
pub const UPSTREAM_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Between unanswered keepalive probes: a probe or two lost on a lossy path is not a dead peer.
pub const UPSTREAM_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered probes after which the kernel gives the socket up: an idle tunnel to a dead upstream ends
/// within 30 s + 3 × 10 s, a minute, as a failed upstream (4502, 515).
pub const UPSTREAM_KEEPALIVE_RETRIES: u32 = 3;

/// How long data sent upstream may stay unacknowledged before the socket is given up (`TCP_USER_TIMEOUT`):
/// a desktop that vanished while the browser typed ends its tunnel in a minute, as an idle one does,
/// rather than after the kernel's 15 minutes of retransmits. A live peer acknowledges within a round trip.
pub const UPSTREAM_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the whole guacd handshake may take: guacd itself gives the client 15 s per step.
pub const GUACD_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// guacd sends `nop` after 5 s without output; 15 s of silence (Java's guacd read timeout) means it is gone.
pub const GUACD_SILENCE_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP tunnel with no request for this long is closed and its guacd socket released (the Java servlet's
/// `TUNNEL_TIMEOUT`; clients write a `nop` every 500 ms, so only a vanished client hits it).
pub const HTTP_TUNNEL_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP tunnel's client that stops writing while it reads has lost its path, not its interest:
/// guacamole-common-js writes one request at a time and a `nop` every 500 ms, so its writes stop when one of
/// them is stuck (on a node that froze before the load balancer noticed). The owner then ends the tunnel
/// with 520, to reconnect, after four times the longest recent gap between the client's writes, but not
/// before this: a busy page's timers run late.
pub const WRITES_STOPPED_MIN: Duration = Duration::from_secs(3);

/// … and by this: a hidden tab's timers may run once a minute, and guacamole-common-js's keep-alive then
/// writes every 10 s at worst. It is under guacd's own 15 s, after which guacd drops a silent user (776).
pub const WRITES_STOPPED_MAX: Duration = Duration::from_secs(12);

/// How long a stopping node waits for tunnels to end by themselves before closing them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// After the drain deadline, how long closing the remaining tunnels may take before the node goes on
/// stopping without them.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Once the tunnels are closed, how long the listeners, leaving the cluster (a few registry commands, each
/// with its own deadline) and the demo desktop may take to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from an upstream socket at a time, as socat's 256 KiB buffers: a full-screen update moves in
/// few frames and few system calls (64 KiB cost a single stream an eighth of its throughput). Idle tunnels
/// hold no such buffer: it is only reserved while reading.
pub const READ_CHUNK: usize = 256 * 1024;

/// Largest WebSocket message accepted from a noVNC client: RFB client messages are tiny except
/// ClientCutText (a pasted clipboard), which this bounds.
pub const RELAY_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Largest WebSocket message accepted from a Guacamole client: one frame holds one instruction, and guacd
/// accepts none larger than 32 KiB.
pub const GUAC_MAX_MESSAGE: usize = 64 * 1024;

/// Largest HTTP tunnel `connect` body: connect data is a short form.
pub const CONNECT_BODY_LIMIT: usize = 16 * 1024;

/// Batches of guacd output queued for an HTTP tunnel's reader: a small bound, so a browser that stops
/// reading stops guacd (through TCP) instead of growing the node's memory.
pub const HTTP_OUTPUT_QUEUE: usize = 4;

/// Batches of browser input queued for guacd on an HTTP tunnel.
pub const HTTP_INPUT_QUEUE: usize = 4;

/// Ping replies waiting to be sent on a Guacamole WebSocket; a client that floods pings loses the excess.
pub const PING_QUEUE: usize = 4;

/// Tunnel owners remembered per node for forwarding; the cache is simply emptied when full, since a miss
/// costs one registry read.
pub const OWNER_CACHE_ENTRIES: usize = 100_000;

/// A node's lease: how long after its last renewal a silent node is considered gone, with its tunnels.
pub const LEASE: Duration = Duration::from_secs(10);

/// Deadline for opening a connection to another node's peer listener when forwarding: a node that drops
/// packets must fail as fast as one that refuses, well within what the browser waits for a request.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a forwarded request waits for the owner's response head once its body is sent. The owner
/// answers a write when its instructions are queued for guacd, and a read when the tunnel's previous read
/// has given way, which it does after its next batch of guacd's output: guacd sends at least a `nop` every
/// 5 s, and an owner that hears nothing from guacd for [`GUACD_SILENCE_TIMEOUT`] (15 s) ends the tunnel
/// itself. So a live owner has answered within that; 5 s more leave it room on a loaded machine. A frozen
/// owner is found sooner, by its lapsed lease (within a lease and a third).
pub const PEER_HEAD_TIMEOUT: Duration =
    GUACD_SILENCE_TIMEOUT.saturating_add(Duration::from_secs(5));

/// How long a forwarded response body may go without a byte from the owner while it is waited for (time
/// the browser takes to read does not count). The owner's read responses are the only long bodies: they
/// carry guacd's output, in which a quiet desktop still sends a `nop` every 5 s, and an owner whose guacd
/// stays silent for [`GUACD_SILENCE_TIMEOUT`] ends the read itself with an `error` instruction. Beyond
/// that and 5 s of room, the owner is stuck, and the response is cut.
pub const PEER_BODY_STALL_TIMEOUT: Duration =
    GUACD_SILENCE_TIMEOUT.saturating_add(Duration::from_secs(5));

/// At the tenant's limit, how long a new tunnel of a session that holds others waits for a slot before it
/// is refused: a page reconnecting at once after its tunnel failed can arrive before the node ending that
/// tunnel has given its slot back (a round trip to Redis), and should not be refused for it.
pub const RECONNECT_PATIENCE: Duration = Duration::from_millis(500);

/// How long a stopping node waits for the owners of the reads it forwards to say they will end them: one
/// round trip each on the cluster's network, all at once.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// On a stop, how long a node goes on serving, not ready (`/readyz` and its browser listener's
/// `/healthz` answer 503), before it refuses new tunnels and stops accepting: what a load balancer or
/// Kubernetes takes to notice and send new connections elsewhere (HAProxy probing every 500 ms with
/// `fall 2` takes one second; an endpoint's removal reaches kube-proxy in about as much). Also
/// `--drain-grace`.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Largest body of the live view's question to a node's peer listener: the ids of the sessions listed that
/// have tunnels on the node, 39 bytes each in JSON. Only a caller with the cluster secret gets it read, so
/// this bounds a mistake rather than an attack: some 200,000 sessions, more than a node holds tunnels.
pub const TRAFFIC_QUERY_LIMIT: usize = 8 * 1024 * 1024;

/// Pause before subscribing to the control channel again after it broke (Redis away).
pub const CONTROL_RETRY: Duration = Duration::from_millis(500);

/// A raw relay queues frames without flushing while the VNC server has more ready, up to this much: fewer
/// writes under load, and a bound on what waits in memory.
pub const FLUSH_AFTER: usize = 256 * 1024;

/// What may wait in a browser WebSocket's write buffer, whatever the frame type: a frame being written
/// (at most a read's worth) over the 128 KiB at which a write waits for the socket. Beyond it, what a
/// client that does not read is owed (pongs to its pings) is not queued.
pub const WS_MAX_WRITE_BUFFER: usize = 1024 * 1024;

/// WebSocket control frames (pings, pongs) a client may send in a burst. Browsers send none (the JS API
/// cannot); other clients send a keep-alive now and then. Beyond the budget the connection is closed.
pub const CONTROL_FRAME_BURST: u32 = 32;

/// How often the control-frame budget gains one frame back: a keep-alive a second, sustained.
pub const CONTROL_FRAME_REFILL: Duration = Duration::from_secs(1);

/// How long a WebSocket may stay silent after its tunnel opened: noVNC answers the VNC server's greeting at
/// once, and guacamole-common-js pings every 500 ms, so a socket silent this long is held by nobody.
pub const WS_FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a browser's WebSocket may send nothing, pings answered included, before it is taken for gone
/// (a laptop suspended, a network cut without a FIN): its upstream socket and its tenant's slot are
/// freed then, not hours later when TCP gives up. The edge pings a socket that has been quiet for
/// [`BROWSER_PING_AFTER`], so a browser that is there always has something to answer; a third of the
/// timeout leaves two more pings' room for a slow link. Also `--browser-liveness-timeout`.
pub const BROWSER_LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);

/// After how long without a frame from the browser the edge pings it: guacamole-common-js pings every
/// 500 ms, so only noVNC on a still screen (which asks for nothing) and vanished browsers are pinged.
pub const BROWSER_PING_AFTER: Duration = Duration::from_secs(10);

/// How long a closing frame may take to reach the browser: one that does not take it within this is not
/// reading, and the socket is dropped instead.
pub const WS_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a client may take to send a request's headers, the first request's included (hyper's header
/// read timeout): a slow or idle connection (slowloris) gives its descriptor back after this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one client address may hold (its tunnels, and the HTTP tunnel's requests in flight): a
/// user's tabs need a handful each; a client behind a NAT or a proxy that is not declared trusted shares it.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 256;

/// Descriptors kept back from the connection cap computed from the descriptor limit: Redis, the peer
/// listener, the logs and the process's own files.
pub const DESCRIPTOR_RESERVE: u64 = 64;

/// Refused connections answered at once (each is read for up to [`REFUSAL_LINGER`], so that its answer is
/// not lost to a reset); beyond that, a flood's connections are closed without an answer.
pub const REFUSALS_ANSWERED: usize = 64;

/// How long a refused connection is read, after its answer, before it is closed.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// After an accept failed for want of descriptors or memory, how long the listener waits before it tries
/// again; open connections go on being served meanwhile.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often a listener that cannot accept says so in the log.
pub const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Each browser WebSocket's read buffer, allocated with the socket and kept for its life: what a browser
/// sends is small (input events, one instruction per frame), and tungstenite's default of 128 KiB would cost
/// 1.25 GiB for 10,000 idle tunnels. It grows only for a large message (a pasted clipboard).
pub const WS_READ_BUFFER: usize = 4 * 1024;

/// Revocations a node remembers for sealed tokens (docs/reliability.md): each is a session id and a time,
/// some 100 bytes, so 10 MiB at most; past it, those that expire soonest are forgotten first.
pub const REMEMBERED_REVOCATIONS: usize = 100_000;
