//! What every task runs commands with: the workspace root, a clean `cargo`,
//! running a command to completion, and how a step says it was skipped.

use std::process::Command;

/// How a step's error starts when it could not run here at all (say, the
/// Debian archive is unreachable): the step is reported as skipped, by name,
/// never as passed, and later steps still run.
pub const SKIPPED: &str = "SKIPPED: ";

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

/// A `cargo` command in the workspace root, with no RUSTFLAGS leaking in.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    c
}

/// Runs a command to completion, inheriting the console.
pub fn run(mut cmd: Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} exited with {status}"))
    }
}

/// Whether we run as root, and so may install Debian packages ourselves.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}
