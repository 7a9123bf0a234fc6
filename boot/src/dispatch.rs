//! The dispatch into the core: every synchronous trap from the host at EL1
//! (and its EL0) lands in [`isola_handle_lower_sync`], called by the vector
//! (`vectors.rs`) with the trap frame. The syndrome decides who answers:
//! the core (hypercalls, and the guest runs a `VcpuRun` starts; host
//! Stage-2 aborts), the PSCI relay (`relay.rs`), the ID-register emulation
//! (`idregs.rs`); the result goes out through the frame or `inject.rs`.
//!
//! Invariant: every trap from the host is handled to completion on this CPU
//! and returns to the host (or powers this CPU or the machine off through
//! PSCI); nothing the host does can make the engine stop.
//!
//! Only the hypercall is on the hot path; the other kinds are out of line
//! (`#[cold]`, never inlined), so their registers and stack do not weigh on
//! every hypercall's prologue.

use isola::abort::{Esr, ec};
use isola::engine::{Engine, HostAbortAction};
use isola::hypercall::{GuestExitAction, LoadedVcpu, Trap};

use crate::arch::El2Arch;
use crate::console::say;
use crate::cpu_state::{self, AbortLoop};
use crate::engine::{engine, engine_of_trap};
use crate::frame::TrapFrame;
use crate::sysreg::{ELR_EL2, ESR_EL2, FAR_EL2, HPFAR_EL2, Readable};
use crate::world::{self, GuestStage2, Vector};
use crate::{cpu, idregs, inject, psci, relay, smmu};

/// Rust side of a host `hvc` (the vector's short path, taken when
/// ESR_EL2.EC is `HVC64`): the core's dispatcher decides.
///
/// Its convention is LLVM's preserve_most (`extern "rust-cold"`): on
/// AArch64 it preserves every general-purpose register but `x0..=x8`,
/// `x16..=x18` and `x30`, so the vector saves only those (the frame's other
/// slots are not written), and a call answered without calling further
/// (an unknown id, `Version`) saves nothing else at all: the registers the
/// longer calls need are saved on their own path (shrink-wrapped). The
/// register probe of the booted tests checks that every host register but
/// the results comes back from every kind of call (`badcall`, `vms`).
#[cfg(not(feature = "planted-bug-hvc-c-abi"))]
#[unsafe(no_mangle)]
extern "rust-cold" fn isola_host_hvc(frame: &mut TrapFrame) {
    host_hypercall(frame);
}

/// Planted bug (`planted-bug-hvc-c-abi`, never for real builds): the `hvc`
/// handler with the C convention, free to clobber `x9..=x15`, behind the
/// vector that does not save them. The booted `badcall` test must see host
/// registers changed (`cargo xtask test` checks that it does).
#[cfg(feature = "planted-bug-hvc-c-abi")]
#[unsafe(no_mangle)]
extern "C" fn isola_host_hvc(frame: &mut TrapFrame) {
    host_hypercall(frame);
}

/// Rust side of every other synchronous trap from a lower EL (the vector's
/// full path, with `x0..=x18` and `x30` in the frame): the syndrome decides
/// who answers.
#[unsafe(no_mangle)]
extern "C" fn isola_handle_lower_sync(frame: &mut TrapFrame) {
    let esr = Esr(ESR_EL2.get());
    // EC is ESR_EL2[31:26]; bits 63:32 hold ISS2 (FEAT_LS64, FEAT_THE...),
    // which `Esr::ec` keeps out of the class.
    match esr.ec() {
        // Not taken (the vector sends `hvc` to `isola_host_hvc`), but the
        // same answer with the full frame would be right too.
        ec::HVC64 => host_hypercall(frame),
        ec::SMC64 => smc(frame),
        ec::SYSREG => idregs::trapped(frame, esr),
        ec::DABT_LOW | ec::IABT_LOW => host_abort(esr),
        // Everything else the host can make trap (RAS or LOR registers,
        // SVE/SME, anything unknown) is UNDEFINED to it.
        _ => inject::undefined(),
    }
}

/// A host `hvc #0`: the core's dispatcher decides; a `VcpuRun` that loads
/// its vCPU runs it here ([`run_vcpu`]) until the core says to go back to
/// the host.
#[inline(always)]
fn host_hypercall(frame: &mut TrapFrame) {
    // The core reads and writes `x0..=x6` in place in the trap frame: no
    // copy in or out on the hot path.
    let [regs @ .., _, _, _, _, _, _, _, _, _, _, _, _] = &mut frame.x;
    // This CPU's record straight from `TPIDR_EL2`: counting the call is a
    // load, an add and a store into it.
    #[cfg(not(feature = "planted-bug-count-on-next-cpu"))]
    let record = cpu::this_record();
    // Planted bug (never for real builds): the next CPU's record, as an
    // off-by-one in the entry's address arithmetic would give; `badcall`'s
    // count check must fail.
    #[cfg(feature = "planted-bug-count-on-next-cpu")]
    let record = {
        let next = (cpu::index() as usize).wrapping_add(1);
        match cpu_state::records().get(next) {
            Some(r) => r,
            None => cpu::this_record(),
        }
    };
    engine_of_trap().dispatch(record, regs, run_vcpu);
}

