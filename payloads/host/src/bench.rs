//! Benchmark mode (`isola.test=bench`): the host counts the instructions each
//! engine operation costs, with the PMU, and prints one machine-readable line
//! per operation for `cargo xtask bench` (xtask/src/bench.rs) to tabulate.
//!
//! How it counts. Three PMU event counters count `INST_RETIRED` (event 0x08)
//! with different exception-level filters (PMEVTYPER<n>_EL0):
//! - counter 0: EL2 only (`P`, `U` set: not EL1, not EL0; `NSH` set: EL2),
//! - counter 1: every EL (`NSH` set, nothing filtered),
//! - counter 2: EL1 only (`U` set), a cross-check: total = EL2 + EL1 + EL0.
//!
//! Each sample reads the counters, runs the operation, reads them again. The
//! EL2 count needs no correction (the reads run at EL1). The total includes
//! the reads' own instructions, so the median of an empty operation measured
//! the same way is subtracted from it. On QEMU TCG the instruction event is
//! implemented only with `-icount` (it is the icount itself), which is why
//! the bench runs with `-icount shift=0 -smp 1`; on an Arm server the same
//! code counts retired instructions in hardware.
//!
//! The engine must let EL2 be counted: with `MDCR_EL2.HPMD` set (PMUv3p1),
//! counting at EL2 is prohibited for the host's counters and counter 0 stays
//! at zero. The bench detects that (a null hypercall that counts no EL2
//! instruction) and says so instead of printing zeros.
//!
//! Invariant: this mode runs on the boot CPU only (`-smp 1`) and starts no
//! other CPU, so the sample buffers need no lock.
//!
//! Memory: the bench uses host RAM from [`BENCH_BASE`] (0x8000_0000, far
//! above the payload, its stacks and the guest image window) for VM pools
//! and donated pages. (The host Stage-2 lazy-map fault it measured until
//! the DMA work is gone: the host's Stage-2 is built whole at boot, as it is
//! also the host's DMA view.)

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

use isola_abi::{Exit, GuestCall, HostCall, Status, perms};

use crate::calls::{hvc, hvc5, status_name};
use crate::console::line;
use crate::pmu::{self, read};

/// Samples per operation (the median, min and max are taken over them).
const SAMPLES: usize = 1001;
/// Pages donated per sample in the batched donate-and-map.
const BATCH: u64 = 512;

/// First byte of the bench's memory (host RAM).
const BENCH_BASE: u64 = 0x8000_0000;
/// Pool pages given to each VM at `VmCreate` (metadata, vCPU contexts,
/// Stage-2 tables for a few thousand pages).
const POOL_PAGES: u64 = 64;
/// IPA of the guest RAM the bench maps.
const GUEST_IPA: u64 = 0x4000_0000;
/// An IPA in the guest MMIO window of the booted engine (boot/src/engine.rs:
/// 3 GiB .. 4 GiB).
const MMIO_IPA: u64 = 0xC000_0000;
/// `PAGE_SIZE` as used in address arithmetic.
const PAGE: u64 = isola_abi::PAGE_SIZE;

/// The bench's sample buffers: EL2 and total counts of one operation.
struct Samples(UnsafeCell<[[u32; SAMPLES]; 2]>);
// SAFETY: bench mode runs on one CPU only (see the module invariant), so
// there is never a second accessor.
unsafe impl Sync for Samples {}
static SAMPLE_BUF: Samples = Samples(UnsafeCell::new([[0; SAMPLES]; 2]));

