//! Points 7 to 9: snapshots, the leak guard, and tracing spans carrying task paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bus_supervisor::{LeakGuard, Supervisor};
use common::{PATIENCE, runtime_alive};
use parking_lot::Mutex;

async fn a_snapshot_lists_the_live_tree_and_renders_as_text() {
    let supervisor = Supervisor::new("bus");
    let producer = supervisor.root().child("kafka").child("producer");
    let line = line!() + 1;
    producer.spawn("orders-0", std::future::pending::<()>()).unwrap().detach();
    producer.spawn("orders-1", std::future::pending::<()>()).unwrap().detach();
    supervisor.root().spawn("health", std::future::pending::<()>()).unwrap().detach();

    let snapshot = supervisor.snapshot();
    assert_eq!(snapshot.live(), 3);
    let tasks = snapshot.tasks();
    let paths: Vec<_> = tasks.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(paths, ["bus/kafka/producer/orders-0", "bus/kafka/producer/orders-1", "bus/health"]);
    assert_eq!(tasks[0].spawned_at.line(), line);
    assert!(tasks[0].id < tasks[1].id);
    assert_eq!(snapshot.root.children[0].path, "bus/kafka");
    assert_eq!(snapshot.root.children[0].live, 2);

    let text = snapshot.to_string();
    assert!(text.starts_with("bus/ [3 live]"), "{text}");
    assert!(text.contains("  bus/kafka/ [2 live]"), "{text}");
    assert!(text.contains("    bus/kafka/producer/ [2 live]"), "{text}");
    assert!(text.contains("bus/kafka/producer/orders-0 [#1 async, running, age "), "{text}");
    assert!(text.contains(&format!("observe.rs:{line}:")), "{text}");
    supervisor.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!(supervisor.snapshot().tasks(), []);
}
both_flavors!(snapshot_tree => a_snapshot_lists_the_live_tree_and_renders_as_text);

async fn the_leak_guard_passes_when_the_scope_returns_to_its_baseline() {
    let supervisor = Supervisor::new("app");
    supervisor.root().spawn("long-lived", std::future::pending::<()>()).unwrap().detach();
    let guard = LeakGuard::new(supervisor.root()).with_runtime_check();
    let work = supervisor.root().child("request");
    for i in 0..20 {
        let _ = work.spawn(format!("step{i}"), async move { tokio::task::yield_now().await });
    }
    guard.check(PATIENCE).await.unwrap();
    supervisor.shutdown(Duration::from_millis(50)).await.unwrap();
}
both_flavors!(guard_passes => the_leak_guard_passes_when_the_scope_returns_to_its_baseline);

