//! The register census (`Behaviour::Census`): every `MRS` and `MSR` a lower
//! EL can encode, probed one at a time at EL1 or EL0 behind the census's
//! own vectors, which skip an instruction that faults and note which.
//!
//! Each probed instruction is written into this vCPU's code page
//! (`layout::CENSUS_IPA`) as the encoding formula makes it, not taken from
//! a list: 32768 encodings, each read and (when planting) written. The
//! page then holds `[probe][probe][ret]` (or `svc #0` instead of `ret` at
//! EL0) and the census branches to it (`eret`s to it at EL0).
//!
//! The census runs on a few registers itself, which a random pattern would
//! wreck before the next instruction (a set `SCTLR_EL1.M` turns the MMU on
//! over tables that are not there): its vectors (`VBAR_EL1`), `SCTLR_EL1`
//! (MMU off), `CPACR_EL1` (FP on), `SPSel`, `DAIF`, the GIC's
//! `ICC_SRE_EL1` and the guarded control stack's controls. Those are
//! written the census's working value instead of a pattern
//! ([`working_value`]); the working values differ from a fresh vCPU's
//! wherever the census can, so they still show a leak. A register the
//! census needs and this list misses makes the census vCPU fail loudly (an
//! exception it did not expect is reported `FATAL`), never pass quietly.
//!
//! Register use while a probe runs: `x0` (the value written, the value
//! read), `x1` (the read-back), `x5` (the code page); the vectors use `x3`,
//! `x4` (the fault bits), `x6`, and at EL0 `x26..x28` (how to come back to
//! EL1).

use core::arch::{asm, global_asm};

use isola_abi::{GuestCall, psci};
use isola_guest_payload::census::{self, dir};
use isola_guest_payload::{layout, msg};

/// `RET`, `SVC #0`, `MVN x0, x0`.
const RET: u32 = 0xd65f_03c0;
const SVC: u32 = 0xd400_0001;
const MVN_X0: u32 = 0xaa20_03e0;

/// `SCTLR_EL1` the census runs with: the reset value (MMU and caches off)
/// plus EL0 access to the cache-type register, `DC ZVA`, cache maintenance
/// and `DAIF` (`UCT`, `DZE`, `UCI`, `UMA`), and `WFI`/`WFE` not trapped to
/// EL1 (`nTWI`, `nTWE`): harmless with the MMU off, and unlike a fresh
/// vCPU's.
const SCTLR: u64 = 0x30d0_0800 | 1 << 15 | 1 << 14 | 1 << 26 | 1 << 9 | 1 << 16 | 1 << 18;

/// `CNTKCTL_EL1` of an EL0 census: EL0 may read both counters and use both
/// timers (the engine still traps the physical one).
const CNTKCTL: u64 = 1 << 0 | 1 << 1 | 1 << 8 | 1 << 9;