/// Runs a loaded vCPU until an exit the core sends to the host. Out of line:
/// the world switch's state stays off the plain hypercall's path.
#[inline(never)]
fn run_vcpu(e: &Engine<El2Arch>, vcpu: LoadedVcpu, regs: &mut [u64; 7]) {
    let stage2 = GuestStage2::new(vcpu.vttbr(), u64::from(vcpu.index()));
    loop {
        // SAFETY: the core loaded this vCPU on this CPU (`vcpu_load` in
        // `host_call`) and it stays loaded until `finish_run`; its context
        // page and Stage-2 belong to the VM's pool, which cannot be freed
        // while a vCPU is loaded (`VmDestroy` fails `Busy`); we are at EL2
        // with interrupts masked.
        let exit = unsafe { world::enter_guest(vcpu.context(), stage2) };
        let trap = match exit.vector {
            Vector::Irq | Vector::Fiq => Trap::Irq,
            // Synchronous exceptions, and anything the engine does not
            // handle (SError, AArch32): the core judges the syndrome.
            Vector::Sync | Vector::SError | Vector::Aarch32 => Trap::Sync {
                esr: exit.esr,
                far: exit.far,
                hpfar: exit.hpfar,
            },
        };
        match e.guest_exit(&vcpu, trap) {
            GuestExitAction::Resume => {}
            GuestExitAction::ExitToHost(x) => {
                e.finish_run(vcpu, x, regs);
                return;
            }
        }
    }
}

/// A host Stage-2 abort: the core maps the page (the access is retried),
/// ignores a store to a read-only device register (the host resumes after
/// it), or the host gets a synchronous external abort.
#[cold]
#[inline(never)]
fn host_abort(esr: Esr) {
    let far = FAR_EL2.get();
    let hpfar = HPFAR_EL2.get();
    let cpu = cpu::index();
    match engine().map(|e| e.host_abort(cpu, esr.0, far, hpfar)) {
        Some(HostAbortAction::Retry) => {}
        Some(HostAbortAction::SkipWrite) => inject::skip_instruction(),
        Some(HostAbortAction::InjectSea) | None => {
            note_abort_loop(cpu, esr, far);
            inject::external_abort(esr.0, far);
        }
    }
}

/// The fewest aborts in a row at one instruction and address worth a line.
const ABORT_LOOP_REPORT: u64 = 64;

/// Counts the aborts this CPU injects into the host in a row at the same
/// instruction and address — a host that retries the access after each, as
/// one does whose page-table page it gave away, loops forever and says
/// nothing — and says so on the console at 64 of them, then at every
/// doubling (a rate that falls as the loop goes on: a billion aborts make
/// 24 lines).
fn note_abort_loop(cpu: u32, esr: Esr, far: u64) {
    let elr = ELR_EL2.get();
    let streak = cpu_state::with_this(|s| {
        let loop_ = &mut s.abort_loop;
        if loop_.elr == elr && loop_.far == far {
            loop_.count = loop_.count.saturating_add(1);
        } else {
            *loop_ = AbortLoop { elr, far, count: 1 };
        }
        loop_.count
    })
    .unwrap_or(0);
    if streak >= ABORT_LOOP_REPORT && streak.is_power_of_two() {
        say!(
            "cpu {cpu}: {streak} aborts injected into the host in a row at one instruction (FAR {far:#x}, EC {:#x}): is it looping?",
            esr.ec()
        );
    }
    // A cold path the host takes now and then: report any DMA the SMMU
    // refused meanwhile.
    let _ = smmu::faults();
}

/// A trapped host `smc`: PSCI goes to the relay, anything else is
/// `NOT_SUPPORTED`.
#[cold]
#[inline(never)]
fn smc(frame: &mut TrapFrame) {
    // A trapped `smc` returns to the instruction itself: skip it.
    inject::skip_instruction();
    // A cold path the host takes now and then: report any DMA the SMMU
    // refused meanwhile.
    let _ = smmu::faults();
    let fid = frame.reg(0);
    let result = match u32::try_from(fid) {
        Ok(f) if relay::is_psci(f) => relay::relay(f, [frame.reg(1), frame.reg(2), frame.reg(3)]),
        _ => psci::status::NOT_SUPPORTED,
    };
    frame.set_reg(0, result as u64);
}
