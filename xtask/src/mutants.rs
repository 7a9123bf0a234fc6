//! `cargo xtask mutants`: mutation testing of the engine core with
//! cargo-mutants, and the score it gives (docs/testing.md, "Mutation
//! testing").
//!
//! What is mutated: the `isola` crate's `src/`, without the executable spec
//! (`src/spec/`, which is what the tests compare against, not code under
//! test) and without test-only code (`src/testing.rs`, the `tests.rs`
//! modules; cargo-mutants itself skips `#[cfg(test)]` items and `#[test]`
//! functions). What judges a mutant: `cargo test -p isola --lib --test
//! engine` in the `mutants` profile (`Cargo.toml`: the test profile's debug
//! assertions and overflow checks, opt-level 1, no debug info): the core's
//! host tests as the test command runs them, less the exploration's binary,
//! whose tests are all ignored outside release. Proptest's seed is
//! fixed, so a mutant is judged the same way on every run.
//!
//! A full run is long (about a thousand mutants, each a rebuild and a test
//! run), so it is not part of `cargo xtask test`; `--shard K/N` runs a
//! round-robin sample, and the summary says which.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::cmd::{cargo, root, run};

/// The cargo-mutants release the figures in docs/testing.md were made with;
/// installed from crates.io (`cargo install --locked`) when missing.
const VERSION: &str = "27.1.0";

/// Where cargo-mutants writes its `mutants.out/`.
const OUT: &str = "target/mutants";

/// Files of `src/` that are not mutated (globs relative to the crate root).
const EXCLUDE: &[&str] = &["src/spec/**", "src/testing.rs", "src/**/tests.rs"];

/// The proptest seed every mutant's test run uses.
const SEED: &str = "20261205";

/// Seconds a mutant's test run may take before it counts as timed out. The
/// unmutated tests take about 6 s; the margin is for a machine shared with
/// other builds, where a tighter bound turned slow runs into false timeouts.
const TIMEOUT_SECS: &str = "90";

/// `cargo xtask mutants [--list] [--shard K/N] [--jobs J] [-F REGEX]...`.
pub fn main(args: &[String]) -> Result<(), String> {
    let mut list = false;
    let mut shard = None;
    let mut jobs = "2".to_string();
    let mut regexes = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--list" => list = true,
            "--shard" => {
                let s = it.next().ok_or("--shard takes K/N, for example 1/8")?;
                parse_shard(s)?;
                shard = Some(s.clone());
            }
            "--jobs" | "-j" => {
                jobs = it
                    .next()
                    .filter(|j| j.parse::<u32>().is_ok_and(|j| j >= 1))
                    .ok_or("--jobs takes a job count of at least 1")?
                    .clone();
            }
            "-F" | "--re" => regexes.push(it.next().ok_or("-F takes a regex")?.clone()),
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    ensure_installed()?;
    let mut c = mutants_command();
    for r in &regexes {
        c.args(["-F", r]);
    }
    if let Some(s) = &shard {
        c.args(["--shard", s, "--sharding", "round-robin"]);
    }
    if list {
        c.arg("--list");
        return run(c);
    }
    c.args(["--jobs", &jobs, "--output", OUT]);
    let t = Instant::now();
    // cargo-mutants exits non-zero when a mutant survives: the summary below
    // is the result either way.
    let shown = format!("{c:?}");
    let status = c
        .status()
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let out = root().join(OUT).join("mutants.out");
    let s = Summary::read(&out)?;
    println!(
        "\nmutants{}: {} in all, {} unviable, {} viable: {} caught, {} timed out, {} missed; score {:.1} % ({:.0} s)",
        shard
            .map(|s| format!(" (shard {s}, round-robin)"))
            .unwrap_or_default(),
        s.caught + s.timeout + s.missed + s.unviable,
        s.unviable,
        s.viable(),
        s.caught,
        s.timeout,
        s.missed,
        s.score(),
        secs,
    );
    if s.missed > 0 {
        println!("missed (in {}):", out.join("missed.txt").display());
        for l in &s.missed_lines {
            println!("  {l}");
        }
    }
    // Exit codes of cargo-mutants: 0 all caught, 2 some missed, 3 some timed
    // out; anything else (1 usage, 4 the unmutated tree fails) is an error.
    match status.code() {
        Some(0 | 2 | 3) => Ok(()),
        _ => Err(format!("{shown} exited with {status}")),
    }
}

