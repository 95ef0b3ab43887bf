//! The leak check catches a deliberate leak and names it; without one it passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn leakcheck(extra: &[&str]) -> (bool, String) {
    let json = std::env::temp_dir().join(format!("leakcheck-test-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_leakcheck"))
        .args(["--scenario", "drop-without-shutdown", "--json"])
        .arg(&json)
        .args(extra)
        // In memory: this test needs no broker.
        .env_remove("KAFKA_BOOTSTRAP")
        .output()
        .expect("leakcheck runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::read_to_string(&json).expect("results written as JSON");
    assert!(written.contains("drop-without-shutdown"), "{written}");
    let _ = std::fs::remove_file(&json);
    (output.status.success(), text)
}

#[test]
fn an_injected_leak_fails_the_check_and_is_named() {
    let (passed, text) = leakcheck(&["--inject-leak"]);
    assert!(!passed, "the check passed despite the injected leak:\n{text}");
    assert!(
        text.contains("leaked task: injected-leak/forgotten/holds-a-socket"),
        "the leaked task is not named:\n{text}"
    );
    assert!(text.contains("scenario/mod.rs"), "the spawn site is not named:\n{text}");
    assert!(text.contains("leaked descriptor: fd") && text.contains("socket:["), "{text}");
    assert!(text.contains("runtime tasks over the baseline: 1"), "{text}");
}

#[test]
fn without_a_leak_the_check_passes() {
    let (passed, text) = leakcheck(&[]);
    assert!(passed, "the check failed without a leak:\n{text}");
    assert!(text.contains("nothing left behind"), "{text}");
}
