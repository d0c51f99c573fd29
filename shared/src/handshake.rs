//! The rules of the guacd handshake, without the I/O: which instructions to send and how to read guacd's.
//!
//! The web tier is guacd's client: `select` a protocol, read `args` (guacd's protocol version, then the
//! parameter names), answer with `size`/`audio`/`video`/`image`/`timezone`/`name` and `connect` (one value
//! per name, in order), then read `ready` with the connection id. The order and the version rules follow
//! Guacamole's own `ConfiguredGuacamoleSocket`.

use std::collections::BTreeMap;
use std::fmt;

use crate::connect::ClientInfo;
use crate::instruction::Instruction;
use crate::status::GuacStatus;

/// A Guacamole protocol version, `VERSION_<major>_<minor>_<patch>` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl ProtocolVersion {
    /// Versions before 1.1.0 did not announce themselves at all.
    pub const V1_0_0: Self = Self::new(1, 0, 0);
    /// Adds version negotiation and `timezone`.
    pub const V1_1_0: Self = Self::new(1, 1, 0);
    /// Adds `required`.
    pub const V1_3_0: Self = Self::new(1, 3, 0);
    /// Adds `msg` and `name`; the newest version guacd 1.5 and 1.6 speak.
    pub const V1_5_0: Self = Self::new(1, 5, 0);
    /// The newest version deskbroker speaks.
    pub const LATEST: Self = Self::V1_5_0;

    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses `VERSION_x_y_z`; anything else is not a version (an old guacd's first parameter name).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.strip_prefix("VERSION_")?.split('_');
        let mut next = || -> Option<u16> {
            let part = parts.next()?;
            part.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        let version = Self::new(next()?, next()?, next()?);
        parts.next().is_none().then_some(version)
    }

    /// The version both sides speak: the lower of guacd's and ours.
    pub fn negotiate(guacd: Option<Self>) -> Self {
        guacd.map_or(Self::V1_0_0, |guacd| guacd.min(Self::LATEST))
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VERSION_{}_{}_{}", self.major, self.minor, self.patch)
    }
}

/// Why a handshake failed, and whose fault it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("guacd refused the connection: {message} ({})", status.code())]
    Refused { status: GuacStatus, message: String },
    #[error("guacd disconnected during the handshake")]
    Disconnected,
    #[error("expected {expected:?} from guacd, got {got:?}")]
    Unexpected { expected: &'static str, got: String },
}

impl HandshakeError {
    pub fn status(&self) -> GuacStatus {
        match self {
            Self::Refused { status, .. } => *status,
            Self::Disconnected | Self::Unexpected { .. } => GuacStatus::UpstreamError,
        }
    }
}

/// guacd's `args`: its protocol version, when it sent one, and the parameter names to fill in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub version: Option<ProtocolVersion>,
    pub names: Vec<String>,
}

impl Args {
    pub fn from_instruction(instruction: Instruction) -> Result<Self, HandshakeError> {
        let mut values = expect(instruction, "args")?.args;
        let version = values
            .first()
            .and_then(|first| ProtocolVersion::parse(first));
        if version.is_some() {
            values.remove(0);
        }
        Ok(Self {
            version,
            names: values,
        })
    }

    /// The `connect` reply: the negotiated version in slot 0 when guacd sent one, then one value per name,
    /// empty where the session has none.
    pub fn connect(&self, params: &BTreeMap<String, String>) -> Instruction {
        let version = self
            .version
            .map(|guacd| ProtocolVersion::negotiate(Some(guacd)).to_string());
        let values = self
            .names
            .iter()
            .map(|name| params.get(name).cloned().unwrap_or_default());
        Instruction::new("connect", version.into_iter().chain(values))
    }

    pub fn negotiated(&self) -> ProtocolVersion {
        ProtocolVersion::negotiate(self.version)
    }
}

/// The instructions between `args` and `connect`, in the order Java sends them.
pub fn client_info(
    version: ProtocolVersion,
    client: &ClientInfo,
    name: Option<&str>,
) -> Vec<Instruction> {
    let mut out = vec![
        Instruction::new(
            "size",
            [client.width, client.height, client.dpi].map(|n| n.to_string()),
        ),
        Instruction::new("audio", client.audio.iter().cloned()),
        Instruction::new("video", client.video.iter().cloned()),
        Instruction::new("image", client.image.iter().cloned()),
    ];
    if let Some(timezone) = client.timezone.as_ref()
        && version >= ProtocolVersion::V1_1_0
    {
        out.push(Instruction::new("timezone", [timezone.clone()]));
    }
    if let Some(name) = name
        && version >= ProtocolVersion::V1_5_0
    {
        out.push(Instruction::new("name", [name]));
    }
    out
}

