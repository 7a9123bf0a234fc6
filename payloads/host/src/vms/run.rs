//! Running the vCPUs on every CPU at once: claiming one, one exit at a
//! time, and answering its exit (its console, its messages, its memory
//! faults); the storm of random host calls between runs; and the attacks on
//! a vCPU that runs on another CPU.

use isola_abi::{Exit, GuestCall, HostCall, PAGE_SIZE, Status, perms};
use isola_guest_payload::{self as guest, Attack, layout, msg};
use isola_sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::pages::{alloc, fill};
use super::plan::{ATTACKER_VM, HOLD_VM, MAX_VCPUS, Role, SPIN_INDEX, STORM_PER_CPU, VM_RECORDS};
use super::probe::{clean_page, invalidate_page, probe_read, probe_write, vcpu_run_checked};
use super::records::{DONE, End, READY, RESERVED, RUNNING, VcpuData, VcpuSlot, Vm, WORLD, seed_of};
use super::tally::{attack, attack_probe, check};
use crate::calls::call;
use crate::calls::{St, hvc6, status};
use crate::console::say;

/// Slots of the run list: every vCPU of every VM record.
const RUN_SLOTS: usize = VM_RECORDS * MAX_VCPUS;

/// What the CPUs share while they run the vCPUs.
struct Schedule {
    /// The vCPUs the general scheduler runs, as `vm << 8 | index`, written
    /// by CPU 0 during setup (before the first barrier).
    list: [AtomicU32; RUN_SLOTS],
    /// Entries of `list` in use.
    runnable: AtomicUsize,
    /// How many of them are done.
    finished: AtomicUsize,
    /// CPUs that finished their storm quota.
    stormed: AtomicUsize,
    /// The spin attack's handshake: 1 = CPU 1 runs the spinner, 2 = done.
    spin_phase: AtomicU32,
}

static SCHEDULE: Schedule = Schedule {
    list: [const { AtomicU32::new(0) }; RUN_SLOTS],
    runnable: AtomicUsize::new(0),
    finished: AtomicUsize::new(0),
    stormed: AtomicUsize::new(0),
    spin_phase: AtomicU32::new(0),
};

/// Puts vCPU `i` of VM record `k` on the run list (CPU 0, during setup).
pub(super) fn enlist(k: usize, i: usize) {
    let at = SCHEDULE.runnable.fetch_add(1, Ordering::Relaxed);
    if let Some(e) = SCHEDULE.list.get(at) {
        e.store((k << 8 | i) as u32, Ordering::Relaxed);
    }
}

