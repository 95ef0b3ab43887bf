//! The backend conformance suite: the bus's behaviour, written once against the API and run on
//! every backend (feature `conformance`).
//!
//! Owns: [`Harness`] (how a backend under test makes buses and topics), one public async function
//! per behaviour, one file per area of behaviour (`delivery`, `dead_letters`, `groups`,
//! `shutdown`, `control`, `admin`; what they share is in `harness`), and
//! [`conformance_suite!`](crate::conformance_suite) which turns them into `#[tokio::test]`s for
//! a harness.
//!
//! Every check waits on conditions with deadlines ([`PATIENCE`]); none sleeps to wait and none
//! asserts on time. Each creates its own topics, so checks run in parallel and repeatedly.

// The checks are test assertions: failing loudly is their purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod control;
mod dead_letters;
mod delivery;
mod groups;
mod harness;
mod shutdown;

pub use admin::{
    admin_add_partitions, admin_group_members_and_lag, admin_read_without_group,
    admin_topic_lifecycle,
};
pub use control::{manual_commit, pause_and_resume, seek_while_running, start_positions};
pub use dead_letters::{
    dead_letter_written_while_draining_is_kept, poison_to_dead_letter, retries_then_dead_letter,
};
pub use delivery::{
    abandoned_handler_is_redelivered, at_least_once_retry_after_failed_handler,
    fetch_backpressure_bounds_in_flight, no_loss, ordering_per_key_under_concurrency, tombstones,
};
pub use groups::{
    dropped_subscription_keeps_consuming, groups_each_get_everything_and_members_split,
    one_subscription_reads_several_topics, pattern_subscription_follows_new_topics,
    unsubscribe_stops_delivery,
};
pub use harness::{Harness, PATIENCE};
pub use shutdown::{
    closed_bus_refuses_work, concurrent_shutdown_callers_get_one_report,
    shutdown_reports_and_leaves_nothing,
};

/// Generates one `#[tokio::test]` per conformance check for the harness `$harness` (an
/// expression evaluated in each test).
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@tests $harness;
            ordering_per_key_under_concurrency,
            no_loss,
            at_least_once_retry_after_failed_handler,
            abandoned_handler_is_redelivered,
            retries_then_dead_letter,
            dead_letter_written_while_draining_is_kept,
            poison_to_dead_letter,
            fetch_backpressure_bounds_in_flight,
            groups_each_get_everything_and_members_split,
            unsubscribe_stops_delivery,
            dropped_subscription_keeps_consuming,
            shutdown_reports_and_leaves_nothing,
            concurrent_shutdown_callers_get_one_report,
            closed_bus_refuses_work,
            one_subscription_reads_several_topics,
            pattern_subscription_follows_new_topics,
            start_positions,
            seek_while_running,
            pause_and_resume,
            manual_commit,
            tombstones,
            admin_topic_lifecycle,
            admin_add_partitions,
            admin_group_members_and_lag,
            admin_read_without_group,
        );
    };
    (@tests $harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $harness;
                $crate::conformance::$check(&harness).await;
            }
        )*
    };
}
