//! Pure types and codecs shared by deskbroker's crates. Nothing here does I/O (new ids only draw on the
//! OS's random numbers): the Guacamole instruction codec (incremental, bounded), the guacd handshake rules,
//! Guacamole statuses with their HTTP and WebSocket mappings, ids and secrets as newtypes, session and
//! registry records, Redis key names, the peer API's paths, and time as records store it. The edge and the
//! broker build on these; tests and the test guacd use them to speak the protocol the same way.

pub mod cidr;
pub mod cluster;
pub mod connect;
pub mod guacd_params;
pub mod handshake;
pub mod ids;
pub mod instruction;
pub mod keys;
pub mod peer;
pub mod rfb;
pub mod scanner;
pub mod seal;
pub mod session;
pub mod status;
pub mod time;
pub mod tunnel_op;

pub use instruction::Instruction;
pub use scanner::{InstructionBuffer, ParseError};
pub use status::{GuacStatus, RelayClose};
