//! Tearing down on CPU 0 alone: a line per vCPU with what it did, every VM
//! destroyed, every page reclaimed and checked zeroed, the accounting
//! exactly as before the test.

use isola_abi::{HostCall, PAGE_SIZE, Status, perms};
use isola_guest_payload::{self as guest, ImageHeader, layout};
use isola_sync::atomic::Ordering;

use super::pages::page_is_zero;
use super::plan::{
    ATTACKER_VM, ENGINE_PA, HOLD_VM, MAX_DEMAND, POOL_BASE, POOL_PAGES, POWER_VM, RESET_VM, Role,
};
use super::probe::{invalidate_page, probe_read};
use super::records::{End, VcpuData, Vm, WORLD};
use super::setup::{BEFORE, VM_COUNT};
use super::tally::{attack, attack_outcome, check, sharing, totals};
use crate::calls::St;
use crate::calls::call;
use crate::console::say;

/// CPU 0: reports every vCPU, destroys every VM, reclaims and checks every
/// page, checks the accounting.
pub(super) fn teardown(cpus: usize) {
    let n = VM_COUNT.load(Ordering::Relaxed);
    if super::tally::ticked() as usize == cpus {
        say!(
            "vms: every CPU ticked on its virtual timer while guests ran; runs ended with Exit::Irq on all {cpus}"
        );
    }
    report(n);
    let off = WORLD.vms.get(POWER_VM).map_or(0, Vm::handle);
    attack(
        "run-vcpu-of-powered-off-vm",
        call(HostCall::VcpuRun, [off, 0, 0, 0, 0, 0])[0],
    );
    let vm0_handle = WORLD.vms.first().map_or(0, Vm::handle);
    let image_pages = image_page_count();
    let mut dirty = 0u64;
    for k in active(n) {
        let Some(vm) = WORLD.vms.get(k) else { continue };
        let h = vm.handle();
        let r = call(
            HostCall::Unshare,
            [
                h,
                vm.borrow_pa.load(Ordering::Relaxed),
                layout::BORROW_IPA,
                0,
                0,
                0,
            ],
        );
        check(
            r[0] == Status::Success.raw(),
            format_args!("vm{k}: unshare borrow page: {}", St(r[0])),
        );
        let r = call(HostCall::VmDestroy, [h, 0, 0, 0, 0, 0]);
        check(
            r[0] == Status::Success.raw(),
            format_args!("vm{k}: VmDestroy: {}", St(r[0])),
        );
        let pool = vm.pool_pa.load(Ordering::Relaxed);
        for p in 0..POOL_PAGES {
            let pa = pool.wrapping_add(p.wrapping_mul(PAGE_SIZE));
            invalidate_page(pa);
            if !page_is_zero(pa) {
                dirty = dirty.saturating_add(1);
            }
        }
        let pages: [(u64, u64); 3] = [
            (vm.image_pa.load(Ordering::Relaxed), image_pages),
            (vm.data_pa.load(Ordering::Relaxed), layout::DATA_PAGES),
            (
                vm.share_pa.load(Ordering::Relaxed),
                vm.vcpus.load(Ordering::Relaxed) as u64,
            ),
        ];
        for (base, count) in pages {
            for p in 0..count {
                let pa = base.wrapping_add(p.wrapping_mul(PAGE_SIZE));
                let (ok, zero) = reclaim(pa);
                dirty = dirty.saturating_add(u64::from(ok && !zero));
                check(ok, format_args!("vm{k}: reclaim {pa:#x} failed"));
            }
        }
        let demand = vm.demand_len.load(Ordering::Acquire).min(MAX_DEMAND);
        for (pa, ipa) in vm.demand.iter().zip(&vm.demand_ipa).take(demand) {
            let (pa, ipa) = (pa.load(Ordering::Relaxed), ipa.load(Ordering::Relaxed));
            let relinquished =
                (layout::DEMAND_IPA..layout::DEMAND_IPA.wrapping_add(0x10_0000)).contains(&ipa);
            let (ok, zero) = reclaim(pa);
            if relinquished {
                // The guest gave it back already: the host owns it, zeroed.
                check(
                    !ok && page_is_zero(pa),
                    format_args!("vm{k}: relinquished page {pa:#x} not the host's or not zero"),
                );
            } else {
                dirty = dirty.saturating_add(u64::from(ok && !zero));
                check(
                    ok,
                    format_args!("vm{k}: reclaim demand page {pa:#x} failed"),
                );
            }
        }
    }
    check(
        dirty == 0,
        format_args!("{dirty} pages came back not zeroed"),
    );
    say!("vms: destroyed every VM, reclaimed every guest page, all zeroed");
    attack(
        "run-vcpu-of-destroyed-vm",
        call(HostCall::VcpuRun, [vm0_handle, 0, 0, 0, 0, 0])[0],
    );
    attack(
        "donate-to-destroyed-vm",
        call(
            HostCall::Donate,
            [vm0_handle, POOL_BASE, layout::IPA_BASE, perms::R, 0, 0],
        )[0],
    );
    // Linux guests beside the VMs (vms/linux/): under the same accounting.
    super::linux::teardown(None);
    let after = totals();
    let before = BEFORE.each_ref().map(|b| b.load(Ordering::Relaxed));
    let share = sharing();
    let exact = after == before && after.get(2) == Some(&0) && share == [0, 0, 0];
    if check(
        exact,
        format_args!("accounting before {before:?}, after {after:?}, sharing {share:?}"),
    ) {
        say!("vms: accounting exact after teardown");
    }
    let (failures, checks) = (super::tally::failures(), super::tally::checks());
    if failures == 0 {
        say!("vms: PASS");
    } else {
        say!("vms: FAIL ({failures} of {checks} checks failed)");
    }
}

