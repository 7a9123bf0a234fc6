//! The host's VM test: create VMs from the guest image, run their vCPUs on
//! every host CPU at once, emulate their console, answer their calls, back
//! their memory faults, attack the engine from the host side, tear every VM
//! down and check every page came back zeroed and the engine's accounting
//! is exact.
//!
//! [`main`] runs on the boot CPU: it sets up alone, starts every other host
//! CPU into [`secondary`], and all of them run vCPUs, making a bounded storm
//! of random host calls between runs; two CPUs together attack a running
//! vCPU; the others turn off and the boot CPU tears down alone.
//!
//! Invariants:
//! - A vCPU's host-side record is touched only by the CPU that claimed it
//!   (state `READY -> RUNNING` by compare-exchange, Acquire; released with a
//!   Release store), so each vCPU runs on at most one host CPU at a time by
//!   the host's own choice — the engine's `Busy` is tested separately.
//! - VM records are written by CPU 0 only before it starts the other CPUs
//!   and after they are off again; in between every CPU only reads them (or
//!   uses atomics).
//! - Pages come from `[POOL_BASE, POOL_END)`, host RAM no one else uses, by a
//!   bump allocator; none is reused, so a page's history is simple.
//! - Every access the host makes to a page it may not own (attacks, shared
//!   pages) goes through a probe that catches the injected synchronous
//!   external abort, so an engine bug is reported instead of crashing.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use isola_abi::{Accounting, Exit, GuestCall, HostCall, PAGE_SIZE, Status, perms};
use isola_guest_payload::{self as guest, Attack, Behaviour, ImageHeader, layout, msg};

/// Prints one whole line (the host's console lock keeps lines whole).
pub type Print = fn(fmt::Arguments<'_>);

/// First byte of the host RAM this test donates from (see docs/guests.md).
pub const POOL_BASE: u64 = 0x8000_0000;
/// End (exclusive) of that RAM: 768 MiB.
pub const POOL_END: u64 = 0xb000_0000;
/// vCPUs of each ordinary VM: checksum, MMIO, share, demand.
pub const VCPUS: usize = 4;
/// Most ordinary VMs (the engine's table has 255 slots; two more VMs are the
/// attacker and the power-off VM).
pub const MAX_VMS: usize = 251;
/// Record index of the attacker VM.
const ATTACKER_VM: usize = MAX_VMS;
/// Record index of the VM that powers itself off.
const POWER_VM: usize = MAX_VMS + 1;
/// Record index of the VM that resets itself.
const RESET_VM: usize = MAX_VMS + 2;
/// Pool pages donated at `VmCreate` (metadata, contexts, Stage-2 tables).
const POOL_PAGES: u64 = 32;
/// Random host calls each CPU makes while guests run.
const STORM_PER_CPU: u32 = 64;
/// A physical address inside the engine's carve-out (docs/boot.md).
const ENGINE_PA: u64 = 0x4380_0000;
/// Where the host's GIC distributor is: a guest access there is only MMIO.
const GICD_IPA: u64 = 0x0800_0000;
/// An IPA far beyond any guest's IPA space.
const BEYOND_IPA: u64 = 1 << 46;

/// The attacker VM's vCPUs, by index.
const ATTACKER: [Role; 7] = [
    Role::Attack,
    Role::ProbeOtherVm,
    Role::ProbeEngineWrite,
    Role::ProbeBeyond,
    Role::ProbeGic,
    Role::Spin,
    Role::Registers,
];
/// The attacker's vCPU that spins for the running-vCPU attacks.
const SPIN_INDEX: usize = 5;
/// The power VMs' vCPUs: one each, since after `SYSTEM_OFF` (or
/// `SYSTEM_RESET`) the engine runs no vCPU of that VM again.
const POWER: [Role; 1] = [Role::SystemOff];
const RESET: [Role; 1] = [Role::SystemReset];
/// An ordinary VM's vCPUs.
const ORDINARY: [Role; VCPUS] = [Role::Checksum, Role::Mmio, Role::Share, Role::Demand];
/// Most vCPUs any VM here has.
const MAX_VCPUS: usize = 7;
/// Most demand-backed pages one VM may get.
const MAX_DEMAND: usize = 16;

/// What a vCPU is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Checksum,
    Mmio,
    Share,
    Demand,
    Attack,
    ProbeOtherVm,
    ProbeEngineWrite,
    ProbeBeyond,
    ProbeGic,
    Spin,
    Registers,
    SystemOff,
    SystemReset,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Checksum => "checksum",
            Role::Mmio => "mmio",
            Role::Share => "share",
            Role::Demand => "demand",
            Role::Attack => "attack",
            Role::ProbeOtherVm => "probe-other-vm",
            Role::ProbeEngineWrite => "probe-engine",
            Role::ProbeBeyond => "probe-beyond",
            Role::ProbeGic => "probe-gic",
            Role::Spin => "spin",
            Role::Registers => "registers",
            Role::SystemOff => "system-off",
            Role::SystemReset => "system-reset",
        }
    }
}

// ---------------------------------------------------------------------------
// Hypercalls and probes.

/// `hvc #0` with `x0 = id`, `x1..=x6 = args`; returns `x0..=x3`.
fn hvc(id: u64, args: [u64; 6]) -> [u64; 4] {
    let [a1, a2, a3, a4, a5, a6] = args;
    let (r0, r1, r2, r3);
    // SAFETY: the engine's hypercall touches no memory of this payload's
    // that Rust knows of (it may take pages away, which the payload reaches
    // only through probes); SMCCC lets it clobber x4..x17, all declared.
    unsafe {
        asm!(
            "hvc #0",
            inlateout("x0") id => r0, inlateout("x1") a1 => r1,
            inlateout("x2") a2 => r2, inlateout("x3") a3 => r3,
            inlateout("x4") a4 => _, inlateout("x5") a5 => _, inlateout("x6") a6 => _,
            lateout("x7") _, lateout("x8") _, lateout("x9") _, lateout("x10") _,
            lateout("x11") _, lateout("x12") _, lateout("x13") _, lateout("x14") _,
            lateout("x15") _, lateout("x16") _, lateout("x17") _,
            options(nostack),
        );
    }
    [r0, r1, r2, r3]
}

fn call(c: HostCall, args: [u64; 6]) -> [u64; 4] {
    hvc(c as u64, args)
}

