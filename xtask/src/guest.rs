//! Debian's Linux kernel as a *guest* on isola (docs/guests.md, "A Linux
//! guest"): `cargo xtask guest`, and its step of the test command.
//!
//! The same stock arm64 kernel the Linux-host run fetches (`linux.rs`,
//! cached in `target/linux/`) is staged in host RAM by QEMU's generic
//! loader, with an initramfs of busybox and `linux/guest-init`, at the
//! addresses `isola_layout` names (`GUEST_KERNEL_STAGE`,
//! `GUEST_INITRD_STAGE`); their lengths go on the host's command line
//! (`isola.linux=<kernel>,<initramfs>`). The test host
//! (`payloads/host/src/vms/linux/`) copies them into pages it donates to
//! a 4-vCPU guest and runs it with the `isola-vmm` VMM on every CPU.
//!
//! Two runs:
//! - `guest`: one guest alone (`isola.test=guest`); its whole console is
//!   shown and judged by [`story`] (fragments in order, as the Linux-host
//!   judge does, since kernel lines carry timestamps) and nothing of
//!   [`crate::linux::FORBIDDEN`] or `FAIL`;
//! - `beside`: [`BESIDE`] guests at once beside the VM test's attack VMs
//!   (`isola.test=vms isola.linux.guests=N`), judged exactly, line by line,
//!   by the VM test's story with the guests' lines in it
//!   ([`crate::stories::vms_with_linux_story`]).
//!
//! If Debian's archive cannot be reached, both are reported SKIPPED by
//! name, never passed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use isola_layout::{GUEST_INITRD_MAX, GUEST_INITRD_STAGE, GUEST_KERNEL_MAX, GUEST_KERNEL_STAGE};

use crate::build::Images;
use crate::check::check;
use crate::cmd::root;
use crate::linux::{self, FetchError};
use crate::qemu::Boot;
use crate::watch::{Run, watch};

/// Guests the `beside` run makes next to the VM test's VMs.
pub const BESIDE: u32 = 3;
/// CPUs of every run but the instruction count.
const SMP: u32 = 8;
/// Deadline of one judged run.
const TEST_DEADLINE: Duration = Duration::from_secs(600);
/// Deadline of `cargo xtask guest`.
const RUN_DEADLINE: Duration = Duration::from_secs(3600);

/// What a guest boot needs, on disk.
struct Staged {
    image: PathBuf,
    initramfs: PathBuf,
    /// `6.1.0-57-arm64`, from the kernel package's name.
    release: String,
    package: String,
}

/// The kernel (fetched by [`linux::fetch`]) and the guest's initramfs.
fn stage() -> Result<Staged, FetchError> {
    let assets = linux::fetch()?;
    let dir = linux::cache_dir();
    let initramfs = dir.join("guest-initramfs.cpio");
    write_initramfs(
        &dir.join("busybox"),
        &root().join("linux").join("guest-init"),
        &initramfs,
    )?;
    for (what, path, max) in [
        ("kernel Image", &assets.image, GUEST_KERNEL_MAX),
        ("guest initramfs", &initramfs, GUEST_INITRD_MAX),
    ] {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if len > max {
            return Err(FetchError::Broken(format!(
                "the {what} ({len} bytes) is larger than its {max}-byte staging area"
            )));
        }
    }
    let package = assets.kernel_package.clone();
    let release = package
        .trim_end_matches(":arm64")
        .trim_start_matches("linux-image-")
        .to_string();
    Ok(Staged {
        image: assets.image,
        initramfs,
        release,
        package,
    })
}

/// The guest's initramfs: the directories init needs, `/dev/console`,
/// busybox and the init script (cpio "newc", as the Linux-host run's).
fn write_initramfs(busybox: &Path, init: &Path, out: &Path) -> Result<(), String> {
    let busybox = std::fs::read(busybox).map_err(|e| format!("reading busybox: {e}"))?;
    let init = std::fs::read(init).map_err(|e| format!("reading {}: {e}", init.display()))?;
    let members = linux::busybox_members(&busybox, &init);
    std::fs::write(out, linux::cpio(&members)?)
        .map_err(|e| format!("writing {}: {e}", out.display()))
}

