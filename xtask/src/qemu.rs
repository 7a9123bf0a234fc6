//! Booting isola on QEMU virt: building the EL2 image and the test host,
//! running QEMU with a deadline, and judging a run by its serial console.
//!
//! A booted scenario passes only if
//! - every console line is expected: lines are compared exactly, in order,
//!   except that lines one CPU each prints (which CPUs interleave freely) are
//!   compared as a set where the scenario says so;
//! - no expected line is missing;
//! - the engine's final line states `exit status: ok` (the engine powers off
//!   through PSCI `SYSTEM_OFF`, so QEMU's own exit status is 0 whether the
//!   run passed or failed; the engine's last line carries the verdict, see
//!   docs/boot.md), QEMU exits 0, and it does so before the deadline (it is
//!   killed otherwise).
//!
//! On failure the whole captured log is part of the error.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{cargo, root};

/// The engine's device policy, tested on the host (it is portable).
#[cfg(test)]
#[allow(dead_code, reason = "the engine's module; the tests use a subset")]
#[path = "../../boot/src/devices.rs"]
mod boot_devices;
#[cfg(test)]
#[path = "boot_devices_tests.rs"]
mod boot_devices_tests;
/// The engine's device-tree reader, tested on the host (it is portable).
#[cfg(test)]
#[allow(dead_code, reason = "the engine's module; the tests use a subset")]
#[path = "../../boot/src/fdt.rs"]
mod boot_fdt;
#[cfg(test)]
#[path = "boot_fdt_tests.rs"]
mod boot_fdt_tests;

/// Deadline of one booted scenario.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(90);
/// Deadline of `cargo xtask run` (many CPUs take long under TCG).
const RUN_DEADLINE: Duration = Duration::from_secs(1800);

/// The two ELF images a boot needs.
pub struct Images {
    /// The EL2 engine (`-kernel`).
    pub engine: PathBuf,
    /// The EL1 test host (`-device loader,file=...`).
    pub host: PathBuf,
    /// The test guest (`-device loader,file=...`: its segments' physical
    /// addresses put it in host RAM at 0x7ff0_0000, docs/guests.md).
    pub guest: PathBuf,
}

/// The target of the EL2 image (`isola-boot` and every crate it pulls in):
/// softfloat, so no engine code can use the FP/SIMD registers, which the
/// host trap vector therefore need not save (see boot/src/exception.rs).
pub const EL2_TARGET: &str = "aarch64-unknown-none-softfloat";
/// The target of the EL1 payloads (test host, guests): they use FP/SIMD.
pub const PAYLOAD_TARGET: &str = "aarch64-unknown-none";

/// Builds the engine (`isola-boot`, with `engine_features`) for
/// [`EL2_TARGET`] and `payloads` for [`PAYLOAD_TARGET`] into `dir`; returns
/// the two output directories (engine's, payloads').
pub fn build_for_targets(
    dir: &std::path::Path,
    engine_features: &[&str],
    payloads: &[&str],
) -> Result<(PathBuf, PathBuf), String> {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "--target",
        EL2_TARGET,
        "-p",
        "isola-boot",
    ])
    .env("CARGO_TARGET_DIR", dir);
    for f in engine_features {
        c.args(["--features", f]);
    }
    crate::run(c)?;
    if !payloads.is_empty() {
        let mut c = cargo();
        c.args(["build", "--release", "--target", PAYLOAD_TARGET])
            .env("CARGO_TARGET_DIR", dir);
        for p in payloads {
            c.args(["-p", p]);
        }
        crate::run(c)?;
    }
    Ok((
        dir.join(EL2_TARGET).join("release"),
        dir.join(PAYLOAD_TARGET).join("release"),
    ))
}

/// Builds the engine for [`EL2_TARGET`] and the payloads for
/// [`PAYLOAD_TARGET`], in a target directory of their own so host builds are
/// not invalidated.
pub fn build_images() -> Result<Images, String> {
    let dir = root().join("target").join("aarch64");
    let (el2, payloads) =
        build_for_targets(&dir, &[], &["isola-host-payload", "isola-guest-payload"])?;
    let images = Images {
        engine: el2.join("isola"),
        host: payloads.join("isola-host"),
        guest: payloads.join("isola-guest"),
    };
    for p in [&images.engine, &images.host, &images.guest] {
        if !p.is_file() {
            return Err(format!("build produced no {}", p.display()));
        }
    }
    Ok(images)
}

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