// vms_run_probe(x0 = function id, x1..x3 = arguments, x4 = buffer of 96
// words): fills x5..x30 with reg_pattern(0x4057, n) (x4 too, after saving
// the buffer pointer), v0..v31 with the byte 0x80 + n, FPCR with
// PROBE_FPCR and FPSR with PROBE_FPSR, makes the `hvc`, stores x0..x30
// (words 0..30), FPSR << 32 | FPCR (word 31) and v0..v31 (words 32..95) into
// the buffer and restores the callee-saved registers, FPCR and FPSR. Every
// `VcpuRun` goes through it, so every guest exit checks that the host's
// registers came back untouched by the world switch and carry nothing of the
// guest's (the engine does not save the host's FP/SIMD state on every trap,
// only the world switch does).
global_asm!(
    r#"
    .section .text.vms_run_probe, "ax"
    .global vms_run_probe
vms_run_probe:
    sub sp, sp, #208
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    str x4, [sp, #160]
    mrs x5, fpcr
    mrs x6, fpsr
    stp x5, x6, [sp, #192]
    ldr x5, ={fpcr}
    msr fpcr, x5
    ldr x6, ={fpsr}
    msr fpsr, x6
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    movi v\n\().16b, #(0x80 + \n)
    .endr
    .irp n, 4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    movz x\n, #(0x100 + \n)
    movk x\n, #0x4057, lsl #48
    .endr
    hvc #0
    stp x0, x1, [sp, #176]
    ldr x0, [sp, #160]
    stp x2, x3, [x0, #16]
    stp x4, x5, [x0, #32]
    stp x6, x7, [x0, #48]
    stp x8, x9, [x0, #64]
    stp x10, x11, [x0, #80]
    stp x12, x13, [x0, #96]
    stp x14, x15, [x0, #112]
    stp x16, x17, [x0, #128]
    stp x18, x19, [x0, #144]
    stp x20, x21, [x0, #160]
    stp x22, x23, [x0, #176]
    stp x24, x25, [x0, #192]
    stp x26, x27, [x0, #208]
    stp x28, x29, [x0, #224]
    str x30, [x0, #240]
    ldp x2, x3, [sp, #176]
    stp x2, x3, [x0, #0]
    add x1, x0, #256
    stp q0, q1, [x1, #0]
    stp q2, q3, [x1, #32]
    stp q4, q5, [x1, #64]
    stp q6, q7, [x1, #96]
    stp q8, q9, [x1, #128]
    stp q10, q11, [x1, #160]
    stp q12, q13, [x1, #192]
    stp q14, q15, [x1, #224]
    stp q16, q17, [x1, #256]
    stp q18, q19, [x1, #288]
    stp q20, q21, [x1, #320]
    stp q22, q23, [x1, #352]
    stp q24, q25, [x1, #384]
    stp q26, q27, [x1, #416]
    stp q28, q29, [x1, #448]
    stp q30, q31, [x1, #480]
    mrs x2, fpcr
    mrs x3, fpsr
    orr x2, x2, x3, lsl #32
    str x2, [x0, #248]
    ldp x5, x6, [sp, #192]
    msr fpcr, x5
    msr fpsr, x6
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #208
    ret
    .ltorg
"#,
    fpcr = const PROBE_FPCR,
    fpsr = const PROBE_FPSR,
);

/// The FPCR the host holds across every `VcpuRun`: AHP | RMode = towards
/// zero; differs from the guests' (`REGS_FPCR`) and from the reset value.
const PROBE_FPCR: u64 = 1 << 26 | 3 << 22;
/// The FPSR the host holds across every `VcpuRun`: QC and the IXC, OFC, IOC
/// cumulative flags.
const PROBE_FPSR: u64 = 1 << 27 | 1 << 4 | 1 << 2 | 1;

unsafe extern "C" {
    fn vms_run_probe(id: u64, a1: u64, a2: u64, a3: u64, buf: *mut [u64; 96]);
}

/// `VcpuRun` through [`vms_run_probe`]: `x0..x3`, and how many of the host's
/// `x4..x30`, `v0..v31` halves and FPCR/FPSR (one, together) did not come
/// back as the host left them.
fn vcpu_run_checked(handle: u64, index: u64, value: u64) -> ([u64; 4], u64) {
    let mut buf = [0u64; 96];
    // SAFETY: the routine writes exactly the 96 words of `buf`, restores
    // every callee-saved register and SP, and its `hvc` touches no memory
    // Rust owns (as for `hvc`); every caller-saved register is clobbered,
    // which the `extern "C"` call already assumes.
    unsafe { vms_run_probe(HostCall::VcpuRun as u64, handle, index, value, &raw mut buf) };
    let x_lost = (4..=30u64)
        .filter(|&n| buf.get(n as usize).copied() != Some(guest::reg_pattern(0x4057, n)))
        .count();
    let v_lost = (0..32u8)
        .filter(|&n| {
            let want = u64::from_ne_bytes([guest::vreg_byte(0x80, n); 8]);
            let at = 32usize.wrapping_add(usize::from(n).wrapping_mul(2));
            buf.get(at) != Some(&want) || buf.get(at.wrapping_add(1)) != Some(&want)
        })
        .count();
    let fp_lost = buf.get(31) != Some(&(PROBE_FPSR << 32 | PROBE_FPCR));
    let [r0, r1, r2, r3, ..] = buf;
    (
        [r0, r1, r2, r3],
        (x_lost as u64)
            .wrapping_add(v_lost as u64)
            .wrapping_add(u64::from(fp_lost)),
    )
}

/// A call's status, `Err` with the raw `x0` if the ABI does not define it.
fn status(x0: u64) -> Result<Status, u64> {
    Status::from_raw(x0 as i64).ok_or(x0)
}

/// A status for printing (raw value if undefined).
struct St(u64);

impl fmt::Display for St {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match status(self.0) {
            Ok(s) => write!(f, "{s:?}"),
            Err(raw) => write!(f, "undefined status {raw:#x}"),
        }
    }
}

// The probe vectors, installed on every CPU for the whole test. A probe arms
// them by putting 1 (skip the faulting instruction) or 2 (return to x30) in
// x16 around one access; the handler replaces x16 with ESR_EL1 | 1 << 63.
// Any other exception is unexpected: reported, then the CPU stops.
global_asm!(
    r#"
    .section .text.vms_vectors, "ax"
    .balign 2048
vms_vectors:
    .rept 16
    .balign 0x80
    b vms_exception
    .endr
vms_exception:
    cmp x16, #1
    b.eq 1f
    cmp x16, #2
    b.eq 2f
    mrs x0, esr_el1
    mrs x1, elr_el1
    bl vms_unexpected_exception
3:  wfe
    b 3b
1:  mrs x17, elr_el1
    add x17, x17, #4
    b 4f
2:  mov x17, x30
4:  msr elr_el1, x17
    mrs x16, esr_el1
    orr x16, x16, #(1 << 63)
    eret
"#
);

unsafe extern "C" {
    static vms_vectors: u8;
}

/// Where unexpected exceptions are reported.
static PRINT: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

#[unsafe(no_mangle)]
extern "C" fn vms_unexpected_exception(esr: u64, elr: u64) {
    // Not under the print lock: this CPU may hold it already.
    if let Some(print) = printer() {
        print(format_args!(
            "vms: FAIL unexpected exception at EL1 (ESR {esr:#x}, ELR {elr:#x}); CPU stops"
        ));
    }
}

/// Loads `pa` with the probe armed: `Err(ESR_EL1)` if it faulted.
fn probe_read(pa: u64) -> Result<u64, u64> {
    let mut v = 0u64;
    let mut armed = 1u64;
    // SAFETY: one load from an address the host may not own; a fault is
    // caught by `vms_vectors` (installed by `run` on this CPU), which skips
    // the load. No Rust-visible memory is written.
    unsafe {
        asm!("ldr {v}, [{a}]", a = in(reg) pa, v = inout(reg) v, inout("x16") armed, out("x17") _,
             options(nostack, readonly));
    }
    if armed == 1 {
        Ok(v)
    } else {
        Err(armed & !(1 << 63))
    }
}

/// Stores to `pa` with the probe armed.
fn probe_write(pa: u64, v: u64) -> Result<(), u64> {
    let mut armed = 1u64;
    // SAFETY: one store to a page outside this payload's image (a page of
    // the test pool); a fault is caught and the store skipped.
    unsafe {
        asm!("str {v}, [{a}]", a = in(reg) pa, v = in(reg) v, inout("x16") armed, out("x17") _,
             options(nostack));
    }
    if armed == 1 {
        Ok(())
    } else {
        Err(armed & !(1 << 63))
    }
}

/// Branches to `pa` with the probe armed to return: `Err(ESR_EL1)` if the
/// fetch (or the instruction found there) faulted. A guest page holds no
/// `ret`, so "no fault" cannot happen quietly: even readable zeroes are an
/// undefined instruction.
fn probe_exec(pa: u64) -> Result<(), u64> {
    let mut armed = 2u64;
    // SAFETY: the branch target faults (Stage-2 or undefined instruction)
    // and the handler returns to the link register; x30 is declared
    // clobbered, as is everything a called function may clobber.
    unsafe {
        asm!("blr {a}", a = in(reg) pa, inout("x16") armed, out("x17") _, clobber_abi("C"));
    }
    if armed == 2 {
        Ok(())
    } else {
        Err(armed & !(1 << 63))
    }
}

/// Cleans `[pa, pa + PAGE_SIZE)` to the point of coherency: the guest runs
/// with its MMU off (non-cacheable), so what the host wrote through its
/// cacheable map must reach memory before the guest reads it.
fn clean_page(pa: u64) {
    let mut va = pa;
    while va < pa.saturating_add(PAGE_SIZE) {
        // SAFETY: `dc cvac` writes a dirty line back; no contents change.
        unsafe { asm!("dc cvac, {}", in(reg) va, options(nostack, preserves_flags)) };
        va = va.saturating_add(64);
    }
    // SAFETY: a barrier only orders.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Invalidates the page's lines before the host reads what a guest wrote.
fn invalidate_page(pa: u64) {
    let mut va = pa;
    while va < pa.saturating_add(PAGE_SIZE) {
        // SAFETY: `dc civac` writes back and drops a line; the page is shared
        // with the host, so dropping a clean line loses nothing.
        unsafe { asm!("dc civac, {}", in(reg) va, options(nostack, preserves_flags)) };
        va = va.saturating_add(64);
    }
    // SAFETY: a barrier only orders.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

// ---------------------------------------------------------------------------
// State.

const ABSENT: u32 = 0;
const READY: u32 = 1;
const RUNNING: u32 = 2;
const DONE: u32 = 3;
/// Not for the general scheduler (the spin vCPU).
const RESERVED: u32 = 4;

/// How a vCPU ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Running,
    CpuOff,
    SystemOff,
    SystemReset,
    Error(u64),
    Unbacked(u64),
    RunFailed(u64),
}

/// A vCPU's host-side record, owned by whichever CPU claimed it.
struct VcpuData {
    role: Role,
    x3: u64,
    line: [u8; 96],
    len: usize,
    end: End,
    info_ok: bool,
    checks_failed: u32,
    reports: u32,
    reports_after_storm: u32,
    value: u64,
    message: u64,
}

impl VcpuData {
    const fn new() -> Self {
        Self {
            role: Role::Checksum,
            x3: 0,
            line: [0; 96],
            len: 0,
            end: End::Running,
            info_ok: false,
            checks_failed: 0,
            reports: 0,
            reports_after_storm: 0,
            value: 0,
            message: 0,
        }
    }
}

struct VcpuSlot {
    state: AtomicU32,
    data: UnsafeCell<VcpuData>,
}

impl VcpuSlot {
    const fn new() -> Self {
        Self {
            state: AtomicU32::new(ABSENT),
            data: UnsafeCell::new(VcpuData::new()),
        }
    }
}

/// A VM's host-side record.
struct Vm {
    handle: AtomicU64,
    vcpus: AtomicUsize,
    image_pa: AtomicU64,
    data_pa: AtomicU64,
    share_pa: AtomicU64,
    borrow_pa: AtomicU64,
    pool_pa: AtomicU64,
    counter: AtomicU64,
    demand: [AtomicU64; MAX_DEMAND],
    demand_ipa: [AtomicU64; MAX_DEMAND],
    demand_len: AtomicUsize,
    slots: [VcpuSlot; MAX_VCPUS],
}

impl Vm {
    const fn new() -> Self {
        Self {
            handle: AtomicU64::new(0),
            vcpus: AtomicUsize::new(0),
            image_pa: AtomicU64::new(0),
            data_pa: AtomicU64::new(0),
            share_pa: AtomicU64::new(0),
            borrow_pa: AtomicU64::new(0),
            pool_pa: AtomicU64::new(0),
            counter: AtomicU64::new(0),
            demand: [const { AtomicU64::new(0) }; MAX_DEMAND],
            demand_ipa: [const { AtomicU64::new(0) }; MAX_DEMAND],
            demand_len: AtomicUsize::new(0),
            slots: [const { VcpuSlot::new() }; MAX_VCPUS],
        }
    }

    fn handle(&self) -> u64 {
        self.handle.load(Ordering::Relaxed)
    }

    fn slot(&self, i: usize) -> Option<&VcpuSlot> {
        self.slots.get(i)
    }
}

/// Every VM record: ordinary VMs from 0, the attacker at [`ATTACKER_VM`],
/// the power VM at [`POWER_VM`].
struct World {
    vms: [Vm; MAX_VMS + 3],
}

// SAFETY: the `UnsafeCell`s inside are reached only by the CPU that holds the
// vCPU's claim (see the module invariants); everything else is atomic.
unsafe impl Sync for World {}

static WORLD: World = World {
    vms: [const { Vm::new() }; MAX_VMS + 3],
};

/// Next free page of the pool.
static NEXT_PAGE: AtomicU64 = AtomicU64::new(POOL_BASE);
/// Failed checks (each printed where it happened).
static FAILURES: AtomicU32 = AtomicU32::new(0);
/// Checks made.
static CHECKS: AtomicU32 = AtomicU32::new(0);
/// Ordinary VMs in use (records `0..VM_COUNT`).
static VM_COUNT: AtomicUsize = AtomicUsize::new(0);
/// The vCPUs the general scheduler runs, as `vm << 8 | index`, written by
/// CPU 0 during setup (before the first barrier).
static RUN_LIST: [AtomicU32; (MAX_VMS + 3) * MAX_VCPUS] =
    [const { AtomicU32::new(0) }; (MAX_VMS + 3) * MAX_VCPUS];
/// vCPUs the general scheduler runs, and how many of them are done.
static RUNNABLE: AtomicUsize = AtomicUsize::new(0);
static FINISHED: AtomicUsize = AtomicUsize::new(0);
/// CPUs that finished their storm quota.
static STORMED: AtomicUsize = AtomicUsize::new(0);
/// Storm calls whose status or results broke the ABI.
static STORM_BAD: AtomicU32 = AtomicU32::new(0);
/// Host CPUs taking part.
static CPUS: AtomicUsize = AtomicUsize::new(1);
/// The spin attack's handshake: 1 = CPU 1 runs the spinner, 2 = done.
static SPIN_PHASE: AtomicU32 = AtomicU32::new(0);

/// A sense-reversing barrier for the host CPUs.
struct Barrier {
    count: AtomicUsize,
    generation: AtomicUsize,
}

static BARRIER: Barrier = Barrier {
    count: AtomicUsize::new(0),
    generation: AtomicUsize::new(0),
};

impl Barrier {
    fn wait(&self, n: usize) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel).wrapping_add(1) == n {
            self.count.store(0, Ordering::Relaxed);
            self.generation
                .store(generation.wrapping_add(1), Ordering::Release);
        } else {
            while self.generation.load(Ordering::Acquire) == generation {
                core::hint::spin_loop();
            }
        }
    }
}

/// Counts a check; prints and counts a failure.
fn check(print: Print, ok: bool, what: fmt::Arguments<'_>) -> bool {
    CHECKS.fetch_add(1, Ordering::Relaxed);
    if !ok {
        FAILURES.fetch_add(1, Ordering::Relaxed);
        print(format_args!("vms: FAIL {what}"));
    }
    ok
}

/// Prints a host-side attack's outcome; refused means any defined error.
fn attack(print: Print, name: &str, x0: u64) {
    let refused = matches!(status(x0), Ok(s) if s != Status::Success);
    CHECKS.fetch_add(1, Ordering::Relaxed);
    if refused {
        print(format_args!("attack {name}: refused ({})", St(x0)));
    } else {
        FAILURES.fetch_add(1, Ordering::Relaxed);
        print(format_args!("attack {name}: FAIL allowed ({})", St(x0)));
    }
}

/// Prints a probe attack's outcome: refused if the engine injected an abort.
fn attack_probe(print: Print, name: &str, r: Result<(), u64>) {
    CHECKS.fetch_add(1, Ordering::Relaxed);
    match r {
        Err(esr) if is_sea(esr) => print(format_args!("attack {name}: refused (SEA)")),
        Err(esr) => {
            FAILURES.fetch_add(1, Ordering::Relaxed);
            print(format_args!(
                "attack {name}: FAIL unexpected fault (ESR {esr:#x})"
            ));
        }
        Ok(()) => {
            FAILURES.fetch_add(1, Ordering::Relaxed);
            print(format_args!("attack {name}: FAIL allowed"));
        }
    }
}

/// A synchronous external abort (data or instruction abort, FSC 0x10).
fn is_sea(esr: u64) -> bool {
    let ec = esr >> 26 & 0x3f;
    matches!(ec, 0x20 | 0x21 | 0x24 | 0x25) && esr & 0x3f == 0x10
}

/// Allocates `n` contiguous pool pages.
fn alloc(n: u64) -> Option<u64> {
    alloc_aligned(n, PAGE_SIZE)
}

/// Allocates `n` contiguous pool pages starting at a multiple of `align`
/// (a power of two): a VM's pool starts with its Stage-2 root, which the
/// engine needs aligned to the root's (possibly concatenated) size.
fn alloc_aligned(n: u64, align: u64) -> Option<u64> {
    let bytes = n.checked_mul(PAGE_SIZE)?;
    let mask = align.checked_sub(1)?;
    let mut next = NEXT_PAGE.load(Ordering::Relaxed);
    loop {
        let pa = next.checked_add(mask)? & !mask;
        let end = pa.checked_add(bytes)?;
        if end > POOL_END {
            return None;
        }
        match NEXT_PAGE.compare_exchange_weak(next, end, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(pa),
            Err(now) => next = now,
        }
    }
}

/// Alignment of a VM's pool: enough for a root of up to 16 concatenated
/// tables, the most VMSAv8-64 allows.
const POOL_ALIGN: u64 = 16 * PAGE_SIZE;

/// Fills a page with `f(word index)` and cleans it to memory.
fn fill(pa: u64, f: impl Fn(u64) -> u64) -> bool {
    let ok =
        (0..PAGE_SIZE / 8).all(|i| probe_write(pa.wrapping_add(i.wrapping_mul(8)), f(i)).is_ok());
    clean_page(pa);
    ok
}

/// Whether every word of a page reads zero.
fn page_is_zero(pa: u64) -> bool {
    (0..PAGE_SIZE / 8).all(|i| probe_read(pa.wrapping_add(i.wrapping_mul(8))) == Ok(0))
}

// ---------------------------------------------------------------------------
// The test.

/// CPUs taking part while the test runs (0 when it does not).
static JOIN: AtomicUsize = AtomicUsize::new(0);
/// Set by the boot CPU once every other CPU was started: 1 = go, 2 = give up.
static GO: AtomicU32 = AtomicU32::new(0);

/// PSCI through the engine's relay (`smc`, trapped to EL2).
fn psci(id: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let mut r0 = u64::from(id);
    // SAFETY: the engine relays PSCI to firmware; the call may power CPUs on
    // or off but touches no memory of this payload. SMCCC lets it clobber
    // x1..x17, all declared.
    unsafe {
        asm!("smc #0", inout("x0") r0, inout("x1") a1 => _, inout("x2") a2 => _,
             inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
             out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
             out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
             options(nostack));
    }
    r0 as i64
}

/// PSCI `AFFINITY_INFO` (SMC64).
const AFFINITY_INFO: u32 = 0xC400_0004;

/// The boot CPU's part. Sets up every VM alone, then starts every other CPU
/// (`mpidrs[i]`, the boot CPU first) at the host's secondary `entry` with
/// context id `i` through PSCI `CPU_ON`, runs the vCPUs on all of them, waits
/// until the others are off again and tears down alone. (Other CPUs would
/// only spin during setup and teardown, and under TCG a spinning CPU takes
/// real time from the working one.) Returns whether every check passed.
pub fn main(mpidrs: &[u64], entry: u64, print: Print) -> bool {
    let cpus = mpidrs.len().max(1);
    PRINT.store(print as *mut (), Ordering::Release);
    CPUS.store(cpus, Ordering::Relaxed);
    // Every line of the test goes through the lock from here on.
    let print: Print = locked;
    let host_vectors = install_vectors();
    if setup(cpus, print).is_none() {
        restore_vectors(host_vectors);
        return false;
    }
    JOIN.store(cpus, Ordering::Release);
    let mut started = true;
    for (i, &mpidr) in mpidrs.iter().enumerate().skip(1) {
        let r = psci(isola_abi::psci::CPU_ON, mpidr, entry, i as u64);
        if r != 0 {
            check(
                print,
                false,
                format_args!("PSCI CPU_ON of cpu {i} returned {r}"),
            );
            started = false;
        }
    }
    GO.store(if started { 1 } else { 2 }, Ordering::Release);
    if started {
        run_phases(0, cpus, print);
    }
    for &mpidr in mpidrs.iter().skip(1) {
        while psci(AFFINITY_INFO, mpidr, 0, 0) != 1 {
            core::hint::spin_loop();
        }
    }
    JOIN.store(0, Ordering::Release);
    if started {
        teardown(print);
    }
    restore_vectors(host_vectors);
    FAILURES.load(Ordering::Acquire) == 0
}

/// A secondary CPU's part, called first thing on every CPU the host starts.
/// Returns at once unless [`main`] started this CPU for the test; then it
/// takes part and turns the CPU off (never returning).
pub fn secondary(index: usize, print: Print) {
    let cpus = JOIN.load(Ordering::Acquire);
    if cpus == 0 {
        return;
    }
    let _ = print; // `main` stored the same printer.
    let go = loop {
        match GO.load(Ordering::Acquire) {
            0 => core::hint::spin_loop(),
            g => break g,
        }
    };
    if go == 1 {
        let host_vectors = install_vectors();
        run_phases(index, cpus, locked);
        restore_vectors(host_vectors);
    }
    loop {
        psci(isola_abi::psci::CPU_OFF, 0, 0, 0);
    }
}

/// Keeps this module's lines whole when several CPUs print.
static PRINT_LOCK: AtomicU32 = AtomicU32::new(0);

/// The stored printer, if `run` has stored one.
fn printer() -> Option<Print> {
    let p = PRINT.load(Ordering::Acquire);
    // SAFETY: `PRINT` only ever holds a `Print` stored by `main`/`run`.
    (!p.is_null()).then(|| unsafe { core::mem::transmute::<*mut (), Print>(p) })
}

/// Prints one line under the lock.
fn locked(args: fmt::Arguments<'_>) {
    while PRINT_LOCK
        .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    if let Some(p) = printer() {
        p(args);
    }
    PRINT_LOCK.store(0, Ordering::Release);
}

/// Installs this module's probe vectors on this CPU; returns the host's.
fn install_vectors() -> u64 {
    let saved: u64;
    // SAFETY: reading VBAR_EL1 has no side effect.
    unsafe { asm!("mrs {}, vbar_el1", out(reg) saved, options(nomem, nostack, preserves_flags)) };
    // SAFETY: this payload's own vectors (2 KiB aligned by the assembly)
    // replace the host's for the duration of the test; interrupts stay
    // masked, so only synchronous exceptions can arrive, which they handle.
    unsafe {
        asm!("msr vbar_el1, {}", "isb", in(reg) &raw const vms_vectors as u64, options(nostack, preserves_flags));
    }
    saved
}

/// Puts the host's vectors back.
fn restore_vectors(saved: u64) {
    // SAFETY: the host's own vectors, read by `install_vectors`.
    unsafe { asm!("msr vbar_el1, {}", "isb", in(reg) saved, options(nostack, preserves_flags)) };
}

/// What every CPU does together: run the vCPUs, then the running-vCPU
/// attacks.
fn run_phases(cpu: usize, cpus: usize, print: Print) {
    BARRIER.wait(cpus);
    run_vcpus(cpu, cpus, print);
    BARRIER.wait(cpus);
    spin_attacks(cpu, cpus, print);
    BARRIER.wait(cpus);
}

/// Accounting totals: `(host, engine, guest)`.
fn totals() -> [u64; 3] {
    let r = call(
        HostCall::Accounting,
        [Accounting::Totals as u64, 0, 0, 0, 0, 0],
    );
    [r[1], r[2], r[3]]
}

/// Accounting sharing counts.
fn sharing() -> [u64; 3] {
    let r = call(
        HostCall::Accounting,
        [Accounting::Sharing as u64, 0, 0, 0, 0, 0],
    );
    [r[1], r[2], r[3]]
}

static BEFORE: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// CPU 0: reads the image, creates every VM, makes the attacks that need no
/// running vCPU.
fn setup(cpus: usize, print: Print) -> Option<()> {
    for (b, v) in BEFORE.iter().zip(totals()) {
        b.store(v, Ordering::Relaxed);
    }
    let words =
        [0u64, 8, 16, 24].map(|o| probe_read(layout::IMAGE_LOAD_PA.wrapping_add(o)).unwrap_or(0));
    let Some(header) = ImageHeader::parse(words) else {
        print(format_args!(
            "vms: FAIL no guest image at {:#x} (load it with -device loader)",
            layout::IMAGE_LOAD_PA
        ));
        FAILURES.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    print(format_args!(
        "vms: guest image found at {:#x}",
        layout::IMAGE_LOAD_PA
    ));
    // VMs 0 and 1 first (the attacks need two), then the attacker and the
    // power VM, then as many more as wanted and the engine's table holds.
    let wanted = cpus.saturating_mul(2).clamp(4, MAX_VMS);
    for k in 0..2 {
        create_vm(print, &header, k, &ORDINARY).ok()?;
    }
    create_vm(print, &header, ATTACKER_VM, &ATTACKER).ok()?;
    create_vm(print, &header, POWER_VM, &POWER).ok()?;
    create_vm(print, &header, RESET_VM, &RESET).ok()?;
    let mut n = 2;
    while n < wanted {
        match create_vm(print, &header, n, &ORDINARY) {
            Ok(()) => n = n.wrapping_add(1),
            Err(Some(Status::NoMemory)) if n >= 4 => break,
            Err(_) => return None,
        }
    }
    VM_COUNT.store(n, Ordering::Relaxed);
    print(format_args!(
        "vms: created {n} VMs of {VCPUS} vCPUs, an attacker VM of {} vCPUs and two power VMs",
        ATTACKER.len(),
    ));
    host_attacks(print);
    Some(())
}

/// `x0` for a vCPU of `role` in VM `k` (the attacker needs VM 0's data page).
fn x0_for(role: Role, seed: u64) -> u64 {
    let vm0_data = WORLD
        .vms
        .first()
        .map_or(0, |v| v.data_pa.load(Ordering::Relaxed));
    match role {
        Role::Checksum => Behaviour::Checksum.x0(0),
        Role::Mmio => Behaviour::Mmio.x0(0),
        Role::Share => Behaviour::Share.x0(0),
        Role::Demand => Behaviour::Demand.x0(0),
        Role::Attack => Behaviour::Attack.x0(seed),
        Role::ProbeOtherVm => Behaviour::Probe.x0(vm0_data),
        Role::ProbeEngineWrite => Behaviour::Probe.x0(ENGINE_PA | 1),
        Role::ProbeBeyond => Behaviour::Probe.x0(BEYOND_IPA),
        Role::ProbeGic => Behaviour::Probe.x0(GICD_IPA),
        Role::Spin => Behaviour::Spin.x0(0),
        Role::Registers => Behaviour::Registers.x0(0),
        Role::SystemOff => Behaviour::SystemOff.x0(0),
        Role::SystemReset => Behaviour::SystemReset.x0(0),
    }
}

fn seed_of(k: usize) -> u64 {
    guest::splitmix64(k as u64 ^ 0x1501_a5ee_d000_0000)
}

/// Donates `pages` pages from `pa` at `ipa` onwards, as few `Donate`s of
/// up to `DONATE_MAX_PAGES` pages each; checks each succeeds.
fn donate_run(
    print: Print,
    k: usize,
    handle: u64,
    pa: u64,
    ipa: u64,
    pages: u64,
    p: u64,
) -> Option<()> {
    let mut done = 0u64;
    while done < pages {
        let n = pages.wrapping_sub(done).min(isola_abi::DONATE_MAX_PAGES);
        let off = done.wrapping_mul(PAGE_SIZE);
        let r = call(
            HostCall::Donate,
            [handle, pa.wrapping_add(off), ipa.wrapping_add(off), p, n, 0],
        );
        if !check(
            print,
            r[0] == Status::Success.raw(),
            format_args!(
                "vm{k}: donate of {n} pages at {:#x}: {}",
                ipa.wrapping_add(off),
                St(r[0])
            ),
        ) {
            return None;
        }
        done = done.wrapping_add(n);
    }
    Some(())
}

/// Creates VM record `k` with one vCPU per role; `Err(Some(NoMemory))` if
/// the engine's VM table is full (not a failure: the caller stops there).
fn create_vm(
    print: Print,
    header: &ImageHeader,
    k: usize,
    roles: &[Role],
) -> Result<(), Option<Status>> {
    let vm = WORLD.vms.get(k).ok_or(None)?;
    let pool = alloc_aligned(POOL_PAGES, POOL_ALIGN).ok_or(None)?;
    for i in 0..POOL_PAGES {
        fill(pool.wrapping_add(i.wrapping_mul(PAGE_SIZE)), |_| 0);
    }
    let r = call(
        HostCall::VmCreate,
        [pool, POOL_PAGES, roles.len() as u64, 0, 0, 0],
    );
    if k >= 4 && r[0] == Status::NoMemory.raw() {
        return Err(Some(Status::NoMemory));
    }
    if !check(
        print,
        r[0] == Status::Success.raw(),
        format_args!("vm{k}: VmCreate: {}", St(r[0])),
    ) {
        return Err(None);
    }
    fill_vm(print, header, k, vm, pool, r[1], roles).ok_or(None)
}

/// Gives a created VM its memory and vCPUs.
fn fill_vm(
    print: Print,
    header: &ImageHeader,
    k: usize,
    vm: &Vm,
    pool: u64,
    handle: u64,
    roles: &[Role],
) -> Option<()> {
    let seed = seed_of(k);
    vm.handle.store(handle, Ordering::Relaxed);
    vm.pool_pa.store(pool, Ordering::Relaxed);
    vm.vcpus.store(roles.len(), Ordering::Relaxed);

    // The image, zero-padded to its memory size (bss and stacks).
    let pages = header.pages();
    let image = alloc(pages)?;
    let image_words = header.image_bytes().div_ceil(8);
    for p in 0..pages {
        let page = image.wrapping_add(p.wrapping_mul(PAGE_SIZE));
        fill(page, |i| {
            let word = p.wrapping_mul(PAGE_SIZE / 8).wrapping_add(i);
            if word < image_words {
                probe_read(layout::IMAGE_LOAD_PA.wrapping_add(word.wrapping_mul(8))).unwrap_or(0)
            } else {
                0
            }
        });
    }
    vm.image_pa.store(image, Ordering::Relaxed);
    donate_run(print, k, handle, image, layout::IPA_BASE, pages, perms::ALL)?;

    // The private data the checksum covers.
    let data = alloc(layout::DATA_PAGES)?;
    for p in 0..layout::DATA_PAGES {
        let base = p.wrapping_mul(PAGE_SIZE / 8);
        fill(data.wrapping_add(p.wrapping_mul(PAGE_SIZE)), |i| {
            guest::pattern(seed, base.wrapping_add(i))
        });
    }
    vm.data_pa.store(data, Ordering::Relaxed);
    donate_run(
        print,
        k,
        handle,
        data,
        layout::DATA_IPA,
        layout::DATA_PAGES,
        perms::R | perms::W,
    )?;

    // One share page per vCPU, owned by the guest.
    let share = alloc(roles.len() as u64)?;
    for p in 0..roles.len() as u64 {
        fill(share.wrapping_add(p.wrapping_mul(PAGE_SIZE)), |_| 0);
    }
    vm.share_pa.store(share, Ordering::Relaxed);
    donate_run(
        print,
        k,
        handle,
        share,
        layout::SHARE_IPA,
        roles.len() as u64,
        perms::R | perms::W,
    )?;

    // A page the host lends: the guest may use it but not give it away.
    let borrow = alloc(1)?;
    fill(borrow, |i| i);
    vm.borrow_pa.store(borrow, Ordering::Relaxed);
    let r = call(
        HostCall::Share,
        [
            handle,
            borrow,
            layout::BORROW_IPA,
            perms::R | perms::W,
            0,
            0,
        ],
    );
    check(
        print,
        r[0] == Status::Success.raw(),
        format_args!("vm{k}: share borrow page: {}", St(r[0])),
    );

    for (i, role) in roles.iter().enumerate() {
        let r = call(
            HostCall::VcpuCreate,
            [
                handle,
                i as u64,
                layout::IPA_BASE,
                x0_for(*role, seed),
                0,
                0,
            ],
        );
        if !check(
            print,
            r[0] == Status::Success.raw(),
            format_args!("vm{k}.{i}: VcpuCreate: {}", St(r[0])),
        ) {
            return None;
        }
        let slot = vm.slot(i)?;
        // SAFETY: setup runs on CPU 0 before the first barrier; no other CPU
        // looks at any slot yet.
        let d = unsafe { &mut *slot.data.get() };
        d.role = *role;
        let state = if *role == Role::Spin { RESERVED } else { READY };
        if state == READY {
            let at = RUNNABLE.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = RUN_LIST.get(at) {
                e.store((k << 8 | i) as u32, Ordering::Relaxed);
            }
        }
        slot.state.store(state, Ordering::Release);
    }
    Some(())
}

/// The host's attacks on pages and handles, with VMs created but not run.
fn host_attacks(print: Print) {
    let (Some(vm0), Some(vm1)) = (WORLD.vms.first(), WORLD.vms.get(1)) else {
        return;
    };
    let (h0, h1) = (vm0.handle(), vm1.handle());
    let image0 = vm0.image_pa.load(Ordering::Relaxed);
    let data0 = vm0.data_pa.load(Ordering::Relaxed);
    let rw = perms::R | perms::W;
    let spare = layout::DEMAND_IPA.wrapping_add(0x10_0000);

    attack_probe(print, "host-read-guest-page", probe_read(data0).map(|_| ()));
    attack_probe(print, "host-write-guest-page", probe_write(data0, 0xbad));
    attack_probe(print, "host-exec-guest-page", probe_exec(image0));
    attack(
        print,
        "donate-guest-page-to-second-vm",
        call(HostCall::Donate, [h1, data0, spare, rw, 0, 0])[0],
    );
    attack(
        print,
        "share-guest-page-with-second-vm",
        call(HostCall::Share, [h1, data0, spare, rw, 0, 0])[0],
    );
    attack(
        print,
        "donate-already-donated-page",
        call(HostCall::Donate, [h0, data0, spare, rw, 0, 0])[0],
    );
    attack(
        print,
        "donate-engine-page",
        call(HostCall::Donate, [h0, ENGINE_PA, spare, rw, 0, 0])[0],
    );
    attack(
        print,
        "donate-mmio-address",
        call(HostCall::Donate, [h0, 0x0900_0000, spare, rw, 0, 0])[0],
    );
    attack(
        print,
        "donate-wild-address",
        call(HostCall::Donate, [h0, 0xffff_ffff_f000, spare, rw, 0, 0])[0],
    );
    if let Some(page) = alloc(1) {
        attack(
            print,
            "donate-unaligned-address",
            call(HostCall::Donate, [h0, page | 8, spare, rw, 0, 0])[0],
        );
        attack(
            print,
            "donate-without-permissions",
            call(HostCall::Donate, [h0, page, spare, 0, 0, 0])[0],
        );
        attack(
            print,
            "donate-onto-mapped-ipa",
            call(HostCall::Donate, [h0, page, layout::IPA_BASE, rw, 0, 0])[0],
        );
    }
    attack(
        print,
        "reclaim-page-of-live-vm",
        call(HostCall::Reclaim, [data0, 0, 0, 0, 0, 0])[0],
    );
    attack(
        print,
        "unshare-donated-page",
        call(HostCall::Unshare, [h0, data0, layout::DATA_IPA, 0, 0, 0])[0],
    );
    attack(
        print,
        "create-vcpu-beyond-count",
        call(HostCall::VcpuCreate, [h0, 7, layout::IPA_BASE, 0, 0, 0])[0],
    );
    attack(
        print,
        "create-vcpu-twice",
        call(HostCall::VcpuCreate, [h0, 0, layout::IPA_BASE, 0, 0, 0])[0],
    );
    attack(
        print,
        "run-vcpu-of-unknown-vm",
        call(HostCall::VcpuRun, [0xdead_0000_00fe, 0, 0, 0, 0, 0])[0],
    );
    attack(
        print,
        "guest-call-from-host",
        hvc(GuestCall::Share as u64, [layout::DATA_IPA, 0, 0, 0, 0, 0])[0],
    );
}

/// Every CPU: runs claimed vCPUs one exit at a time and makes its share of
/// the host-call storm, until every runnable vCPU is done.
fn run_vcpus(cpu: usize, cpus: usize, print: Print) {
    let total = RUNNABLE.load(Ordering::Relaxed).min(RUN_LIST.len());
    let mut cursor = cpu.wrapping_mul(7);
    let mut storm_left = STORM_PER_CPU;
    let mut rng = guest::splitmix64(cpu as u64 ^ 0x5707_3000);
    while FINISHED.load(Ordering::Acquire) < total {
        for _ in 0..total {
            cursor = cursor.wrapping_add(1).checked_rem(total).unwrap_or(0);
            let Some(entry) = RUN_LIST.get(cursor) else {
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
                let done = run_once(print, k, i, slot, cpus);
                slot.state
                    .store(if done { DONE } else { READY }, Ordering::Release);
                if done {
                    FINISHED.fetch_add(1, Ordering::AcqRel);
                }
                break;
            }
        }
        if storm_left > 0 {
            rng = guest::splitmix64(rng);
            storm_call(print, rng);
            storm_left = storm_left.saturating_sub(1);
            if storm_left == 0 {
                STORMED.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    if storm_left > 0 {
        STORMED.fetch_add(1, Ordering::AcqRel);
    }
}

/// One random host call. Arguments have bit 62 set, so none names a real
/// page or handle: every call must fail cleanly (or, for `Version` and
/// `Accounting` reads, succeed) with a defined status and, on error, zero
/// results.
fn storm_call(print: Print, r: u64) {
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
    let out = hvc(id, [arg(1), arg(2), arg(3), arg(4), arg(5), arg(6)]);
    let ok = match status(out[0]) {
        Ok(Status::Success) => matches!(
            HostCall::from_id(id),
            Some(HostCall::Version | HostCall::Accounting)
        ),
        Ok(_) => out[1] == 0 && out[2] == 0 && out[3] == 0,
        Err(_) => false,
    };
    if !ok {
        STORM_BAD.fetch_add(1, Ordering::Relaxed);
        print(format_args!(
            "vms: FAIL storm call {id:#x} returned {} ({:#x}, {:#x}, {:#x})",
            St(out[0]),
            out[1],
            out[2],
            out[3]
        ));
    }
}

/// Runs the vCPU until its next exit and handles it; whether it is done.
fn run_once(print: Print, k: usize, i: usize, slot: &VcpuSlot, cpus: usize) -> bool {
    let Some(vm) = WORLD.vms.get(k) else {
        return true;
    };
    // SAFETY: this CPU won the claim (`READY -> RUNNING`, Acquire), so it
    // alone touches the record until it releases it.
    let d = unsafe { &mut *slot.data.get() };
    let x3 = core::mem::take(&mut d.x3);
    let (r, lost) = vcpu_run_checked(vm.handle(), i as u64, x3);
    check(
        print,
        lost == 0,
        format_args!("vm{k}.{i}: {lost} host registers changed across VcpuRun"),
    );
    if r[0] != Status::Success.raw() {
        d.end = End::RunFailed(r[0]);
        return true;
    }
    let Some(exit) = Exit::decode([r[1], r[2], r[3]]) else {
        check(
            print,
            false,
            format_args!("vm{k}.{i}: undecodable exit {:#x}", r[1]),
        );
        d.end = End::RunFailed(r[1]);
        return true;
    };
    match exit {
        Exit::HostCall { args: [tag, value] } => {
            d.x3 = host_call(print, k, i, vm, d, tag, value, cpus);
            false
        }
        Exit::Mmio {
            ipa,
            size,
            write,
            value,
        } => {
            mmio(print, k, i, vm, d, ipa, size, write, value);
            false
        }
        Exit::MemFault { ipa } => memfault(print, k, i, vm, d, ipa),
        // The test guests start no vCPUs and send no SGIs; an interrupt
        // completion needs nothing from this host either: keep running.
        Exit::Wfx { .. } | Exit::Irq | Exit::Eoi | Exit::CpuOn { .. } | Exit::Sgi { .. } => false,
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

/// Emulates the console (data and counter registers); anything else in the
/// MMIO window reads as zero and ignores writes.
#[allow(clippy::too_many_arguments)]
fn mmio(
    print: Print,
    k: usize,
    i: usize,
    vm: &Vm,
    d: &mut VcpuData,
    ipa: u64,
    size: u8,
    write: bool,
    value: u64,
) {
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
                print(format_args!("vm{k}.{i}: {text}"));
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
fn memfault(print: Print, k: usize, i: usize, vm: &Vm, d: &mut VcpuData, ipa: u64) -> bool {
    if !(layout::IPA_BASE..layout::DEMAND_LIMIT).contains(&ipa) {
        d.end = End::Unbacked(ipa);
        return true;
    }
    let slot = vm.demand_len.fetch_add(1, Ordering::Relaxed);
    let (Some(pa_slot), Some(ipa_slot), Some(pa)) =
        (vm.demand.get(slot), vm.demand_ipa.get(slot), alloc(1))
    else {
        check(
            print,
            false,
            format_args!("vm{k}.{i}: too many demand pages"),
        );
        d.end = End::Unbacked(ipa);
        return true;
    };
    fill(pa, |_| 0);
    let r = call(
        HostCall::Donate,
        [vm.handle(), pa, ipa, perms::R | perms::W, 0, 0],
    );
    if !check(
        print,
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
#[allow(clippy::too_many_arguments)]
fn host_call(
    print: Print,
    k: usize,
    i: usize,
    vm: &Vm,
    d: &mut VcpuData,
    tag: u64,
    value: u64,
    cpus: usize,
) -> u64 {
    let share_page = vm
        .share_pa
        .load(Ordering::Relaxed)
        .wrapping_add((i as u64).wrapping_mul(PAGE_SIZE));
    match tag {
        msg::INFO => {
            let count = vm.vcpus.load(Ordering::Relaxed) as u64;
            d.info_ok = value == (i as u64) << 32 | count;
            check(
                print,
                d.info_ok,
                format_args!("vm{k}.{i}: GuestCall::Info said {value:#x}"),
            );
            0
        }
        msg::CHECKSUM => {
            let storm_over = STORMED.load(Ordering::Acquire) >= cpus;
            d.reports = d.reports.saturating_add(1);
            if storm_over {
                d.reports_after_storm = d.reports_after_storm.saturating_add(1);
            }
            let good = value == guest::expected_checksum(seed_of(k));
            if !check(
                print,
                good,
                format_args!("vm{k}.{i}: checksum {value:#x} is wrong"),
            ) {
                d.checks_failed = d.checks_failed.saturating_add(1);
            }
            u64::from(!storm_over)
        }
        msg::COUNTER => {
            d.value = value;
            check(
                print,
                value & 1 == 1,
                format_args!("vm{k}.{i}: counter did not increase ({value:#x})"),
            );
            0
        }
        msg::SHARED => {
            if check(
                print,
                value == Status::Success.raw(),
                format_args!("vm{k}.{i}: guest share: {}", St(value)),
            ) {
                d.message = guest::splitmix64(seed_of(k) ^ i as u64);
                let wrote = probe_write(share_page, d.message);
                clean_page(share_page);
                check(
                    print,
                    wrote.is_ok(),
                    format_args!("vm{k}.{i}: host cannot write the page the guest shared"),
                );
            }
            0
        }
        msg::ANSWERED => {
            invalidate_page(share_page);
            let answer = probe_read(share_page.wrapping_add(8));
            check(
                print,
                value == d.message && answer == Ok(guest::answer(d.message)),
                format_args!(
                    "vm{k}.{i}: shared-page exchange: guest read {value:#x}, answered {answer:?}"
                ),
            );
            0
        }
        msg::UNSHARED => {
            check(
                print,
                value == Status::Success.raw(),
                format_args!("vm{k}.{i}: guest unshare: {}", St(value)),
            );
            let after = probe_read(share_page).map(|_| ());
            if k == 0 {
                attack_probe(print, "host-read-after-guest-unshare", after);
            } else {
                check(
                    print,
                    after.is_err(),
                    format_args!("vm{k}.{i}: host still reads the unshared page"),
                );
            }
            0
        }
        msg::DEMAND => {
            check(
                print,
                value == 1,
                format_args!("vm{k}.{i}: demand page did not read back"),
            );
            0
        }
        msg::RELINQUISHED => {
            check(
                print,
                value == Status::Success.raw(),
                format_args!("vm{k}.{i}: relinquish: {}", St(value)),
            );
            d.value = value;
            0
        }
        msg::ATTACK => {
            let name = Attack::from_id(value >> 32).map_or("guest-unknown-attack", Attack::name);
            let raw = value & 0xffff_ffff;
            attack(print, name, (raw as u32 as i32) as i64 as u64);
            0
        }
        msg::STORM => {
            let (defined, calls) = (value >> 32, value & 0xffff_ffff);
            if check(
                print,
                defined == calls,
                format_args!("guest call storm: {defined} of {calls} statuses defined"),
            ) {
                print(format_args!(
                    "attack guest-call-storm: refused ({calls} random calls, every status defined)"
                ));
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
        msg::REGS_RESULT => {
            d.value = value;
            0
        }
        msg::FATAL => {
            check(
                print,
                false,
                format_args!("vm{k}.{i}: guest reports an unexpected exception (ESR {value:#x})"),
            );
            0
        }
        _ => {
            check(
                print,
                false,
                format_args!("vm{k}.{i}: unknown host-call tag {tag:#x}"),
            );
            0
        }
    }
}

/// CPU 1 runs the attacker's spinning vCPU; meanwhile CPU 0 tries to run it
/// too and to destroy its VM (both must be `Busy`), then lets it finish.
fn spin_attacks(cpu: usize, cpus: usize, print: Print) {
    let n = ATTACKER_VM;
    let Some(vm) = WORLD.vms.get(n) else { return };
    let Some(slot) = vm.slot(SPIN_INDEX) else {
        return;
    };
    let share_page = vm
        .share_pa
        .load(Ordering::Relaxed)
        .wrapping_add((SPIN_INDEX as u64).wrapping_mul(PAGE_SIZE));
    let runner = if cpus > 1 { 1 } else { 0 };
    if cpu == runner {
        SPIN_PHASE.store(1, Ordering::Release);
        let mut done = false;
        while !done {
            done = run_once(print, n, SPIN_INDEX, slot, cpus);
        }
        SPIN_PHASE.store(2, Ordering::Release);
    }
    if cpu != 0 {
        return;
    }
    if cpus == 1 {
        print(format_args!("vms: running-vCPU attacks skipped (one CPU)"));
        return;
    }
    // Wait until the guest spins: its shared page's word 0 says so.
    loop {
        invalidate_page(share_page);
        if probe_read(share_page) == Ok(guest::SPINNING) {
            break;
        }
        if SPIN_PHASE.load(Ordering::Acquire) == 2 {
            check(
                print,
                false,
                format_args!("spinning vCPU ended before the attacks"),
            );
            return;
        }
        core::hint::spin_loop();
    }
    let h = vm.handle();
    attack(
        print,
        "run-vcpu-running-on-another-cpu",
        call(HostCall::VcpuRun, [h, SPIN_INDEX as u64, 0, 0, 0, 0])[0],
    );
    attack(
        print,
        "destroy-vm-while-its-vcpu-runs",
        call(HostCall::VmDestroy, [h, 0, 0, 0, 0, 0])[0],
    );
    check(
        print,
        probe_write(share_page.wrapping_add(8), guest::STOP).is_ok(),
        format_args!("cannot stop the spinner"),
    );
    clean_page(share_page);
    while SPIN_PHASE.load(Ordering::Acquire) != 2 {
        core::hint::spin_loop();
    }
}

/// CPU 0: reports every vCPU, destroys every VM, reclaims and checks every
/// page, checks the accounting.
fn teardown(print: Print) {
    let n = VM_COUNT.load(Ordering::Relaxed);
    report(print, n);
    let off = WORLD.vms.get(POWER_VM).map_or(0, Vm::handle);
    attack(
        print,
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
            print,
            r[0] == Status::Success.raw(),
            format_args!("vm{k}: unshare borrow page: {}", St(r[0])),
        );
        let r = call(HostCall::VmDestroy, [h, 0, 0, 0, 0, 0]);
        check(
            print,
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
                check(print, ok, format_args!("vm{k}: reclaim {pa:#x} failed"));
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
                    print,
                    !ok && page_is_zero(pa),
                    format_args!("vm{k}: relinquished page {pa:#x} not the host's or not zero"),
                );
            } else {
                dirty = dirty.saturating_add(u64::from(ok && !zero));
                check(
                    print,
                    ok,
                    format_args!("vm{k}: reclaim demand page {pa:#x} failed"),
                );
            }
        }
    }
    check(
        print,
        dirty == 0,
        format_args!("{dirty} pages came back not zeroed"),
    );
    print(format_args!(
        "vms: destroyed every VM, reclaimed every guest page, all zeroed"
    ));
    attack(
        print,
        "run-vcpu-of-destroyed-vm",
        call(HostCall::VcpuRun, [vm0_handle, 0, 0, 0, 0, 0])[0],
    );
    attack(
        print,
        "donate-to-destroyed-vm",
        call(
            HostCall::Donate,
            [vm0_handle, POOL_BASE, layout::IPA_BASE, perms::R, 0, 0],
        )[0],
    );
    let after = totals();
    let before = BEFORE.each_ref().map(|b| b.load(Ordering::Relaxed));
    let share = sharing();
    let exact = after == before && after.get(2) == Some(&0) && share == [0, 0, 0];
    if check(
        print,
        exact,
        format_args!("accounting before {before:?}, after {after:?}, sharing {share:?}"),
    ) {
        print(format_args!("vms: accounting exact after teardown"));
    }
    let (failures, checks) = (
        FAILURES.load(Ordering::Relaxed),
        CHECKS.load(Ordering::Relaxed),
    );
    if failures == 0 {
        print(format_args!("vms: PASS"));
    } else {
        print(format_args!(
            "vms: FAIL ({failures} of {checks} checks failed)"
        ));
    }
}

/// The records in use: ordinary VMs `0..n`, the attacker, the power VM.
fn active(n: usize) -> impl Iterator<Item = usize> {
    (0..n).chain([ATTACKER_VM, POWER_VM, RESET_VM])
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
fn report(print: Print, n: usize) {
    for k in active(n) {
        let Some(vm) = WORLD.vms.get(k) else { continue };
        for i in 0..vm.vcpus.load(Ordering::Relaxed) {
            let Some(slot) = vm.slot(i) else { continue };
            // SAFETY: every CPU passed the barrier after the runs; no vCPU
            // is claimed any more.
            let d = unsafe { &*slot.data.get() };
            report_vcpu(print, k, i, d);
        }
    }
}

fn report_vcpu(print: Print, k: usize, i: usize, d: &VcpuData) {
    let role = d.role.name();
    let off = d.end == End::CpuOff;
    match d.role {
        Role::Checksum => {
            let ok = off && d.reports > 0 && d.reports_after_storm > 0 && d.checks_failed == 0;
            if check(
                print,
                ok,
                format_args!(
                    "vm{k}.{i} {role}: {:?}, {} reports, {} after the storm",
                    d.end, d.reports, d.reports_after_storm
                ),
            ) && k < 4
            {
                print(format_args!(
                    "vms: vm{k}.{i} checksum: right before, during and after the storm"
                ));
            }
        }
        Role::Mmio | Role::Share | Role::Demand => {
            if check(
                print,
                off && d.info_ok,
                format_args!("vm{k}.{i} {role}: ended {:?}", d.end),
            ) && k < 4
            {
                print(format_args!("vms: vm{k}.{i} {role}: done"));
            }
        }
        Role::Attack => {
            check(
                print,
                off,
                format_args!("vm{k}.{i} {role}: ended {:?}", d.end),
            );
        }
        Role::ProbeOtherVm => {
            // The IPA is VM 0's data page's physical address: the guest must
            // see a fresh zero page of its own, not VM 0's pattern.
            let ok = off && d.value == 0;
            attack_outcome(
                print,
                "guest-read-other-vm-pa",
                ok,
                format_args!("read {:#x} from its own fresh page there", d.value),
            );
        }
        Role::ProbeEngineWrite => {
            let ok = off && d.value == guest::PROBE_WRITE_VALUE;
            attack_outcome(
                print,
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
                    print,
                    name,
                    true,
                    format_args!("the engine stopped the vCPU (Exit::Error)"),
                ),
                End::Unbacked(ipa) => attack_outcome(
                    print,
                    name,
                    true,
                    format_args!("host did not back IPA {ipa:#x}"),
                ),
                End::CpuOff if d.value >> 63 == 1 => {
                    attack_outcome(
                        print,
                        name,
                        true,
                        format_args!("stage-1 fault in the guest"),
                    );
                }
                end => attack_outcome(
                    print,
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
                    attack_outcome(
                        print,
                        name,
                        true,
                        format_args!("MMIO exit to the host, read 0x0"),
                    );
                }
                End::Unbacked(ipa) => attack_outcome(
                    print,
                    name,
                    true,
                    format_args!("host did not back IPA {ipa:#x}"),
                ),
                end => attack_outcome(
                    print,
                    name,
                    false,
                    format_args!("ended {end:?}, read {:#x}", d.value),
                ),
            }
        }
        Role::Spin => {
            check(
                print,
                off && d.value == Status::Success.raw(),
                format_args!("vm{k}.{i} {role}: ended {:?}", d.end),
            );
        }
        Role::Registers => {
            let (leaked, at_el2, via_host) =
                (d.value >> 48, d.value >> 32 & 0xffff, d.value & 0xffff_ffff);
            if check(
                print,
                off && d.value == 0,
                format_args!(
                    "vm{k}.{i} {role}: ended {:?}, {leaked} host EL1 registers visible, {at_el2} guest registers lost across a call the engine handled, {via_host} across an exit to the host",
                    d.end
                ),
            ) {
                print(format_args!(
                    "vms: world switch: the guest saw none of the host's EL1 registers and kept x4-x30, v0-v31, FPCR and its EL1 registers across a call handled at EL2 and one handled by the host"
                ));
            }
        }
        Role::SystemOff => {
            check(
                print,
                d.end == End::SystemOff,
                format_args!("vm{k}.{i} {role}: ended {:?}", d.end),
            );
            print(format_args!("vms: power VM: PSCI SYSTEM_OFF exit"));
        }
        Role::SystemReset => {
            check(
                print,
                d.end == End::SystemReset,
                format_args!("vm{k}.{i} {role}: ended {:?}", d.end),
            );
            print(format_args!("vms: reset VM: PSCI SYSTEM_RESET exit"));
        }
    }
}

fn attack_outcome(print: Print, name: &str, ok: bool, what: fmt::Arguments<'_>) {
    CHECKS.fetch_add(1, Ordering::Relaxed);
    if ok {
        print(format_args!("attack {name}: contained ({what})"));
    } else {
        FAILURES.fetch_add(1, Ordering::Relaxed);
        print(format_args!("attack {name}: FAIL ({what})"));
    }
}