/// The records in use: ordinary VMs `0..n`, the attacker, the power VM.
fn active(n: usize) -> impl Iterator<Item = usize> {
    (0..n).chain([ATTACKER_VM, POWER_VM, RESET_VM, HOLD_VM])
}

/// Pages of the image and its stacks (the same for every VM).
fn image_page_count() -> u64 {
    let words =
        [0u64, 8, 16, 24].map(|o| probe_read(layout::IMAGE_LOAD_PA.wrapping_add(o)).unwrap_or(0));
    ImageHeader::parse(words).map_or(0, |h| h.pages())
}

/// Reclaims a page: `(succeeded, reads zero afterwards)`.
fn reclaim(pa: u64) -> (bool, bool) {
    let r = call(HostCall::Reclaim, [pa, 0, 0, 0, 0, 0]);
    let ok = r[0] == Status::Success.raw();
    (ok, ok && page_is_zero(pa))
}

/// One line per vCPU, in order, with what it did.
fn report(n: usize) {
    for k in active(n) {
        let Some(vm) = WORLD.vms.get(k) else { continue };
        for i in 0..vm.vcpus.load(Ordering::Relaxed) {
            let Some(slot) = vm.slot(i) else { continue };
            // SAFETY: every CPU passed the barrier after the runs; no vCPU
            // is claimed any more.
            let d = unsafe { &*slot.data.get() };
            report_vcpu(k, i, d);
        }
    }
}

