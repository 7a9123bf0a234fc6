//! The exhaustive bounded exploration of the engine against its spec
//! (`tests/explore.rs`): the test command's step, and `cargo xtask explore`,
//! which goes deeper or shows the engine's planted bugs caught.
//!
//! The exploration needs an optimised build (a debug build is about ten
//! times slower), so it has its own target directory and a release profile
//! without LTO and with parallel code generation: it compiles in about a
//! minute and runs within a few percent of the fully optimised build.

use std::process::Command;
use std::time::Instant;

use crate::cmd::{cargo, root, run};

/// Depth from boot `cargo xtask explore` uses when not told (the test
/// command uses the test's default, 4).
const DEFAULT_DEPTH: u32 = 5;

/// The engine's planted-bug features (`Cargo.toml`); with each, the
/// exploration must fail and print the shortest failing sequence.
const PLANTED: &[&str] = &[
    "planted-bug-skip-scrub",
    "planted-bug-donate-keeps-host-mapping",
    "planted-bug-donate-keeps-dma-view",
    "planted-bug-guest-unshare-skips-maintenance",
    "planted-bug-cpu-on-keeps-registers",
];

/// `cargo test --release -p isola --test explore` in the exploration's
/// build, with `extra` cargo arguments before `--test`.
fn explore_test(extra: &[&str]) -> Command {
    let mut c = cargo();
    c.args(["test", "--release", "-p", "isola"])
        .args(extra)
        .args(["--test", "explore"])
        .env("CARGO_TARGET_DIR", root().join("target/explore"))
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0");
    c
}

/// The test command's step: every test of `tests/explore.rs` at its default
/// depths, figures printed.
pub fn test_step() -> Result<(), String> {
    let mut c = explore_test(&[]);
    c.args(["--", "--nocapture"]);
    run(c)
}

/// `cargo xtask explore [--depth N] [--planted]`.
pub fn main(args: &[String]) -> Result<(), String> {
    let mut depth = DEFAULT_DEPTH;
    let mut planted = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--depth" => {
                depth = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=8).contains(n))
                    .ok_or("--depth takes a depth from 1 to 8")?;
            }
            "--planted" => planted = true,
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    if planted {
        return planted_bugs();
    }
    let t = Instant::now();
    let mut c = explore_test(&[]);
    c.env("ISOLA_EXPLORE_DEPTH", depth.to_string())
        .env("ISOLA_EXPLORE_COVERAGE", "1")
        .args(["--", "--nocapture", "every_sequence"]);
    let r = run(c);
    println!(
        "exploration at depth {depth} from boot took {:.0} s",
        t.elapsed().as_secs_f64()
    );
    r
}

/// Builds the exploration with each planted-bug feature and requires it to
/// fail with a shortest failing sequence, which it prints.
fn planted_bugs() -> Result<(), String> {
    for feature in PLANTED {
        println!("\n==> exploration with --features {feature}: must fail");
        let mut c = explore_test(&["--features", feature]);
        c.args(["--", "--nocapture", "every_sequence"]);
        let shown = format!("{c:?}");
        let out = c
            .output()
            .map_err(|e| format!("could not start {shown}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let found = text
            .lines()
            .skip_while(|l| !l.contains("shortest failing sequence"))
            .take_while(|l| !l.starts_with("stack backtrace") && !l.starts_with("note:"))
            .collect::<Vec<_>>();
        if out.status.success() || found.is_empty() {
            println!("{text}");
            return Err(format!(
                "{feature}: the exploration did not catch the planted bug"
            ));
        }
        for l in found {
            println!("{l}");
        }
    }
    println!("\n==> the harness's own planted bugs (tests/spec_common, Bug)");
    let mut c = explore_test(&[]);
    c.args(["--", "--nocapture", "exploration_catches"]);
    run(c)
}
