//! The expected consoles of the booted scenarios, as stories: what the
//! engine and the test host print, line by line, from power-on to the
//! verdict. Each scenario's story is built from the shared chapters (the
//! engine's boot, the host's first lines, the clean end) and its own.

use crate::check::{Expect, line};

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
        "isola: caches: HCR_EL2.FWB on for guests, off for the host, CTR_EL0.DIC 1 IDC 1: a page is cleaned to PoC only when the host gains it",
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

/// The `smp8` scenario.
pub fn smp_story(smp: u32) -> Vec<Expect> {
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "smp"));
    e.extend(host_smp(smp));
    e.extend(clean_end());
    e
}

/// The `probe` scenario.
pub fn probe_story(smp: u32) -> Vec<Expect> {
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "probe"));
    e.push(line(
        "host: probe of engine memory at 0x40200000 blocked (SEA)",
    ));
    for n in [64, 128] {
        e.push(line(format!(
            "isola: cpu 0: {n} aborts injected into the host in a row at one instruction (FAR 0x40200000, EC 0x24): is it looping?"
        )));
    }
    e.push(line(
        "host: probe: 150 more reads of it in a loop, each blocked; the engine counted 150 aborts",
    ));
    e.extend(clean_end());
    e
}

/// The `badcall` scenario.
pub fn badcall_story(smp: u32) -> Vec<Expect> {
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
        line(
            "host: the engine counted every call on this CPU by its status: 2 NotSupported, 2 NotOwner, 1 InvalidArgument, 1 NotFound, then 8 unknown ids and 8 Versions",
        ),
        line("host: host registers x4..x30, v0..v31, FPCR and FPSR kept across 5 hypercalls"),
        line("host: VmDestroy -> Success"),
    ]);
    e.extend(clean_end());
    e
}

/// The `storm` scenario (payloads/host/src/storm.rs): the figures (`host:
/// storm stats:` lines) are shown by the harness, not compared.
pub fn storm_story(smp: u32) -> Vec<Expect> {
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "storm"));
    e.extend([
        line(
            "host: storm: no Version, Accounting or VcpuRun was stretched more than plain work: none waited for another CPU's lock",
        ),
        line(format!(
            "host: storm: {} CPUs, 2000 valid random calls each, and every VM torn down: every call did what it should",
            smp - 1
        )),
        line("host: storm: no call took longer than 540000000 ticks"),
    ]);
    e.extend(clean_end());
    e
}

/// Ordinary VMs the host's VM test makes with `smp` CPUs: two per CPU, at
/// least 4, at most what the engine's VM table (`VM_SLOTS` in
/// boot/src/engine.rs) holds beside the attacker and the two power VMs.
fn vms_count(smp: u32) -> u32 {
    const ENGINE_VM_SLOTS: u32 = 255;
    (2 * smp).clamp(4, ENGINE_VM_SLOTS - 5)
}

