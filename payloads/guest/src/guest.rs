//! The guest program: entry, EL1 vectors, hypercalls, the behaviours.

use core::arch::{asm, global_asm};
use core::ptr;

use isola_abi::{GuestCall, HostCall, Status, psci};
use isola_guest_payload::{
    Attack, Behaviour, Checksum, PROBE_WRITE_VALUE, SPINNING, STOP, STORM_CALLS, answer, layout,
    msg, regs,
};

const PAGE: u64 = isola_abi::PAGE_SIZE;

// Entry at `layout::IPA_BASE` with x0 = the behaviour word. The header after
// the first branch is what the host reads to load the image. Before any Rust
// runs: FP/SIMD on (the compiler may use it), the guest's vectors in
// VBAR_EL1, probes disarmed, and SP at this vCPU's own stack, found from the
// index `GuestCall::Info` returns. A vCPU whose index has no stack turns off.
global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b 1f
    .word 0
    .quad {magic}
    .quad __image_end
    .quad __mem_end
1:
    mov x19, x0
    // What this vCPU found in the registers the entry is about to set (the
    // register census reports them as its fresh values).
    mrs x20, vbar_el1
    mrs x21, cpacr_el1
    mrs x22, tpidr_el1
    mov x9, #(3 << 20)
    msr cpacr_el1, x9
    ldr x9, =guest_vectors
    msr vbar_el1, x9
    msr tpidr_el1, xzr
    isb
    ldr x0, ={info}
    hvc #0
    cbnz x0, 2f
    cmp x2, #{max_vcpus}
    b.hs 2f
    ldr x9, =__stack_top
    mov x10, #{stack_bytes}
    mul x10, x10, x2
    sub sp, x9, x10
    mov x0, x19
    mov x1, x2
    mov x2, x3
    mov x3, x20
    mov x4, x21
    mov x5, x22
    bl guest_main
2:
    ldr x0, ={cpu_off}
    hvc #0
    b 2b
    .ltorg

    // EL1 vectors: 16 entries of 0x80 bytes, each saving x0/x1 and passing
    // its index to the common handler. Only a synchronous exception from
    // EL1 with SP_EL1 (entry 4, offset 0x200) while a probe is armed (TPIDR_EL1 == 1) is
    // expected: record ESR_EL1 | 1 << 63 in TPIDR_EL1 and skip the
    // instruction. Anything else is fatal: report it and turn off.
    .section .text.vectors, "ax"
    .balign 2048
guest_vectors:
    .set entry, 0
    .rept 16
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mov x0, #entry
    b guest_exception
    .set entry, entry + 1
    .endr

guest_exception:
    cmp x0, #5
    b.eq 5f
    cmp x0, #8
    b.eq 8f
    cmp x0, #4
    b.ne 9f
    mrs x0, tpidr_el1
    cmp x0, #1
    b.ne 9f
    mrs x0, esr_el1
    orr x0, x0, #(1 << 63)
    msr tpidr_el1, x0
    mrs x0, elr_el1
    add x0, x0, #4
    msr elr_el1, x0
    ldp x0, x1, [sp], #16
    eret
    // An IRQ from EL1h: a virtual interrupt (`Behaviour::VirtualIrq`).
    // Acknowledge it; the timer's (PPI 27) is handled by disarming the
    // timer; end it (EOImode 0: priority drop and deactivation); count it
    // in TPIDRRO_EL0 (and the timer's in TPIDR_EL0).
5:
    mrs x0, icc_iar1_el1
    and x1, x0, #0xffffff
    cmp x1, #1020
    b.hs 7f
    cmp x1, #27
    b.ne 6f
    msr cntv_ctl_el0, xzr
    mrs x1, tpidr_el0
    add x1, x1, #1
    msr tpidr_el0, x1
6:
    msr icc_eoir1_el1, x0
    mrs x1, tpidrro_el0
    add x1, x1, #1
    msr tpidrro_el0, x1
7:
    ldp x0, x1, [sp], #16
    eret
    // From EL0 (entry 8, lower EL, AArch64): an `svc` is the EL0 worker
    // (`Behaviour::El0`) done, its result in its x0 (saved at [sp]): go on
    // at EL1 in `el0_done`, on this stack, never back to EL0.
