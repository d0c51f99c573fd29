//! What both services (`deskbroker-edge`, `deskbroker-broker`) share as running processes, written once:
//! the logging flags and their setup (with the caps that keep dependencies from logging secrets and
//! payloads, docs/logs.md), the stop signal, and the set of long-running tasks a service awaits when it
//! stops. The flags are parsed by each binary's `main`; libraries never read the environment.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tracing::info;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people.
    Human,
    /// One JSON object per event, fields flattened, for log shippers.
    Json,
}

/// The logging flags every binary takes.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "DESKBROKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Which events to log, as `tracing` filter directives (e.g. `info`, `deskbroker_edge=debug`).
    #[arg(long = "log", env = "DESKBROKER_LOG", default_value = "info")]
    pub log_filter: String,
}

/// The dependencies that handle tokens, keys, headers or relayed bytes for us, and the most verbose level
/// each may log at, whatever `--log` says: below it, by their sources, they log what must never be logged.
/// A target covers the targets it prefixes (`hyper` covers `hyper_util` too); `log` records count as well.
const DEPENDENCY_CAPS: &[(&str, LevelFilter)] = &[
    // trace: every frame and message, payload included (keystrokes, guacd's instructions); debug: close
    // frames with their reasons and, as a client, URIs with their query string (`?token=`).
    ("tungstenite", LevelFilter::INFO),
    // Below info: tungstenite's errors and the stream's polling; capped with tungstenite, whose frames it
    // carries.
    ("tokio_tungstenite", LevelFilter::INFO),
    // trace: the text of every rejection, which quotes what the request sent (`invalid type: string
    // "<password>"`).
    ("axum::rejection", LevelFilter::INFO),
    // Both log only when built with their `tracing` feature, which ours are not; hyper-util's debug events
    // then print request URIs. hyper reads every request line and header (`?token=`, `Authorization`):
    // held here, a build or a version that logs them still cannot.
    ("hyper", LevelFilter::INFO),
    ("hyper_util", LevelFilter::INFO),
    // trace: header values it refuses; debug: every frame, with the peer's GOAWAY debug data.
    ("h2", LevelFilter::INFO),
    // Its `TraceLayer` (not built in today) makes spans with the request URI, query string included.
    ("tower_http", LevelFilter::INFO),
    // debug: errors with the reply they could not parse, which may be a session record (guacd passwords).
    ("redis", LevelFilter::INFO),
];

/// Installs the process's logger: the operator's filter, then [`DEPENDENCY_CAPS`], which `--log` can lower
/// but never raise, however specific its directives. A filter that does not parse is an error, not a
/// silent fallback.
pub fn init_logging(args: &LogArgs) -> Result<(), tracing_subscriber::filter::ParseError> {
    subscriber(args, std::io::stdout)?.init();
    Ok(())
}

/// The subscriber [`init_logging`] installs, writing to `writer`. The caps are a filter of their own beside
/// the operator's, not directives added to it: in one filter, the more specific directive wins, so
/// `tungstenite::protocol=trace` would beat `tungstenite=info`.
fn subscriber<W>(
    args: &LogArgs,
    writer: W,
) -> Result<impl tracing::Subscriber + Send + Sync + 'static, tracing_subscriber::filter::ParseError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let operator = EnvFilter::try_new(&args.log_filter)?;
    let caps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(DEPENDENCY_CAPS.iter().copied());
    let format = match args.log_format {
        LogFormat::Human => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
    };
    Ok(tracing_subscriber::registry()
        .with(operator)
        .with(caps)
        .with(format))
}

/// Installs the handlers for SIGTERM (what Kubernetes sends) and SIGINT now, and returns what completes
/// when either arrives. Failing to install them is an error: a process that cannot hear SIGTERM cannot
/// drain, and would only ever be killed.
pub fn stop_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        info!(signal = name, "stop requested");
    })
}

/// Raises the process's soft limit on open descriptors to its hard limit (a relay holds two per tunnel,
/// and soft limits are often 1,024), and returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        setrlimit(Resource::Nofile, raised).map_err(io::Error::from)?;
        return Ok(maximum);
    }
    // No current limit is no limit.
    Ok(limit.current.unwrap_or(u64::MAX))
}

/// Why a stop was not clean. The service is stopped either way; this says what was cut short.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("{open} tunnels still open when the node exited")]
    TunnelsLeft { open: usize },
    #[error("still running {after:?} after the stop: {tasks:?}")]
    Timeout {
        after: Duration,
        tasks: Vec<&'static str>,
    },
    #[error("{task} failed: {source}")]
    Failed {
        task: &'static str,
        source: io::Error,
    },
    #[error("{task} panicked")]
    Panicked { task: &'static str },
}

/// The long-running tasks of a service (listeners, the lease, the control channel), each named for the
/// logs. Each is told to stop by its own means (a cancellation token it watches); [`Tasks::join`] then
/// waits for all of them with one deadline. Nothing is spawned detached: dropping this aborts what is left.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<(&'static str, io::Result<()>)>,
    running: BTreeSet<&'static str>,
}