/// The VM test (payloads/host/src/vms/, docs/guests.md): VMs on every CPU,
/// the host's and the guests' attacks, teardown and accounting.
pub fn vms_story(smp: u32) -> Vec<Expect> {
    let n = vms_count(smp);
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "vms"));
    e.push(line("host: vms: guest image found at 0x7ff00000"));
    e.push(line(format!(
        "host: vms: created {n} VMs of 5 vCPUs, an attacker VM of 8 vCPUs, two power VMs and a hold VM of {} vCPUs",
        smp.min(8)
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
    if smp > 1 {
        e.push(line(refused("run-vcpu-running-on-another-cpu", "Busy")));
        e.push(line(refused("destroy-vm-while-its-vcpu-runs", "Busy")));
    } else {
        e.push(line("host: vms: running-vCPU attacks skipped (one CPU)"));
    }
    e.push(line(format!(
        "host: vms: every CPU ticked on its virtual timer while guests ran; runs ended with Exit::Irq on all {smp}"
    )));
    for k in 0..n.min(4) {
        e.push(line(format!(
            "host: vms: vm{k}.0 checksum: right before, during and after the storm"
        )));
        for (i, role) in ["mmio", "share", "demand", "el0"].iter().enumerate() {
            e.push(line(format!("host: vms: vm{k}.{} {role}: done", i + 1)));
        }
    }
    e.extend([
        line("host: attack guest-read-other-vm-pa: contained (read 0x0 from its own fresh page there)"),
        line("host: attack guest-write-engine-pa: contained (landed in its own fresh page at IPA 0x43800000)"),
        line("host: attack guest-access-beyond-ipa-space: contained (the engine stopped the vCPU (Exit::Error))"),
        line("host: attack guest-read-gic-distributor: contained (host did not back IPA 0x8000000)"),
        line("host: vms: world switch: the guest saw none of the host's EL1 registers and kept x4-x30, v0-v31, FPCR and its EL1 registers across a call handled at EL2 and one handled by the host"),
        line("host: vms: virtual interrupts: an SPI, the guest's own SGI and 3 ticks of its timer reached it through its list registers; the timer's completions ended runs with Exit::Eoi"),
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

/// The VM test with `guests` Linux guests beside its VMs
/// (`isola.linux.guests=`, `cargo xtask guest --beside`; docs/guests.md):
/// each guest is made after the VMs and the host's attacks, prints its
/// init's lines while the VMs run (in any order with theirs), powers off,
/// and is torn down before the accounting, which must be exact for all.
pub fn vms_with_linux_story(smp: u32, guests: u32, release: &str) -> Vec<Expect> {
    let mut e = vms_story(smp);
    let at = |e: &[Expect], want: &str| {
        e.iter()
            .position(|x| matches!(x, Expect::Line(l) if l == want))
    };
    let made: Vec<Expect> = (0..guests)
        .flat_map(|k| {
            [
                line(format!(
                    "host: linux{k}: Debian's kernel, its initramfs and device tree in 128 MiB of guest RAM, all 32768 pages donated (the VM owns 32768); 4 vCPUs, 1 on"
                )),
                line(format!(
                    "host: linux{k}: host reads of its RAM (first, middle, last page): refused (SEA)"
                )),
            ]
        })
        .collect();
    // The set of lines printed while the VMs run (the guests' console).
    let running = e
        .iter()
        .position(|x| matches!(x, Expect::AnyOrder(ls) if ls.iter().any(|l| l.contains("hello through emulated MMIO"))))
        .unwrap_or(e.len());
    if let Some(Expect::AnyOrder(set)) = e.get_mut(running) {
        for k in 0..guests {
            set.extend([
                format!("host: linux{k}: isola-guest: init running on Linux {release}"),
                format!("host: linux{k}: isola-guest: nproc 4"),
                format!(
                    "host: linux{k}: isola-guest: timer interrupts moving on every CPU: 4 of 4"
                ),
                format!("host: linux{k}: isola-guest: powering off"),
                format!("host: linux{k}: powered off (PSCI SYSTEM_OFF)"),
            ]);
        }
    }
    e.splice(running..running, made);
    let accounting = at(&e, "host: vms: accounting exact after teardown").unwrap_or(e.len());
    let gone = (0..guests).map(|k| {
        line(format!(
            "host: linux{k}: destroyed; all 32768 RAM pages reclaimed and its 160 pool pages back, all zeroed"
        ))
    });
    e.splice(accounting..accounting, gone);
    e
}

/// The DMA test (payloads/host/src/dma.rs, docs/devices.md): the host
/// drives `edu` and fw_cfg against engine, guest and donated pages and the
/// GIC's LPI table bases; the SMMU's reports interleave (the engine drains
/// them when the host asks `Accounting(Dma)` and on its cold paths).
pub fn dma_story(smp: u32) -> Vec<Expect> {
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
    for p in 0..16_u64 {
        e.push(blocked(
            1024,
            "write",
            0x6001_0000_u64.wrapping_add(p.wrapping_mul(0x1000)),
        ));
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

/// The prefixes of the register census's table lines (`census:` then an
/// encoding `s<op0>_...`, or the probe count), which `cargo xtask census`
/// turns into the census table of docs/guests.md.
pub const CENSUS_TABLE: [&str; 2] = ["host: census: s", "host: census: probes: "];

/// The `census` scenario (payloads/host/src/census.rs): the table, then no
/// register reaches VM B or changes in the host.
pub fn census_story(smp: u32) -> Vec<Expect> {
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "census"));
    e.push(Expect::Table(CENSUS_TABLE.map(String::from).to_vec()));
    e.push(line(
        "host: census: no register VM A wrote reached VM B, at EL1 or at EL0",
    ));
    e.push(line(
        "host: census: every host register read the same after the guests ran",
    ));
    e.extend(clean_end());
    e
}

/// The `psci` scenario (payloads/host/src/races.rs): PSCI races through
/// the engine's relay, each with its defined result.
pub fn psci_story(smp: u32) -> Vec<Expect> {
    let mut e = engine_boot(smp);
    e.extend(host_start(smp, "psci"));
    e.extend([
        line("host: psci: 16 rounds of two CPU_ONs of cpu 3 at once: one SUCCESS, the other ALREADY_ON or ON_PENDING; cpu 3 started once each"),
        line("host: psci: 16 rounds of CPU_ON of cpu 1 against its power-down CPU_SUSPEND: the suspend returned SUCCESS, the CPU_ON ALREADY_ON"),
        line("host: psci: a power-down CPU_SUSPEND alone returned SUCCESS; no resume entry stayed pending"),
        line("host: psci: afterwards cpu 1, off, started once more: nothing was left pending"),
    ]);
    e.extend(clean_end());
    e
}

/// The `no-gicv3` scenario (its tree made by `dtb::unknown_gic`): the
/// engine reads the tree, refuses it and powers off with a failure status
/// (the host never runs).
pub fn unusable_tree_story(_smp: u32) -> Vec<Expect> {
    vec![
        line("isola: EL2 engine starting on the boot CPU (mpidr 0x0, x0 0x0)"),
        line(
            "isola: the device tree describes a machine the engine cannot use: no GICv3 distributor and redistributors",
        ),
        line("isola: power off (unusable device tree); exit status: failure"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_guests_join_the_vm_story_in_their_places() {
        let e = vms_with_linux_story(8, 2, "6.1.0-57-arm64");
        let lines: Vec<String> = e
            .iter()
            .flat_map(|x| match x {
                Expect::Line(l) => vec![l.clone()],
                Expect::AnyOrder(ls) => ls.clone(),
                Expect::Table(_) => Vec::new(),
            })
            .collect();
        let pos = |s: &str| lines.iter().position(|l| l.contains(s)).unwrap();
        assert!(pos("attack guest-call-from-host") < pos("linux0: Debian's kernel"));
        assert!(pos("linux1: host reads") < pos("linux1: isola-guest: nproc 4"));
        assert!(pos("donate-to-destroyed-vm") < pos("linux1: destroyed"));
        assert!(pos("linux1: destroyed") < pos("vms: accounting exact"));
        assert_eq!(
            lines.len(),
            vms_story(8)
                .iter()
                .map(|x| match x {
                    Expect::Line(_) => 1,
                    Expect::AnyOrder(ls) => ls.len(),
                    Expect::Table(_) => 0,
                })
                .sum::<usize>()
                + 2 * 8
        );
    }

    #[test]
    fn mpidrs_follow_qemu_virt_clusters() {
        assert_eq!(mpidr(7), 0x7);
        assert_eq!(mpidr(16), 0x100);
        assert_eq!(mpidr(511), 0x1f0f);
    }
}