8:
    mrs x1, esr_el1
    lsr x1, x1, #26
    cmp x1, #0x15
    b.ne 9f
    ldr x0, [sp]
    add sp, sp, #16
    b el0_done
9:
    mov x1, #{fatal}
    mrs x2, esr_el1
    ldr x0, ={host_call}
    hvc #0
3:
    ldr x0, ={cpu_off}
    hvc #0
    b 3b
    .ltorg
    "#,
    magic = const isola_guest_payload::IMAGE_MAGIC,
    info = const GuestCall::Info as u32,
    host_call = const GuestCall::HostCall as u32,
    cpu_off = const psci::CPU_OFF,
    max_vcpus = const layout::MAX_VCPUS,
    stack_bytes = const layout::STACK_BYTES,
    fatal = const msg::FATAL,
);

isola_guest_payload::register_probe!("guest_regs_probe", isola_guest_payload::regs::GUEST);

unsafe extern "C" {
    fn guest_regs_probe(id: u64, a1: u64, a2: u64, a3: u64, record: *mut [u64; regs::WORDS]);
}

/// Runs `guest_regs_probe` for one call; how many of `x4..x30`, the two
/// halves of `v0..v31` and FPCR/FPSR lost their value.
fn regs_lost(id: u64, a1: u64, a2: u64) -> u64 {
    let mut record = [0u64; regs::WORDS];
    // SAFETY: the routine writes exactly the words of `record` and restores
    // every callee-saved register, SP, FPCR and FPSR before returning; the
    // `hvc` in it touches no memory Rust owns (as for `hvc`).
    unsafe { guest_regs_probe(id, a1, a2, 0, &raw mut record) };
    regs::GUEST.lost(&record)
}

/// EL1/EL0 system registers the register test inspects: the host uses
/// several of them (its MMU is on), so a guest that saw any non-zero value in
/// a fresh vCPU would be seeing the host's.
macro_rules! el1_probe {
    ($m:ident) => {
        $m!(
            tpidr_el0,
            tpidrro_el0,
            contextidr_el1,
            mair_el1,
            amair_el1,
            tcr_el1,
            ttbr0_el1,
            ttbr1_el1
        )
    };
}

/// Values of the inspected registers, in `el1_probe!` order.
fn read_el1() -> [u64; 8] {
    macro_rules! read_all {
        ($($r:ident),*) => {
            [$({
                let v: u64;
                // SAFETY: reading an EL1/EL0 system register at EL1 has no
                // side effect.
                unsafe { asm!(concat!("mrs {}, ", stringify!($r)), out(reg) v, options(nomem, nostack, preserves_flags)) };
                v
            }),*]
        };
    }
    el1_probe!(read_all)
}

