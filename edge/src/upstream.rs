//! Upstream sockets: opening them (to a VNC server for the relay, or to guacd followed by its handshake),
//! and reading them with bounded, idle-free buffers.
//!
//! Targets come only from session records, never from the browser. Every step has a deadline, and the
//! bytes guacd sends right after `ready` stay in the returned buffer so that none are lost. After the
//! handshake both Guacamole tunnels read guacd through one [`GuacdOutput`]. Every upstream socket has TCP
//! keepalive on, so that a desktop or guacd that vanished without a word ends its tunnel within a minute
//! of silence instead of holding it for the kernel's two hours.

use std::io;

use bytes::{Bytes, BytesMut};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout, timeout_at};

use deskbroker_shared::InstructionBuffer;
use deskbroker_shared::connect::ClientInfo;
use deskbroker_shared::handshake::{self, Args};
use deskbroker_shared::instruction::Instruction;
use deskbroker_shared::session::HostPort;

use crate::defaults::{
    GUACD_HANDSHAKE_TIMEOUT, GUACD_SILENCE_TIMEOUT, READ_CHUNK, UPSTREAM_CONNECT_TIMEOUT,
    UPSTREAM_KEEPALIVE_IDLE, UPSTREAM_KEEPALIVE_INTERVAL, UPSTREAM_KEEPALIVE_RETRIES,
    UPSTREAM_USER_TIMEOUT,
};
use crate::deny::DenyList;
use crate::error::TunnelError;
use crate::local::Traffic;

/// Reads what the socket has into `buffer`, holding no buffer memory while the socket is idle: the buffer
/// is kept while data flows, and released (if it holds nothing) when a read would wait. Ten thousand idle
/// tunnels then cost no read buffers at all. Returns 0 at EOF.
pub async fn read_some(stream: &OwnedReadHalf, buffer: &mut BytesMut) -> io::Result<usize> {
    loop {
        buffer.reserve(READ_CHUNK);
        match stream.try_read_buf(buffer) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if buffer.is_empty() {
                    *buffer = BytesMut::new();
                }
                stream.readable().await?;
            }
            result => return result,
        }
    }
}

/// Reads what the socket has right now without waiting: `None` when it has nothing, `Some(0)` at EOF.
pub fn read_ready(stream: &OwnedReadHalf, buffer: &mut BytesMut) -> io::Result<Option<usize>> {
    buffer.reserve(READ_CHUNK);
    match stream.try_read_buf(buffer) {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
        result => result.map(Some),
    }
}

/// Connects to `addr`, to the first of its addresses that `deny` allows and that answers, within the connect
/// deadline; Nagle is off, since remote desktop input is latency-bound, and keepalive is on.
pub async fn connect(addr: &HostPort, deny: &DenyList) -> Result<TcpStream, TunnelError> {
    let connecting = async {
        let mut failure = None;
        for candidate in deny.resolve(addr).await? {
            match TcpStream::connect(candidate).await {
                Ok(stream) => return Ok(stream),
                Err(source) => failure = Some(source),
            }
        }
        let source = failure.unwrap_or_else(|| io::ErrorKind::NotFound.into());
        Err(TunnelError::Connect {
            addr: addr.clone(),
            source,
        })
    };
    let stream = timeout(UPSTREAM_CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| TunnelError::ConnectTimeout(addr.clone()))??;
    stream.set_nodelay(true).map_err(TunnelError::UpstreamIo)?;
    keep_alive(&stream).map_err(TunnelError::UpstreamIo)?;
    Ok(stream)
}

/// Turns TCP keepalive on, with the probes of `defaults`: a peer that answers none of them is gone, and
/// the socket's next read fails. Keepalive probes only an idle socket; one with sent data unacknowledged
/// is given up after [`UPSTREAM_USER_TIMEOUT`] instead of the kernel's quarter of an hour of retransmits.
fn keep_alive(stream: &TcpStream) -> io::Result<()> {
    let probes = TcpKeepalive::new()
        .with_time(UPSTREAM_KEEPALIVE_IDLE)
        .with_interval(UPSTREAM_KEEPALIVE_INTERVAL)
        .with_retries(UPSTREAM_KEEPALIVE_RETRIES);
    let socket = SockRef::from(stream);
    socket.set_tcp_keepalive(&probes)?;
    socket.set_tcp_user_timeout(Some(UPSTREAM_USER_TIMEOUT))
}

/// A guacd connection past its handshake.
pub struct Guacd {
    pub stream: TcpStream,
    /// What guacd sent after `ready`, not yet relayed.
    pub buffer: InstructionBuffer,
    /// guacd's connection id (`$` and a UUID), which other users join with.
    pub connection_id: String,
}

impl Guacd {
    /// guacd's output, and the socket's half that takes the browser's instructions.
    pub fn split(self) -> (GuacdOutput, OwnedWriteHalf) {
        let (stream, to_guacd) = self.stream.into_split();
        let output = GuacdOutput {
            stream,
            buffer: self.buffer,
            silent_until: None,
        };
        (output, to_guacd)
    }
}