fn len(p: &Path) -> Result<u64, String> {
    std::fs::metadata(p)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// The QEMU command: the booted scenarios' machine (engine, test host,
/// test guest), the kernel and initramfs staged raw by the generic loader,
/// and the host's command line naming the test and their lengths.
fn command(
    images: &Images,
    s: &Staged,
    smp: u32,
    test: &str,
    icount: bool,
) -> Result<Command, String> {
    let append = format!(
        "isola.test={test} isola.linux={},{}",
        len(&s.image)?,
        len(&s.initramfs)?
    );
    let boot = Boot {
        images,
        smp,
        append: &append,
        dtb: None,
    };
    let mut c = boot.command();
    c.arg("-device")
        .arg(format!(
            "loader,file={},addr={GUEST_KERNEL_STAGE:#x},force-raw=on",
            s.image.display()
        ))
        .arg("-device")
        .arg(format!(
            "loader,file={},addr={GUEST_INITRD_STAGE:#x},force-raw=on",
            s.initramfs.display()
        ));
    if icount {
        c.args(["-icount", "shift=0"]);
    }
    Ok(c)
}

/// `cargo xtask guest [--beside] [--icount]`: boots the guest (alone, or
/// [`BESIDE`] of them beside the VM test with `--beside`), streams the
/// console and judges it as the test does. `--icount` runs the guest alone
/// on one host CPU under `-icount shift=0` with the benchmark's EL2 image,
/// so the host's figures add the PMU's count of every instruction the
/// machine ran (the counter's ticks there are virtual nanoseconds: one per
/// instruction, plus the time QEMU skips while every CPU waits in `WFI`).
pub fn main(args: &[String]) -> Result<(), String> {
    let mut beside = false;
    let mut icount = false;
    for a in args {
        match a.as_str() {
            "--beside" => beside = true,
            "--icount" => icount = true,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if beside && icount {
        return Err("--beside and --icount do not go together".to_string());
    }
    let s = stage().map_err(|e| match e {
        FetchError::Unavailable(why) => format!("cannot fetch Debian's kernel and busybox: {why}"),
        FetchError::Broken(why) => why,
    })?;
    println!("kernel: {}", s.package);
    let images = if icount {
        bench_images()?
    } else {
        crate::build::build_images()?
    };
    let smp = if icount { 1 } else { SMP };
    let test = if beside {
        format!("vms isola.linux.guests={BESIDE}")
    } else {
        "guest".to_string()
    };
    let run = watch(
        command(&images, &s, smp, &test, icount)?,
        RUN_DEADLINE,
        true,
    )?;
    println!("guest run took {:.1} s", run.elapsed.as_secs_f64());
    let verdict = if beside {
        judge_exact(&run, &s)
    } else {
        judge(&run, &s, smp)
    };
    verdict.map_err(|e| format!("{e}\n(see the console above)"))
}

/// The images with the benchmark's EL2 image (`bench-pmu`: the host's PMU
/// counters count at EL2 and keep counting while a guest runs), in the
/// benchmark's target directory, for `--icount`.
fn bench_images() -> Result<Images, String> {
    let dir = root().join("target").join("aarch64-bench");
    let (el2, payloads) = crate::build::build_for_targets(
        &dir,
        &["bench-pmu"],
        &["isola-host-payload", "isola-guest-payload"],
    )?;
    Ok(Images {
        engine: el2.join("isola"),
        host: payloads.join("isola-host"),
        guest: payloads.join("isola-guest"),
    })
}

/// The test command's step: the guest alone, then [`BESIDE`] beside the
/// VM test; each reported by name as PASS or FAIL (with its console), or
/// both SKIPPED by name if the kernel cannot be fetched.
pub fn booted_test() -> Result<(), String> {
    let names = ["linux-guest-4vcpu", "linux-guests-beside-vms8"];
    let s = match stage() {
        Ok(s) => s,
        Err(FetchError::Unavailable(why)) => {
            return Err(format!(
                "{}{}: Debian's kernel and busybox could not be fetched: {why}",
                crate::cmd::SKIPPED,
                names.join(", ")
            ));
        }
        Err(FetchError::Broken(why)) => return Err(why),
    };
    let images = crate::build::build_images()?;
    let mut failures = Vec::new();
    for name in names {
        let beside = name == names[1];
        let test = if beside {
            format!("vms isola.linux.guests={BESIDE}")
        } else {
            "guest".to_string()
        };
        let run = watch(
            crate::machine::without_data_files(&command(&images, &s, SMP, &test, false)?),
            TEST_DEADLINE,
            false,
        )?;
        let verdict = if beside {
            judge_exact(&run, &s)
        } else {
            judge(&run, &s, SMP)
        };
        match verdict {
            Ok(()) => println!(
                "{name} ({}): PASS ({:.1} s)",
                s.package,
                run.elapsed.as_secs_f64()
            ),
            Err(e) => {
                println!("{name}: FAIL: {e}");
                failures.push(format!("{name}: {e}\n{}", run.log()));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n\n"))
    }
}

/// The guest's console line inside a host line (`host: linux0: <line>`),
/// without the kernel's timestamp; other lines as they are.
fn guest_part(line: &str) -> &str {
    match line.strip_prefix("host: linux0: ") {
        Some(rest) => linux::untimed(rest),
        None => line,
    }
}

/// What the guest-alone run must show, in this order: each entry's
/// fragments in one line (after [`guest_part`]), the first at its start.
fn story(s: &Staged, smp: u32) -> Vec<Vec<String>> {
    let one = |s: &str| vec![s.to_string()];
    let user = |s: String| vec![format!("isola-guest: {s}")];
    vec![
        one("isola: entering the host at 0x48000000 on cpu 0 at EL1"),
        vec![format!(
            "host: up at EL1 on cpu 0: device tree at 0x44000000, {smp} CPUs,"
        )],
        vec![
            "host: linux0: Debian's kernel, its initramfs and device tree in 128 MiB of guest RAM, all 32768 pages donated (the VM owns ".to_string(),
            "); 4 vCPUs, 1 on".to_string(),
        ],
        one("host: linux0: host reads of its RAM (first, middle, last page): refused (SEA)"),
        one("Booting Linux on physical CPU 0x0000000000"),
        one("psci: PSCIv1.0 detected in firmware."),
        one("smp: Brought up 1 node, 4 CPUs"),
        one("Run /init as init process"),
        user(format!("init running on Linux {}", s.release)),
        user("nproc 4".to_string()),
        one("arch_timer interrupts per CPU: before "),
        user("timer interrupts moving on every CPU: 4 of 4".to_string()),
        user("powering off".to_string()),
        one("reboot: Power down"),
        one("host: linux0: powered off (PSCI SYSTEM_OFF)"),
        one("host: linux0: figures: VmCreate to the first userspace line: "),
        one("host: linux0: figures: VmCreate to power-off: "),
        one("host: linux0: figures: "),
        one(
            "host: linux0: destroyed; all 32768 RAM pages reclaimed and its 160 pool pages back, all zeroed",
        ),
        one("host: linux: accounting exact after teardown"),
        one("host: linux: host heap empty again after teardown"),
        one("host: verdict: PASS"),
        one("isola: power off (host called PSCI SYSTEM_OFF); exit status: ok"),
    ]
}

/// Judges the guest-alone run: [`story`] in order, nothing forbidden, a
/// clean end before the deadline.
fn judge(run: &Run, s: &Staged, smp: u32) -> Result<(), String> {
    if run.timed_out {
        return Err(format!(
            "killed at the {} s deadline",
            run.elapsed.as_secs_f64().round()
        ));
    }
    for line in &run.lines {
        let bad = linux::FORBIDDEN
            .iter()
            .copied()
            .chain(["FAIL"])
            .find(|f| line.contains(f));
        if let Some(bad) = bad {
            return Err(format!("console line contains {bad:?}: {line}"));
        }
    }
    // A host line is matched as it is, a guest line without the host's
    // prefix and the kernel's timestamp.
    let mut lines = run.lines.iter();
    for want in story(s, smp) {
        if !lines.any(|l| linux::tells(l, &want) || linux::tells(guest_part(l), &want)) {
            return Err(format!(
                "missing (or out of order) console line: {}",
                want.join("...")
            ));
        }
    }
    if run.code != Some(0) {
        return Err(format!("QEMU exited with {:?}", run.code));
    }
    Ok(())
}

/// Judges the run beside the VM test exactly, as the booted scenarios are.
fn judge_exact(run: &Run, s: &Staged) -> Result<(), String> {
    if run.timed_out {
        return Err(format!(
            "killed at the {} s deadline",
            run.elapsed.as_secs_f64().round()
        ));
    }
    if run.code != Some(0) {
        return Err(format!("QEMU exited with {:?}", run.code));
    }
    check(
        &run.lines,
        &crate::stories::vms_with_linux_story(SMP, BESIDE, &s.release),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn staged() -> Staged {
        Staged {
            image: PathBuf::new(),
            initramfs: PathBuf::new(),
            release: "6.1.0-57-arm64".to_string(),
            package: String::new(),
        }
    }

    fn run_of(lines: Vec<String>) -> Run {
        Run {
            lines,
            stderr: String::new(),
            code: Some(0),
            timed_out: false,
            elapsed: Duration::from_secs(1),
        }
    }

    /// A console that tells the whole story, each guest line behind the
    /// host's prefix and a kernel timestamp.
    fn good() -> Vec<String> {
        story(&staged(), 8)
            .iter()
            .map(|f| {
                let l = f.join("7");
                if l.starts_with("host: ") || l.starts_with("isola: ") {
                    l
                } else {
                    format!("host: linux0: [    1.000000] {l}")
                }
            })
            .collect()
    }

    #[test]
    fn the_judge_wants_the_whole_story() {
        let s = staged();
        assert_eq!(judge(&run_of(good()), &s, 8), Ok(()));
        let mut missing = good();
        missing.retain(|l| !l.contains("timer interrupts moving"));
        assert!(
            judge(&run_of(missing), &s, 8)
                .unwrap_err()
                .contains("timer")
        );
        let mut three = good();
        for l in three.iter_mut() {
            *l = l.replace("4 of 4", "3 of 4");
        }
        assert!(judge(&run_of(three), &s, 8).is_err());
        let mut failed = good();
        failed.insert(5, "host: linux0: FAIL no console output".to_string());
        assert!(judge(&run_of(failed), &s, 8).is_err());
        let mut oops = good();
        oops.insert(6, "host: linux0: [ 2.0] Internal error: Oops".to_string());
        assert!(judge(&run_of(oops), &s, 8).is_err());
        let mut swapped = good();
        let a = swapped.iter().position(|l| l.contains("nproc 4")).unwrap();
        let b = swapped
            .iter()
            .position(|l| l.contains("init running"))
            .unwrap();
        swapped.swap(a, b);
        assert!(judge(&run_of(swapped), &s, 8).is_err());
    }

    #[test]
    fn guest_lines_lose_the_host_prefix_and_the_timestamp() {
        assert_eq!(
            guest_part("host: linux0: [    0.000000] Booting Linux"),
            "Booting Linux"
        );
        assert_eq!(guest_part("host: linux0: isola-guest: x"), "isola-guest: x");
        assert_eq!(guest_part("host: verdict: PASS"), "host: verdict: PASS");
    }
}
