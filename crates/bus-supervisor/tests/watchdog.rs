//! The runtime watchdog keeps I/O and timers going while a task blocks its worker thread.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::sync::mpsc;
use std::time::Duration;

use bus_supervisor::Supervisor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A task woken by socket input blocks its worker; the driver's worker is then the blocked one
/// and, on tokio's stable runtime, nobody takes the driver over. With the watchdog, a timer on
/// another thread still fires and the blocked task is named by a shutdown that returns.
fn blocked_worker_scenario(watchdog: bool) -> mpsc::Receiver<String> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut builder = Supervisor::builder("app").abort_grace(Duration::from_millis(50));
            if watchdog {
                builder = builder.runtime_watchdog(Duration::from_millis(20));
            }
            let supervisor = builder.build();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (release, blocked) = mpsc::channel::<()>();
            let (entered, blocking) = tokio::sync::oneshot::channel::<()>();
            supervisor
                .root()
                .spawn("blocks-after-read", async move {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    let mut byte = [0u8; 1];
                    socket.read_exact(&mut byte).await.unwrap();
                    let _ = entered.send(());
                    let _ = blocked.recv(); // blocks the worker that the I/O woke
                })
                .unwrap()
                .detach();
            let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
            client.write_all(b"x").await.unwrap();
            blocking.await.unwrap(); // the task is about to block its worker
            // Timers must still fire while that worker is blocked (if they do not, this never
            // returns and the caller's deadline fails the test).
            tokio::time::sleep(Duration::from_millis(50)).await;
            let error = supervisor.shutdown(Duration::from_millis(100)).await.unwrap_err();
            let named = error.stuck.iter().map(|t| t.path.clone()).collect::<Vec<_>>().join(",");
            release.send(()).unwrap();
            error.wait(Duration::from_secs(10)).await.unwrap();
            let _ = done.send(named);
        });
    });
    result
}

#[test]
fn with_the_watchdog_a_blocked_worker_does_not_stall_timers_or_shutdown() {
    for attempt in 0..5 {
        let named =
            blocked_worker_scenario(true).recv_timeout(Duration::from_secs(30)).unwrap_or_else(
                |_| panic!("attempt {attempt}: the runtime stalled despite the watchdog"),
            );
        assert_eq!(named, "app/blocks-after-read");
    }
}

/// Shows the stall the watchdog prevents (not part of the suite: it hangs by design).
#[test]
#[ignore = "demonstrates tokio's stall without the watchdog; run by hand"]
fn without_the_watchdog_the_runtime_can_stall() {
    let stalled = (0..5)
        .any(|_| blocked_worker_scenario(false).recv_timeout(Duration::from_secs(5)).is_err());
    assert!(stalled, "no stall in 5 attempts");
}

#[test]
fn the_watchdog_thread_ends_with_its_supervisor() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let named = |name: &str| {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim() == name
            })
            .count()
    };
    let supervisor = {
        let _enter = runtime.enter();
        Supervisor::builder("wd").runtime_watchdog(Duration::from_millis(10)).build()
    };
    // The thread names itself when it starts: wait for it (with a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while named("wd-watchdog") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(named("wd-watchdog"), 1);
    drop(supervisor);
    assert_eq!(named("wd-watchdog"), 0, "joined on drop");
}