/// What a run printed and how it ended.
pub struct Run {
    /// Console lines, without line terminators.
    pub lines: Vec<String>,
    /// QEMU's standard error.
    pub stderr: String,
    /// QEMU's exit code (`None`: killed by a signal or at the deadline).
    pub code: Option<i32>,
    /// Whether the deadline passed and QEMU was killed.
    pub timed_out: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Run {
    /// The captured log, for error messages.
    pub fn log(&self) -> String {
        let mut s = String::from("---- console ----\n");
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        if !self.stderr.trim().is_empty() {
            s.push_str("---- qemu stderr ----\n");
            s.push_str(&self.stderr);
        }
        s.push_str(&format!(
            "---- qemu exit code {:?}{}, {:.1} s ----",
            self.code,
            if self.timed_out {
                " (killed at the deadline)"
            } else {
                ""
            },
            self.elapsed.as_secs_f64()
        ));
        s
    }
}

/// Runs QEMU to completion or to `deadline`, collecting the console; with
/// `echo`, each line is also printed as it arrives.
pub fn run_qemu(boot: &Boot<'_>, deadline: Duration, echo: bool) -> Result<Run, String> {
    watch(boot.command(), deadline, echo)
}

/// Runs a QEMU command line (any image: isola's, or Linux on bare QEMU) to
/// its end or to `deadline`, collecting the console and QEMU's stderr; with
/// `echo`, each console line is also printed as it arrives.
pub fn watch(mut cmd: Command, deadline: Duration, echo: bool) -> Result<Run, String> {
    let started = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = cmd
        .spawn()
        .map_err(|e| format!("could not start qemu-system-aarch64: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stderr_pipe = child.stderr.take().ok_or("no stderr pipe")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(bytes) = line else { break };
            let text = String::from_utf8_lossy(&bytes)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if echo {
                    println!("{line}");
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                // Our own child, by its handle.
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for qemu: {e}"))?;
    let _ = reader.join();
    // Lines that arrived between the deadline and the kill.
    lines.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Run {
        lines,
        stderr,
        code: status.code(),
        timed_out,
        elapsed: started.elapsed(),
    })
}

/// One step of an expected console: a line, or lines in any order.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Exactly this line, here.
    Line(String),
    /// Each of these lines exactly once, in any order, before what follows.
    AnyOrder(Vec<String>),
}

fn line(s: impl Into<String>) -> Expect {
    Expect::Line(s.into())
}

/// Compares a console with its expectation (see the module docs).
pub fn check(lines: &[String], expected: &[Expect]) -> Result<(), String> {
    // The step being matched, and what of it is still wanted.
    let mut step = 0_usize;
    let mut wanted: Vec<&String> = Vec::new();
    let load = |step: usize| -> Vec<&String> {
        match expected.get(step) {
            Some(Expect::Line(l)) => vec![l],
            Some(Expect::AnyOrder(ls)) => ls.iter().collect(),
            None => Vec::new(),
        }
    };
    for (n, got) in lines.iter().enumerate() {
        while wanted.is_empty() && step < expected.len() {
            wanted = load(step);
            step += 1;
        }
        match wanted.iter().position(|w| *w == got) {
            Some(i) => {
                wanted.swap_remove(i);
            }
            None => {
                let want = match wanted.as_slice() {
                    [] => "expected nothing more".to_string(),
                    [one] => format!("expected {one:?}"),
                    many => format!("expected one of {many:?}"),
                };
                return Err(format!(
                    "unexpected console line {}: {got:?} ({want})",
                    n + 1
                ));
            }
        }
    }
    let mut missing: Vec<String> = wanted.into_iter().cloned().collect();
    for s in step..expected.len() {
        missing.extend(load(s).into_iter().cloned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing expected console lines: {missing:#?}"))
    }
}

/// QEMU virt's MPIDR for CPU `i` with GICv3: 16 CPUs per cluster (Aff1).
fn mpidr(i: u32) -> u32 {
    (i / 16) << 8 | (i % 16)
}

/// The engine's lines from power-on until it enters the host with `smp`
/// CPUs (the memory figures are those of `-m 2G`), on the machine every
/// booted scenario uses (bus 0: the PCIe host bridge and `edu`).
fn engine_boot(smp: u32) -> Vec<Expect> {
    engine_boot_with(smp, "0x0 0x8")
}

/// The device policy's verdicts for QEMU virt as [`crate::machine::virt`]
/// makes it (docs/devices.md), in tree order.
fn device_verdicts(smp: u32) -> Vec<Expect> {
    let gicr = if smp > 123 {
        "0x80a0000..0x9000000, 0x4000000000..0x4004000000"
    } else {
        "0x80a0000..0x9000000"
    };
    [
        "platform-bus@c000000 at 0xc000000..0xe000000: withheld (platform bus: devices of unknown kinds)".to_string(),
        "fw-cfg@9020000 at 0x9020000..0x9020018: withheld (fw_cfg: its DMA interface writes memory past any IOMMU)".to_string(),
        "virtio_mmio@a000000 and 31 more at 0xa000000..0xa004000: withheld (virtio-mmio: DMA past any IOMMU)".to_string(),
        "pl061@9030000 at 0x9030000..0x9031000: host (PL061 GPIO: registers only, no bus master)".to_string(),
        "smmuv3@9050000 at 0x9050000..0x9070000: engine (SMMUv3: translates the host's DMA through the host's Stage-2)".to_string(),
        "pcie@10000000 at 0x3f000000..0x40000000, 0x3eff0000..0x3f000000, 0x10000000..0x3eff0000: host (PCIe: every function's DMA goes through the engine's SMMU)".to_string(),
        "pl031@9010000 at 0x9010000..0x9011000: host (PL031 RTC: registers only, no bus master)".to_string(),
        "pl011@9000000 at 0x9000000..0x9001000: host (PL011 UART: registers only, no bus master)".to_string(),
        "its@8080000 at 0x8080000..0x80a0000: withheld (GICv3 ITS: its command queue and tables are DMA)".to_string(),
        format!("intc@8000000 at 0x8000000..0x8010000, {gicr}: host (GICv3: redistributors' RD_base frames read-only, so no LPI table base can be set)"),
        "flash@0 at 0x0..0x4000000, 0x4000000..0x8000000: withheld (CFI flash: not needed by the host)".to_string(),
    ]
    .into_iter()
    .map(|l| line(format!("isola: device {l}")))
    .collect()
}

/// [`engine_boot`] with the StreamIDs of bus 0's functions as the SMMU line
/// lists them.
fn engine_boot_with(smp: u32, streams: &str) -> Vec<Expect> {
    let mut e = vec![
        line("isola: EL2 engine starting on the boot CPU (mpidr 0x0, x0 0x0)"),
        line(format!(
            "isola: device tree at 0x40000000 (1048576 bytes): {smp} CPUs, 2048 MiB RAM, PSCI via smc, GICv3, PL011 at 0x9000000"
        )),
        line("isola: EL2 stage-1 map on: text RX, rodata R, data RW, stack guards unmapped"),
        line(
            "isola: EL2 map self-test: stack guard unmapped, text and rodata read-only, data not executable",
        ),
    ];
    e.extend(device_verdicts(smp));
    e.push(line(format!(
        "isola: GIC: {smp} redistributors woken, {smp} with LPI support (GICR_TYPER.PLPIS); RD_base frames read-only to the host, so GICR_CTLR.EnableLPIs stays 0 and no LPI table is ever used; ITS withheld"
    )));
    e.push(line(format!(
        "isola: SMMU at 0x9050000: the host's DMA goes through its Stage-2 (VMID 0, S2FWB off); StreamIDs {streams} translate, every other one aborts"
    )));
    e.extend(core_ready(smp));
    e.push(line(
        "isola: caches: HCR_EL2.FWB off, CTR_EL0.DIC 1 IDC 1: every page that changes hands is cleaned to PoC",
    ));
    e.push(line("isola: cpu 0 up at EL2 (mpidr 0x0)"));
    e.push(Expect::AnyOrder(
        (1..smp)
            .map(|i| format!("isola: cpu {i} up at EL2 (mpidr {:#x})", mpidr(i)))
            .collect(),
    ));
    e.push(line(format!(
        "isola: all {smp} CPUs met at the bring-up barrier"
    )));
    e.push(line(
        "isola: host device tree at 0x44000000 shows RAM from 0x44000000; engine carve-out 0x40000000..0x44000000 hidden; 37 device nodes removed",
    ));
    e.push(line(
        "isola: entering the host at 0x48000000 on cpu 0 at EL1",
    ));
    e
}

/// The core's line once it is built: all of `-m 2G` in 2 MiB shards, and
/// the host Stage-2 pool sized for 4 KiB mappings of RAM and the host's
/// devices.
fn core_ready(smp: u32) -> Vec<Expect> {
    // More than 123 CPUs put a second redistributor region at 256 GiB, whose
    // 4 KiB mappings need tables of their own.
    let pool = if smp > 123 { 1466 } else { 1433 };
    vec![line(format!(
        "isola: core ready: 524288 pages of RAM in 1024 shards, host Stage-2 pool of {pool} pages"
    ))]
}

/// The host's first lines on CPU 0.
fn host_start(smp: u32, test: &str) -> Vec<Expect> {
    vec![
        line(format!(
            "host: up at EL1 on cpu 0: device tree at 0x44000000, {smp} CPUs, RAM 0x44000000..0xc0000000, test {test}"
        )),
        line("host: PSCI version 1.1 through the engine's relay"),
        line("host: cpu 0 at EL1: Version -> Success (ABI 1.0)"),
    ]
}

/// The clean end of a run.
fn clean_end() -> Vec<Expect> {
    vec![
        line("host: verdict: PASS"),
        line("isola: power off (host called PSCI SYSTEM_OFF); exit status: ok"),
    ]
}

/// The host starts every other CPU through the relay; each calls `Version`.
fn host_smp(smp: u32) -> Vec<Expect> {
    let mut e: Vec<Expect> = (1..smp)
        .map(|i| {
            line(format!(
                "host: cpu {i} at EL1: Version -> Success (ABI 1.0)"
            ))
        })
        .collect();
    e.push(line(format!(
        "host: all {smp} CPUs made the Version hypercall"
    )));
    e.push(line(
        "host: PSCI CPU_ON of the running cpu 0 -> -4 (ALREADY_ON is -4)",
    ));
    e
}

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
}

fn smp_story(smp: u32) -> Vec<Expect> {
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "smp"));
    e.extend(host_smp(smp));
    e.extend(clean_end());
    e
}

fn probe_story(smp: u32) -> Vec<Expect> {
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "probe"));
    e.push(line(
        "host: probe of engine memory at 0x40200000 blocked (SEA)",
    ));
    e.extend(clean_end());
    e
}

