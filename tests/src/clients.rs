//! Test clients that behave as the real ones on the wire: noVNC's WebSocket, guacamole-common-js's
//! `WebSocketTunnel` and `HTTPTunnel` (two reads in flight, a new parser per read response, `0.;` ends a
//! response; read from Tunnel.js). They check what the protocol promises as they go: whole instructions per
//! frame, `0.;` at the end of every read response.

use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use deskbroker_shared::InstructionBuffer;
use deskbroker_shared::instruction::{self, Instruction};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for any single expected event before failing.
pub const STEP: Duration = Duration::from_secs(20);

/// Opens a WebSocket offering `protocols`; returns the socket and the protocol the server chose.
pub async fn ws_connect(
    url: &str,
    protocols: &[&str],
) -> Result<(Ws, Option<String>), tungstenite::Error> {
    let mut request = url.into_client_request()?;
    if !protocols.is_empty() {
        let value = HeaderValue::from_str(&protocols.join(", ")).expect("protocol names");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", value);
    }
    let (socket, response) = tokio_tungstenite::connect_async(request).await?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((socket, chosen))
}

/// Waits for the close frame, skipping data; returns its code and reason.
pub async fn close_frame(socket: &mut Ws) -> anyhow::Result<(u16, String)> {
    loop {
        match tokio::time::timeout(STEP, socket.next())
            .await
            .context("no close frame")?
        {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return Ok((code.into(), reason.to_string()));
            }
            Some(Ok(Message::Close(None))) => return Ok((1005, String::new())),
            Some(Ok(_)) => continue,
            Some(Err(error)) => bail!("socket failed before a close frame: {error}"),
            None => bail!("socket ended without a close frame"),
        }
    }
}

/// The browser side of `Guacamole.WebSocketTunnel`.
pub struct GuacWs {
    pub socket: Ws,
    pub uuid: String,
    input: InstructionBuffer,
    pending: std::collections::VecDeque<Bytes>,
}

impl GuacWs {
    /// Connects with `data` as the query string and waits for the UUID frame.
    pub async fn connect(base: &str, data: &str) -> anyhow::Result<Self> {
        let (socket, protocol) =
            ws_connect(&format!("{base}/websocket-tunnel?{data}"), &["guacamole"]).await?;
        ensure!(
            protocol.as_deref() == Some("guacamole"),
            "subprotocol not echoed: {protocol:?}"
        );
        let mut tunnel = Self {
            socket,
            uuid: String::new(),
            input: InstructionBuffer::default(),
            pending: Default::default(),
        };
        let first = tunnel.next_raw().await?;
        let hello = Instruction::parse(&first)?;
        ensure!(
            hello.is_internal() && hello.args.len() == 1,
            "first frame is not the UUID: {hello:?}"
        );
        tunnel.uuid = hello.args[0].clone();
        Ok(tunnel)
    }

    /// The next instruction, as its wire bytes; every frame must hold whole instructions.
    pub async fn next_raw(&mut self) -> anyhow::Result<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Ok(bytes);
            }
            let message = tokio::time::timeout(STEP, self.socket.next())
                .await
                .context("no instruction in time")?
                .ok_or_else(|| anyhow!("socket ended"))??;
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => bail!("closed: {frame:?}"),
                Message::Binary(_) => bail!("binary frame on a Guacamole tunnel"),
                _ => continue,
            };
            self.input.extend_from_slice(text.as_bytes());
            while let Some(bytes) = self.input.next_instruction()? {
                self.pending.push_back(bytes);
            }
            ensure!(self.input.is_empty(), "a frame ended inside an instruction");
        }
    }

    /// The next instruction other than `nop`.
    pub async fn next(&mut self) -> anyhow::Result<Instruction> {
        loop {
            let instruction = Instruction::parse(&self.next_raw().await?)?;
            if instruction.opcode != "nop" {
                return Ok(instruction);
            }
        }
    }

    /// Reads until an instruction with `opcode` arrives and returns it.
    pub async fn until(&mut self, opcode: &str) -> anyhow::Result<Instruction> {
        loop {
            let instruction = self.next().await?;
            if instruction.opcode == opcode {
                return Ok(instruction);
            }
        }
    }

    pub async fn send(&mut self, instruction: &Instruction) -> anyhow::Result<()> {
        self.socket
            .send(Message::text(instruction.encode()))
            .await?;
        Ok(())
    }
}