/// Reads guacd's `ready` and returns the connection id (`$` and a UUID).
pub fn ready(instruction: Instruction) -> Result<String, HandshakeError> {
    let ready = expect(instruction, "ready")?;
    ready
        .args
        .into_iter()
        .next()
        .ok_or(HandshakeError::Unexpected {
            expected: "ready",
            got: "ready without a connection id".into(),
        })
}

/// Checks the opcode of a handshake reply, turning guacd's `error` and `disconnect` into failures.
pub fn expect(
    instruction: Instruction,
    opcode: &'static str,
) -> Result<Instruction, HandshakeError> {
    match instruction.opcode.as_str() {
        op if op == opcode => Ok(instruction),
        "error" => {
            let mut args = instruction.args.into_iter();
            let message = args.next().unwrap_or_default();
            let status = args
                .next()
                .and_then(|code| code.parse().ok())
                .and_then(GuacStatus::from_code)
                .unwrap_or(GuacStatus::ServerError);
            Err(HandshakeError::Refused { status, message })
        }
        "disconnect" => Err(HandshakeError::Disconnected),
        other => Err(HandshakeError::Unexpected {
            expected: opcode,
            got: other.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(values: &[&str]) -> Args {
        Args::from_instruction(Instruction::new("args", values.iter().copied())).unwrap()
    }

    #[test]
    fn negotiates_the_lower_version() {
        assert_eq!(
            ProtocolVersion::parse("VERSION_1_5_0"),
            Some(ProtocolVersion::V1_5_0)
        );
        assert_eq!(ProtocolVersion::parse("VERSION_1_5"), None);
        assert_eq!(ProtocolVersion::parse("VERSION_1_5_0_1"), None);
        assert_eq!(ProtocolVersion::parse("hostname"), None);
        let future = ProtocolVersion::parse("VERSION_2_0_0");
        assert_eq!(ProtocolVersion::negotiate(future), ProtocolVersion::LATEST);
        let old = ProtocolVersion::parse("VERSION_1_3_0");
        assert_eq!(ProtocolVersion::negotiate(old), ProtocolVersion::V1_3_0);
    }

    #[test]
    fn connect_answers_every_name_in_order() {
        let params = [("port".to_owned(), "5901".to_owned())].into();
        let modern = args(&["VERSION_1_5_0", "hostname", "port", "password"]);
        assert_eq!(
            modern.connect(&params).encode(),
            "7.connect,13.VERSION_1_5_0,0.,4.5901,0.;"
        );
        let ancient = args(&["hostname", "port"]);
        assert_eq!(ancient.version, None);
        assert_eq!(ancient.connect(&params).encode(), "7.connect,0.,4.5901;");
    }

    #[test]
    fn sends_only_what_the_version_knows() {
        let client = ClientInfo {
            timezone: Some("UTC".into()),
            ..ClientInfo::default()
        };
        let opcodes = |version| {
            client_info(version, &client, Some("alice"))
                .into_iter()
                .map(|i| i.opcode)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            opcodes(ProtocolVersion::V1_5_0),
            ["size", "audio", "video", "image", "timezone", "name"]
        );
        assert_eq!(
            opcodes(ProtocolVersion::V1_1_0),
            ["size", "audio", "video", "image", "timezone"]
        );
        assert_eq!(
            opcodes(ProtocolVersion::V1_0_0),
            ["size", "audio", "video", "image"]
        );
    }

    #[test]
    fn maps_guacd_errors() {
        let error = Instruction::new("error", ["No such connection.", "516"]);
        let failure = expect(error, "args").unwrap_err();
        assert_eq!(failure.status(), GuacStatus::ResourceNotFound);
        let odd = Instruction::new("error", ["?", "banana"]);
        assert_eq!(
            expect(odd, "args").unwrap_err().status(),
            GuacStatus::ServerError
        );
        assert_eq!(
            ready(Instruction::new("ready", ["$abc"])),
            Ok("$abc".into())
        );
    }
}
