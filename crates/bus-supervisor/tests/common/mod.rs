//! Helpers shared by the supervisor's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

/// Defines a module `$name` with the test body `$body` (an `async fn() -> ()` path) run on a
/// current-thread runtime and on a two-worker multi-thread runtime.
#[macro_export]
macro_rules! both_flavors {
    ($name:ident => $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "current_thread")]
            async fn current_thread() {
                super::$body().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn multi_thread() {
                super::$body().await
            }
        }
    };
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return condition();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The runtime's count of alive tasks.
pub fn runtime_alive() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// A generous deadline for waits that should succeed quickly.
pub const PATIENCE: Duration = Duration::from_secs(10);