/// Writes `pattern(i)` into the inspected registers (the MMU is off, so the
/// translation registers have no effect).
fn write_el1(pattern: impl Fn(u64) -> u64) {
    let mut i = 0u64;
    macro_rules! write_all {
        ($($r:ident),*) => {
            $(
                let v = pattern(i);
                i = i.wrapping_add(1);
                // SAFETY: the guest's own registers; with SCTLR_EL1.M clear
                // none of them changes how this code runs.
                unsafe { asm!(concat!("msr ", stringify!($r), ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
            )*
        };
    }
    el1_probe!(write_all);
    let _ = i;
}

/// The EL1 pattern the register test writes: TTBRs need bit 0 clear (CnP
/// is RES0 without FEAT_TTCNP), so every value is even.
fn el1_pattern(i: u64) -> u64 {
    0x5ee1_0000_0000_0000 | (0x100 | i) << 4
}

/// The register test: the fresh vCPU must see none of the host's EL1
/// registers; then, across one call the engine answers and one exit to the
/// host, every general, FP/SIMD and inspected EL1 register must keep its
/// value. Reports `leaked << 48 | lost at EL2 << 32 | lost via the host`.
fn registers() {
    let leaked = read_el1().iter().filter(|&&v| v != 0).count() as u64;
    write_el1(el1_pattern);
    // What the registers hold now: RES0 fields and RAZ/WI registers (QEMU's
    // AMAIR_EL1) keep only part of the pattern.
    let held = read_el1();
    let el1_lost = |regs: [u64; 8]| regs.iter().zip(&held).filter(|(v, h)| v != h).count() as u64;
    let at_el2 = regs_lost(GuestCall::Info as u64, 0, 0).wrapping_add(el1_lost(read_el1()));
    let via_host =
        regs_lost(GuestCall::HostCall as u64, msg::REGS, 0).wrapping_add(el1_lost(read_el1()));
    host_call(
        msg::REGS_RESULT,
        (leaked & 0xffff) << 48 | (at_el2 & 0xffff) << 32 | (via_host & 0xffff_ffff),
    );
}

/// `x0..=x3` after a hypercall.
type Ret = [u64; 4];

/// An `hvc #0` with the function id in `x0` and arguments in `x1..=x3`.
fn hvc(id: u64, a1: u64, a2: u64, a3: u64) -> Ret {
    let (r0, r1, r2, r3);
    // SAFETY: `hvc` traps to the engine, which only writes this vCPU's
    // registers (results in x0..x3; x4..x17 are declared clobbered as the
    // SMCCC allows) and, for Relinquish/Unshare, this guest's own Stage-2
    // mappings of pages no Rust reference points at (the guest only reaches
    // its pages through raw volatile accesses).
    unsafe {
        asm!(
            "hvc #0",
            inlateout("x0") id => r0,
            inlateout("x1") a1 => r1,
            inlateout("x2") a2 => r2,
            inlateout("x3") a3 => r3,
            lateout("x4") _, lateout("x5") _, lateout("x6") _, lateout("x7") _,
            lateout("x8") _, lateout("x9") _, lateout("x10") _, lateout("x11") _,
            lateout("x12") _, lateout("x13") _, lateout("x14") _, lateout("x15") _,
            lateout("x16") _, lateout("x17") _,
            options(nostack),
        );
    }
    [r0, r1, r2, r3]
}

/// An `smc #0` (trapped to the engine for guests), same register use.
fn smc(id: u64) -> Ret {
    let (r0, r1, r2, r3);
    // SAFETY: as for `hvc`: the trap reaches the engine, which writes at most
    // this vCPU's registers.
    unsafe {
        asm!(
            "smc #0",
            inlateout("x0") id => r0,
            lateout("x1") r1, lateout("x2") r2, lateout("x3") r3,
            lateout("x4") _, lateout("x5") _, lateout("x6") _, lateout("x7") _,
            lateout("x8") _, lateout("x9") _, lateout("x10") _, lateout("x11") _,
            lateout("x12") _, lateout("x13") _, lateout("x14") _, lateout("x15") _,
            lateout("x16") _, lateout("x17") _,
            options(nostack),
        );
    }
    [r0, r1, r2, r3]
}

/// A guest call with one argument; the status word.
fn guest_call(call: GuestCall, arg: u64) -> u64 {
    hvc(call as u64, arg, 0, 0)[0]
}

/// `GuestCall::HostCall`: exits to the host with `[tag, value]`; its reply.
fn host_call(tag: u64, value: u64) -> u64 {
    hvc(GuestCall::HostCall as u64, tag, value, 0)[1]
}

/// PSCI through the hypervisor conduit (`hvc`); never returns for the calls
/// used.
fn psci_off(id: u32) -> ! {
    loop {
        hvc(u64::from(id), 0, 0, 0);
    }
}

/// PSCI through the firmware conduit (`smc`, which the engine traps for
/// guests and handles like `hvc`); never returns for the calls used.
fn psci_off_smc(id: u32) -> ! {
    loop {
        smc(u64::from(id));
    }
}

/// One byte to the emulated console's data register.
fn putc(byte: u8) {
    let reg = layout::CONSOLE_IPA.wrapping_add(layout::CONSOLE_DATA);
    // SAFETY: the console is an IPA the host emulates: the store is one
    // single-register `strb` without writeback, so the exit syndrome carries
    // it (ISV = 1) and no guest memory is touched.
    unsafe {
        asm!("strb {b:w}, [{a}]", a = in(reg) reg, b = in(reg) u32::from(byte), options(nostack))
    };
}

/// Reads the emulated counter register.
fn counter() -> u64 {
    let reg = layout::CONSOLE_IPA.wrapping_add(layout::CONSOLE_COUNTER);
    let v;
    // SAFETY: an emulated register; one `ldr` without writeback (ISV = 1).
    unsafe { asm!("ldr {v}, [{a}]", a = in(reg) reg, v = lateout(reg) v, options(nostack)) };
    v
}

fn puts(s: &str) {
    s.bytes().for_each(putc);
}

fn put_hex(v: u64) {
    puts("0x");
    for shift in (0..16u32).rev() {
        let nibble = (v >> shift.wrapping_mul(4)) & 0xf;
        let digit = b"0123456789abcdef"
            .get(nibble as usize)
            .copied()
            .unwrap_or(b'?');
        putc(digit);
    }
}

/// A `u64` of guest memory at `ipa` (8-byte aligned).
fn read(ipa: u64) -> u64 {
    // SAFETY: callers pass 8-byte aligned IPAs of this guest's RAM windows;
    // a page that is not backed yet faults to the host (Stage 2), which backs
    // it or stops this vCPU, so the access either completes or never returns.
    unsafe { ptr::read_volatile(ptr::with_exposed_provenance::<u64>(ipa as usize)) }
}

/// Stores a `u64` at `ipa` (8-byte aligned).
fn write(ipa: u64, value: u64) {
    // SAFETY: as for `read`; no Rust reference covers these windows.
    unsafe { ptr::write_volatile(ptr::with_exposed_provenance_mut::<u64>(ipa as usize), value) }
}

/// Reads `ipa` with the EL1 fault catcher armed: `Err(ESR_EL1)` if the load
/// took a stage-1 exception.
fn probe_read(ipa: u64) -> Result<u64, u64> {
    let mut value = 0u64;
    let fault: u64;
    // SAFETY: arms the guest's own vector (TPIDR_EL1 = 1) around one load of
    // an arbitrary address; a stage-1 exception is recorded and the load
    // skipped, a stage-2 fault goes to the host. Nothing Rust owns is written.
    unsafe {
        asm!(
            "msr tpidr_el1, {one}",
            "ldr {v}, [{a}]",
            "mrs {f}, tpidr_el1",
            "msr tpidr_el1, xzr",
            one = in(reg) 1u64, a = in(reg) ipa, v = inout(reg) value, f = out(reg) fault,
            options(nostack),
        );
    }
    // Still armed (1): no exception; else the handler stored ESR | 1 << 63.
    if fault == 1 {
        Ok(value)
    } else {
        Err(fault & !(1 << 63))
    }
}

/// Stores to `ipa` with the EL1 fault catcher armed.
fn probe_write(ipa: u64, value: u64) -> Result<(), u64> {
    let fault: u64;
    // SAFETY: as for `probe_read`; the store targets an address the guest
    // chose to attack, never memory a Rust reference points at.
    unsafe {
        asm!(
            "msr tpidr_el1, {one}",
            "str {v}, [{a}]",
            "mrs {f}, tpidr_el1",
            "msr tpidr_el1, xzr",
            one = in(reg) 1u64, a = in(reg) ipa, v = in(reg) value, f = out(reg) fault,
            options(nostack),
        );
    }
    if fault == 1 {
        Ok(())
    } else {
        Err(fault & !(1 << 63))
    }
}

/// Called from `_start` on this vCPU's stack.
#[unsafe(no_mangle)]
extern "C" fn guest_main(x0: u64, index: u64, count: u64, vbar: u64, cpacr: u64, tpidr1: u64) -> ! {
    host_call(msg::INFO, index << 32 | (count & 0xffff_ffff));
    let param = Behaviour::param(x0);
    match Behaviour::from_x0(x0) {
        Some(Behaviour::Checksum) => checksum(),
        Some(Behaviour::Mmio) => mmio(index),
        Some(Behaviour::Share) => share(index),
        Some(Behaviour::Demand) => demand(index),
        Some(Behaviour::Attack) => attack(param),
        Some(Behaviour::Probe) => probe(param),
        Some(Behaviour::SystemOff) => psci_off(psci::SYSTEM_OFF),
        Some(Behaviour::SystemReset) => psci_off_smc(psci::SYSTEM_RESET),
        Some(Behaviour::Spin) => spin(index),
        Some(Behaviour::Registers) => registers(),
        Some(Behaviour::Hold) => hold(param),
        Some(Behaviour::VirtualIrq) => virtual_irq(param, index),
        Some(Behaviour::Census) => crate::census::run(param, index, [vbar, cpacr, tpidr1]),
        Some(Behaviour::El0) => el0(param),
        None => {
            host_call(msg::FATAL, x0);
        }
    }
    psci_off(psci::CPU_OFF)
}

/// Hashes the data region until the host says stop.
fn checksum() {
    let words = layout::DATA_PAGES.wrapping_mul(PAGE / 8);
    loop {
        let sum = (0..words).fold(Checksum::new(), |c, i| {
            c.word(read(layout::DATA_IPA.wrapping_add(i.wrapping_mul(8))))
        });
        if host_call(msg::CHECKSUM, sum.value()) == 0 {
            return;
        }
    }
}

/// A console greeting and three counter reads.
fn mmio(index: u64) {
    puts("guest vcpu ");
    putc(b'0'.wrapping_add((index & 7) as u8));
    puts(": hello through emulated MMIO, counter at ");
    let first = counter();
    put_hex(first);
    putc(b'\n');
    let second = counter();
    let third = counter();
    let increasing = first < second && second < third;
    host_call(msg::COUNTER, third << 1 | u64::from(increasing));
}

/// Shares its page, answers the host's message in it, unshares it.
fn share(index: u64) {
    let page = layout::SHARE_IPA.wrapping_add(index.wrapping_mul(PAGE));
    let status = guest_call(GuestCall::Share, page);
    host_call(msg::SHARED, status);
    if status != Status::Success.raw() {
        return;
    }
    let message = read(page);
    write(page.wrapping_add(8), answer(message));
    host_call(msg::ANSWERED, message);
    host_call(msg::UNSHARED, guest_call(GuestCall::Unshare, page));
}

/// Touches an unbacked page (the host backs it on the fault), checks it,
/// gives it back.
fn demand(index: u64) {
    let page = layout::DEMAND_IPA.wrapping_add(index.wrapping_mul(PAGE));
    let value = 0xd00d_0000_0000_0000 | index;
    write(page, value);
    let ok = read(page) == value && read(page.wrapping_add(8)) == 0;
    host_call(msg::DEMAND, u64::from(ok));
    host_call(msg::RELINQUISHED, guest_call(GuestCall::Relinquish, page));
}

/// Spins on a shared page until the host says stop, without exiting.
fn spin(index: u64) {
    let page = layout::SHARE_IPA.wrapping_add(index.wrapping_mul(PAGE));
    let status = guest_call(GuestCall::Share, page);
    if status != Status::Success.raw() {
        host_call(msg::SPUN, status);
        return;
    }
    write(page, SPINNING);
    while read(page.wrapping_add(8)) != STOP {
        core::hint::spin_loop();
    }
    host_call(msg::SPUN, guest_call(GuestCall::Unshare, page));
}

/// `Behaviour::El0`: drops to EL0 (interrupts unmasked there, so the
/// host's tick ends some of its runs at EL0) with its own stack, below this
/// vCPU's EL1 stack, where it hashes the data region `passes` times; its
/// `svc` ends at `el0_done`.
fn el0(passes: u64) {
    let sp: u64;
    // SAFETY: reads SP.
    unsafe { asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    // The lower half of this vCPU's 16 KiB stack, well below what EL1 uses.
    let el0_sp = (sp & !0xf).wrapping_sub(layout::STACK_BYTES / 2);
    // SAFETY: `eret` to EL0t with no exception masked at `el0_work`, on
    // its own stack; its `svc` comes back to this guest's vectors (entry
    // 8), which continue at `el0_done` and never return here.
    unsafe {
        asm!(
            "msr sp_el0, {sp}",
            "msr elr_el1, {entry}",
            "msr spsr_el1, xzr",
            "mov x0, {passes}",
            "eret",
            sp = in(reg) el0_sp,
            entry = in(reg) el0_work as *const () as u64,
            passes = in(reg) passes,
            options(noreturn)
        );
    }
}

/// The EL0 worker: FNV-1a over the data region, `passes` times; the last
/// hash goes back to EL1 in `x0` with `svc #0`.
extern "C" fn el0_work(passes: u64) -> ! {
    let words = layout::DATA_PAGES.wrapping_mul(PAGE / 8);
    let mut sum = Checksum::new();
    for _ in 0..passes.max(1) {
        sum = (0..words).fold(Checksum::new(), |c, i| {
            c.word(read(layout::DATA_IPA.wrapping_add(i.wrapping_mul(8))))
        });
    }
    // SAFETY: a supervisor call with the result; the EL1 vector takes it.
    unsafe { asm!("svc #0", in("x0") sum.value(), options(noreturn)) }
}

/// Back at EL1 after the EL0 worker's `svc`: report its hash, turn off.
#[unsafe(no_mangle)]
extern "C" fn el0_done(sum: u64) -> ! {
    host_call(msg::EL0_RESULT, sum);
    psci_off(psci::CPU_OFF)
}

/// `Behaviour::VirtualIrq`: see its documentation.
fn virtual_irq(ticks: u64, index: u64) {
    // SAFETY: the guest's own virtual CPU interface (the engine loads it per
    // vCPU) and counters: every priority passes, group 1 on; the counters
    // start at zero.
    unsafe {
        asm!(
            "msr icc_pmr_el1, {pmr}",
            "msr icc_igrpen1_el1, {one}",
            "msr tpidrro_el0, xzr",
            "msr tpidr_el0, xzr",
            "isb",
            pmr = in(reg) 0xffu64, one = in(reg) 1u64,
            options(nomem, nostack, preserves_flags)
        );
    }
    host_call(msg::VIRQ_READY, 0);
    let taken = || {
        let (n, t): (u64, u64);
        // SAFETY: reading the guest's own counters.
        unsafe {
            asm!("mrs {}, tpidrro_el0", "mrs {}, tpidr_el0", out(reg) n, out(reg) t,
                 options(nomem, nostack, preserves_flags))
        };
        (n, t)
    };
    // Unmask IRQs; then SGI VIRQ_SGI to itself: Aff3.Aff2.Aff1 = 0, the
    // target list names Aff0 = this vCPU's index (below 16 here).
    let sgi = isola_guest_payload::VIRQ_SGI << 24 | 1u64.wrapping_shl(index as u32);
    // SAFETY: unmasking IRQs hands them to this guest's vector (entry 5),
    // which preserves every register; the SGI write traps to the engine.
    unsafe {
        asm!("msr daifclr, #2", "isb", "msr icc_sgi1r_el1, {}", "isb", in(reg) sgi,
             options(nomem, nostack, preserves_flags))
    };
    let freq: u64;
    // SAFETY: reading the counter frequency.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) freq, options(nomem, nostack, preserves_flags)) };
    for _ in 0..ticks {
        let before = taken().1;
        // SAFETY: arms the guest's own virtual timer a millisecond ahead.
        unsafe {
            asm!("isb", "mrs {c}, cntvct_el0", "add {c}, {c}, {d}",
                 "msr cntv_cval_el0, {c}", "msr cntv_ctl_el0, {one}", "isb",
                 c = out(reg) _, d = in(reg) freq / 1000,
                 one = in(reg) 1u64, options(nomem, nostack, preserves_flags))
        };
        while taken().1 == before {
            // SAFETY: waits for an interrupt (the engine traps it and the
            // host runs this vCPU again).
            unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
        }
    }
    // SAFETY: masking IRQs only defers them.
    unsafe { asm!("msr daifset, #2", options(nomem, nostack, preserves_flags)) };
    let (n, t) = taken();
    host_call(msg::VIRQ_RESULT, t << 32 | (n & 0xffff_ffff));
}

/// 2 KiB of zeroes, aligned as a vector table must be: every entry is an
/// undefined instruction, whose exception enters the same table again.
#[repr(C, align(2048))]
struct ZeroVectors([u32; 512]);

static ZERO_VECTORS: ZeroVectors = ZeroVectors([0; 512]);

/// Never exits (see `Behaviour::Hold`).
fn hold(param: u64) -> ! {
    if param & 1 == 0 {
        // SAFETY: masks this vCPU's interrupts and spins; touches nothing.
        unsafe {
            asm!(
                "msr daifset, #0xf",
                "2: b 2b",
                options(nomem, nostack, noreturn)
            )
        }
    }
    let table = &raw const ZERO_VECTORS as u64;
    // SAFETY: the guest's own vectors now point at zeroes in its image (RWX
    // at Stage 2, executable with the MMU off): the `udf` enters them and
    // every entry is another `udf`, forever, at EL1 with interrupts masked.
    unsafe {
        asm!(
            "msr vbar_el1, {t}",
            "isb",
            "udf #0",
            t = in(reg) table,
            options(nomem, nostack, noreturn)
        )
    }
}

/// An IPA inside the demand window that nobody backs.
const UNBACKED_IPA: u64 = 0x4500_0000;

/// The hypercall attacks, then the random storm.
fn attack(seed: u64) {
    for a in Attack::ALL {
        let status = match a {
            Attack::UndefinedId => hvc(0xc600_01ff, 1, 2, 3)[0],
            Attack::HostOnlyCall => hvc(HostCall::Donate as u64, 0, layout::IPA_BASE, 0)[0],
            Attack::ShareUnmapped => guest_call(GuestCall::Share, UNBACKED_IPA),
            Attack::ShareUnaligned => guest_call(GuestCall::Share, layout::DATA_IPA | 8),
            Attack::ShareWild => guest_call(GuestCall::Share, 0xffff_ffff_ffff_f000),
            Attack::ShareBorrowed => guest_call(GuestCall::Share, layout::BORROW_IPA),
            Attack::UnshareNotShared => guest_call(GuestCall::Unshare, layout::DATA_IPA),
            Attack::RelinquishUnmapped => guest_call(GuestCall::Relinquish, UNBACKED_IPA),
            Attack::RelinquishBorrowed => guest_call(GuestCall::Relinquish, layout::BORROW_IPA),
            Attack::SmcUndefined => smc(0xc200_0123)[0],
        };
        host_call(msg::ATTACK, (a as u64) << 32 | (status & 0xffff_ffff));
    }
    storm(seed);
}

/// `STORM_CALLS` guest calls with random ids and arguments. Ids that would
/// leave the guest (PSCI, `HostCall`) are skipped, and argument addresses are
/// kept above 4 GiB so no call can take away the guest's own pages. Counts the
/// calls that returned a defined status with every unnamed result zero.
fn storm(seed: u64) {
    let mut state = seed | 1;
    let mut next = || {
        state = isola_guest_payload::splitmix64(state);
        state
    };
    let mut defined = 0u64;
    for _ in 0..STORM_CALLS {
        let r = next();
        let id = match r & 3 {
            0 => r >> 32,
            1 => 0xc600_0000 | (r >> 40 & 0x1ff),
            _ => GuestCall::Info as u64 | (r >> 40 & 3),
        };
        let psci_range = (id >> 24) & 0x3f == 4;
        if psci_range || id & 0xffff_ffff == GuestCall::HostCall as u64 {
            defined = defined.wrapping_add(1);
            continue;
        }
        let arg = |x: u64| x | 1 << 32;
        let [x0, x1, x2, x3] = hvc(id, arg(next()), arg(next()), arg(next()));
        let ok = match Status::from_raw(x0 as i64) {
            Some(Status::Success) => true,
            Some(_) => x1 == 0 && x2 == 0 && x3 == 0,
            None => false,
        };
        defined = defined.wrapping_add(u64::from(ok));
    }
    host_call(msg::STORM, defined << 32 | u64::from(STORM_CALLS));
}

/// Reads (after writing, if bit 0 of the parameter is set) the IPA in the
/// parameter and reports what it saw; a stage-1 fault is reported with bit 63.
fn probe(param: u64) {
    let ipa = param & !7;
    if param & 1 != 0
        && let Err(esr) = probe_write(ipa, PROBE_WRITE_VALUE)
    {
        host_call(msg::PROBE, esr | 1 << 63);
        return;
    }
    let value = match probe_read(ipa) {
        Ok(v) => v,
        Err(esr) => esr | 1 << 63,
    };
    host_call(msg::PROBE, value);
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    host_call(msg::FATAL, 0);
    psci_off(psci::CPU_OFF)
}
