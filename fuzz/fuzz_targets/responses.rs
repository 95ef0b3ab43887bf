//! Every response the bus reads, framed and decoded as a connection does (size prefix against
//! the kind's bound, header, shape check, kafka-protocol's decoder): no panic, and memory in
//! proportion to the frame, whatever its counts say.
//!
//! Input: [response kind][version offset][frame: size prefix, header, body].

#![no_main]

use bus_fuzz::{Counting, peak};
use bus_kafka::fuzzing::{RESPONSES, decode_response_frame};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let [kind, version, frame @ ..] = data else { return };
    let api = usize::from(*kind) % RESPONSES.len();
    let (_, min, max) = RESPONSES[api];
    let version = min + i16::from(*version) % (max - min + 1);
    let (allocated, _) = peak(|| decode_response_frame(api, version, frame));
    // A decoded response takes a few times its wire size (an element of a few bytes becomes a
    // struct of tens); a count read from the wire would make it gigabytes.
    let bound = 64 * frame.len() + (1 << 20);
    assert!(allocated <= bound, "{allocated} bytes allocated for a frame of {}", frame.len());
});
