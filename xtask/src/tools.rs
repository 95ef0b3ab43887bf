//! Pinned tools installed on first use: cargo-deny and cargo-fuzz; Debian
//! packages a command needs (installed with apt-get as root, otherwise named).
//!
//! Owns: finding a tool (on the PATH or in cargo's bin directory) and installing it with
//! `cargo install` when missing, showing progress. A tool installed once is reused.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;

/// A tool from crates.io at a pinned version.
pub(crate) struct Tool {
    /// The crate to install.
    pub(crate) krate: &'static str,
    /// The executable it provides.
    pub(crate) binary: &'static str,
    /// The pinned version.
    pub(crate) version: &'static str,
    /// Extra `cargo install` flags.
    pub(crate) install_flags: &'static [&'static str],
    /// What to tell the user about the install time.
    pub(crate) note: &'static str,
}

/// cargo-deny: licenses, bans and sources checks.
pub(crate) const CARGO_DENY: Tool = Tool {
    krate: "cargo-deny",
    binary: "cargo-deny",
    version: "0.20.2",
    install_flags: &["--locked"],
    note: "about 4 minutes on 2 cores, once",
};

/// cargo-fuzz: builds and runs the libFuzzer targets of `fuzz/` (on stable Rust with
/// `RUSTC_BOOTSTRAP=1`, see `fuzz`). Measured: 4 minutes to install on a loaded 2-core machine.
pub(crate) const CARGO_FUZZ: Tool = Tool {
    krate: "cargo-fuzz",
    binary: "cargo-fuzz",
    version: "0.13.2",
    install_flags: &["--locked"],
    note: "about 4 minutes on 2 cores, once",
};

fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home).join("bin"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

fn on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(binary)).find(|p| p.is_file())
}

/// Where the tool's executable is, if installed.
pub(crate) fn find(tool: &Tool) -> Option<PathBuf> {
    on_path(tool.binary)
        .or_else(|| cargo_bin_dir().map(|d| d.join(tool.binary)).filter(|p| p.is_file()))
}

fn installed_version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The tool's executable, installing the pinned version first when it is missing.
pub(crate) fn ensure(tool: &Tool) -> Result<PathBuf> {
    if let Some(found) = find(tool) {
        return Ok(found);
    }
    eprintln!(
        "{} {} is not installed; installing it with cargo install ({})",
        tool.krate, tool.version, tool.note
    );
    let log = crate::workspace_root()
        .join("target")
        .join("xtask")
        .join(format!("install-{}.log", tool.krate));
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(["install", tool.krate, "--version", tool.version]).args(tool.install_flags);
    crate::cmd::run_with_progress(&mut command, &format!("installing {}", tool.krate), &log)?;
    let found = find(tool).ok_or_else(|| {
        format!(
            "{} was installed but `{}` is not in cargo's bin directory",
            tool.krate, tool.binary
        )
    })?;
    if let Some(version) = installed_version(&found) {
        eprintln!("installed: {version}");
    }
    Ok(found)
}

/// Makes sure the Debian packages `purpose` needs are present: each is given with whether it
/// is already there. Installs the missing ones with apt-get when running as root; otherwise
/// says what to install.
pub(crate) fn ensure_debian_packages(purpose: &str, packages: &[(&str, bool)]) -> Result<()> {
    let missing: Vec<&str> =
        packages.iter().filter(|(_, present)| !present).map(|(package, _)| *package).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !root {
        return Err(format!(
            "{purpose} needs {}: install with `sudo apt-get install -y {}`",
            missing.join(" and "),
            missing.join(" ")
        ));
    }
    eprintln!("{purpose} needs {}; installing with apt-get", missing.join(" and "));
    crate::cmd::run(Command::new("apt-get").arg("update"))?;
    crate::cmd::run(Command::new("apt-get").args(["install", "-y"]).args(&missing))
}

/// Whether `program arg` runs and succeeds (a quick presence check, e.g. `--version`).
pub(crate) fn runs(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok_and(|o| o.status.success())
}
