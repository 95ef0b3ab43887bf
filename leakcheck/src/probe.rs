//! What the leak check measures: the process's open file descriptors and threads, and the tokio
//! runtime's alive tasks, before a scenario and after its shutdown.
//!
//! Owns: [`Probe`] (one reading), [`Leak`] (what a later reading has beyond a baseline) and
//! [`settle`] (waiting, with a deadline, for readings to return to a baseline).
//!
//! Descriptors are identified by number and described by what they point to (`socket:[…]`,
//! `anon_inode:[eventpoll]`, a path); threads by id and name. A reading is a set; a leak is what
//! the later set has that the baseline does not.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// One reading of the process.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Probe {
    /// Open descriptors: number -> what it points to.
    pub(crate) fds: BTreeMap<u32, String>,
    /// Threads: id -> name.
    pub(crate) threads: BTreeMap<u32, String>,
    /// The runtime's alive tasks.
    pub(crate) runtime_tasks: usize,
}

impl Probe {
    /// Reads the process now.
    pub(crate) fn now() -> Probe {
        let mut fds = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            for entry in entries.flatten() {
                let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let target = std::fs::read_link(entry.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "(closed while reading)".into());
                // The directory listing itself holds a descriptor; it is gone once read.
                if target.starts_with("/proc/") && target.ends_with("/fd") {
                    continue;
                }
                fds.insert(fd, target);
            }
        }
        let mut threads = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc/self/task") {
            for entry in entries.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let name = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|n| n.trim().to_owned())
                    .unwrap_or_default();
                threads.insert(tid, name);
            }
        }
        let runtime_tasks = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_alive_tasks())
            .unwrap_or(0);
        Probe { fds, threads, runtime_tasks }
    }

    /// What this reading has beyond `baseline`.
    pub(crate) fn leak_since(&self, baseline: &Probe) -> Leak {
        Leak {
            fds: self
                .fds
                .iter()
                .filter(|(fd, target)| baseline.fds.get(fd) != Some(target))
                .map(|(fd, target)| format!("fd {fd} -> {target}"))
                .collect(),
            threads: self
                .threads
                .iter()
                .filter(|(tid, _)| !baseline.threads.contains_key(tid))
                .map(|(tid, name)| format!("thread {tid} ({name})"))
                .collect(),
            runtime_tasks: self.runtime_tasks.saturating_sub(baseline.runtime_tasks),
        }
    }
}

/// What a reading has beyond its baseline.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Leak {
    /// Descriptors not in the baseline, described.
    pub(crate) fds: Vec<String>,
    /// Threads not in the baseline, named.
    pub(crate) threads: Vec<String>,
    /// Runtime tasks over the baseline.
    pub(crate) runtime_tasks: usize,
}

impl Leak {
    /// Whether nothing is left over.
    pub(crate) fn is_empty(&self) -> bool {
        self.fds.is_empty() && self.threads.is_empty() && self.runtime_tasks == 0
    }
}

/// Waits up to `deadline` for the process to return to `baseline` (no descriptor, thread or
/// runtime task beyond it); returns the last reading and what is still left over.
pub(crate) async fn settle(baseline: &Probe, deadline: Duration) -> (Probe, Leak) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let now = Probe::now();
        let leak = now.leak_since(baseline);
        if leak.is_empty() || tokio::time::Instant::now() >= until {
            return (now, leak);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