/// The census vectors' address (assembly below).
fn vectors() -> u64 {
    let v: u64;
    // SAFETY: takes the address of a symbol; no memory is accessed.
    unsafe { asm!("adr {}, census_vectors", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The working value of a register the census itself runs on, or `None`.
fn working_value(e: u32) -> Option<u64> {
    use census::enc;
    let v = match e {
        x if x == enc(3, 0, 1, 0, 0) => SCTLR,
        x if x == enc(3, 0, 12, 0, 0) => vectors(),
        x if x == enc(3, 0, 1, 0, 2) => 3 << 20,
        x if x == enc(3, 0, 4, 2, 0) => 1,
        x if x == enc(3, 3, 4, 2, 1) => 0x3c0,
        // ICC_SRE_EL1: system registers on, no bypass.
        x if x == enc(3, 0, 12, 12, 5) => 7,
        // GCSCR_EL1, GCSCRE0_EL1: no guarded control stack.
        x if x == enc(3, 0, 2, 5, 0) || x == enc(3, 0, 2, 5, 2) => 0,
        _ => return None,
    };
    Some(v)
}

/// This vCPU's code page, and whether it probes at EL0.
struct Prober {
    page: u64,
    el0: bool,
    /// Probes made.
    probes: u64,
    /// What the writing pass wrote to each exception register (written
    /// again after every later pass, whose faults overwrite them).
    exceptions: [u64; 4],
}

/// What one probe saw: the value read (a read) or read back (a write),
/// which of its instructions faulted, and (a write) the value it wrote.
#[derive(Clone, Copy, Default)]
struct Probe {
    value: u64,
    faults: u32,
    written: u64,
}

impl Prober {
    /// Writes `code` (then `ret`, or `svc #0` at EL0) into the code page and
    /// makes it what the CPU fetches.
    fn load(&self, code: &[u32]) {
        let end = if self.el0 { SVC } else { RET };
        let words = code.iter().copied().chain([end]);
        for (i, w) in words.enumerate() {
            let at = self.page.wrapping_add((i as u64).wrapping_mul(4));
            // SAFETY: this vCPU's own census page (donated RWX for census
            // VMs only, one page per vCPU index); nothing else is there.
            unsafe { core::ptr::with_exposed_provenance_mut::<u32>(at as usize).write_volatile(w) };
        }
        // SAFETY: barriers and instruction-cache maintenance only.
        unsafe {
            asm!(
                "dsb ish",
                "ic iallu",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    }

    /// Runs the loaded code with `x0 = value`; returns `(x0, x1, faults)`.
    fn run(&mut self, value: u64) -> (u64, u64, u32) {
        self.probes = self.probes.wrapping_add(1);
        let (r0, r1, faults): (u64, u64, u64);
        if self.el0 {
            // SAFETY: `eret`s to the code page at EL0 (D, A, I, F masked);
            // its `svc` (or any fault, skipped by the census vectors) comes
            // back to EL1, and the `svc` path resumes at label 2 with x27's
            // PSTATE. The code touches x0 and x1 only; everything the
            // vectors use is declared. The flags may change (NZCV is probed).
            unsafe {
                asm!(
                    "mov x4, xzr",
                    "adr x28, 2f",
                    "mov x27, #0x3c5",
                    "msr elr_el1, x5",
                    "msr spsr_el1, x26",
                    "eret",
                    "2:",
                    inout("x0") value => r0,
                    lateout("x1") r1,
                    out("x3") _,
                    out("x4") faults,
                    in("x5") self.page,
                    out("x6") _,
                    inout("x26") 0x3c0u64 => _,
                    out("x27") _,
                    out("x28") _,
                    options(nostack),
                );
            }
        } else {
            // SAFETY: branches to the code page at EL1; it returns with
            // `ret`; a faulting instruction is skipped by the census
            // vectors, which note it in x4. Registers as above.
            unsafe {
                asm!(
                    "mov x4, xzr",
                    "blr x5",
                    inout("x0") value => r0,
                    lateout("x1") r1,
                    out("x3") _,
                    out("x4") faults,
                    in("x5") self.page,
                    out("x6") _,
                    out("x30") _,
                    options(nostack),
                );
            }
        }
        (r0, r1, faults as u32)
    }

    /// One probe of encoding `e` in direction `d`: an `MRS` (`READ`,
    /// `LAST`, `AGAIN`), or (`WRITE`) an `MSR` of the complement of the
    /// register's value (of its working value, for a register the census
    /// runs on) and an `MRS` at once. A write's fault bits are those of the
    /// `MSR` (bit 0) and of the `MRS` after it (bit 1).
    fn probe(&mut self, e: u32, d: u32) -> Probe {
        if d != dir::WRITE {
            self.load(&[census::mrs(e, 0)]);
            let (value, _, faults) = self.run(0);
            return Probe {
                value,
                faults,
                written: 0,
            };
        }
        if let Some(working) = working_value(e) {
            return self.write(e, working);
        }
        // `mrs x0; mvn x0, x0; msr x0; mrs x1`: every writable bit flips
        // (a register that cannot be read gets its pattern's complement).
        self.load(&[
            census::mrs(e, 0),
            MVN_X0,
            census::msr(e, 0),
            census::mrs(e, 1),
        ]);
        let (written, back, faults) = self.run(census::pattern(e));
        Probe {
            value: back,
            faults: faults >> 2,
            written,
        }
    }

    /// `MSR` of `value` to encoding `e` and an `MRS` at once: a write that
    /// gives the same result however often it is made (a block probed
    /// again, one encoding at a time, writes what it wrote the first time).
    fn write(&mut self, e: u32, value: u64) -> Probe {
        self.load(&[census::msr(e, 0), census::mrs(e, 1)]);
        let (_, back, faults) = self.run(value);
        Probe {
            value: back,
            faults,
            written: value,
        }
    }

    /// Writes the exception registers again what the writing pass wrote
    /// them (the faults of every later pass overwrite them).
    fn restore_exceptions(&mut self) {
        for (e, v) in census::EXCEPTION_REGISTERS.into_iter().zip(self.exceptions) {
            self.write(e, v);
        }
    }

    /// Whether a probe of direction `d` faulted altogether.
    fn all_faulted(d: u32, p: Probe) -> bool {
        if d == dir::WRITE {
            p.faults & 3 == 3
        } else {
            p.faults & 1 != 0
        }
    }

    /// One pass over every encoding; with `detect`, asks the host after
    /// each block which accesses trapped to EL2. The exception registers
    /// are probed alone: first in a reading pass, last in the writing one
    /// (see `census::EXCEPTION_REGISTERS`).
    fn pass(&mut self, d: u32, detect: bool) {
        if d != dir::WRITE {
            self.singles(d, detect);
        }
        for block in 0..census::ENCODINGS >> 3 {
            let mut probes = [Probe::default(); 8];
            for (op2, p) in (0u32..).zip(probes.iter_mut()) {
                let e = block << 3 | op2;
                *p = if census::EXCEPTION_REGISTERS.contains(&e) {
                    // Left out here: all faulted, reported by `singles`.
                    Probe {
                        value: 0,
                        faults: 3,
                        written: 0,
                    }
                } else {
                    self.probe(e, d)
                };
            }
            if detect {
                let faulted = (0u32..)
                    .zip(probes)
                    .filter(|&(_, p)| Self::all_faulted(d, p))
                    .fold(0u32, |m, (i, _)| m | 1 << i);
                let tag = census::report(msg::CENSUS_BLOCK, block, d, 0) | u64::from(faulted) << 32;
                if host_call(tag, 0) == census::RESOLVE {
                    for (op2, p) in (0u32..).zip(probes.iter_mut()) {
                        let e = block << 3 | op2;
                        if census::EXCEPTION_REGISTERS.contains(&e) {
                            host_call(census::report(msg::CENSUS_ONE, e, d, 3), 0);
                            continue;
                        }
                        *p = if d == dir::WRITE {
                            self.write(e, p.written)
                        } else {
                            self.probe(e, d)
                        };
                        host_call(census::report(msg::CENSUS_ONE, e, d, p.faults), 0);
                    }
                }
            }
            for (op2, p) in (0u32..).zip(probes) {
                let e = block << 3 | op2;
                if !Self::all_faulted(d, p) {
                    host_call(census::report(msg::CENSUS_VALUE, e, d, p.faults), p.value);
                }
            }
        }
        if d == dir::WRITE {
            self.singles(d, detect);
        }
    }

    /// The exception registers, one at a time (with their trap counts when
    /// `detect`).
    fn singles(&mut self, d: u32, detect: bool) {
        for (i, e) in census::EXCEPTION_REGISTERS.into_iter().enumerate() {
            let p = self.probe(e, d);
            if d == dir::WRITE
                && let Some(w) = self.exceptions.get_mut(i)
            {
                *w = p.written;
            }
            if detect {
                host_call(census::report(msg::CENSUS_ONE, e, d, p.faults), 0);
            }
            if !Self::all_faulted(d, p) {
                host_call(census::report(msg::CENSUS_VALUE, e, d, p.faults), p.value);
            }
        }
    }
}

/// `GuestCall::HostCall` with `[tag, value]`; the host's reply.
fn host_call(tag: u64, value: u64) -> u64 {
    let (mut x0, mut x1) = (GuestCall::HostCall as u64, tag);
    // SAFETY: a hypercall; the engine writes only this vCPU's x0..x3, and
    // the SMCCC lets it clobber x4..x17.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") x0, inout("x1") x1, inout("x2") value => _, out("x3") _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _,
            out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
            out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack, preserves_flags),
        );
    }
    let _ = x0;
    x1
}

/// The census of vCPU `index` (see `Behaviour::Census`); `param` holds
/// `census::EL0` and `census::PLANT`; `entry` is what the vCPU found in
/// `VBAR_EL1`, `CPACR_EL1` and `TPIDR_EL1` before its entry code set them.
pub fn run(param: u64, index: u64, entry: [u64; 3]) {
    let el0 = param & census::EL0 != 0;
    let plant = param & census::PLANT != 0;
    let sctlr: u64;
    // SAFETY: reading SCTLR_EL1 (nothing has written it yet in this vCPU).
    unsafe { asm!("mrs {}, sctlr_el1", out(reg) sctlr, options(nomem, nostack, preserves_flags)) };
    let [vbar, cpacr, tpidr1] = entry;
    let entries = [
        (census::enc(3, 0, 12, 0, 0), vbar),
        (census::enc(3, 0, 1, 0, 2), cpacr),
        (census::enc(3, 0, 13, 0, 4), tpidr1),
        (census::enc(3, 0, 1, 0, 0), sctlr),
    ];
    // EL1 registers: what an EL1 census reads (an EL0 one cannot).
    for (e, v) in entries.into_iter().filter(|_| !el0) {
        host_call(census::report(msg::CENSUS_VALUE, e, dir::ENTRY, 0), v);
    }
    // SAFETY: the census's own vectors and working state: every interrupt
    // masked (physical ones still reach EL2), the MMU off, FP on; for EL0,
    // the counters and timers opened to it.
    unsafe {
        asm!(
            "msr daifset, #0xf",
            "msr vbar_el1, {v}",
            "msr sctlr_el1, {s}",
            "msr cpacr_el1, {c}",
            "isb",
            v = in(reg) vectors(), s = in(reg) SCTLR, c = in(reg) 3u64 << 20,
            options(nostack, preserves_flags)
        );
        if el0 {
            asm!("msr cntkctl_el1, {}", "isb", in(reg) CNTKCTL, options(nostack, preserves_flags));
        }
    }
    let mut p = Prober {
        page: layout::CENSUS_IPA.wrapping_add(index.wrapping_mul(isola_abi::PAGE_SIZE)),
        el0,
        probes: 0,
        exceptions: [0; 4],
    };
    p.pass(dir::READ, plant);
    if plant {
        p.pass(dir::WRITE, true);
        p.pass(dir::LAST, false);
        p.restore_exceptions();
        host_call(msg::CENSUS_EXIT, 0);
        p.pass(dir::AGAIN, false);
        p.restore_exceptions();
    }
    host_call(msg::CENSUS_DONE, p.probes);
    // Off at once: whatever the census left in the registers stays there
    // for the next vCPU the host runs on this CPU to (not) see.
    loop {
        let mut x0 = u64::from(psci::CPU_OFF);
        // SAFETY: PSCI CPU_OFF; it does not return.
        unsafe { asm!("hvc #0", inout("x0") x0, options(nostack, preserves_flags)) };
        let _ = x0;
    }
}

// The census vectors. A synchronous exception at EL1 (current EL, SP_EL1)
// or from EL0 whose ELR is in the code page's first four words (x5) is a
// probe's fault: its bit goes into x4 and the instruction is skipped. From
// EL0, an `svc` is the end of the probe: back to EL1 at x28 with PSTATE
// x27. Anything else is unexpected: reported as FATAL, and the vCPU turns
// off.
global_asm!(
    r#"
    .section .text.census_vectors, "ax"
    .balign 2048
census_vectors:
    .set census_vector, 0
    .rept 16
    .balign 0x80
    .if census_vector == 4
    b census_el1_sync
    .elseif census_vector == 8
    b census_el0_sync
    .else
    b census_fatal
    .endif
    .set census_vector, census_vector + 1
    .endr

census_el0_sync:
    mrs x6, esr_el1
    lsr x6, x6, #26
    cmp x6, #0x15
    b.ne census_el1_sync
    msr elr_el1, x28
    msr spsr_el1, x27
    eret

census_el1_sync:
    mrs x6, elr_el1
    sub x6, x6, x5
    cmp x6, #16
    b.hs census_fatal
    lsr x6, x6, #2
    mov x3, #1
    lsl x3, x3, x6
    orr x4, x4, x3
    mrs x6, elr_el1
    add x6, x6, #4
    msr elr_el1, x6
    eret

census_fatal:
    ldr x0, ={host_call}
    mov x1, #{fatal}
    mrs x2, esr_el1
    hvc #0
1:
    ldr x0, ={cpu_off}
    hvc #0
    b 1b
    .ltorg
"#,
    host_call = const GuestCall::HostCall as u32,
    fatal = const msg::FATAL,
    cpu_off = const psci::CPU_OFF,
);