fn badcall_story(smp: u32) -> Vec<Expect> {
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "badcall"));
    e.extend([
        line("host: VmCreate with 16 pool pages at 0x50000000 -> Success"),
        line("host: bad hypercall (unknown function id 0xc60000ff) -> NotSupported"),
        line("host: bad hypercall (guest call id from the host) -> NotSupported"),
        line("host: bad hypercall (Donate of an engine page) -> NotOwner"),
        line("host: bad hypercall (Donate of 0xfffffffff000) -> InvalidArgument"),
        line("host: bad hypercall (Donate to a VM that does not exist) -> NotFound"),
        line("host: bad hypercall (VmCreate with an engine page as pool) -> NotOwner"),
        line("host: VmDestroy -> Success"),
    ]);
    e.extend(clean_end());
    e
}

/// Ordinary VMs the host's VM test makes with `smp` CPUs: two per CPU, at
/// least 4, at most what the engine's VM table (`VM_SLOTS` in
/// boot/src/engine.rs) holds beside the attacker and the two power VMs.
fn vms_count(smp: u32) -> u32 {
    const ENGINE_VM_SLOTS: u32 = 255;
    (2 * smp).clamp(4, ENGINE_VM_SLOTS - 3)
}

/// The VM test (payloads/host/src/vms.rs, docs/guests.md): VMs on every CPU,
/// the host's and the guests' attacks, teardown and accounting.
fn vms_story(smp: u32) -> Vec<Expect> {
    let n = vms_count(smp);
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "vms"));
    e.push(line("host: vms: guest image found at 0x7ff00000"));
    e.push(line(format!(
        "host: vms: created {n} VMs of 4 vCPUs, an attacker VM of 7 vCPUs and two power VMs"
    )));
    let refused = |name: &str, status: &str| format!("host: attack {name}: refused ({status})");
    for (name, status) in [
        ("host-read-guest-page", "SEA"),
        ("host-write-guest-page", "SEA"),
        ("host-exec-guest-page", "SEA"),
        ("donate-guest-page-to-second-vm", "NotOwner"),
        ("share-guest-page-with-second-vm", "NotOwner"),
        ("donate-already-donated-page", "NotOwner"),
        ("donate-engine-page", "NotOwner"),
        ("donate-mmio-address", "InvalidArgument"),
        ("donate-wild-address", "InvalidArgument"),
        ("donate-unaligned-address", "InvalidArgument"),
        ("donate-without-permissions", "InvalidArgument"),
        ("donate-onto-mapped-ipa", "AlreadyMapped"),
        ("reclaim-page-of-live-vm", "Denied"),
        ("unshare-donated-page", "NotOwner"),
        ("create-vcpu-beyond-count", "NotFound"),
        ("create-vcpu-twice", "Denied"),
        ("run-vcpu-of-unknown-vm", "NotFound"),
        ("guest-call-from-host", "NotSupported"),
    ] {
        e.push(line(refused(name, status)));
    }
    // While the vCPUs run on every CPU: their console lines, the attacker's
    // hypercall attacks and VM 0's unshare, in any order.
    let mut running: Vec<String> = (0..n)
        .map(|k| format!("host: vm{k}.1: guest vcpu 1: hello through emulated MMIO, counter at 0x0000000000000001"))
        .collect();
    for (name, status) in [
        ("guest-undefined-call-id", "NotSupported"),
        ("guest-makes-host-call", "NotSupported"),
        ("guest-share-unmapped", "NotMapped"),
        ("guest-share-unaligned", "InvalidArgument"),
        ("guest-share-wild-ipa", "InvalidArgument"),
        ("guest-share-borrowed-page", "NotOwner"),
        ("guest-unshare-not-shared", "NotOwner"),
        ("guest-relinquish-unmapped", "NotMapped"),
        ("guest-relinquish-borrowed-page", "NotOwner"),
        ("guest-smc-undefined-id", "NotSupported"),
        ("guest-call-storm", "64 random calls, every status defined"),
        ("host-read-after-guest-unshare", "SEA"),
    ] {
        running.push(refused(name, status));
    }
    e.push(Expect::AnyOrder(running));
    e.push(line(refused("run-vcpu-running-on-another-cpu", "Busy")));
    e.push(line(refused("destroy-vm-while-its-vcpu-runs", "Busy")));
    for k in 0..n.min(4) {
        e.push(line(format!(
            "host: vms: vm{k}.0 checksum: right before, during and after the storm"
        )));
        for (i, role) in ["mmio", "share", "demand"].iter().enumerate() {
            e.push(line(format!("host: vms: vm{k}.{} {role}: done", i + 1)));
        }
    }
    e.extend([
        line("host: attack guest-read-other-vm-pa: contained (read 0x0 from its own fresh page there)"),
        line("host: attack guest-write-engine-pa: contained (landed in its own fresh page at IPA 0x43800000)"),
        line("host: attack guest-access-beyond-ipa-space: contained (the engine stopped the vCPU (Exit::Error))"),
        line("host: attack guest-read-gic-distributor: contained (host did not back IPA 0x8000000)"),
        line("host: vms: world switch: the guest saw none of the host's EL1 registers and kept x4-x30, v0-v31, FPCR and its EL1 registers across a call handled at EL2 and one handled by the host"),
        line("host: vms: power VM: PSCI SYSTEM_OFF exit"),
        line("host: vms: reset VM: PSCI SYSTEM_RESET exit"),
        line(refused("run-vcpu-of-powered-off-vm", "Denied")),
        line("host: vms: destroyed every VM, reclaimed every guest page, all zeroed"),
        line(refused("run-vcpu-of-destroyed-vm", "NotFound")),
        line(refused("donate-to-destroyed-vm", "NotFound")),
        line("host: vms: accounting exact after teardown"),
        line("host: vms: PASS"),
    ]);
    e.extend(clean_end());
    e
}