/// The result of an HTTP request that failed the Guacamole way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub http: u16,
    pub guac: Option<u16>,
    pub message: Option<String>,
}

impl HttpError {
    /// A request that got no HTTP answer at all.
    fn transport(error: reqwest::Error) -> Self {
        Self {
            http: 0,
            guac: None,
            message: Some(error.to_string()),
        }
    }

    fn of(response: &reqwest::Response) -> Self {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            http: response.status().as_u16(),
            guac: header("guacamole-status-code").and_then(|code| code.parse().ok()),
            message: header("guacamole-error-message"),
        }
    }
}

/// What the reader of an HTTP tunnel saw.
#[derive(Debug)]
pub enum ReadEvent {
    Instruction(Bytes),
    /// A read request failed; the tunnel's reading is over.
    Failed(HttpError),
    /// A response ended without `0.;`, which would stall the real client.
    Broken(String),
}

/// The browser side of `Guacamole.HTTPTunnel`.
pub struct HttpTunnel {
    pub http: reqwest::Client,
    pub base: String,
    pub uuid: String,
    pub token: String,
    pub responses: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpTunnel {
    /// `POST <base>/tunnel?connect` with `data` as the body.
    pub async fn connect(base: &str, data: &str) -> Result<Self, HttpError> {
        let http = reqwest::Client::new();
        let response = http
            .post(format!("{base}/tunnel?connect"))
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            )
            .body(data.to_owned())
            .send()
            .await
            .map_err(HttpError::transport)?;
        if response.status() != 200 {
            return Err(HttpError::of(&response));
        }
        let token = response
            .headers()
            .get("guacamole-tunnel-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let uuid = response.text().await.unwrap_or_default();
        Ok(Self {
            http,
            base: base.to_owned(),
            uuid,
            token,
            responses: Default::default(),
        })
    }

    /// Starts the read loop as the JS does, against `bases` in turn (one base per read request, round robin),
    /// and returns the instructions it delivers, in order.
    pub fn read(&self, bases: Vec<String>) -> Reader {
        self.read_routed(move |n| bases[n % bases.len()].clone())
    }

    /// The same read loop, sending read request `n` to the base `route(n)` names at the moment it is sent:
    /// as a load balancer routes, which a test can change while the loop runs.
    pub fn read_routed(&self, route: impl Fn(usize) -> String + Send + Sync + 'static) -> Reader {
        let (events, receiver) = mpsc::channel(64);
        let http = self.http.clone();
        let (uuid, token) = (self.uuid.clone(), self.token.clone());
        let responses = self.responses.clone();
        tokio::spawn(async move {
            let request = |n: usize| {
                let url = format!("{}/tunnel?read:{uuid}:{n}", route(n));
                http.get(url)
                    .header("guacamole-tunnel-token", token.clone())
                    .send()
            };
            let mut n = 0;
            let mut current = request(n).await;
            loop {
                let response = match current {
                    Ok(response) if response.status() == 200 => response,
                    Ok(response) => {
                        let _ = events
                            .send(ReadEvent::Failed(HttpError::of(&response)))
                            .await;
                        return;
                    }
                    Err(error) => {
                        let _ = events.send(ReadEvent::Broken(error.to_string())).await;
                        return;
                    }
                };
                // Headers are in: the JS sends the next read at once and lets it wait.
                n += 1;
                let next = tokio::spawn(request(n));
                responses.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Err(problem) = deliver(response, &events).await {
                    let _ = events.send(ReadEvent::Broken(problem)).await;
                    return;
                }
                current = match next.await {
                    Ok(result) => result,
                    Err(_) => return,
                };
            }
        });
        Reader(receiver)
    }

    /// `POST ?write:<uuid>` with `body`, against `base`.
    pub async fn write_to(
        &self,
        base: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(), HttpError> {
        let response = self
            .http
            .post(format!("{base}/tunnel?write:{}", self.uuid))
            .header("content-type", "application/octet-stream")
            .header("guacamole-tunnel-token", &self.token)
            .body(body)
            .send()
            .await
            .map_err(HttpError::transport)?;
        match response.status().as_u16() {
            200 => Ok(()),
            _ => Err(HttpError::of(&response)),
        }
    }

    pub async fn write(&self, body: impl Into<reqwest::Body>) -> Result<(), HttpError> {
        self.write_to(&self.base.clone(), body).await
    }
}

/// What an HTTP tunnel's read loop delivers.
pub struct Reader(pub mpsc::Receiver<ReadEvent>);

impl Reader {
    /// The next instruction other than `nop`; panics if reading failed.
    pub async fn next(&mut self) -> Instruction {
        loop {
            let event = tokio::time::timeout(STEP, self.0.recv())
                .await
                .expect("read in time")
                .expect("reading");
            match event {
                ReadEvent::Instruction(bytes) => {
                    let instruction = Instruction::parse(&bytes).expect("whole instruction");
                    if instruction.opcode != "nop" {
                        return instruction;
                    }
                }
                other => panic!("reading failed: {other:?}"),
            }
        }
    }

    /// Reads until an instruction with `opcode` arrives and returns it.
    pub async fn until(&mut self, opcode: &str) -> Instruction {
        loop {
            let instruction = self.next().await;
            if instruction.opcode == opcode {
                return instruction;
            }
        }
    }

    /// Reads until an `echo` of an instruction with `opcode` arrives; returns the echoed arguments.
    pub async fn echo_of(&mut self, opcode: &str) -> Vec<String> {
        loop {
            let echo = self.until("echo").await;
            if echo.args.first().map(String::as_str) == Some(opcode) {
                return echo.args[1..].to_vec();
            }
        }
    }

    /// Reads until the reading ends; returns what arrived and how it ended.
    pub async fn end(&mut self) -> (Vec<Instruction>, ReadEvent) {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(STEP, self.0.recv())
                .await
                .expect("end in time")
                .expect("an end")
            {
                ReadEvent::Instruction(bytes) => {
                    seen.push(Instruction::parse(&bytes).expect("whole instruction"))
                }
                other => return (seen, other),
            }
        }
    }
}

/// Reads one response with a fresh parser until `0.;`, passing on everything else but internal messages.
async fn deliver(
    response: reqwest::Response,
    events: &mpsc::Sender<ReadEvent>,
) -> Result<(), String> {
    let mut parser = InstructionBuffer::default();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        parser.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        while let Some(bytes) = parser.next_instruction().map_err(|e| e.to_string())? {
            if bytes.as_ref() == instruction::END_OF_RESPONSE {
                return Ok(());
            }
            if !instruction::is_internal(&bytes)
                && events.send(ReadEvent::Instruction(bytes)).await.is_err()
            {
                return Ok(());
            }
        }
    }
    Err("read response ended without 0.;".into())
}

/// Connect data as guacamole-common-js applications send it.
pub fn connect_data(token: &str) -> String {
    format!(
        "token={token}&GUAC_WIDTH=1280&GUAC_HEIGHT=720&GUAC_DPI=96&GUAC_TIMEZONE=Europe%2FParis\
         &GUAC_AUDIO=audio%2FL16&GUAC_IMAGE=image%2Fpng&GUAC_IMAGE=image%2Fjpeg"
    )
}

/// Calls the control-plane API at `url` as the platform's backend does, with `key` as the bearer; returns
/// the status and the JSON body (Null when there is none).
pub async fn api(
    method: &str,
    url: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = reqwest::Client::new().request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or_default())
}
