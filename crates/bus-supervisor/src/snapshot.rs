//! A point-in-time picture of a task tree.
//!
//! Owns: [`Snapshot`] and [`ScopeSnapshot`]. A snapshot is a copy: taking it locks each scope
//! briefly, one at a time, so it is consistent per scope but not across scopes (tasks may start
//! or end between two scopes being read).

use std::fmt;

use crate::info::TaskInfo;

/// The live tree under a scope: every scope with its live count and every live task with its
/// path, id, spawn site, age and state. `Display` renders it as an indented tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The scope the snapshot was taken from.
    pub root: ScopeSnapshot,
}

/// One scope in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeSnapshot {
    /// The scope's path.
    pub path: String,
    /// Live tasks in the scope and its descendants.
    pub live: usize,
    /// Whether the scope admits no more tasks.
    pub closed: bool,
    /// Whether the scope's token is cancelled.
    pub cancelled: bool,
    /// The scope's own live tasks, oldest first.
    pub tasks: Vec<TaskInfo>,
    /// The child scopes, oldest first.
    pub children: Vec<ScopeSnapshot>,
}

impl Snapshot {
    /// Every live task in the tree, oldest first.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        let mut all = Vec::new();
        self.root.collect_tasks(&mut all);
        all.sort_by_key(|t| t.id);
        all
    }

    /// The live task count at the root (including descendants).
    pub fn live(&self) -> usize {
        self.root.live
    }
}

impl ScopeSnapshot {
    fn collect_tasks(&self, into: &mut Vec<TaskInfo>) {
        into.extend(self.tasks.iter().cloned());
        for child in &self.children {
            child.collect_tasks(into);
        }
    }

    fn render(&self, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
        let indent = "  ".repeat(depth);
        let mut flags = Vec::new();
        if self.closed {
            flags.push("closed");
        }
        if self.cancelled {
            flags.push("cancelled");
        }
        let flags =
            if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(", ")) };
        writeln!(f, "{indent}{}/ [{} live]{flags}", self.path, self.live)?;
        for task in &self.tasks {
            writeln!(f, "{indent}  - {task}")?;
        }
        for child in &self.children {
            child.render(f, depth + 1)?;
        }
        Ok(())
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.render(f, 0)
    }
}

impl fmt::Display for ScopeSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f, 0)
    }
}