/// Median, min, max of a sample set (sorts it).
fn stats(v: &mut [u32]) -> (u32, u32, u32) {
    v.sort_unstable();
    let med = v.get(v.len() / 2).copied().unwrap_or(0);
    (
        med,
        v.first().copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}

/// The bench's state: the empty operation's total instruction count (the
/// reading code's own), subtracted from every total.
struct Bench {
    overhead: u64,
}

impl Bench {
    /// Measures `op` over `n` samples (`n <= SAMPLES`); each sample counts
    /// `per` operations, and the counts printed are per operation. `op`
    /// gets the sample index and returns whether it did what it should.
    fn run(&self, name: &str, n: usize, per: u32, op: impl FnMut(usize) -> bool) {
        self.run_with(name, n, per, |_| true, op);
    }

    /// Like [`Bench::run`], with `setup(i)` run before sample `i`'s window
    /// (not counted): e.g. the `Share` an `Unshare` needs.
    fn run_with(
        &self,
        name: &str,
        n: usize,
        per: u32,
        mut setup: impl FnMut(usize) -> bool,
        mut op: impl FnMut(usize) -> bool,
    ) {
        let n = n.min(SAMPLES);
        // SAFETY: one CPU (module invariant) and no other borrow is live:
        // `run_with` is not re-entered.
        let buf = unsafe { &mut *SAMPLE_BUF.0.get() };
        let [el2s, totals] = buf;
        let mut failed = None;
        for i in 0..n {
            let ready = setup(i);
            let a = read();
            let ok = op(i);
            let b = read();
            if !(ok && ready) && failed.is_none() {
                failed = Some(i);
            }
            let el2 = b.el2.wrapping_sub(a.el2);
            let total = b.total.wrapping_sub(a.total).saturating_sub(self.overhead);
            if let (Some(e), Some(t)) = (el2s.get_mut(i), totals.get_mut(i)) {
                *e = u32::try_from(el2).unwrap_or(u32::MAX);
                *t = u32::try_from(total).unwrap_or(u32::MAX);
            }
        }
        if let Some(i) = failed {
            line(format_args!("bench {name} failed at sample {i}"));
            return;
        }
        let per = per.max(1);
        let (e, t) = (
            el2s.get_mut(..n).unwrap_or_default(),
            totals.get_mut(..n).unwrap_or_default(),
        );
        let (em, emin, emax) = stats(e);
        let (tm, tmin, tmax) = stats(t);
        line(format_args!(
            "bench {name} el2 {} {} {} total {} {} {} samples {n} per {per}",
            em.checked_div(per).unwrap_or(em),
            emin.checked_div(per).unwrap_or(emin),
            emax.checked_div(per).unwrap_or(emax),
            tm.checked_div(per).unwrap_or(tm),
            tmin.checked_div(per).unwrap_or(tmin),
            tmax.checked_div(per).unwrap_or(tmax)
        ));
    }

    /// Says why an operation could not be measured.
    fn skip(name: &str, why: core::fmt::Arguments<'_>) {
        line(format_args!("bench {name} skipped: {why}"));
    }
}

/// `hvc` of a host call; the status.
fn call(c: HostCall, a: [u64; 4]) -> [u64; 4] {
    let [a1, a2, a3, a4] = a;
    hvc(c as u64, a1, a2, a3, a4)
}

fn ok(r: [u64; 4]) -> bool {
    r[0] == Status::Success.raw()
}

/// A bump allocator of host pages in the bench's memory.
struct Pages {
    next: u64,
}

impl Pages {
    /// `n` pages aligned to `align` bytes (a power of two).
    fn take_aligned(&mut self, n: u64, align: u64) -> u64 {
        let mask = align.wrapping_sub(1);
        self.next = self.next.wrapping_add(mask) & !mask;
        self.take(n)
    }

    fn take(&mut self, n: u64) -> u64 {
        let pa = self.next;
        self.next = self.next.wrapping_add(n.wrapping_mul(PAGE));
        pa
    }
}

/// Creates a VM with a fresh pool; its handle, or the failing status.
fn vm_create(pages: &mut Pages, vcpus: u64) -> Result<u64, u64> {
    // The pool starts with the VM's Stage-2 root (up to 16 concatenated
    // tables), which must be aligned to its size.
    let pool = pages.take_aligned(POOL_PAGES, 16 * PAGE);
    let r = call(HostCall::VmCreate, [pool, POOL_PAGES, vcpus, 0]);
    if ok(r) { Ok(r[1]) } else { Err(r[0]) }
}

// The bench guest: position-independent code the host copies into a page it
// donates. Entered with x0 = 0: exit with `GuestCall::HostCall` forever;
// x0 = [`FP_GUEST`]: the same, with an FP/SIMD register write before each
// `hvc` (FP/SIMD enabled in its `CPACR_EL1` first), so every run takes the
// world switch's lazy FP/SIMD load; x0 = [`INFO_GUEST`]: the same, with a
// `GuestCall::Info` before each `HostCall` (answered at EL2: the guest
// resumes without the host); x0 = an MMIO IPA: write to it forever. Every
// loop iteration is one exit to the host.
global_asm!(
    r#"
.section .rodata.bench_guest, "a"
.balign 4
.global bench_guest_start
.global bench_guest_end
bench_guest_start:
    cmp x0, #{FP}
    b.eq 4f
    cmp x0, #{INFO}
    b.eq 6f
    cbnz x0, 2f
1:  movz x0, #{LO}
    movk x0, #{HI}, lsl #16
    hvc #0
    b 1b
2:  mov x1, x0
3:  str w2, [x1]
    b 3b
4:  mov x1, #(3 << 20)
    msr cpacr_el1, x1
    isb
5:  fmov d0, x1
    movz x0, #{LO}
    movk x0, #{HI}, lsl #16
    hvc #0
    b 5b
6:  movz x0, #{INFO_LO}
    movk x0, #{INFO_HI}, lsl #16
    hvc #0
    movz x0, #{LO}
    movk x0, #{HI}, lsl #16
    hvc #0
    b 6b
bench_guest_end:
"#,
    FP = const FP_GUEST,
    INFO = const INFO_GUEST,
    LO = const GuestCall::HostCall as u32 & 0xffff,
    HI = const GuestCall::HostCall as u32 >> 16,
    INFO_LO = const GuestCall::Info as u32 & 0xffff,
    INFO_HI = const GuestCall::Info as u32 >> 16,
);

// The interrupt bench guest (entered at +0x800 with x0 ignored): its EL1
// vector table fills the first 2 KiB of its page; the IRQ vector (current
// EL, SP_ELx, +0x280) acknowledges the virtual interrupt and ends it
// (`ICC_IAR1_EL1`, `ICC_EOIR1_EL1`: with `HCR_EL2.IMO` these reach the
// virtual CPU interface), every other vector powers the guest off (the
// sample then fails). The entry points VBAR_EL1 at the table, opens the
// virtual interface (priority mask 0xf0, group 1 on), unmasks IRQs and
// exits with `HostCall` forever: each run takes the interrupt the host put
// in its list registers, if any, before its `hvc`.
global_asm!(
    r#"
.section .rodata.bench_irq_guest, "a"
.balign 2048
.global bench_irq_guest_start
.global bench_irq_guest_end
bench_irq_guest_start:
    .rept 5
    .balign 0x80
    movz x0, #{OFF_LO}
    movk x0, #{OFF_HI}, lsl #16
    hvc #0
    .endr
    .balign 0x80
    mrs x2, icc_iar1_el1
    msr icc_eoir1_el1, x2
    eret
    .rept 10
    .balign 0x80
    movz x0, #{OFF_LO}
    movk x0, #{OFF_HI}, lsl #16
    hvc #0
    .endr
    .balign 0x80
    adr x1, bench_irq_guest_start
    msr vbar_el1, x1
    mov x1, #0xf0
    msr icc_pmr_el1, x1
    mov x1, #1
    msr icc_igrpen1_el1, x1
    isb
    msr daifclr, #2
1:  movz x0, #{LO}
    movk x0, #{HI}, lsl #16
    hvc #0
    b 1b
bench_irq_guest_end:
"#,
    LO = const GuestCall::HostCall as u32 & 0xffff,
    HI = const GuestCall::HostCall as u32 >> 16,
    OFF_LO = const isola_abi::psci::SYSTEM_OFF & 0xffff,
    OFF_HI = const isola_abi::psci::SYSTEM_OFF >> 16,
);

// The timed guest (`guest_timed`): the anchors' loop method from inside the
// guest. Entered with x0 = 0 it times TIMED_ITERATIONS `HostCall` exits, x0
// = an MMIO IPA the same number of stores to it (each an exit to the host),
// then the same loops with `nop` in place of the `hvc` or the store, each
// between `isb; mrs cntvct_el0`; it reports the difference of the two
// times with a `HostCall` whose first argument is 1 (the loop's exits carry
// the host's reply, 0), forever.
global_asm!(
    r#"
.section .rodata.bench_timed_guest, "a"
.balign 4
.global bench_timed_guest_start
.global bench_timed_guest_end
bench_timed_guest_start:
    mov x24, x0
    movz x25, #{N_LO}
    movk x25, #{N_HI}, lsl #16
    mov x19, x25
    isb
    mrs x20, cntvct_el0
    cbnz x24, 3f
1:  movz x0, #{LO}
    movk x0, #{HI}, lsl #16
    hvc #0
    subs x19, x19, #1
    b.ne 1b
    b 4f
3:  str w2, [x24]
    subs x19, x19, #1
    b.ne 3b
4:  isb
    mrs x21, cntvct_el0
    mov x19, x25
    isb
    mrs x22, cntvct_el0
    cbnz x24, 6f
5:  movz x0, #{LO}
    movk x0, #{HI}, lsl #16
    nop
    subs x19, x19, #1
    b.ne 5b
    b 7f
6:  nop
    subs x19, x19, #1
    b.ne 6b
7:  isb
    mrs x23, cntvct_el0
    sub x1, x21, x20
    sub x2, x23, x22
    sub x2, x1, x2
    mov x1, #1
8:  movz x0, #{LO}
    movk x0, #{HI}, lsl #16
    hvc #0
    b 8b
bench_timed_guest_end:
"#,
    LO = const GuestCall::HostCall as u32 & 0xffff,
    HI = const GuestCall::HostCall as u32 >> 16,
    N_LO = const TIMED_ITERATIONS & 0xffff,
    N_HI = const TIMED_ITERATIONS >> 16,
);

/// Exits each of the timed guest's loops makes.
const TIMED_ITERATIONS: u32 = 100_000;

unsafe extern "C" {
    static bench_guest_start: u8;
    static bench_guest_end: u8;
    static bench_timed_guest_start: u8;
    static bench_timed_guest_end: u8;
    static bench_irq_guest_start: u8;
    static bench_irq_guest_end: u8;
}

/// Where the interrupt bench guest starts, from its page's base.
const IRQ_GUEST_ENTRY: u64 = 0x800;

/// Copies the bench guest's code to the host page `pa` (the storm's guest
/// too).
pub(crate) fn write_guest_code(pa: u64) {
    write_code(
        pa,
        &raw const bench_guest_start as u64,
        &raw const bench_guest_end as u64,
    );
}

/// Copies the timed guest's code to the host page `pa`.
fn write_timed_guest_code(pa: u64) {
    write_code(
        pa,
        &raw const bench_timed_guest_start as u64,
        &raw const bench_timed_guest_end as u64,
    );
}

/// Copies the code between `start` and `end` (this payload's rodata) to the
/// host page `pa` and cleans it to the point of coherency.
fn write_code(pa: u64, start: u64, end: u64) {
    let end = end.min(start.wrapping_add(PAGE));
    let mut off = 0;
    while start.wrapping_add(off) < end {
        // SAFETY: `start..end` is one of the guest programs above, in the
        // payload's rodata; `pa` is a host page of the bench's memory,
        // identity-mapped and owned by the host until it is donated.
        unsafe {
            let w = core::ptr::read_volatile(start.wrapping_add(off) as *const u32);
            core::ptr::write_volatile(pa.wrapping_add(off) as *mut u32, w);
        }
        off = off.wrapping_add(4);
    }
    // Cleaned to the point of coherency, line by line, so the guest (MMU
    // off, non-cacheable fetches where it has no FWB) sees the code.
    let mut line = pa;
    while line < pa.wrapping_add(off) {
        // SAFETY: cleaning a line of the page just written changes no data.
        unsafe { asm!("dc cvac, {}", in(reg) line, options(nostack)) };
        line = line.wrapping_add(64);
    }
    // SAFETY: a barrier only orders.
    unsafe { asm!("dsb sy", options(nostack)) };
}

/// A VM with one vCPU that runs the interrupt bench guest.
fn irq_guest_vm(pages: &mut Pages) -> Result<u64, (&'static str, &'static str)> {
    let vm = vm_create(pages, 1).map_err(|s| ("VmCreate", status_name(s)))?;
    let code = pages.take(1);
    write_code(
        code,
        &raw const bench_irq_guest_start as u64,
        &raw const bench_irq_guest_end as u64,
    );
    let r = call(HostCall::Donate, [vm, code, GUEST_IPA, perms::R | perms::X]);
    if !ok(r) {
        return Err(("Donate", status_name(r[0])));
    }
    let entry = GUEST_IPA.wrapping_add(IRQ_GUEST_ENTRY);
    let r = call(HostCall::VcpuCreate, [vm, 0, entry, 0]);
    if !ok(r) {
        return Err(("VcpuCreate", status_name(r[0])));
    }
    Ok(vm)
}

/// The vCPU run round trip with a virtual interrupt in play: before each
/// run the host hands the engine one pending interrupt (`VcpuInterrupts`,
/// SPI 40 at priority 0x80, no `EOI`: what a VMM does for an edge
/// interrupt), and the guest takes it, acknowledges and ends it, then exits
/// with `HostCall`; the exit must report the list register done (invalid).
/// Also the `VcpuInterrupts` call alone. Skipped while the engine presents
/// no virtual interrupts (`Version`'s list-register count is 0).
fn interrupt_round_trip(b: &Bench, pages: &mut Pages) {
    let features = call(HostCall::Version, [0; 4])[2];
    if isola_abi::features::list_registers(features) == 0 {
        for name in ["vcpu-interrupts-call", "vcpu-run-with-interrupt"] {
            Bench::skip(
                name,
                format_args!("the engine presents no virtual interrupts (0 list registers)"),
            );
        }
        return;
    }
    let vm = match irq_guest_vm(pages) {
        Ok(vm) => vm,
        Err(s) => {
            Bench::skip(
                "vcpu-run-with-interrupt",
                format_args!("guest setup: {} -> {}", s.0, s.1),
            );
            return;
        }
    };
    // The first run sets the guest up; it exits with its first HostCall.
    if !run_once(vm, |e| matches!(e, Exit::HostCall { .. })) {
        Bench::skip(
            "vcpu-run-with-interrupt",
            format_args!("the guest did not reach its loop"),
        );
        return;
    }
    let word = isola_abi::lr::pending(40, 0x80, false);
    let present = || ok(hvc5(HostCall::VcpuInterrupts as u64, [vm, 0, word, 0, 0]));
    b.run("vcpu-interrupts-call", SAMPLES, 1, |_| present());
    // Leave the list registers empty again for the round trips below.
    let _ = hvc5(HostCall::VcpuInterrupts as u64, [vm, 0, 0, 0, 0]);
    b.run("vcpu-run-with-interrupt", SAMPLES, 1, |_| {
        if !present() {
            return false;
        }
        let r = call(HostCall::VcpuRun, [vm, 0, 0, 0]);
        let taken = isola_abi::ExitStatus::from_word(r[1]).lrs[0] == isola_abi::LrState::Invalid;
        ok(r)
            && taken
            && matches!(
                Exit::decode([r[1], r[2], r[3]]),
                Some(Exit::HostCall { .. })
            )
    });
}

/// The bench guest's argument for its FP/SIMD loop (not a page address,
/// so never an MMIO IPA).
const FP_GUEST: u64 = 1;
/// The bench guest's argument for a `GuestCall::Info` before each exit.
const INFO_GUEST: u64 = 2;

/// A VM with one vCPU that runs the bench guest with `x0 = arg`.
fn guest_vm(pages: &mut Pages, arg: u64) -> Result<u64, (&'static str, &'static str)> {
    guest_vm_running(pages, arg, write_guest_code)
}

/// A VM with one vCPU that runs the code `write` puts in its page, with
/// `x0 = arg`.
fn guest_vm_running(
    pages: &mut Pages,
    arg: u64,
    write: fn(u64),
) -> Result<u64, (&'static str, &'static str)> {
    let vm = vm_create(pages, 1).map_err(|s| ("VmCreate", status_name(s)))?;
    let code = pages.take(1);
    write(code);
    let r = call(HostCall::Donate, [vm, code, GUEST_IPA, perms::R | perms::X]);
    if !ok(r) {
        return Err(("Donate", status_name(r[0])));
    }
    let r = call(HostCall::VcpuCreate, [vm, 0, GUEST_IPA, arg]);
    if !ok(r) {
        return Err(("VcpuCreate", status_name(r[0])));
    }
    Ok(vm)
}

/// Runs vCPU 0 of `vm` once; whether it exited the way `want` says.
fn run_once(vm: u64, want: fn(Exit) -> bool) -> bool {
    let r = call(HostCall::VcpuRun, [vm, 0, 0, 0]);
    ok(r) && Exit::decode([r[1], r[2], r[3]]).is_some_and(want)
}

/// Relates the icount virtual clock to instructions: the generic timer's
/// frequency and how many instructions (PMU, every EL) one `CNTVCT` tick
/// is, over 1000 null hypercalls. Under `-icount shift=0` one instruction
/// is 1 ns of virtual time, so a 62.5 MHz counter ticks every 16
/// instructions: fine for long loops, too coarse for one operation.
fn clock_check() {
    let (frq, t0, t1): (u64, u64, u64);
    // SAFETY: reading the counter frequency has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) frq, options(nomem, nostack)) };
    // SAFETY: reading the virtual counter has no side effect; the `isb`
    // orders it after the instructions before it.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) t0, options(nostack)) };
    let a = read();
    for _ in 0..1000 {
        hvc(0xC600_00FF, 0, 0, 0, 0);
    }
    let b = read();
    // SAFETY: as above.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) t1, options(nostack)) };
    let instr = b.total.wrapping_sub(a.total);
    let ticks = t1.wrapping_sub(t0);
    let per_100 = instr.saturating_mul(100).checked_div(ticks).unwrap_or(0);
    line(format_args!(
        "bench clock check: CNTFRQ {frq} Hz; 1000 null hypercalls = {instr} instructions (PMU) = {ticks} CNTVCT ticks: {}.{:02} instructions per tick",
        per_100 / 100,
        per_100 % 100
    ));
}

/// The anchors' own method (`ANCHORS.md`): 100,000 iterations of a loop
/// around `hvc #0` with an unknown function id, minus the same loop with
/// `nop` in its place, timed by the icount virtual clock (one instruction is
/// one nanosecond under `-icount shift=0`). The difference is the round
/// trip's instructions beyond the `nop`'s; it is printed beside the PMU
/// figures so isola and pKVM compare on exactly the same footing.
fn anchor_method() {
    const ITERATIONS: u64 = 100_000;
    let frq: u64;
    // SAFETY: reading the counter frequency has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) frq, options(nomem, nostack)) };
    let hvc_ticks = timed_loop::<true>(ITERATIONS);
    let nop_ticks = timed_loop::<false>(ITERATIONS);
    // Nanoseconds of virtual time, i.e. instructions, per tick.
    let ns_per_tick = 1_000_000_000_u64.checked_div(frq).unwrap_or(0);
    let diff = hvc_ticks
        .saturating_sub(nop_ticks)
        .saturating_mul(ns_per_tick);
    let per_100 = diff.saturating_mul(100) / ITERATIONS;
    line(format_args!(
        "bench anchor method: {ITERATIONS} x (hvc loop - nop loop) = {diff} instructions by the icount clock: {}.{:02} per null hypercall round trip (pKVM: 81)",
        per_100 / 100,
        per_100 % 100
    ));
}

/// CNTVCT ticks taken by `n` iterations of `mov x0, id; hvc #0` (or `nop`
/// in place of the `hvc`); the loop body is otherwise identical.
fn timed_loop<const HVC: bool>(n: u64) -> u64 {
    let (t0, t1): (u64, u64);
    let id: u64 = 0xC600_00FF;
    // SAFETY: reading the virtual counter has no side effect; the `isb`
    // orders it after the instructions before it.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) t0, options(nostack)) };
    if HVC {
        // SAFETY: a null hypercall, repeated; SMCCC lets the engine clobber
        // x0..x17, all declared (as `out`, so `id` and `n` live elsewhere).
        unsafe {
            asm!("2:", "mov x0, {id}", "hvc #0", "subs {n}, {n}, #1", "b.ne 2b",
                id = in(reg) id, n = inout(reg) n => _,
                out("x0") _, out("x1") _, out("x2") _, out("x3") _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                out("x16") _, out("x17") _, options(nostack));
        }
    } else {
        // SAFETY: the same loop with `nop`: it touches only declared registers.
        unsafe {
            asm!("2:", "mov x0, {id}", "nop", "subs {n}, {n}, #1", "b.ne 2b",
                id = in(reg) id, n = inout(reg) n => _,
                out("x0") _, out("x1") _, out("x2") _, out("x3") _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                out("x16") _, out("x17") _, options(nostack));
        }
    }
    // SAFETY: as above.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) t1, options(nostack)) };
    t1.wrapping_sub(t0)
}

/// The guest exit round trip as the guest sees it, by the anchors' method
/// (`ANCHORS.md`: pKVM 1,919 for a `hvc` handled in the host kernel, 5,330
/// for an MMIO store that exits to the VMM in userspace): the timed guest's
/// loop of [`TIMED_ITERATIONS`] exits minus the same loop with `nop`. What
/// this host does per exit: one `VcpuRun` (`hvc`) whose result it decodes
/// and checks is an exit it expects, in a loop; no device emulation, and
/// the reply is always zero.
fn guest_timed(pages: &mut Pages, name: &str, arg: u64, anchor: &str) {
    let vm = match guest_vm_running(pages, arg, write_timed_guest_code) {
        Ok(vm) => vm,
        Err(s) => {
            Bench::skip(name, format_args!("guest setup: {} -> {}", s.0, s.1));
            return;
        }
    };
    let mut exits = 0_u64;
    loop {
        let r = call(HostCall::VcpuRun, [vm, 0, 0, 0]);
        let exit = if r[0] == Status::Success.raw() {
            Exit::decode([r[1], r[2], r[3]])
        } else {
            None
        };
        match exit {
            Some(Exit::HostCall { args: [1, diff] }) => {
                let per_100 = diff
                    .saturating_mul(100)
                    .checked_div(u64::from(TIMED_ITERATIONS))
                    .unwrap_or(0);
                line(format_args!(
                    "bench guest-timed {name}: {TIMED_ITERATIONS} x (exit loop - nop loop) = {diff} ticks of the guest's counter ({exits} exits): {}.{:02} per round trip ({anchor})",
                    per_100 / 100,
                    per_100 % 100
                ));
                return;
            }
            Some(Exit::HostCall { .. } | Exit::Mmio { write: true, .. }) => {
                exits = exits.wrapping_add(1);
            }
            _ => {
                Bench::skip(
                    name,
                    format_args!(
                        "unexpected VcpuRun result {} {:#x}",
                        status_name(r[0]),
                        r[1]
                    ),
                );
                return;
            }
        }
    }
}

/// Runs the whole benchmark and prints its lines.
pub fn run() {
    if pmu::setup().is_none() {
        line(format_args!(
            "bench skipped: the PMU has fewer than 3 event counters"
        ));
        return;
    }
    // The empty operation: what the readings themselves cost.
    let mut b = Bench { overhead: 0 };
    let mut empty = [0_u32; 64];
    for e in &mut empty {
        let x = read();
        let y = read();
        *e = u32::try_from(y.total.wrapping_sub(x.total)).unwrap_or(u32::MAX);
    }
    b.overhead = u64::from(stats(&mut empty).0);
    // Is EL2 counted at all, and does total = EL2 + EL1 hold?
    let x = read();
    let r = hvc(0xC600_00FF, 0, 0, 0, 0);
    let y = read();
    let el2 = y.el2.wrapping_sub(x.el2);
    let el1 = y.el1.wrapping_sub(x.el1);
    let total = y.total.wrapping_sub(x.total);
    line(format_args!(
        "bench pmu check: null hypercall -> {}, el2 {el2} el1 {el1} total {total} (reading overhead {})",
        status_name(r[0]),
        b.overhead
    ));
    clock_check();
    anchor_method();
    if total == 0 {
        line(format_args!(
            "bench skipped: the PMU counts no instructions (on QEMU TCG the event needs -icount)"
        ));
        return;
    }
    if el2 == 0 {
        line(format_args!(
            "bench skipped: the engine does not let the host count at EL2 (MDCR_EL2.HPMD)"
        ));
        return;
    }

    b.run("null-hypercall", SAMPLES, 1, |_| {
        hvc(0xC600_00FF, 0, 0, 0, 0)[0] == Status::NotSupported.raw()
    });
    b.run("version", SAMPLES, 1, |_| {
        ok(call(HostCall::Version, [0; 4]))
    });

    let mut pages = Pages { next: BENCH_BASE };
    // Guest exits first (they need only their own VMs, and a trace of the
    // boot up to here stays small): a vCPU whose guest makes a hypercall at
    // once; two such VMs run alternately on this CPU; one whose guest writes
    // to MMIO at once.
    match guest_vm(&mut pages, 0) {
        Err(s) => Bench::skip(
            "vcpu-run-hypercall-exit",
            format_args!("guest setup: {} -> {}", s.0, s.1),
        ),
        Ok(a) => {
            b.run("vcpu-run-hypercall-exit", SAMPLES, 1, |_| {
                run_once(a, |e| matches!(e, Exit::HostCall { .. }))
            });
            match guest_vm(&mut pages, 0) {
                Err(s) => Bench::skip(
                    "vcpu-switch-2vms",
                    format_args!("guest setup: {} -> {}", s.0, s.1),
                ),
                Ok(c) => b.run("vcpu-switch-2vms", SAMPLES, 1, |i| {
                    run_once(if i % 2 == 0 { a } else { c }, |e| {
                        matches!(e, Exit::HostCall { .. })
                    })
                }),
            }
        }
    }
    match guest_vm(&mut pages, FP_GUEST) {
        Err(s) => Bench::skip(
            "vcpu-run-fp-exit",
            format_args!("guest setup: {} -> {}", s.0, s.1),
        ),
        Ok(f) => b.run("vcpu-run-fp-exit", SAMPLES, 1, |_| {
            run_once(f, |e| matches!(e, Exit::HostCall { .. }))
        }),
    }
    match guest_vm(&mut pages, INFO_GUEST) {
        Err(s) => Bench::skip(
            "vcpu-run-el2-call-exit",
            format_args!("guest setup: {} -> {}", s.0, s.1),
        ),
        Ok(f) => b.run("vcpu-run-el2-call-exit", SAMPLES, 1, |_| {
            run_once(f, |e| matches!(e, Exit::HostCall { .. }))
        }),
    }
    interrupt_round_trip(&b, &mut pages);
    guest_timed(&mut pages, "hvc-exit", 0, "pKVM: 1,919 to its host kernel");
    guest_timed(
        &mut pages,
        "mmio-exit",
        MMIO_IPA,
        "pKVM: 5,330 to its VMM in userspace",
    );
    match guest_vm(&mut pages, MMIO_IPA) {
        Err(s) => Bench::skip("mmio-exit", format_args!("guest setup: {} -> {}", s.0, s.1)),
        Ok(m) => b.run("mmio-exit", SAMPLES, 1, |_| {
            run_once(m, |e| matches!(e, Exit::Mmio { write: true, .. }))
        }),
    }
    let vm = match vm_create(&mut pages, 1) {
        Ok(vm) => vm,
        Err(s) => {
            Bench::skip("vm-ops", format_args!("VmCreate -> {}", status_name(s)));
            return;
        }
    };

    // Donate and map one page at a time, each into a fresh IPA page.
    let single = pages.take(SAMPLES as u64);
    b.run("donate-map-1", SAMPLES, 1, |i| {
        let off = (i as u64).wrapping_mul(PAGE);
        ok(call(
            HostCall::Donate,
            [
                vm,
                single.wrapping_add(off),
                GUEST_IPA.wrapping_add(off),
                perms::R | perms::W,
            ],
        ))
    });
    // Batches of 512 into a fresh 2 MiB of IPA each, one `Donate` of
    // `pages = 512` per batch: per page.
    let batches = 8;
    let batch_pa = pages.take(BATCH.wrapping_mul(batches));
    let batch_ipa = GUEST_IPA.wrapping_add(0x1000_0000);
    b.run("donate-map-batch512", batches as usize, BATCH as u32, |i| {
        let off = (i as u64).wrapping_mul(BATCH).wrapping_mul(PAGE);
        ok(hvc5(
            HostCall::Donate as u64,
            [
                vm,
                batch_pa.wrapping_add(off),
                batch_ipa.wrapping_add(off),
                perms::R | perms::W,
                BATCH,
            ],
        ))
    });

    // Share a host page, then unshare it, the same page every sample; the
    // other half of each pair runs outside the measured window.
    let shared = pages.take(1);
    let share_ipa = GUEST_IPA.wrapping_add(0x2000_0000);
    let share = || {
        ok(call(
            HostCall::Share,
            [vm, shared, share_ipa, perms::R | perms::W],
        ))
    };
    let unshare = || ok(call(HostCall::Unshare, [vm, shared, share_ipa, 0]));
    b.run_with("share", SAMPLES, 1, |i| i == 0 || unshare(), |_| share());
    b.run_with("unshare", SAMPLES, 1, |i| i == 0 || share(), |_| unshare());

    // Teardown: destroy the VM, then reclaim each of its guest pages (the
    // host's Stage-2 gets each back at once: it is the host's DMA view too).
    let x = read();
    let r = call(HostCall::VmDestroy, [vm, 0, 0, 0]);
    let y = read();
    if ok(r) {
        line(format_args!(
            "bench vm-destroy el2 {0} {0} {0} total {1} {1} {1} samples 1 per 1",
            y.el2.wrapping_sub(x.el2),
            y.total.wrapping_sub(x.total).saturating_sub(b.overhead)
        ));
    }
    if !ok(r) {
        Bench::skip(
            "teardown",
            format_args!("VmDestroy -> {}", status_name(r[0])),
        );
    } else {
        b.run("reclaim-page", SAMPLES, 1, |i| {
            let pa = single.wrapping_add((i as u64).wrapping_mul(PAGE));
            ok(call(HostCall::Reclaim, [pa, 0, 0, 0]))
        });
        let mut rest_ok = true;
        for p in 0..BATCH.wrapping_mul(batches) {
            rest_ok &= ok(call(
                HostCall::Reclaim,
                [batch_pa.wrapping_add(p.wrapping_mul(PAGE)), 0, 0, 0],
            ));
        }
        if !rest_ok {
            line(format_args!("bench reclaim of the batch pages failed"));
        }
    }

    line(format_args!("bench done"));
}
