//! Envelope JSON (the wire format shared with the Go services): decoding and validation never
//! panic; whatever decodes re-encodes and decodes to the same envelope.

#![no_main]

use bus_core::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_json(data) {
        let json = envelope.to_json().expect("a decoded envelope encodes");
        let again = Envelope::from_json(&json).expect("an encoded envelope decodes");
        assert_eq!(again.to_json().expect("encodes again"), json);
    }
});
