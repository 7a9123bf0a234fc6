//! isola's task runner: `cargo xtask run` boots the engine on QEMU virt,
//! `cargo xtask test` runs every test suite, in the order a failure is cheapest
//! to find (format, lints, host tests, model checks, Miri, booted runs).
//!
//! It calls nothing the README does not name: the only tools are the pinned
//! toolchain (`rust-toolchain.toml`) and QEMU, which it installs with apt-get
//! when it can.

mod bench;
mod linux;
mod machine;
mod qemu;

use std::process::{Command, ExitCode};
use std::time::Instant;

/// Crates that only build for the bare-metal targets.
const TARGET_ONLY: &[&str] = &["isola-boot", "isola-host-payload", "isola-guest-payload"];
/// Crates of the EL2 image: they must build (and lint clean) for
/// `aarch64-unknown-none-softfloat` ([`qemu::EL2_TARGET`]).
const EL2_CRATES: &[&str] = &[
    "isola",
    "isola-abi",
    "isola-sync",
    "isola-smmu",
    "isola-percpu",
    "isola-boot",
];
/// Crates of the EL1 payloads: they must build (and lint clean) for
/// `aarch64-unknown-none` ([`qemu::PAYLOAD_TARGET`]); `isola-abi` is shared.
/// `isola-vmm` is here so its `no_std` build (the bare-metal host's VMM to
/// be) is linted for the EL1 target too.
const EL1_CRATES: &[&str] = &[
    "isola-abi",
    "isola-host-payload",
    "isola-guest-payload",
    "isola-vmm",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => smp_arg(&args[1..]).and_then(|smp| {
            machine::ensure_qemu()?;
            qemu::run_main_job(smp)
        }),
        Some("linux") => machine::ensure_qemu().and_then(|()| linux::main(&args[1..])),
        Some("test") => test_all(),
        Some("bench") => machine::ensure_qemu().and_then(|()| bench::run(&args[1..])),
        _ => Err(
            "usage: cargo xtask run [--smp N] | cargo xtask linux [--smp N] [--reboot] [--bare] | cargo xtask test | cargo xtask bench [--icount|--scaling|--smoke]"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn smp_arg(args: &[String]) -> Result<u32, String> {
    match args {
        [] => Ok(8),
        [flag, n] if flag == "--smp" => n
            .parse()
            .ok()
            .filter(|n| (1..=512).contains(n))
            .ok_or_else(|| format!("--smp takes a CPU count from 1 to 512, not {n:?}")),
        _ => Err(format!("unexpected arguments {args:?}")),
    }
}

/// How a step's error starts when it could not run here at all (say, the
/// Debian archive is unreachable): the step is reported as skipped, by name,
/// never as passed, and later steps still run.
pub const SKIPPED: &str = "SKIPPED: ";

/// One step of the test command.
struct Step {
    name: &'static str,
    run: fn() -> Result<(), String>,
}

fn test_all() -> Result<(), String> {
    let steps = [
        Step {
            name: "qemu installed",
            run: machine::ensure_qemu,
        },
        Step {
            name: "rustfmt --check",
            run: fmt_check,
        },
        Step {
            name: "clippy (host)",
            run: clippy_host,
        },
        Step {
            name: "clippy (aarch64-unknown-none-softfloat, aarch64-unknown-none)",
            run: clippy_target,
        },
        Step {
            name: "host unit and property tests",
            run: host_tests,
        },
        Step {
            name: "loom model checks",
            run: loom_tests,
        },
        Step {
            name: "miri (sync, percpu)",
            run: miri_tests,
        },
        Step {
            name: "booted QEMU tests",
            run: qemu::booted_tests,
        },
        Step {
            name: "booted Linux host (Debian arm64 kernel, -smp 8)",
            run: linux::booted_test,
        },
    ];
    let started = Instant::now();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for step in &steps {
        println!("\n==> {}", step.name);
        let t = Instant::now();
        match (step.run)() {
            Ok(()) => {
                passed += 1;
                println!("<== {}: ok ({:.1} s)", step.name, t.elapsed().as_secs_f64());
            }
            Err(e) if e.starts_with(SKIPPED) => {
                skipped += 1;
                println!("<== {}: {e}", step.name);
            }
            Err(e) => {
                failed += 1;
                println!(
                    "<== {}: FAILED ({:.1} s): {e}",
                    step.name,
                    t.elapsed().as_secs_f64()
                );
                // Later steps build on earlier ones; stop at the first failure.
                break;
            }
        }
    }
    println!("\nxtask test took {:.0} s", started.elapsed().as_secs_f64());
    println!("steps: {passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} step(s) failed"))
    }
}

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

fn excluding_target_only(c: &mut Command) {
    c.arg("--workspace");
    for p in TARGET_ONLY {
        c.args(["--exclude", p]);
    }
}

fn fmt_check() -> Result<(), String> {
    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    run(c)
}

fn clippy_host() -> Result<(), String> {
    let mut c = cargo();
    c.arg("clippy");
    excluding_target_only(&mut c);
    c.args(["--all-targets", "--", "-D", "warnings"]);
    run(c)
}

/// Lints the EL2 image's crates for its softfloat target and the payloads
/// (and the portable crates they share) for theirs.
fn clippy_target() -> Result<(), String> {
    let mut c = cargo();
    c.args(["clippy", "--release", "--target", qemu::EL2_TARGET]);
    for p in EL2_CRATES {
        c.args(["-p", p]);
    }
    c.args(["--", "-D", "warnings"]);
    run(c)?;
    let mut c = cargo();
    c.args(["clippy", "--release", "--target", qemu::PAYLOAD_TARGET]);
    for p in EL1_CRATES {
        c.args(["-p", p]);
    }
    c.args(["--", "-D", "warnings"]);
    run(c)
}

fn host_tests() -> Result<(), String> {
    let mut c = cargo();
    c.arg("test");
    excluding_target_only(&mut c);
    run(c)?;
    // The guest image's library half (its memory layout and the host/guest
    // message contract) is plain Rust: test it on the host too.
    let mut guest = cargo();
    guest.args(["test", "-p", "isola-guest-payload", "--lib"]);
    run(guest)
}

/// The loom suite builds everything with `--cfg loom`, so it gets its own
/// target directory and never invalidates the ordinary build.
fn loom_tests() -> Result<(), String> {
    let mut c = cargo();
    c.args(["test", "--release", "-p", "isola-loom-tests"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", root().join("target/loom"));
    let t = Instant::now();
    let r = run(c);
    println!("loom suite ran in {:.1} s", t.elapsed().as_secs_f64());
    r
}

fn miri_tests() -> Result<(), String> {
    let mut setup = cargo();
    setup.args(["miri", "setup"]);
    run(setup)?;
    let mut c = cargo();
    c.args(["miri", "test", "-p", "isola-sync", "-p", "isola-percpu"])
        .env("CARGO_TARGET_DIR", root().join("target/miri"));
    run(c)
}

/// Whether we run as root, and so may install Debian packages ourselves.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}