/// The cargo-mutants command over the core, without output or sharding
/// options.
fn mutants_command() -> Command {
    let mut c = cargo();
    c.args(["mutants", "--package", "isola", "--profile", "mutants"])
        .args(["--timeout", TIMEOUT_SECS])
        // The unit tests and the one integration binary: the exploration's
        // binary is left out because in this profile its tests are all
        // ignored (it runs in release, in its own step), so building it
        // for every mutant would judge nothing.
        .args(["--cargo-arg=--lib", "--cargo-arg=--test=engine"]);
    for e in EXCLUDE {
        c.args(["--exclude", e]);
    }
    c.env("PROPTEST_RNG_SEED", SEED);
    c
}

/// Checks `K/N` with 0 ≤ K < N, as cargo-mutants numbers shards.
fn parse_shard(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--shard takes K/N with 0 <= K < N, not {s:?}");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let k: u32 = k.parse().map_err(|_| bad())?;
    let n: u32 = n.parse().map_err(|_| bad())?;
    if k < n { Ok((k, n)) } else { Err(bad()) }
}

/// Installs cargo-mutants from crates.io if `cargo mutants` is missing.
fn ensure_installed() -> Result<(), String> {
    let found = cargo()
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    println!("cargo-mutants not found: installing {VERSION} from crates.io");
    let mut c = cargo();
    c.args(["install", "--locked", "cargo-mutants", "--version", VERSION]);
    run(c)
}

/// What one run found, from cargo-mutants' outcome lists.
struct Summary {
    caught: usize,
    timeout: usize,
    missed: usize,
    unviable: usize,
    missed_lines: Vec<String>,
}

impl Summary {
    fn read(out: &Path) -> Result<Self, String> {
        let lines = |name: &str| -> Result<Vec<String>, String> {
            let p = out.join(name);
            match std::fs::read_to_string(&p) {
                Ok(t) => Ok(t.lines().map(str::to_string).collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(format!("{}: {e}", p.display())),
            }
        };
        let missed_lines = lines("missed.txt")?;
        Ok(Summary {
            caught: lines("caught.txt")?.len(),
            timeout: lines("timeout.txt")?.len(),
            missed: missed_lines.len(),
            unviable: lines("unviable.txt")?.len(),
            missed_lines,
        })
    }

    /// Mutants that built: the ones a test could judge.
    fn viable(&self) -> usize {
        self.caught + self.timeout + self.missed
    }

    /// Caught or timed out, as a percentage of the viable (a mutant that
    /// makes the tests hang is detected: the test command would not pass).
    fn score(&self) -> f64 {
        let viable = self.viable();
        if viable == 0 {
            return 0.0;
        }
        #[allow(
            clippy::cast_precision_loss,
            reason = "counts of mutants are far below 2^52"
        )]
        let pct = 100.0 * (self.caught + self.timeout) as f64 / viable as f64;
        pct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_checked() {
        assert_eq!(parse_shard("0/8"), Ok((0, 8)));
        assert_eq!(parse_shard("7/8"), Ok((7, 8)));
        assert!(parse_shard("8/8").is_err());
        assert!(parse_shard("1").is_err());
        assert!(parse_shard("a/8").is_err());
    }

    #[test]
    fn score_counts_timeouts_as_caught_and_ignores_unviable() {
        let s = Summary {
            caught: 88,
            timeout: 2,
            missed: 10,
            unviable: 40,
            missed_lines: Vec::new(),
        };
        assert_eq!(s.viable(), 100);
        assert!((s.score() - 90.0).abs() < 1e-9);
        let none = Summary {
            caught: 0,
            timeout: 0,
            missed: 0,
            unviable: 3,
            missed_lines: Vec::new(),
        };
        assert!(none.score().abs() < 1e-9);
    }
}
