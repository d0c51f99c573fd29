//! Plain TCP upstreams living in the test process, for checking relays byte for byte: an echo server, a
//! source that writes as fast as it is allowed and counts what it got rid of, and a server that accepts and
//! never says a word.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Echoes every byte back; counts the connections it accepted.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// Connections that saw the other end close.
    pub closed: Arc<AtomicUsize>,
}

impl Echo {
    pub async fn start() -> anyhow::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, ends) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let ends = ends.clone();
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    ends.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            addr,
            accepted,
            closed,
        })
    }
}

/// Accepts connections and never writes to them, as a VNC server that hangs before its greeting: reads and
/// drops what it is sent; counts the connections it accepted, and those whose other end closed.
pub struct Silent {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub closed: Arc<AtomicUsize>,
}

impl Silent {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, ends) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let ends = ends.clone();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
                    ends.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            addr,
            accepted,
            closed,
        })
    }
}

/// Writes an endless pattern to each connection and counts the bytes the kernel took.
pub struct Source {
    pub addr: SocketAddr,
    pub written: Arc<AtomicU64>,
}

impl Source {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let written = Arc::new(AtomicU64::new(0));
        let total = written.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let total = total.clone();
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.into_split();
                    let chunk = vec![0x5a; 64 * 1024];
                    let mut sink = [0; 1024];
                    loop {
                        tokio::select! {
                            wrote = writer.write(&chunk) => match wrote {
                                Ok(0) | Err(_) => return,
                                Ok(n) => total.fetch_add(n as u64, Ordering::SeqCst),
                            },
                            read = reader.read(&mut sink) => match read {
                                Ok(0) | Err(_) => return,
                                Ok(_) => continue,
                            },
                        };
                    }
                });
            }
        });
        Ok(Self { addr, written })
    }
}

/// Resident set size of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_default()
}

/// Open sockets of a process, from /proc.
pub fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or_default()
}

/// Open descriptors of a process (sockets, files, pipes, epoll), from /proc.
pub fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}
