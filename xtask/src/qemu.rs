//! The booted scenarios: booting isola on QEMU virt with the test host and
//! guest, and judging each run by its serial console.
//!
//! A booted scenario passes only if
//! - its console tells exactly its story (`stories.rs`), as `check.rs`
//!   compares them;
//! - the engine's final line states `exit status: ok` (the engine powers off
//!   through PSCI `SYSTEM_OFF`, so QEMU's own exit status is 0 whether the
//!   run passed or failed; the engine's last line carries the verdict, see
//!   docs/boot.md), QEMU exits 0, and it does so before the deadline (it is
//!   killed otherwise).
//!
//! On failure the whole captured log is part of the error.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::build::{Images, build_for_targets, build_images};
use crate::check::{Expect, check};
use crate::cmd::root;
use crate::watch::{Run, watch};
use crate::{dtb, stories};

/// Deadline of one booted scenario.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(90);
/// Deadline of `cargo xtask run` (many CPUs take long under TCG).
const RUN_DEADLINE: Duration = Duration::from_secs(1800);

/// QEMU's `edu` PCI device (built into QEMU, no data file): a DMA engine
/// the host drives in the DMA test. Its default `dma_mask` clamps addresses
/// to 256 MiB, below all RAM; the full mask lets it aim anywhere.
pub const EDU: &str = "edu,dma_mask=0xffffffffffffffff";

/// A QEMU invocation.
pub struct Boot<'a> {
    /// The images.
    pub images: &'a Images,
    /// `-smp`.
    pub smp: u32,
    /// `-append`: the host payload reads `isola.test=` from it.
    pub append: &'a str,
    /// `-dtb`, to boot on a device tree other than QEMU's own.
    pub dtb: Option<PathBuf>,
}

impl Boot<'_> {
    /// The command line: QEMU virt as [`crate::machine::virt`] makes it,
    /// with [`EDU`] on its PCIe bus (the DMA test's device), the engine as
    /// `-kernel` (QEMU puts its device tree at the start of RAM), the host
    /// payload and the guest image by the generic loader.
    pub fn command(&self) -> Command {
        let mut c = crate::machine::virt("", self.smp, "2G");
        c.args(["-device", EDU]);
        c.arg("-kernel")
            .arg(&self.images.engine)
            .arg("-device")
            .arg(format!("loader,file={}", self.images.host.display()))
            .arg("-device")
            .arg(format!("loader,file={}", self.images.guest.display()))
            .args(["-append", self.append]);
        if let Some(dtb) = &self.dtb {
            c.arg("-dtb").arg(dtb);
        }
        c
    }
}

/// Runs QEMU to completion or to `deadline`, collecting the console; with
/// `echo`, each line is also printed as it arrives.
pub fn run_qemu(boot: &Boot<'_>, deadline: Duration, echo: bool) -> Result<Run, String> {
    watch(boot.command(), deadline, echo)
}

/// A check of a console that told its story right.
type AfterCheck = fn(&[String]) -> Result<(), String>;

/// Makes a device tree file for a scenario.
type MakeDtb = fn(&Images) -> Result<PathBuf, String>;

