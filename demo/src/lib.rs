//! The built-in demo desktop: a small RFB 3.8 server (security type None, raw encoding) showing a moving
//! test pattern, the last key typed and the pointer. `deskbroker-edge --demo` serves it as the session
//! `demo`; tests and benchmarks use it as a VNC server that needs nothing installed.
//!
//! Input is shared by every viewer of one desktop, so a second viewer sees the first one's pointer.
//!
//! Imports run one way: `state` (settings, input, the animation clock) is at the bottom; `picture` draws
//! from it and `rfb` speaks to one viewer from it; `desktop` serves viewers through `rfb`. This root only
//! declares the modules and re-exports the public API.

mod desktop;
mod picture;
mod rfb;
mod state;

pub use desktop::DemoDesktop;
pub use rfb::{DemoError, PixelFormat};
pub use state::{Config, InputState, TICK};