/// The DMA test (payloads/host/src/dma.rs, docs/security.md): the host
/// drives `edu` and fw_cfg against engine, guest and donated pages and the
/// GIC's LPI table bases; the SMMU's reports interleave (the engine drains
/// them when the host asks `Accounting(Dma)` and on its cold paths).
fn dma_story(smp: u32) -> Vec<Expect> {
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "dma"));
    let blocked = |n: u32, rw: &str, page: u64| {
        line(format!(
            "isola: SMMU: blocked {n} DMA access(es) from StreamID 0x8 (F_TRANSLATION, {rw} of page {page:#x})"
        ))
    };
    let attack = |name: &str, outcome: &str| line(format!("host: attack {name}: {outcome}"));
    e.extend([
        line("host: dma: edu at 00:01.0 (StreamID 0x8), BAR0 at 0x10000000, bus master on"),
        line("host: dma: control: the device copied a host page into another, byte for byte"),
        attack(
            "fw-cfg-dma-into-engine",
            "refused (SEA at 0x9020010: fw_cfg is not mapped for the host)",
        ),
        blocked(1024, "read", 0x6000_2000),
        attack(
            "dma-read-guest-private-page",
            "refused (the device read zeros, no byte of the guest's page; the SMMU recorded the faults at that page)",
        ),
    ]);
    for p in 0..16u64 {
        e.push(blocked(1024, "write", 0x6001_0000 + p * 0x1000));
    }
    e.extend([
        attack(
            "dma-write-engine-pages",
            "refused (all 16 pool pages; VM A's Stage-2, vCPU context and pool free list intact: vCPU 1 not placed in the bait page, which reads zero byte for byte)",
        ),
        blocked(1024, "write", 0x6002_2000),
        attack(
            "dma-write-other-vm-page",
            "refused (VM B's page unchanged, byte for byte)",
        ),
        blocked(1024, "write", 0x6004_3000),
        attack(
            "dma-into-page-donated-a-moment-before",
            "refused (the IOMMU dropped its cached translation before Donate returned; the page unchanged, byte for byte)",
        ),
        line("host: dma: control: the device wrote a page before it went to a guest and after it came back (Reclaim), byte for byte"),
        attack(
            "gic-lpi-tables-into-engine",
            "refused (writes ignored: GICR_PROPBASER 0x0, GICR_PENDBASER 0x0, GICR_CTLR.EnableLPIs 0)",
        ),
        line("host: dma: Accounting(Dma): the engine counted the refused accesses, the last from StreamID 0x8 to page 0x60043000"),
    ]);
    e.extend(clean_end());
    e
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "smp8: every CPU reports at EL2, every host CPU makes a hypercall",
        smp: 8,
        test: "smp",
        expected: smp_story,
        dtb: None,
    },
    Scenario {
        name: "probe: the host's read of engine memory is blocked (SEA)",
        smp: 2,
        test: "probe",
        expected: probe_story,
        dtb: None,
    },
    Scenario {
        name: "badcall: bad hypercalls get their error status",
        smp: 1,
        test: "badcall",
        expected: badcall_story,
        dtb: None,
    },
    Scenario {
        name: "dma: the host's devices cannot reach engine, guest or just-donated pages, nor set LPI tables",
        smp: 1,
        test: "dma",
        expected: dma_story,
        dtb: None,
    },
    Scenario {
        name: "vms8: 16 VMs of 4 vCPUs on 8 CPUs, host and guest attacks, teardown, exact accounting",
        smp: 8,
        test: "vms",
        expected: vms_story,
        dtb: None,
    },
    Scenario {
        name: "no-gicv3: a device tree the engine cannot use is reported, and the run fails cleanly",
        smp: 1,
        test: "smp",
        expected: unusable_tree_story,
        dtb: Some(unknown_gic_dtb),
    },
];