/// A booted scenario.
struct Scenario {
    name: &'static str,
    smp: u32,
    test: &'static str,
    expected: fn(u32) -> Vec<Expect>,
    /// A device tree to boot on instead of QEMU's own.
    dtb: Option<MakeDtb>,
    /// A check of the console beyond its story (the census's table).
    after: Option<AfterCheck>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "smp8: every CPU reports at EL2, every host CPU makes a hypercall",
        smp: 8,
        test: "smp",
        expected: stories::smp_story,
        dtb: None,
        after: None,
    },
    Scenario {
        name: "probe: the host's read of engine memory is blocked (SEA)",
        smp: 2,
        test: "probe",
        expected: stories::probe_story,
        dtb: None,
        after: None,
    },
    Scenario {
        name: "badcall: bad hypercalls get their error status",
        smp: 1,
        test: "badcall",
        expected: stories::badcall_story,
        dtb: None,
        after: None,
    },
    Scenario {
        name: "dma: the host's devices cannot reach engine, guest or just-donated pages, nor set LPI tables",
        smp: 1,
        test: "dma",
        expected: stories::dma_story,
        dtb: None,
        after: None,
    },
    Scenario {
        name: "vms8: 16 VMs of 5 vCPUs (one at EL0) on 8 CPUs ticking on their virtual timers, host and guest attacks, virtual interrupts, teardown, exact accounting",
        smp: 8,
        test: "vms",
        expected: stories::vms_story,
        dtb: None,
        after: None,
    },
    Scenario {
        name: "vms1: the same on 1 CPU, where only the host's own tick can end a guest that never exits",
        smp: 1,
        test: "vms",
        expected: stories::vms_story,
        dtb: None,
        after: None,
    },
    Scenario {
        name: "psci: two CPU_ONs of one CPU at once, CPU_ON against a power-down CPU_SUSPEND, a suspend alone: each with its defined result, nothing left pending",
        smp: 4,
        test: "psci",
        expected: stories::psci_story,
        dtb: None,
        after: None,
    },
    Scenario {
        name: "census: every system register a lower EL can name, planted by VM A at EL1 and EL0, reaches neither VM B nor the host",
        smp: 1,
        test: "census",
        expected: stories::census_story,
        dtb: None,
        after: Some(crate::census::check_current),
    },
    Scenario {
        name: "no-gicv3: a device tree the engine cannot use is reported, and the run fails cleanly",
        smp: 1,
        test: "smp",
        expected: stories::unusable_tree_story,
        dtb: Some(dtb::unknown_gic),
        after: None,
    },
];

/// Runs one scenario and judges it.
fn judge(images: &Images, s: &Scenario) -> Result<Duration, String> {
    let append = format!("isola.test={}", s.test);
    let dtb = s.dtb.map(|make| make(images)).transpose()?;
    let boot = Boot {
        images,
        smp: s.smp,
        append: &append,
        dtb,
    };
    // Guarded: a scenario that needs any QEMU data file fails here.
    let run = watch(
        crate::machine::without_data_files(&boot.command()),
        SCENARIO_DEADLINE,
        false,
    )?;
    let verdict = if run.timed_out {
        Err(format!(
            "no power-off within {} s",
            SCENARIO_DEADLINE.as_secs()
        ))
    } else if run.code != Some(0) {
        Err(format!("QEMU exited with {:?}", run.code))
    } else {
        check(&run.lines, &(s.expected)(s.smp))
            .and_then(|()| s.after.map_or(Ok(()), |after| after(&run.lines)))
    };
    verdict
        .map(|()| run.elapsed)
        .map_err(|e| format!("{e}\n{}", run.log()))
}

/// `cargo xtask census`: boots the `census` scenario, checks its story, and
/// writes its table into docs/guests.md.
pub fn census_main() -> Result<(), String> {
    crate::machine::guard_available()?;
    let images = build_images()?;
    let s = SCENARIOS
        .iter()
        .find(|s| s.test == "census")
        .ok_or("no census scenario")?;
    let boot = Boot {
        images: &images,
        smp: s.smp,
        append: "isola.test=census",
        dtb: None,
    };
    let run = watch(
        crate::machine::without_data_files(&boot.command()),
        SCENARIO_DEADLINE,
        false,
    )?;
    check(&run.lines, &(s.expected)(s.smp)).map_err(|e| format!("{e}\n{}", run.log()))?;
    crate::census::write(&run.lines)
}

/// Every booted scenario: prints each one's name and PASS/FAIL (with the
/// captured log on failure).
pub fn booted_tests() -> Result<(), String> {
    crate::machine::guard_available()?;
    let images = build_images()?;
    guard_has_teeth(&images)?;
    println!("PASS  guard: without -nodefaults QEMU cannot start under the data-file guard");
    dma_test_has_teeth(&images)?;
    println!(
        "PASS  dma teeth: with the planted bug (Donate leaves the DMA view) the just-donated page is reached"
    );
    census_has_teeth(&images)?;
    println!(
        "PASS  census teeth: with the planted bugs (CONTEXTIDR_EL1 left out of the switch; the lazy FP/SIMD trap never set) VM B and the host see VM A's CONTEXTIDR_EL1, VM B its FPCR"
    );
    register_test_has_teeth(&images)?;
    println!(
        "PASS  register teeth: with the planted bugs (the hvc handler may clobber x9..x15; it counts its calls on the next CPU's record) badcall sees host registers changed and its calls miscounted"
    );
    storm_has_teeth(&images)?;
    println!(
        "PASS  storm teeth: with the planted bug (Accounting takes every shard lock) the lock-free bound fails"
    );
    let mut failed = 0_usize;
    match storm(&images) {
        Ok((t, stats)) => {
            println!(
                "PASS  storm: 7 CPUs, 2000 valid random calls each under -icount, none above its bound ({:.1} s)",
                t.as_secs_f64()
            );
            for l in stats {
                println!("      {l}");
            }
        }
        Err(e) => {
            failed += 1;
            println!("FAIL  storm\n{e}");
        }
    }
    for s in SCENARIOS {
        match judge(&images, s) {
            Ok(t) => println!("PASS  {} ({:.1} s)", s.name, t.as_secs_f64()),
            Err(e) => {
                failed += 1;
                println!("FAIL  {}\n{e}", s.name);
            }
        }
    }
    println!(
        "booted scenarios: {} passed, {failed} failed",
        SCENARIOS.len() + 1 - failed
    );
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} booted scenario(s) failed"))
    }
}