/// guacd's output after the handshake, taken as batches of whole instructions.
pub struct GuacdOutput {
    stream: OwnedReadHalf,
    buffer: InstructionBuffer,
    /// While waiting for guacd: when its silence means it is gone.
    silent_until: Option<Instant>,
}

impl GuacdOutput {
    /// The next batch of whole instructions; `None` once guacd has closed. guacd sends `nop` after 5 s
    /// without output, so [`GUACD_SILENCE_TIMEOUT`] spent waiting for it without a byte means it is gone;
    /// time spent delivering a batch does not count. Cancel-safe: nothing read is lost when the future
    /// is dropped, and the silence deadline keeps running.
    pub async fn next(&mut self, traffic: &Traffic) -> Result<Option<Bytes>, TunnelError> {
        loop {
            let batch = self
                .buffer
                .take_instructions()
                .map_err(TunnelError::UpstreamProtocol)?;
            if batch.is_some() {
                self.silent_until = None;
                return Ok(batch);
            }
            let deadline = *self
                .silent_until
                .get_or_insert_with(|| Instant::now() + GUACD_SILENCE_TIMEOUT);
            let read = timeout_at(deadline, read_some(&self.stream, self.buffer.bytes_mut()))
                .await
                .map_err(|_| TunnelError::UpstreamSilent)?
                .map_err(TunnelError::UpstreamIo)?;
            if read == 0 {
                return Ok(None);
            }
            traffic.received_upstream(read);
            self.silent_until = None;
        }
    }
}

/// What to ask guacd for: `protocol` is a protocol name, or a connection id to join.
pub struct GuacdRequest<'a> {
    pub addr: &'a HostPort,
    pub protocol: &'a str,
    pub params: &'a std::collections::BTreeMap<String, String>,
    pub client: &'a ClientInfo,
}

/// Connects to guacd and runs the handshake, as Guacamole's `ConfiguredGuacamoleSocket` does.
pub async fn guacd(request: GuacdRequest<'_>) -> Result<Guacd, TunnelError> {
    let addr = request.addr;
    // guacd is the operator's: no deny list applies to it.
    let stream = connect(addr, &DenyList::default()).await?;
    timeout(GUACD_HANDSHAKE_TIMEOUT, handshake(stream, &request))
        .await
        .map_err(|_| TunnelError::HandshakeTimeout(addr.clone()))?
}

async fn handshake(
    mut stream: TcpStream,
    request: &GuacdRequest<'_>,
) -> Result<Guacd, TunnelError> {
    let mut buffer = InstructionBuffer::with_capacity(READ_CHUNK);
    let select = Instruction::new("select", [request.protocol]);
    send(&mut stream, &[select]).await?;

    let args = Args::from_instruction(receive(&mut stream, &mut buffer, request.addr).await?)
        .map_err(|source| handshake_error(request.addr, source))?;
    let mut reply = handshake::client_info(args.negotiated(), request.client, None);
    reply.push(args.connect(request.params));
    send(&mut stream, &reply).await?;

    let ready = receive(&mut stream, &mut buffer, request.addr).await?;
    let connection_id =
        handshake::ready(ready).map_err(|source| handshake_error(request.addr, source))?;
    Ok(Guacd {
        stream,
        buffer,
        connection_id,
    })
}

async fn send(stream: &mut TcpStream, instructions: &[Instruction]) -> Result<(), TunnelError> {
    let wire: String = instructions.iter().map(Instruction::encode).collect();
    stream
        .write_all(wire.as_bytes())
        .await
        .map_err(TunnelError::UpstreamIo)
}

/// Reads the next whole instruction, skipping the `nop`s guacd may send at any time.
async fn receive(
    stream: &mut TcpStream,
    buffer: &mut InstructionBuffer,
    addr: &HostPort,
) -> Result<Instruction, TunnelError> {
    loop {
        while let Some(bytes) = buffer
            .next_instruction()
            .map_err(TunnelError::UpstreamProtocol)?
        {
            let instruction = Instruction::parse(&bytes).map_err(TunnelError::UpstreamProtocol)?;
            if instruction.opcode != "nop" {
                return Ok(instruction);
            }
        }
        let read = stream
            .read_buf(buffer.read_buf(READ_CHUNK))
            .await
            .map_err(TunnelError::UpstreamIo)?;
        if read == 0 {
            return Err(handshake_error(
                addr,
                handshake::HandshakeError::Disconnected,
            ));
        }
    }
}

fn handshake_error(addr: &HostPort, source: handshake::HandshakeError) -> TunnelError {
    TunnelError::Handshake {
        addr: addr.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upstream_sockets_probe_a_silent_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        let stream = connect(&target, &DenyList::default()).await.unwrap();
        let socket = SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            UPSTREAM_KEEPALIVE_IDLE
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            UPSTREAM_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().unwrap(),
            UPSTREAM_KEEPALIVE_RETRIES
        );
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(UPSTREAM_USER_TIMEOUT)
        );
        assert!(stream.nodelay().unwrap());
    }
}
