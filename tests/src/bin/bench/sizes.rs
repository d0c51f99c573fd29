//! The two sizes the whole benchmark is built on, in a module below every other so that none of them
//! reaches up into `main` for a constant.

/// The unit every throughput is reported in.
pub const MIB: u64 = 1 << 20;
/// The pattern source writes blocks of this size and each client reads into a buffer of it: 256 KiB, as
/// socat's buffers (`-b262144`).
pub const CHUNK: usize = 256 * 1024;