/// QEMU virt's own tree, with the interrupt controller renamed to one the
/// engine does not know (`arm,gic-v9`): without a GICv3 the host cannot be
/// given one, so the engine must refuse to start. (QEMU rewrites `/psci`
/// when it loads a tree, so PSCI's conduit cannot be broken this way.)
fn unknown_gic_dtb(images: &Images) -> Result<PathBuf, String> {
    let dir = images.engine.parent().ok_or("no image directory")?;
    let path = dir.join("virt-unknown-gic.dtb");
    let mut c = crate::machine::virt(&format!(",dumpdtb={}", path.display()), 1, "2G");
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::run(c)?;
    let mut blob = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let at = blob
        .windows(11)
        .position(|w| w == b"arm,gic-v3\0")
        .ok_or("QEMU's tree has no arm,gic-v3 node")?;
    blob[at + 9] = b'9';
    // QEMU's dump is padded to 1 MiB; QEMU doubles a -dtb file's size when
    // it loads it, which would no longer fit below the engine. The strings
    // block comes last, so the tree ends with it: trim the padding.
    let be32 = |i: usize| {
        blob.get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let end = be32(12)
        .zip(be32(32))
        .map(|(off, len)| off + len)
        .ok_or("QEMU's tree is truncated")?;
    blob.truncate(end);
    blob[4..8].copy_from_slice(&(end as u32).to_be_bytes());
    std::fs::write(&path, blob).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// The engine reads the tree, refuses it and powers off with a failure status
/// (the host never runs).
fn unusable_tree_story(_smp: u32) -> Vec<Expect> {
    vec![
        line("isola: EL2 engine starting on the boot CPU (mpidr 0x0, x0 0x0)"),
        line(
            "isola: the device tree describes a machine the engine cannot use: no GICv3 distributor and redistributors",
        ),
        line("isola: power off (unusable device tree); exit status: failure"),
    ]
}

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
    };
    verdict
        .map(|()| run.elapsed)
        .map_err(|e| format!("{e}\n{}", run.log()))
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
    let mut failed = 0_usize;
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
        SCENARIOS.len() - failed
    );
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} booted scenario(s) failed"))
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

