//! `cargo xtask test`: every suite, in the order a failure is cheapest to
//! find (format, lints, host tests, the exhaustive exploration, model
//! checks, Miri, the image's disassembly, booted runs); it stops at the
//! first failure.

use std::process::Command;
use std::time::Instant;

use crate::cmd::{SKIPPED, cargo, root, run};
use crate::{build, explore, guest, linux, machine, panic_free, qemu};

/// Crates that only build for the bare-metal targets.
const TARGET_ONLY: &[&str] = &["isola-boot", "isola-host-payload", "isola-guest-payload"];
/// Crates of the EL2 image: they must build (and lint clean) for
/// `aarch64-unknown-none-softfloat` ([`build::EL2_TARGET`]).
const EL2_CRATES: &[&str] = &[
    "isola",
    "isola-abi",
    "isola-layout",
    "isola-fdt",
    "isola-sync",
    "isola-smmu",
    "isola-percpu",
    "isola-boot",
];
/// Crates of the EL1 payloads: they must build (and lint clean) for
/// `aarch64-unknown-none` ([`build::PAYLOAD_TARGET`]); the portable crates
/// they share with the engine are linted for both.
/// `isola-vmm` is here so its `no_std` build (the bare-metal host's VMM to
/// be) is linted for the EL1 target too.
const EL1_CRATES: &[&str] = &[
    "isola-abi",
    "isola-layout",
    "isola-fdt",
    "isola-host-payload",
    "isola-guest-payload",
    "isola-vmm",
];

/// One step of the test command.
struct Step {
    name: &'static str,
    run: fn() -> Result<(), String>,
}

pub fn test_all() -> Result<(), String> {
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
            name: "exhaustive exploration against the spec (release)",
            run: explore::test_step,
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
            name: "no panic path, and no frame past a stack guard, in the EL2 image (disassembled; a planted panic caught)",
            run: panic_free::step,
        },
        Step {
            name: "booted QEMU tests",
            run: qemu::booted_tests,
        },
        Step {
            name: "booted Linux host (Debian arm64 kernel, -smp 8)",
            run: linux::booted_test,
        },
        Step {
            name: "booted Linux guests (the same kernel, 4 vCPUs; alone, then 3 beside the VM test)",
            run: guest::booted_test,
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
    c.args(["clippy", "--release", "--target", build::EL2_TARGET]);
    for p in EL2_CRATES {
        c.args(["-p", p]);
    }
    c.args(["--", "-D", "warnings"]);
    run(c)?;
    let mut c = cargo();
    c.args(["clippy", "--release", "--target", build::PAYLOAD_TARGET]);
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
