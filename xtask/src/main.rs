//! isola's task runner: `cargo xtask run` boots the engine on QEMU virt,
//! `cargo xtask test` runs every test suite, in the order a failure is cheapest
//! to find (`suite.rs`), `cargo xtask linux` boots Debian's kernel as the host,
//! `cargo xtask guest` as a guest, `cargo xtask bench` measures, `cargo xtask
//! explore` runs the exhaustive exploration of the engine against its spec
//! deeper (`explore.rs`), `cargo xtask mutants` runs mutation testing of the
//! core (`mutants.rs`).
//!
//! It calls nothing the README does not name: the only tools are the pinned
//! toolchain (`rust-toolchain.toml`) and QEMU, which it installs with apt-get
//! when it can.

#![forbid(unsafe_code)]

mod bench;
mod build;
mod census;
mod check;
mod cmd;
mod dtb;
mod explore;
mod guest;
#[cfg(test)]
mod layers;
mod linux;
mod machine;
mod mutants;
mod panic_free;
mod qemu;
mod stories;
mod suite;
mod watch;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => smp_arg(&args[1..]).and_then(|smp| {
            machine::ensure_qemu()?;
            qemu::run_main_job(smp)
        }),
        Some("linux") => machine::ensure_qemu().and_then(|()| linux::main(&args[1..])),
        Some("guest") => machine::ensure_qemu().and_then(|()| guest::main(&args[1..])),
        Some("test") => suite::test_all(),
        Some("bench") => machine::ensure_qemu().and_then(|()| bench::run(&args[1..])),
        Some("explore") => explore::main(&args[1..]),
        Some("mutants") => mutants::main(&args[1..]),
        Some("census") => machine::ensure_qemu().and_then(|()| qemu::census_main()),
        Some("scenario") if args.len() > 1 => {
            machine::ensure_qemu().and_then(|()| qemu::scenarios(&args[1..]))
        }
        Some("planted") => match &args[1..] {
            [feature, scenario] => {
                machine::ensure_qemu().and_then(|()| qemu::planted(feature, scenario))
            }
            _ => Err("usage: cargo xtask planted FEATURE SCENARIO".to_string()),
        },
        _ => Err(
            "usage: cargo xtask run [--smp N] | cargo xtask linux [--smp N] [--reboot] [--bare] | cargo xtask guest [--beside|--icount] | cargo xtask test | cargo xtask bench [--icount|--scaling|--smoke|--fwb|--profile OP] | cargo xtask census | cargo xtask scenario NAME... | cargo xtask planted FEATURE SCENARIO | cargo xtask explore [--depth N] [--planted] | cargo xtask mutants [--list] [--shard K/N] [--jobs J] [-F REGEX]..."
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