async fn the_leak_guard_catches_a_deliberate_leak_and_names_it() {
    let supervisor = Supervisor::new("app");
    let guard = LeakGuard::new(supervisor.root());
    let line = line!() + 1;
    let leaked = supervisor.root().child("pool").spawn("forgotten", std::future::pending::<()>());
    leaked.unwrap().detach();
    let report = guard.check(Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(report.live, 1);
    assert_eq!(report.baseline_live, 0);
    assert_eq!(report.leaked.len(), 1);
    assert_eq!(report.leaked[0].path, "app/pool/forgotten");
    assert_eq!(report.leaked[0].spawned_at.line(), line);
    let text = report.to_string();
    assert!(text.contains("app/pool/forgotten"), "{text}");
    assert!(text.contains(&format!("observe.rs:{line}")), "{text}");
    supervisor.shutdown(Duration::from_millis(50)).await.unwrap();
    guard.check(PATIENCE).await.unwrap();
}
both_flavors!(guard_catches => the_leak_guard_catches_a_deliberate_leak_and_names_it);

#[tokio::test(flavor = "current_thread")]
#[should_panic(expected = "app/forgotten")]
async fn assert_clean_panics_with_the_leak_report() {
    let supervisor = Supervisor::new("app");
    let guard = LeakGuard::new(supervisor.root());
    supervisor.root().spawn("forgotten", std::future::pending::<()>()).unwrap().detach();
    guard.assert_clean(Duration::from_millis(20)).await;
}

async fn guards_on_two_supervisors_do_not_see_each_other() {
    let clean = Supervisor::new("clean");
    let leaky = Supervisor::new("leaky");
    let clean_guard = LeakGuard::new(clean.root());
    let leaky_guard = LeakGuard::new(leaky.root());
    leaky.root().spawn("leak", std::future::pending::<()>()).unwrap().detach();
    clean.root().spawn("done", async {}).unwrap().await.unwrap();
    clean_guard.check(Duration::from_millis(50)).await.unwrap();
    let report = leaky_guard.check(Duration::from_millis(50)).await.unwrap_err();
    let paths: Vec<_> = report.leaked.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(paths, ["leaky/leak"]);
    leaky.shutdown(Duration::from_millis(50)).await.unwrap();
}
both_flavors!(independent_guards => guards_on_two_supervisors_do_not_see_each_other);

/// The runtime cross-check catches a task spawned around the supervisor, which the scope count
/// cannot see.
async fn the_runtime_cross_check_catches_an_unregistered_task() {
    let supervisor = Supervisor::new("app");
    let guard = LeakGuard::new(supervisor.root()).with_runtime_check();
    let before = runtime_alive();
    #[allow(clippy::disallowed_methods)] // the point: a task the supervisor does not know
    let rogue = tokio::spawn(std::future::pending::<()>());
    let report = guard.check(Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(report.live, 0);
    assert_eq!(report.runtime, Some((before, before + 1)));
    assert!(report.to_string().contains("outside the supervisor"), "{report}");
    rogue.abort();
    guard.check(PATIENCE).await.unwrap();
}
both_flavors!(runtime_cross_check => the_runtime_cross_check_catches_an_unregistered_task);

mod tracing_spans {
    use super::*;
    use tracing::Subscriber;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    /// Records, for each event, the `path` field of the span it happened in.
    #[derive(Clone, Default)]
    struct PathRecorder {
        seen: Arc<Mutex<Vec<(String, String)>>>,
    }

    struct SpanPath(String);

    struct PathVisitor<'a>(&'a mut Option<String>);
    impl Visit for PathVisitor<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "path" {
                *self.0 = Some(format!("{value:?}"));
            }
        }
    }

    struct MessageVisitor<'a>(&'a mut String);
    impl Visit for MessageVisitor<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                *self.0 = format!("{value:?}");
            }
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for PathRecorder {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut path = None;
            attrs.record(&mut PathVisitor(&mut path));
            if let (Some(path), Some(span)) = (path, ctx.span(id)) {
                span.extensions_mut().insert(SpanPath(path));
            }
        }

        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            let mut message = String::new();
            event.record(&mut MessageVisitor(&mut message));
            let path = ctx
                .event_scope(event)
                .and_then(|scope| {
                    scope
                        .from_root()
                        .find_map(|s| s.extensions().get::<SpanPath>().map(|p| p.0.clone()))
                })
                .unwrap_or_default();
            self.seen.lock().push((path, message));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_task_runs_inside_a_span_carrying_its_path() {
        let recorder = PathRecorder::default();
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        // Global, because blocking closures run on the blocking pool's threads. Only this test
        // sets it; other tests' events are recorded too but do not match the messages below.
        tracing::subscriber::set_global_default(subscriber).unwrap();

        let supervisor = Supervisor::new("bus");
        let scope = supervisor.root().child("kafka");
        let handle = scope.spawn("producer", async {
            tracing::info!("before await");
            tokio::task::yield_now().await;
            tracing::info!("after await");
        });
        handle.unwrap().await.unwrap();
        let blocking = scope.spawn_blocking("flush", || tracing::info!("in blocking"));
        blocking.unwrap().await.unwrap();
        tracing::info!("outside");

        let seen = recorder.seen.lock().clone();
        let find = |m: &str| seen.iter().find(|(_, msg)| msg == m).map(|(p, _)| p.clone());
        assert_eq!(find("before await").as_deref(), Some("bus/kafka/producer"));
        assert_eq!(
            find("after await").as_deref(),
            Some("bus/kafka/producer"),
            "re-entered per poll"
        );
        assert_eq!(find("in blocking").as_deref(), Some("bus/kafka/flush"));
        assert_eq!(find("outside").as_deref(), Some(""));
        supervisor.shutdown(PATIENCE).await.unwrap();
    }
}
