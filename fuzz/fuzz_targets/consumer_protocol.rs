//! The `consumer` protocol's subscription (what other group members send the leader) and
//! assignment (what the leader sends): no panic, memory in proportion to the bytes.

#![no_main]

use bus_fuzz::{Counting, peak};
use bus_kafka::fuzzing::{decode_assignment, decode_subscription};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let bound = 64 * data.len() + (1 << 20);
    let (allocated, _) = peak(|| decode_subscription(data));
    assert!(allocated <= bound, "subscription: {allocated} bytes for {}", data.len());
    let (allocated, _) = peak(|| decode_assignment(data));
    assert!(allocated <= bound, "assignment: {allocated} bytes for {}", data.len());
});