/// `cargo xtask scenario NAME...`: boots only the named booted scenarios
/// (as `cargo xtask test` judges them, without the teeth checks around
/// them), for a quick look during development; fails if any fails.
pub fn scenarios(names: &[String]) -> Result<(), String> {
    crate::machine::guard_available()?;
    let images = build_images()?;
    let mut failed = 0_usize;
    for name in names {
        let s = SCENARIOS
            .iter()
            .find(|s| s.name.split(':').next() == Some(name.as_str()))
            .ok_or_else(|| format!("no booted scenario named {name:?}"))?;
        match judge(&images, s) {
            Ok(t) => println!("PASS  {} ({:.1} s)", s.name, t.as_secs_f64()),
            Err(e) => {
                failed += 1;
                println!("FAIL  {}\n{e}", s.name);
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} booted scenario(s) failed"))
    }
}

/// `cargo xtask planted FEATURE SCENARIO`: boots the scenario whose name
/// starts with `SCENARIO` on an engine built with the planted-bug feature
/// `FEATURE` of `isola-boot`, and succeeds only if the scenario *fails*:
/// the check has teeth. Prints the failure it found.
pub fn planted(feature: &str, scenario: &str) -> Result<(), String> {
    crate::machine::guard_available()?;
    if !feature.starts_with("planted-bug-") {
        return Err(format!("{feature:?} is not a planted-bug feature"));
    }
    let s = SCENARIOS
        .iter()
        .find(|s| s.name.split(':').next() == Some(scenario))
        .ok_or_else(|| format!("no booted scenario named {scenario:?}"))?;
    let images = crate::build::build_images_with(&[feature])?;
    match judge(&images, s) {
        Ok(t) => Err(format!(
            "{} passes on an engine built with {feature} ({:.1} s): the check has no teeth",
            s.name,
            t.as_secs_f64()
        )),
        Err(e) => {
            let first = e.lines().next().unwrap_or("");
            println!("the check has teeth: {scenario} fails with {feature}: {first}");
            Ok(())
        }
    }
}

/// The data-file guard can fail: the `smp` scenario's command line with
/// `-nodefaults` taken out (so QEMU virt adds its default network card,
/// whose boot ROM `efi-virtio.rom` comes from `ipxe-qemu`) must not start
/// under [`crate::machine::without_data_files`], and must say why.
fn guard_has_teeth(images: &Images) -> Result<(), String> {
    let boot = Boot {
        images,
        smp: 1,
        append: "isola.test=smp",
        dtb: None,
    };
    let with_defaults = boot.command();
    let mut c = Command::new(with_defaults.get_program());
    c.args(with_defaults.get_args().filter(|a| *a != "-nodefaults"));
    let run = watch(
        crate::machine::without_data_files(&c),
        SCENARIO_DEADLINE,
        false,
    )?;
    if run.code != Some(0) && run.stderr.contains("efi-virtio.rom") {
        Ok(())
    } else {
        Err(format!(
            "the data-file guard has no teeth: QEMU with its default devices \
             ran without efi-virtio.rom\n{}",
            run.log()
        ))
    }
}

/// `images` with the engine rebuilt with the planted-bug `features`, in
/// `target/<dir>` (a feature set of its own, kept built between runs).
fn with_planted_engine(images: &Images, dir: &str, features: &[&str]) -> Result<Images, String> {
    let (el2, _) = build_for_targets(&root().join("target").join(dir), features, &[])?;
    Ok(Images {
        engine: el2.join("isola"),
        host: images.host.clone(),
        guest: images.guest.clone(),
    })
}

/// Boots `images` on one CPU with the host test `append` under the
/// data-file guard, to its end or the scenario deadline.
fn boot_one_cpu(images: &Images, append: &str) -> Result<Run, String> {
    let boot = Boot {
        images,
        smp: 1,
        append,
        dtb: None,
    };
    watch(
        crate::machine::without_data_files(&boot.command()),
        SCENARIO_DEADLINE,
        false,
    )
}

/// The planted bugs of the one image the DMA test's and the storm's teeth
/// share (one build for both: neither bug touches the other's test).
const SHARED_PLANTED: &[&str] = &[
    "planted-bug-donate-keeps-dma-view",
    "planted-bug-accounting-takes-shard-locks",
];

/// The DMA test can fail: an engine built with
/// `planted-bug-donate-keeps-dma-view` (`Donate` skips the SMMU's
/// invalidation) must let the device write the page donated a moment
/// before, which QEMU's SMMU still has cached, and the test must say so.
fn dma_test_has_teeth(images: &Images) -> Result<(), String> {
    let planted = with_planted_engine(images, "aarch64-planted", SHARED_PLANTED)?;
    let run = boot_one_cpu(&planted, "isola.test=dma")?;
    let caught = run.lines.iter().any(|l| {
        l.starts_with("host: check failed: dma: the page donated a moment before: warm true")
    }) && run
        .lines
        .iter()
        .any(|l| l == "host: verdict: 2 check(s) FAILED");
    if caught {
        Ok(())
    } else {
        Err(format!(
            "the DMA test has no teeth: with the planted bug the just-donated page was not reached\n{}",
            run.log()
        ))
    }
}

/// The register census can fail: an engine built with
/// `planted-bug-switch-drops-register` (the world switch leaves
/// `CONTEXTIDR_EL1` out) must let VM B read what VM A left there, and the
/// host find its own value changed; with `planted-bug-lazy-fp-no-trap` too
/// (the lazy FP/SIMD switch never arms its trap, so guests run on the
/// host's FP/SIMD registers) VM B must read VM A's FPCR. The census must say
/// all three.
fn census_has_teeth(images: &Images) -> Result<(), String> {
    // Two planted bugs of the world switch in one image and one run: each
    // leaks a register of its own, and the census must name both.
    let planted = with_planted_engine(
        images,
        "aarch64-planted-switch",
        &[
            "planted-bug-switch-drops-register",
            "planted-bug-lazy-fp-no-trap",
        ],
    )?;
    let run = boot_one_cpu(&planted, "isola.test=census")?;
    let said = |l: &str| run.lines.iter().any(|got| got == l);
    let caught = said("host: census: FAIL s3_0_c13_c0_1: VM B read the value VM A left")
        && said(
            "host: census: FAIL s3_0_c13_c0_1: the host's value changed across the guests' runs",
        )
        // FPCR: the guest ran on the host's FP/SIMD registers.
        && said("host: census: FAIL s3_3_c4_c4_0: VM B read the value VM A left")
        && said("host: verdict: 1 check(s) FAILED");
    if caught {
        Ok(())
    } else {
        Err(format!(
            "the register census has no teeth: with CONTEXTIDR_EL1 left out of the switch and the lazy FP/SIMD switch's trap never set it did not report both leaks\n{}",
            run.log()
        ))
    }
}

/// The register and count checks of `badcall` can fail: an engine built
/// with `planted-bug-hvc-c-abi` (the `hvc` handler with the C convention
/// behind the vector's short frame, boot/src/dispatch.rs) must change host
/// registers, and with `planted-bug-count-on-next-cpu` (the `hvc` path
/// counting into the next CPU's record) miscount the calls, and the test
/// must say both (one image: the two bugs do not hide each other, the
/// probe's `hvc`s declaring `x9..x15` clobbered).
fn register_test_has_teeth(images: &Images) -> Result<(), String> {
    let planted = with_planted_engine(
        images,
        "aarch64-planted-hvc",
        &["planted-bug-hvc-c-abi", "planted-bug-count-on-next-cpu"],
    )?;
    let run = boot_one_cpu(&planted, "isola.test=badcall")?;
    let failed = |tail: &str, head: &str| {
        run.lines.iter().any(|l| {
            l.starts_with("host: check failed: ")
                && l.ends_with(tail)
                && l.get("host: check failed: ".len()..)
                    .is_some_and(|r| r.starts_with(head))
        })
    };
    let registers = failed(" host registers changed across 5 hypercalls", "");
    let counts = failed("", "per-CPU call counters wrong: ");
    if registers && counts {
        Ok(())
    } else {
        Err(format!(
            "the register or count check has no teeth: with the planted bugs {}\n{}",
            if registers {
                "the calls were counted right"
            } else {
                "no host register changed"
            },
            run.log()
        ))
    }
}

/// The prefix of the storm's figures, which vary with the code under test.
const STORM_STATS: &str = "host: storm stats: ";

/// The storm (payloads/host/src/storm.rs): 8 CPUs under `-icount shift=0`
/// (so its durations, in counter ticks, are instructions of the whole
/// machine and do not depend on this machine's load), judged like a
/// scenario but for its figures, which are printed.
pub fn storm(images: &Images) -> Result<(Duration, Vec<String>), String> {
    let boot = Boot {
        images,
        smp: 8,
        append: "isola.test=storm",
        dtb: None,
    };
    let mut cmd = boot.command();
    cmd.args(["-icount", "shift=0"]);
    let run = watch(
        crate::machine::without_data_files(&cmd),
        SCENARIO_DEADLINE,
        false,
    )?;
    let (stats, lines): (Vec<String>, Vec<String>) = run
        .lines
        .iter()
        .cloned()
        .partition(|l| l.starts_with(STORM_STATS));
    let verdict = if run.timed_out {
        Err(format!(
            "no power-off within {} s",
            SCENARIO_DEADLINE.as_secs()
        ))
    } else if run.code != Some(0) {
        Err(format!("QEMU exited with {:?}", run.code))
    } else {
        check(&lines, &stories::storm_story(8))
    };
    verdict
        .map(|()| (run.elapsed, stats))
        .map_err(|e| format!("{e}\n{}", run.log()))
}

/// The storm's lock-free check can fail: an engine built with
/// `planted-bug-accounting-takes-shard-locks` (`Accounting` takes every
/// shard's lock, as before the counts were published) must make a
/// `Totals` or `Sharing` wait beyond its bound, and the storm must say so.
fn storm_has_teeth(images: &Images) -> Result<(), String> {
    let planted = with_planted_engine(images, "aarch64-planted", SHARED_PLANTED)?;
    match storm(&planted) {
        Ok(_) => Err(
            "the storm has no teeth: with Accounting taking every shard lock it still passed"
                .into(),
        ),
        Err(e)
            if e.lines()
                .any(|l| l.starts_with("host: check failed: storm: a lock-free Accounting")) =>
        {
            Ok(())
        }
        Err(e) => Err(format!(
            "the planted storm failed, but not on the lock-free bound:\n{e}"
        )),
    }
}

/// Builds the images, boots them with `smp` CPUs running every host test,
/// streams the console, and succeeds on the engine's clean power-off after
/// the host's PASS verdict.
pub fn run_main_job(smp: u32) -> Result<(), String> {
    let images = build_images()?;
    let boot = Boot {
        images: &images,
        smp,
        append: "isola.test=all",
        dtb: None,
    };
    let run = run_qemu(&boot, RUN_DEADLINE, true)?;
    println!(
        "xtask: {smp} CPUs booted and powered off in {:.1} s",
        run.elapsed.as_secs_f64()
    );
    let clean = run.lines.iter().any(|l| l == "host: verdict: PASS")
        && run
            .lines
            .last()
            .is_some_and(|l| l.ends_with("exit status: ok"))
        && run.code == Some(0)
        && !run.timed_out;
    if clean {
        Ok(())
    } else {
        Err(format!("the run did not end cleanly\n{}", run.log()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The booted scenarios alone (`cargo test -p xtask -- --ignored booted`),
    /// for working on them without the whole `cargo xtask test`.
    #[test]
    #[ignore = "boots QEMU; run by `cargo xtask test`"]
    fn booted() {
        booted_tests().unwrap();
    }

    /// The storm alone (`cargo test -p xtask -- --ignored storm --nocapture`).
    #[test]
    #[ignore = "boots QEMU; run by `cargo xtask test`"]
    fn storm_alone() {
        let images = build_images().unwrap();
        let (t, stats) = storm(&images).unwrap();
        for l in stats {
            println!("{l}");
        }
        println!("storm: PASS ({:.1} s)", t.as_secs_f64());
    }
}