/// Every CPU: runs claimed vCPUs one exit at a time and makes its share of
/// the host-call storm, until every runnable vCPU is done.
pub(super) fn run_vcpus(cpu: usize, cpus: usize) {
    let total = SCHEDULE.runnable.load(Ordering::Relaxed).min(RUN_SLOTS);
    let mut cursor = cpu.wrapping_mul(7);
    let mut storm_left = STORM_PER_CPU;
    let mut rng = guest::splitmix64(cpu as u64 ^ 0x5707_3000);
    while SCHEDULE.finished.load(Ordering::Acquire) < total {
        for _ in 0..total {
            cursor = cursor.wrapping_add(1).checked_rem(total).unwrap_or(0);
            let Some(entry) = SCHEDULE.list.get(cursor) else {
                continue;
            };
            let e = entry.load(Ordering::Relaxed) as usize;
            let (k, i) = (e >> 8, e & 0xff);
            let Some(slot) = WORLD.vms.get(k).and_then(|vm| vm.slot(i)) else {
                continue;
            };
            // Look before claiming: most vCPUs are busy or done.
            if slot.state.load(Ordering::Relaxed) == READY
                && slot
                    .state
                    .compare_exchange(READY, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                let done = run_once(k, i, slot, cpus);
                slot.state
                    .store(if done { DONE } else { READY }, Ordering::Release);
                if done {
                    SCHEDULE.finished.fetch_add(1, Ordering::AcqRel);
                }
                break;
            }
        }
        // Linux guests beside the VMs (vms/linux/) get a turn too.
        super::linux::step(cpu);
        if storm_left > 0 {
            rng = guest::splitmix64(rng);
            storm_call(rng);
            storm_left = storm_left.saturating_sub(1);
            if storm_left == 0 {
                SCHEDULE.stormed.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    if storm_left > 0 {
        SCHEDULE.stormed.fetch_add(1, Ordering::AcqRel);
    }
}

/// One random host call. Arguments have bit 62 set, so none names a real
/// page or handle: every call must fail cleanly (or, for `Version` and
/// `Accounting` reads, succeed) with a defined status and, on error, zero
/// results.
fn storm_call(r: u64) {
    let id = match r & 3 {
        0 => r >> 32,
        1 => HostCall::Version as u64 | (r >> 40 & 0x1f),
        2 => GuestCall::Info as u64 | (r >> 40 & 7),
        _ => HostCall::Version as u64 | (r >> 40 & 0xfff),
    };
    if (id >> 24) & 0x3f == 4 {
        return; // PSCI: not part of this storm.
    }
    let arg = |x: u64| guest::splitmix64(r ^ x) | 1 << 62;
    let out = hvc6(id, [arg(1), arg(2), arg(3), arg(4), arg(5), arg(6)]);
    let ok = match status(out[0]) {
        Ok(Status::Success) => matches!(
            HostCall::from_id(id),
            Some(HostCall::Version | HostCall::Accounting)
        ),
        Ok(_) => out[1] == 0 && out[2] == 0 && out[3] == 0,
        Err(_) => false,
    };
    if !ok {
        say!(
            "vms: FAIL storm call {id:#x} returned {} ({:#x}, {:#x}, {:#x})",
            St(out[0]),
            out[1],
            out[2],
            out[3]
        );
    }
}

/// Runs the vCPU until its next exit and handles it; whether it is done.
fn run_once(k: usize, i: usize, slot: &VcpuSlot, cpus: usize) -> bool {
    let Some(vm) = WORLD.vms.get(k) else {
        return true;
    };
    // SAFETY: this CPU won the claim (`READY -> RUNNING`, Acquire), so it
    // alone touches the record until it releases it.
    let d = unsafe { &mut *slot.data.get() };
    let x3 = core::mem::take(&mut d.x3);
    let (r, lost) = vcpu_run_checked(vm.handle(), i as u64, x3);
    check(
        lost == 0,
        format_args!("vm{k}.{i}: {lost} host registers changed across VcpuRun"),
    );
    if r[0] != Status::Success.raw() {
        d.end = End::RunFailed(r[0]);
        return true;
    }
    if d.role == Role::VirtualIrq {
        virq_exit_status(vm, i, d, r[1]);
    }
    let Some(exit) = Exit::decode([r[1], r[2], r[3]]) else {
        check(
            false,
            format_args!("vm{k}.{i}: undecodable exit {:#x}", r[1]),
        );
        d.end = End::RunFailed(r[1]);
        return true;
    };
    match exit {
        Exit::HostCall { args: [tag, value] } => {
            let at = Exiting {
                k,
                i,
                vm,
                d: &mut *d,
            };
            d.x3 = host_call(at, tag, value, cpus);
            false
        }
        Exit::Mmio {
            ipa,
            size,
            write,
            value,
        } => {
            mmio(Exiting { k, i, vm, d }, ipa, size, write, value);
            false
        }
        Exit::MemFault { ipa } => memfault(k, i, vm, d, ipa),
        // The host's tick (taken as soon as this returns): keep running.
        Exit::Irq => {
            super::tally::note_irq_exit();
            d.irq_exits = d.irq_exits.saturating_add(1);
            false
        }
        Exit::Eoi => {
            d.eoi_exits = d.eoi_exits.saturating_add(1);
            false
        }
        Exit::Sgi { targets, intid } => {
            // Only the virtual-interrupt vCPU sends one, to itself.
            if targets & 1u16.wrapping_shl(i as u32) != 0 {
                inject(vm, i, d, u32::from(intid), false);
            }
            false
        }
        // The test guests start no vCPUs: keep running.
        Exit::Wfx { .. } | Exit::CpuOn { .. } => false,
        Exit::CpuOff => {
            d.end = End::CpuOff;
            true
        }
        Exit::SystemOff => {
            d.end = End::SystemOff;
            true
        }
        Exit::SystemReset => {
            d.end = End::SystemReset;
            true
        }
        Exit::Error { esr } => {
            d.end = End::Error(esr);
            true
        }
    }
}

/// After a run of the virtual-interrupt vCPU: its list registers' states
/// as the exit word reports them, and the timer's level, which the host
/// answers as Linux's KVM does: inject PPI 27 (with `EOI`, so its
/// completion ends a run with `Exit::Eoi`) unless a list register has it.
fn virq_exit_status(vm: &Vm, i: usize, d: &mut VcpuData, word: u64) {
    let status = isola_abi::ExitStatus::from_word(word);
    for (w, s) in d.lrs.iter_mut().zip(status.lrs) {
        *w = match s {
            isola_abi::LrState::Invalid => 0,
            s => *w & !(3 << 62) | (s as u64) << 62,
        };
    }
    let has_timer = d
        .lrs
        .iter()
        .any(|&w| w != 0 && isola_abi::lr::intid(w) == 27);
    if status.vtimer && !has_timer {
        inject(vm, i, d, isola_abi::vgic::VTIMER_INTID, true);
    }
}

/// Puts `intid` (pending, group 1, priority 0xa0) in a free list register
/// of vCPU `i`, keeping the others as they are.
fn inject(vm: &Vm, i: usize, d: &mut VcpuData, intid: u32, eoi: bool) {
    let Some(free) = d.lrs.iter_mut().find(|w| **w == 0) else {
        check(false, format_args!("vCPU {i}: no free list register"));
        return;
    };
    *free = isola_abi::lr::pending(intid, 0xa0, eoi);
    let [l0, l1, l2, l3] = d.lrs;
    let r = call(
        HostCall::VcpuInterrupts,
        [vm.handle(), i as u64, l0, l1, l2, l3],
    );
    if check(
        r[0] == Status::Success.raw(),
        format_args!("vCPU {i}: VcpuInterrupts of {intid}: {}", St(r[0])),
    ) {
        d.injected = d.injected.saturating_add(1);
    }
}

/// The vCPU whose exit this CPU answers: VM record `k`, vCPU `i`, and their
/// records (the vCPU's claimed by this CPU).
struct Exiting<'a> {
    k: usize,
    i: usize,
    vm: &'a Vm,
    d: &'a mut VcpuData,
}

/// Emulates the console (data and counter registers); anything else in the
/// MMIO window reads as zero and ignores writes.
fn mmio(at: Exiting<'_>, ipa: u64, size: u8, write: bool, value: u64) {
    let Exiting { k, i, vm, d } = at;
    let data = layout::CONSOLE_IPA.wrapping_add(layout::CONSOLE_DATA);
    let counter = layout::CONSOLE_IPA.wrapping_add(layout::CONSOLE_COUNTER);
    match (ipa, write) {
        (a, true) if a == data => {
            let byte = (value & 0xff) as u8;
            if byte == b'\n' || d.len >= d.line.len() {
                let text = d
                    .line
                    .get(..d.len)
                    .and_then(|b| core::str::from_utf8(b).ok())
                    .unwrap_or("<not utf-8>");
                say!("vm{k}.{i}: {text}");
                d.len = 0;
            }
            if byte != b'\n'
                && let Some(c) = d.line.get_mut(d.len)
            {
                *c = byte;
                d.len = d.len.saturating_add(1);
            }
        }
        (a, false) if a == counter && size == 8 => {
            d.x3 = vm.counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        (_, false) => {
            d.x3 = 0;
            d.value = ipa;
        }
        (_, true) => d.value = ipa,
    }
}

/// Backs a fault inside the demand window with a fresh zeroed page; stops
/// the vCPU for a fault anywhere else.
fn memfault(k: usize, i: usize, vm: &Vm, d: &mut VcpuData, ipa: u64) -> bool {
    if !(layout::IPA_BASE..layout::DEMAND_LIMIT).contains(&ipa) {
        d.end = End::Unbacked(ipa);
        return true;
    }
    let slot = vm.demand_len.fetch_add(1, Ordering::Relaxed);
    let (Some(pa_slot), Some(ipa_slot), Some(pa)) =
        (vm.demand.get(slot), vm.demand_ipa.get(slot), alloc(1))
    else {
        check(false, format_args!("vm{k}.{i}: too many demand pages"));
        d.end = End::Unbacked(ipa);
        return true;
    };
    fill(pa, |_| 0);
    let r = call(
        HostCall::Donate,
        [vm.handle(), pa, ipa, perms::R | perms::W, 0, 0],
    );
    if !check(
        r[0] == Status::Success.raw(),
        format_args!("vm{k}.{i}: demand donate at {ipa:#x}: {}", St(r[0])),
    ) {
        d.end = End::Unbacked(ipa);
        return true;
    }
    pa_slot.store(pa, Ordering::Relaxed);
    ipa_slot.store(ipa, Ordering::Release);
    false
}

/// Answers a guest's `HostCall`; the reply goes to its `x1` on resume.
fn host_call(at: Exiting<'_>, tag: u64, value: u64, cpus: usize) -> u64 {
    let Exiting { k, i, vm, d } = at;
    match tag {
        msg::INFO => {
            let count = vm.vcpus.load(Ordering::Relaxed) as u64;
            d.info_ok = value == (i as u64) << 32 | count;
            check(
                d.info_ok,
                format_args!("vm{k}.{i}: GuestCall::Info said {value:#x}"),
            );
            0
        }
        msg::CHECKSUM => checksum(Exiting { k, i, vm, d }, value, cpus),
        msg::COUNTER => {
            d.value = value;
            check(
                value & 1 == 1,
                format_args!("vm{k}.{i}: counter did not increase ({value:#x})"),
            );
            0
        }
        msg::SHARED | msg::ANSWERED | msg::UNSHARED => {
            shared_page(Exiting { k, i, vm, d }, tag, value);
            0
        }
        msg::DEMAND => {
            check(
                value == 1,
                format_args!("vm{k}.{i}: demand page did not read back"),
            );
            0
        }
        msg::RELINQUISHED => {
            check(
                value == Status::Success.raw(),
                format_args!("vm{k}.{i}: relinquish: {}", St(value)),
            );
            d.value = value;
            0
        }
        msg::ATTACK => {
            let name = Attack::from_id(value >> 32).map_or("guest-unknown-attack", Attack::name);
            let raw = value & 0xffff_ffff;
            attack(name, (raw as u32 as i32) as i64 as u64);
            0
        }
        msg::STORM => {
            let (defined, calls) = (value >> 32, value & 0xffff_ffff);
            if check(
                defined == calls,
                format_args!("guest call storm: {defined} of {calls} statuses defined"),
            ) {
                say!(
                    "attack guest-call-storm: refused ({calls} random calls, every status defined)"
                );
            }
            0
        }
        msg::PROBE => {
            d.value = value;
            0
        }
        msg::SPUN => {
            d.value = value;
            0
        }
        msg::REGS => 0,
        msg::VIRQ_READY => {
            inject(vm, i, d, guest::VIRQ_SPI as u32, false);
            0
        }
        msg::VIRQ_RESULT | msg::EL0_RESULT => {
            d.value = value;
            0
        }
        msg::REGS_RESULT => {
            d.value = value;
            0
        }
        msg::FATAL => {
            check(
                false,
                format_args!("vm{k}.{i}: guest reports an unexpected exception (ESR {value:#x})"),
            );
            0
        }
        _ => {
            check(
                false,
                format_args!("vm{k}.{i}: unknown host-call tag {tag:#x}"),
            );
            0
        }
    }
}

/// The guest's side of the shared-page exchange (`Behaviour::Share`): it
/// shared its page (the host writes a message), answered in it (the host
/// reads the answer), unshared it (the host must be refused).
fn shared_page(at: Exiting<'_>, tag: u64, value: u64) {
    let Exiting { k, i, vm, d } = at;
    let share_page = vm
        .share_pa
        .load(Ordering::Relaxed)
        .wrapping_add((i as u64).wrapping_mul(PAGE_SIZE));
    match tag {
        msg::SHARED => {
            if check(
                value == Status::Success.raw(),
                format_args!("vm{k}.{i}: guest share: {}", St(value)),
            ) {
                d.message = guest::splitmix64(seed_of(k) ^ i as u64);
                let wrote = probe_write(share_page, d.message);
                clean_page(share_page);
                check(
                    wrote.is_ok(),
                    format_args!("vm{k}.{i}: host cannot write the page the guest shared"),
                );
            }
        }
        msg::ANSWERED => {
            invalidate_page(share_page);
            let answer = probe_read(share_page.wrapping_add(8));
            check(
                value == d.message && answer == Ok(guest::answer(d.message)),
                format_args!(
                    "vm{k}.{i}: shared-page exchange: guest read {value:#x}, answered {answer:?}"
                ),
            );
        }
        msg::UNSHARED => {
            check(
                value == Status::Success.raw(),
                format_args!("vm{k}.{i}: guest unshare: {}", St(value)),
            );
            let after = probe_read(share_page).map(|_| ());
            if k == 0 {
                attack_probe("host-read-after-guest-unshare", after);
            } else {
                check(
                    after.is_err(),
                    format_args!("vm{k}.{i}: host still reads the unshared page"),
                );
            }
        }
        _ => {}
    }
}

/// A checksum report: right every time, and on both sides of the storm;
/// the reply (1) asks for another until the storm is over.
fn checksum(at: Exiting<'_>, value: u64, cpus: usize) -> u64 {
    let Exiting { k, i, d, .. } = at;
    let storm_over = SCHEDULE.stormed.load(Ordering::Acquire) >= cpus;
    d.reports = d.reports.saturating_add(1);
    if storm_over {
        d.reports_after_storm = d.reports_after_storm.saturating_add(1);
    }
    let good = value == guest::expected_checksum(seed_of(k));
    if !check(
        good,
        format_args!("vm{k}.{i}: checksum {value:#x} is wrong"),
    ) {
        d.checks_failed = d.checks_failed.saturating_add(1);
    }
    u64::from(!storm_over)
}

/// CPU 1 runs the attacker's spinning vCPU; meanwhile CPU 0 tries to run it
/// too and to destroy its VM (both must be `Busy`), then lets it finish.
/// CPU 1 stops its tick first: its timer would end the spinner's run (the
/// engine bounds a run by the host's tick) and leave it unloaded between
/// two runs, where CPU 0 may rightly run it. With one CPU there is no
/// attack: the CPU, ticking, runs the spinner, and between two runs the
/// host's tick ended it stops it.
pub(super) fn spin_attacks(cpu: usize, cpus: usize) {
    let n = ATTACKER_VM;
    let Some(vm) = WORLD.vms.get(n) else { return };
    let Some(slot) = vm.slot(SPIN_INDEX) else {
        return;
    };
    let share_page = vm
        .share_pa
        .load(Ordering::Relaxed)
        .wrapping_add((SPIN_INDEX as u64).wrapping_mul(PAGE_SIZE));
    if cpus == 1 {
        say!("vms: running-vCPU attacks skipped (one CPU)");
        while !run_once(n, SPIN_INDEX, slot, cpus) {
            if super::tally::sharing()[1] == 0 {
                continue;
            }
            invalidate_page(share_page);
            if probe_read(share_page) == Ok(guest::SPINNING) {
                let _ = probe_write(share_page.wrapping_add(8), guest::STOP);
                clean_page(share_page);
            }
        }
        return;
    }
    if cpu == 1 {
        crate::irq::stop_tick();
        SCHEDULE.spin_phase.store(1, Ordering::Release);
        let mut done = false;
        while !done {
            done = run_once(n, SPIN_INDEX, slot, cpus);
        }
        SCHEDULE.spin_phase.store(2, Ordering::Release);
    }
    if cpu != 0 {
        return;
    }
    // Wait until the guest spins: its shared page's word 0 says so. Read
    // it only once the engine counts a guest page shared with the host (the
    // spinner's: every other vCPU is done): before that, each read would be
    // refused, and a loop of refused reads is what the engine reports as a
    // host that may be looping.
    loop {
        if super::tally::sharing()[1] == 0 {
            core::hint::spin_loop();
            continue;
        }
        invalidate_page(share_page);
        if probe_read(share_page) == Ok(guest::SPINNING) {
            break;
        }
        if SCHEDULE.spin_phase.load(Ordering::Acquire) == 2 {
            check(
                false,
                format_args!("spinning vCPU ended before the attacks"),
            );
            return;
        }
        core::hint::spin_loop();
    }
    let h = vm.handle();
    attack(
        "run-vcpu-running-on-another-cpu",
        call(HostCall::VcpuRun, [h, SPIN_INDEX as u64, 0, 0, 0, 0])[0],
    );
    attack(
        "destroy-vm-while-its-vcpu-runs",
        call(HostCall::VmDestroy, [h, 0, 0, 0, 0, 0])[0],
    );
    check(
        probe_write(share_page.wrapping_add(8), guest::STOP).is_ok(),
        format_args!("cannot stop the spinner"),
    );
    clean_page(share_page);
    while SCHEDULE.spin_phase.load(Ordering::Acquire) != 2 {
        core::hint::spin_loop();
    }
}

/// Every CPU, ticking: runs one vCPU of the hold VM (which never exits by
/// itself: it spins with interrupts masked, or loops in its own vectors)
/// until a run ends with `Exit::Irq`: the engine ended it at this CPU's own
/// timer deadline. Answers the vCPU's first `INFO` on the way. CPU `cpu`
/// takes vCPU `cpu % count`, waiting for it if another CPU has it (only
/// with more CPUs than hold vCPUs).
pub(super) fn hold_run(cpu: usize, cpus: usize) {
    let Some(vm) = WORLD.vms.get(HOLD_VM) else {
        return;
    };
    let i = cpu
        .checked_rem(vm.vcpus.load(Ordering::Relaxed))
        .unwrap_or(0);
    let Some(slot) = vm.slot(i) else { return };
    while slot
        .state
        .compare_exchange(RESERVED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let irq_exits = || {
        // SAFETY: this CPU holds the claim (RESERVED -> RUNNING, Acquire)
        // until the Release store below.
        unsafe { (*slot.data.get()).irq_exits }
    };
    let before = irq_exits();
    // A hold vCPU reports INFO once, then never exits by itself: a bounded
    // number of runs suffices.
    for _ in 0..4 {
        if run_once(HOLD_VM, i, slot, cpus) || irq_exits() != before {
            break;
        }
    }
    check(
        irq_exits() != before,
        format_args!("cpu {cpu}: hold vCPU {i}: no run ended with Exit::Irq"),
    );
    slot.state.store(RESERVED, Ordering::Release);
}