/// The DMA test can fail: an engine built with
/// `planted-bug-donate-keeps-dma-view` (`Donate` skips the SMMU's
/// invalidation) must let the device write the page donated a moment
/// before, which QEMU's SMMU still has cached, and the test must say so.
fn dma_test_has_teeth(images: &Images) -> Result<(), String> {
    let dir = root().join("target").join("aarch64-planted");
    let (el2, _) = build_for_targets(&dir, &["planted-bug-donate-keeps-dma-view"], &[])?;
    let planted = Images {
        engine: el2.join("isola"),
        host: images.host.clone(),
        guest: images.guest.clone(),
    };
    let boot = Boot {
        images: &planted,
        smp: 1,
        append: "isola.test=dma",
        dtb: None,
    };
    let run = watch(
        crate::machine::without_data_files(&boot.command()),
        SCENARIO_DEADLINE,
        false,
    )?;
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

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ordered_and_unordered_lines_match() {
        let e = vec![
            line("a"),
            Expect::AnyOrder(vec!["x".into(), "y".into()]),
            line("b"),
        ];
        assert!(check(&lines(&["a", "y", "x", "b"]), &e).is_ok());
        assert!(check(&lines(&["a", "x", "y", "b"]), &e).is_ok());
    }

    #[test]
    fn an_unexpected_line_fails() {
        let e = vec![line("a"), line("b")];
        let err = check(&lines(&["a", "panic: boom", "b"]), &e).unwrap_err();
        assert!(err.contains("unexpected console line 2"), "{err}");
    }

    #[test]
    fn a_missing_line_fails() {
        let e = vec![
            line("a"),
            Expect::AnyOrder(vec!["x".into(), "y".into()]),
            line("b"),
        ];
        let err = check(&lines(&["a", "x"]), &e).unwrap_err();
        assert!(err.contains("\"y\"") && err.contains("\"b\""), "{err}");
    }

    #[test]
    fn a_set_line_twice_fails() {
        let e = vec![Expect::AnyOrder(vec!["x".into(), "y".into()])];
        assert!(check(&lines(&["x", "x"]), &e).is_err());
    }

    /// The booted scenarios alone (`cargo test -p xtask -- --ignored booted`),
    /// for working on them without the whole `cargo xtask test`.
    #[test]
    #[ignore = "boots QEMU; run by `cargo xtask test`"]
    fn booted() {
        booted_tests().unwrap();
    }

    #[test]
    fn mpidrs_follow_qemu_virt_clusters() {
        assert_eq!(mpidr(7), 0x7);
        assert_eq!(mpidr(16), 0x100);
        assert_eq!(mpidr(511), 0x1f0f);
    }
}
