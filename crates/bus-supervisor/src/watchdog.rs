//! The runtime watchdog: a thread that wakes the runtime now and then, so that a task blocking
//! its worker thread cannot leave the I/O driver and the timers unattended.
//!
//! Owns: [`Watchdog`]. Why it exists: in tokio's multi-thread runtime, one parked worker polls
//! the I/O driver (and timers) while the others sleep on a condition variable. When the driver's
//! worker wakes up to run a task that then blocks its thread (a handler calling a blocking
//! function), the others are not told to take the driver over (tokio does that only with
//! `tokio_unstable`'s eager hand-off): no socket and no timer makes progress until the blocked
//! task returns, and a shutdown waiting on its deadline waits forever. Waking the runtime from
//! outside (a no-op task) makes a sleeping worker run, park again, and take the idle driver.
//!
//! Invariants: the thread ends when its [`Watchdog`] is dropped (the supervisor's drop), and the
//! drop waits for it, so no thread outlives its supervisor.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;

/// A thread waking `runtime` every `interval` until dropped.
pub(crate) struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the thread; `None` if the system refuses a thread (the tree works without it).
    pub(crate) fn start(runtime: Handle, interval: Duration, name: &str) -> Option<Watchdog> {
        let (stop, stopped) = mpsc::channel::<()>();
        #[allow(clippy::disallowed_methods)] // the supervisor's own thread, joined on drop
        let thread = std::thread::Builder::new()
            .name(format!("{name}-watchdog"))
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    // A no-op task from outside the runtime wakes a sleeping worker.
                    #[allow(clippy::disallowed_methods)] // ends at its first poll
                    drop(runtime.spawn(async {}));
                }
            })
            .ok()?;
        Some(Watchdog { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
