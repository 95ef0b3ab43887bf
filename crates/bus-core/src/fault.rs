//! Fault injection for tests: a test arms a fault (panic, or stall) at a task path, and the task
//! meets it at its next turn.
//!
//! Owns: [`point`], which every long-lived task of the bus (and of its backends) awaits once per
//! turn of its loop with its own task path, and, with the `fault-injection` feature, the
//! registry of armed faults (`arm_panic`, `arm_stall`, `disarm`, `met`).
//!
//! Invariants: without the feature, [`point`] is an empty inline function (nothing is stored,
//! nothing is checked) and the arming API does not exist; normal builds, the benchmarks and
//! leakcheck never enable it. With it, a fault matches a task whose path contains the armed key
//! (`producer/orders-0`, `fetch/orders-1`); a panic fault fires `times` times (then it is
//! spent), a stall lasts until it is disarmed or the task is cancelled (the stall is awaited
//! inside the task's own cancellable loop).

#[cfg(feature = "fault-injection")]
pub use armed::{arm_panic, arm_stall, disarm, met};

/// A fault point: where the task at `path` meets an armed fault (a panic, or a stall until
/// disarmed). Without the `fault-injection` feature it does nothing and costs nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_path: &str) -> std::future::Ready<()> {
    std::future::ready(())
}

/// A fault point: where the task at `path` meets an armed fault (a panic, or a stall until
/// disarmed). Without the `fault-injection` feature it does nothing and costs nothing.
#[cfg(feature = "fault-injection")]
pub async fn point(path: &str) {
    armed::meet(path).await;
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use tokio::sync::Notify;

    enum Kind {
        Panic { left: u32 },
        Stall,
    }

    struct Fault {
        key: String,
        kind: Kind,
        /// Times a task met it.
        met: u32,
    }

    struct Registry {
        faults: Vec<Fault>,
        /// Woken when a stall is disarmed.
        released: Arc<Notify>,
    }

    static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

    fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut registry = REGISTRY.lock();
        let registry = registry
            .get_or_insert_with(|| Registry { faults: Vec::new(), released: Arc::default() });
        f(registry)
    }

    /// Arms a panic: the next `times` turns of tasks whose path contains `key` panic.
    pub fn arm_panic(key: &str, times: u32) {
        with(|r| {
            r.faults.retain(|f| f.key != key);
            r.faults.push(Fault { key: key.to_owned(), kind: Kind::Panic { left: times }, met: 0 });
        });
    }

    /// Arms a stall: tasks whose path contains `key` stop at their next turn until
    /// [`disarm`] (or their cancellation).
    pub fn arm_stall(key: &str) {
        with(|r| {
            r.faults.retain(|f| f.key != key);
            r.faults.push(Fault { key: key.to_owned(), kind: Kind::Stall, met: 0 });
        });
    }

    /// Removes the fault armed at `key` (stalled tasks go on).
    pub fn disarm(key: &str) {
        let released = with(|r| {
            r.faults.retain(|f| f.key != key);
            Arc::clone(&r.released)
        });
        released.notify_waiters();
    }

    /// How many times tasks met the fault armed at `key` (0 when none is armed).
    pub fn met(key: &str) -> u32 {
        with(|r| r.faults.iter().find(|f| f.key == key).map_or(0, |f| f.met))
    }

    enum Meet {
        Nothing,
        Panic(String),
        Stall(Arc<Notify>),
    }

    pub(super) async fn meet(path: &str) {
        let found = with(|r| {
            let released = Arc::clone(&r.released);
            let Some(fault) = r.faults.iter_mut().find(|f| path.contains(f.key.as_str())) else {
                return Meet::Nothing;
            };
            match &mut fault.kind {
                Kind::Panic { left } if *left > 0 => {
                    *left -= 1;
                    fault.met += 1;
                    Meet::Panic(fault.key.clone())
                }
                Kind::Panic { .. } => Meet::Nothing,
                Kind::Stall => {
                    fault.met += 1;
                    Meet::Stall(released)
                }
            }
        });
        match found {
            Meet::Nothing => {}
            #[allow(clippy::panic)]
            Meet::Panic(key) => panic!("fault injected at `{path}` (armed as `{key}`)"),
            Meet::Stall(released) => loop {
                let notified = released.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let stalled = with(|r| {
                    r.faults
                        .iter()
                        .any(|f| matches!(f.kind, Kind::Stall) && path.contains(f.key.as_str()))
                });
                if !stalled {
                    return;
                }
                notified.await;
            },
        }
    }
}
