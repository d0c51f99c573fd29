//! What a relay costs, read from /proc: CPU seconds and memory of its whole process tree (websockify forks
//! a process per connection, so the tree is what counts; memory is PSS so shared pages count once).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often memory is sampled during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// `pid` and all its descendants, alive now.
fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(parent) =
                stat(child).and_then(|fields| fields.get(1).and_then(|p| p.parse().ok()))
            {
                parents.push((child, parent));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found
}

/// The fields of /proc/<pid>/stat after the command name, from the state on.
fn stat(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &text[text.rfind(')')? + 2..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// User and system CPU seconds of the tree, children already reaped included.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    tree(pid)
        .into_iter()
        .filter_map(stat)
        .map(|fields| {
            // utime, stime, cutime, cstime are fields 14-17 of stat, 11-14 counted from the state.
            (11..15)
                .filter_map(|i| fields.get(i)?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum::<f64>()
        / ticks
}

/// Proportional set size of the tree, in KiB.
pub fn pss_kib(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|text| {
            let line = text.lines().find(|line| line.starts_with("Pss:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Samples a tree's memory in the background and keeps the peak.
pub struct MemorySampler {
    peak: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl MemorySampler {
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(pss_kib(pid)));
        let running = Arc::new(AtomicBool::new(true));
        let (p, r) = (peak.clone(), running.clone());
        let task = tokio::task::spawn_blocking(move || {
            while r.load(Ordering::Relaxed) {
                p.fetch_max(pss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Self {
            peak,
            running,
            task,
        }
    }

    pub async fn stop(self) -> u64 {
        self.running.store(false, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}
