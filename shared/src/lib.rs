//! Pure types and codecs shared by deskbroker's crates. Nothing here does I/O: the Guacamole instruction
//! codec (incremental, bounded), the guacd handshake rules, Guacamole statuses with their HTTP and WebSocket
//! mappings, ids and secrets as newtypes, and session records. The edge and the broker build on these; tests
//! and the test guacd use them to speak the protocol the same way.

pub mod cluster;
pub mod connect;
pub mod handshake;
pub mod ids;
pub mod instruction;
pub mod keys;
pub mod rfb;
pub mod scanner;
pub mod session;
pub mod status;

pub use instruction::Instruction;
pub use scanner::{InstructionBuffer, ParseError};
pub use status::{GuacStatus, RelayClose};
