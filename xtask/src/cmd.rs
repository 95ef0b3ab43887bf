//! Running commands: echoed before they run, output streamed, failures turned into messages.
//!
//! Owns: [`run`], [`run_with_progress`] and [`Step`] timing. Nothing here knows what the commands
//! are for.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::Result;

/// Runs `command` in the workspace root with inherited output; an error when it fails.
pub(crate) fn run(command: &mut Command) -> Result<()> {
    command.current_dir(crate::workspace_root());
    eprintln!("$ {}", describe(command));
    let status = command.status().map_err(|e| format!("cannot run {}: {e}", describe(command)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", describe(command)))
    }
}

/// Runs a long build-like `command`, showing a spinner with the elapsed time, the number of
/// `Compiling` lines seen and the latest one, and writing the full output to `log`.
pub(crate) fn run_with_progress(
    command: &mut Command,
    what: &str,
    log: &std::path::Path,
) -> Result<()> {
    command.current_dir(crate::workspace_root());
    eprintln!("$ {}", describe(command));
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut log_file =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    // cargo writes its progress to stderr; fold stdout into the log too.
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", describe(command)))?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let mut compiled = 0usize;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
            use std::io::Write;
            let _ = writeln!(log_file, "{line}");
            let trimmed = line.trim_start();
            if trimmed.starts_with("Compiling") {
                compiled += 1;
                bar.set_message(format!("{compiled} crates compiled; {trimmed}"));
            } else if trimmed.starts_with("Installing") || trimmed.starts_with("Downloaded") {
                bar.set_message(trimmed.to_owned());
            }
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for {}: {e}", describe(command)))?;
    bar.finish_and_clear();
    if status.success() {
        eprintln!("{what}: done in {:.0?} ({compiled} crates compiled)", started.elapsed());
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({status}); its output is in {}",
            describe(command),
            log.display()
        ))
    }
}

/// A command as text, for messages.
pub(crate) fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Prints a heading for a step of a longer job and, when dropped, how long it took.
pub(crate) struct Step {
    name: &'static str,
    started: Instant,
}

impl Step {
    pub(crate) fn new(name: &'static str) -> Self {
        eprintln!("\n==> {name}");
        Step { name, started: Instant::now() }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        eprintln!("<== {} ({:.1?})", self.name, self.started.elapsed());
    }
}