impl Tasks {
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = io::Result<()>> + Send + 'static,
    {
        self.running.insert(name);
        self.set.spawn(async move { (name, task.await) });
    }

    /// Waits for every task to end, for at most `limit`. Returns the first failure, or the tasks that did
    /// not end in time (they are aborted).
    pub async fn join(mut self, limit: Duration) -> Result<(), StopError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut first_error = None;
        loop {
            let ended = match tokio::time::timeout_at(deadline, self.set.join_next()).await {
                Ok(Some(ended)) => ended,
                Ok(None) => break,
                Err(_) => {
                    let tasks = std::mem::take(&mut self.running).into_iter().collect();
                    return Err(StopError::Timeout {
                        after: limit,
                        tasks,
                    });
                }
            };
            // A task that panicked takes its name with it: it is the one left in `running`.
            if let Ok((name, result)) = ended {
                self.running.remove(name);
                if let Err(source) = result {
                    first_error.get_or_insert(StopError::Failed { task: name, source });
                }
            }
        }
        match self.running.pop_first() {
            Some(task) => Err(StopError::Panicked { task }),
            None => first_error.map_or(Ok(()), Err),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn logging_flags_parse() {
        let flags = Flags::try_parse_from(["x", "--log-format", "json", "--log", "debug"]).unwrap();
        assert_eq!(flags.log.log_format, LogFormat::Json);
        assert_eq!(flags.log.log_filter, "debug");
        assert!(Flags::try_parse_from(["x", "--log-format", "xml"]).is_err());
    }

    /// A writer into a shared buffer, for reading back what a subscriber wrote.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What the process's subscriber, with `filter` as `--log`, writes of one event per level and target.
    fn logged(filter: &str) -> String {
        let capture = Capture::default();
        let writer = {
            let capture = capture.clone();
            move || capture.clone()
        };
        let args = LogArgs {
            log_format: LogFormat::Json,
            log_filter: filter.into(),
        };
        tracing::subscriber::with_default(subscriber(&args, writer).unwrap(), || {
            tracing::trace!(target: "tungstenite::protocol", "tungstenite trace");
            tracing::debug!(target: "tungstenite::protocol::frame", "tungstenite debug");
            tracing::info!(target: "tungstenite::protocol", "tungstenite info");
            tracing::trace!(target: "tokio_tungstenite", "tokio-tungstenite trace");
            tracing::trace!(target: "axum::rejection", "rejection trace");
            tracing::debug!(target: "hyper_util::client::legacy", "hyper-util debug");
            tracing::debug!(target: "h2::codec::framed_read", "h2 debug");
            tracing::debug!(target: "redis::aio", "redis debug");
            tracing::trace!(target: "axum::serve", "axum trace");
            tracing::trace!(target: "deskbroker_edge::ws", "own trace");
        });
        let bytes = capture.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn no_filter_raises_a_dependency_above_its_cap() {
        let capped = [
            "tungstenite trace",
            "tungstenite debug",
            "tokio-tungstenite trace",
            "rejection trace",
            "hyper-util debug",
            "h2 debug",
            "redis debug",
        ];
        for filter in [
            "trace",
            "tungstenite=trace,axum::rejection=trace,hyper=trace,h2=trace,redis=trace,trace",
            "tungstenite::protocol::frame=trace,tungstenite::protocol=trace,tokio_tungstenite=trace,\
             hyper_util::client::legacy=trace,h2::codec=trace,redis::aio=trace,trace",
        ] {
            let logs = logged(filter);
            for event in capped {
                assert!(!logs.contains(event), "{filter}: {event} logged");
            }
            for event in ["tungstenite info", "axum trace", "own trace"] {
                assert!(logs.contains(event), "{filter}: {event} not logged");
            }
        }
        let lowered = logged("trace,tungstenite=warn");
        assert!(!lowered.contains("tungstenite info"), "caps can be lowered");
        assert!(lowered.contains("own trace"));
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_report_what_did_not_stop() {
        let mut tasks = Tasks::default();
        tasks.spawn("quick", async { Ok(()) });
        tasks.spawn("stuck", std::future::pending());
        let error = tasks.join(Duration::from_secs(1)).await.unwrap_err();
        assert!(
            matches!(&error, StopError::Timeout { tasks, .. } if tasks == &["stuck"]),
            "{error}"
        );

        let mut tasks = Tasks::default();
        tasks.spawn("failing", async { Err(io::Error::other("boom")) });
        tasks.spawn("fine", async { Ok(()) });
        let error = tasks.join(Duration::from_secs(1)).await.unwrap_err();
        assert!(
            matches!(
                error,
                StopError::Failed {
                    task: "failing",
                    ..
                }
            ),
            "{error}"
        );

        let mut tasks = Tasks::default();
        tasks.spawn("panicking", async { panic!("on purpose") });
        let error = tasks.join(Duration::from_secs(1)).await.unwrap_err();
        assert!(
            matches!(error, StopError::Panicked { task: "panicking" }),
            "{error}"
        );

        let mut tasks = Tasks::default();
        tasks.spawn("fine", async { Ok(()) });
        assert!(tasks.join(Duration::from_secs(1)).await.is_ok());
    }
}