fn report_vcpu(k: usize, i: usize, d: &VcpuData) {
    let role = d.role.name();
    let off = d.end == End::CpuOff;
    match d.role {
        Role::Checksum => {
            let ok = off && d.reports > 0 && d.reports_after_storm > 0 && d.checks_failed == 0;
            if check(
                ok,
                format_args!(
                    "vm{k}.{i} {role}: {:?}, {} reports, {} after the storm",
                    d.end, d.reports, d.reports_after_storm
                ),
            ) && k < 4
            {
                say!("vms: vm{k}.{i} checksum: right before, during and after the storm");
            }
        }
        Role::Mmio | Role::Share | Role::Demand => {
            if check(
                off && d.info_ok,
                format_args!("vm{k}.{i} {role}: ended {:?}", d.end),
            ) && k < 4
            {
                say!("vms: vm{k}.{i} {role}: done");
            }
        }
        Role::El0 => {
            let good = d.value == guest::expected_checksum(super::records::seed_of(k));
            if check(
                off && d.info_ok && good,
                format_args!("vm{k}.{i} {role}: ended {:?}, hashed {:#x}", d.end, d.value),
            ) && k < 4
            {
                say!("vms: vm{k}.{i} {role}: done");
            }
        }
        Role::Attack => {
            check(off, format_args!("vm{k}.{i} {role}: ended {:?}", d.end));
        }
        Role::ProbeOtherVm => {
            // The IPA is VM 0's data page's physical address: the guest must
            // see a fresh zero page of its own, not VM 0's pattern.
            let ok = off && d.value == 0;
            attack_outcome(
                "guest-read-other-vm-pa",
                ok,
                format_args!("read {:#x} from its own fresh page there", d.value),
            );
        }
        Role::ProbeEngineWrite => {
            let ok = off && d.value == guest::PROBE_WRITE_VALUE;
            attack_outcome(
                "guest-write-engine-pa",
                ok,
                format_args!("landed in its own fresh page at IPA {ENGINE_PA:#x}"),
            );
        }
        Role::ProbeBeyond => {
            // Either Stage 2 stops the vCPU (the IPA is past the VM's IPA
            // space) or, on a CPU with a smaller physical address size, the
            // guest's own stage 1 faults first; both leave the guest alone.
            let name = "guest-access-beyond-ipa-space";
            match d.end {
                End::Error(_) => attack_outcome(
                    name,
                    true,
                    format_args!("the engine stopped the vCPU (Exit::Error)"),
                ),
                End::Unbacked(ipa) => {
                    attack_outcome(name, true, format_args!("host did not back IPA {ipa:#x}"))
                }
                End::CpuOff if d.value >> 63 == 1 => {
                    attack_outcome(name, true, format_args!("stage-1 fault in the guest"));
                }
                end => attack_outcome(
                    name,
                    false,
                    format_args!("ended {end:?}, read {:#x}", d.value),
                ),
            }
        }
        Role::ProbeGic => {
            let name = "guest-read-gic-distributor";
            match d.end {
                End::CpuOff if d.value == 0 => {
                    attack_outcome(name, true, format_args!("MMIO exit to the host, read 0x0"));
                }
                End::Unbacked(ipa) => {
                    attack_outcome(name, true, format_args!("host did not back IPA {ipa:#x}"))
                }
                end => attack_outcome(
                    name,
                    false,
                    format_args!("ended {end:?}, read {:#x}", d.value),
                ),
            }
        }
        Role::Spin => {
            check(
                off && d.value == Status::Success.raw(),
                format_args!("vm{k}.{i} {role}: ended {:?}", d.end),
            );
        }
        Role::Registers => {
            let (leaked, at_el2, via_host) =
                (d.value >> 48, d.value >> 32 & 0xffff, d.value & 0xffff_ffff);
            if check(
                off && d.value == 0,
                format_args!(
                    "vm{k}.{i} {role}: ended {:?}, {leaked} host EL1 registers visible, {at_el2} guest registers lost across a call the engine handled, {via_host} across an exit to the host",
                    d.end
                ),
            ) {
                say!(
                    "vms: world switch: the guest saw none of the host's EL1 registers and kept x4-x30, v0-v31, FPCR and its EL1 registers across a call handled at EL2 and one handled by the host"
                );
            }
        }
        Role::VirtualIrq => {
            let (ticks, taken) = (d.value >> 32, d.value & 0xffff_ffff);
            let want = super::plan::VIRQ_TICKS;
            // The SPI, the SGI and every tick, each injected by this host.
            if check(
                off && ticks == want
                    && taken == want.wrapping_add(2)
                    && u64::from(d.injected) == taken
                    && d.eoi_exits > 0,
                format_args!(
                    "vm{k}.{i} {role}: ended {:?}, {ticks} timer ticks, {taken} interrupts taken, {} injected, {} Exit::Eoi",
                    d.end, d.injected, d.eoi_exits
                ),
            ) {
                say!(
                    "vms: virtual interrupts: an SPI, the guest's own SGI and {want} ticks of its timer reached it through its list registers; the timer's completions ended runs with Exit::Eoi"
                );
            }
        }
        Role::HoldMasked | Role::HoldVectors => {
            check(
                d.end == End::Running && d.irq_exits > 0,
                format_args!(
                    "vm{k}.{i} {role}: ended {:?} after {} runs ended by Exit::Irq",
                    d.end, d.irq_exits
                ),
            );
        }
        Role::SystemOff => {
            check(
                d.end == End::SystemOff,
                format_args!("vm{k}.{i} {role}: ended {:?}", d.end),
            );
            say!("vms: power VM: PSCI SYSTEM_OFF exit");
        }
        Role::SystemReset => {
            check(
                d.end == End::SystemReset,
                format_args!("vm{k}.{i} {role}: ended {:?}", d.end),
            );
            say!("vms: reset VM: PSCI SYSTEM_RESET exit");
        }
    }
}
