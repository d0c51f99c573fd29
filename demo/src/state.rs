//! What one demo desktop is, shared by every viewer of it: its settings, the input viewers have sent and
//! the clock its animation runs on. It sits below the RFB connection and the picture, which both read it,
//! and below `DemoDesktop`, the handle that serves viewers; it does no I/O itself.

use std::sync::Mutex;
use std::time::Duration;

/// Time between animation frames, and the pace of answers to incremental update requests.
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Config {
    pub width: u16,
    pub height: u16,
    pub name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            width: 800,
            height: 600,
            name: "deskbroker demo".into(),
        }
    }
}

/// What viewers have done: the last key pressed (an X keysym), the pointer and its buttons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputState {
    pub last_key: Option<u32>,
    pub x: u16,
    pub y: u16,
    pub buttons: u8,
}

/// One desktop's state; `DemoDesktop` holds it behind an `Arc` so every viewer's task shares it.
pub struct State {
    config: Config,
    input: Mutex<InputState>,
    started: tokio::time::Instant,
}

impl State {
    /// The animation starts now, at frame 0.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            input: Mutex::default(),
            started: tokio::time::Instant::now(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    // A panic while the lock is held cannot leave a half-written `InputState` (every change is one
    // assignment of a `Copy` value), so a poisoned lock is read and written as usual.
    pub fn input_state(&self) -> InputState {
        *self.input.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update_input(&self, change: impl FnOnce(&mut InputState)) {
        change(&mut self.input.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The animation frame for now: one per tick since the desktop started.
    pub fn frame(&self) -> u64 {
        (self.started.elapsed().as_millis() / TICK.as_millis()) as u64
    }
}
