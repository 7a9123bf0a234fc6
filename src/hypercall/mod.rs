//! Hypercall dispatch: every `HostCall` and `GuestCall` of `isola_abi`, and
//! the guest-exit path of `VcpuRun`.
//!
//! # Check order (host calls)
//!
//! Every call checks, in this order, and fails with the first that applies;
//! a failed call changes nothing observable (records, counts, mappings,
//! contexts):
//!
//! 1. function id (`w0`; SMCCC: the upper half of `x0` is ignored) → `NotSupported`;
//! 2. argument format: alignment, RAM range, IPA range and the guest MMIO
//!    window, permission bits, `max vcpus`, accounting selector →
//!    `InvalidArgument`;
//! 3. handle, then vCPU index → `NotFound`;
//! 4. the object's state: vCPU loaded → `Busy`; vCPU off or stopped, VM
//!    powered off, vCPU created twice, page of a live VM reclaimed → `Denied`;
//! 5. page ownership → `NotOwner`;
//! 6. the mapping → `AlreadyMapped` / `NotMapped`;
//! 7. resources (VM table, pool) → `NoMemory`.
//!
//! Guest calls (`Share`, `Unshare`, `Relinquish` of an IPA) check format
//! (`InvalidArgument`), then that the IPA is mapped (`NotMapped`), then that
//! the page is the caller's in the state the call needs (`NotOwner`).
//!
//! Results the call does not name are zero in `x1..=x3`; `x4..=x6` are
//! left as the caller passed them (SMCCC: preserved), so they carry nothing
//! of the engine's.
//!
//! # Files, by concern
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the entry types, the one dispatcher ([`Engine::dispatch`], which [`Engine::host_call`] wraps) and the result registers |
//! | `lifecycle.rs` | `VmCreate`, `VmDestroy`, `VmTopup`, `VcpuCreate`: VM slots, pools, vCPU contexts |
//! | `memory.rs` | every page transition: host `Share`/`Donate`/`Unshare`/`Reclaim`, guest `Share`/`Unshare`/`Relinquish`, and their run and shard helpers |
//! | `run.rs` | `VcpuRun`: loading a vCPU, guest exits, guest calls, the simulated guest of tests |
//! | `accounting.rs` | `Accounting` |
//! | `psci.rs` | a guest's PSCI calls (`isola::psci`) |
//! | `sysreg.rs` | a guest's trapped system-register accesses (`isola::sysreg`) |

mod accounting;
mod lifecycle;
mod memory;
pub mod psci;
mod run;
pub mod sysreg;
#[cfg(test)]
mod tests;

use crate::addr::{Ipa, PhysAddr};
use crate::arch::Arch;
use crate::engine::Engine;
use crate::stage2::S2Error;
use crate::stats::CpuStats;
use crate::vcpu::{Context, MAX_VCPUS};
use crate::vm::VmInner;
use isola_abi::{ABI_VERSION, Exit, HostCall, Status};
use isola_sync::MutexGuard;

/// Feature bits every engine reports by `Version` (defined beside the
/// engine that reports them).
pub use crate::engine::FEATURES;

/// What the exception vector does after a host `hvc`.
#[derive(Debug, PartialEq, Eq)]
pub enum HostCallOutcome {
    /// The call finished; `regs` hold its result. Return to the host.
    Done,
    /// `VcpuRun` loaded this vCPU: switch to it (world switch), then feed its
    /// exits to [`Engine::guest_exit`] until one says `ExitToHost`, then call
    /// [`Engine::finish_run`].
    Run(LoadedVcpu),
}

/// A vCPU loaded on this physical CPU: the token the world switch holds
/// between `VcpuRun` and the exit back to the host. Not `Clone`: there is one
/// per load, consumed by [`Engine::finish_run`].
#[derive(Debug, PartialEq, Eq)]
pub struct LoadedVcpu {
    slot: u16,
    index: u16,
    cpu: u32,
    ctx: Context,
    vttbr: u64,
    /// The VM's vCPU count (`max vcpus`), for decoding SGI targets.
    vcpus: u16,
}

impl LoadedVcpu {
    /// The context page (registers at the offsets in [`crate::vcpu`]).
    pub fn context(&self) -> Context {
        self.ctx
    }

    /// `VTTBR_EL2` for the guest.
    pub fn vttbr(&self) -> u64 {
        self.vttbr
    }

    /// The vCPU's index in its VM.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The physical CPU it is loaded on.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Its VM's slot in the VM table.
    pub(crate) fn slot(&self) -> u16 {
        self.slot
    }

    /// Its VM's vCPU count.
    pub(crate) fn vcpus(&self) -> u16 {
        self.vcpus
    }
}

/// Why the guest left EL1, as the vector saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// A synchronous exception: ESR_EL2, FAR_EL2, HPFAR_EL2.
    Sync { esr: u64, far: u64, hpfar: u64 },
    /// A physical IRQ (or FIQ) arrived.
    Irq,
}

/// What the world switch does after a guest exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExitAction {
    /// Re-enter the guest (its context may have changed: reload it).
    Resume,
    /// End `VcpuRun` with this exit.
    ExitToHost(Exit),
}

type CallResult = Result<[u64; 3], Status>;

/// The first host call's id; the defined ids are `FIRST_CALL..FIRST_CALL +
/// CALLS`, contiguous (checked at compile time below), so one compare tells
/// a defined call from an unknown one.
const FIRST_CALL: u64 = HostCall::Version as u64;
/// How many host calls are defined.
const CALLS: u64 = {
    let mut n = 0;
    while HostCall::from_id(FIRST_CALL + n).is_some() {
        n += 1;
    }
    n
};
const _: () = {
    // Nothing just below the first id or just past the last is a call, and
    // every call is in the run (`by_id!`'s exhaustive match names them all;
    // this counts them): a new call must extend the run.
    assert!(HostCall::from_id(FIRST_CALL - 1).is_none());
    assert!(HostCall::from_id(FIRST_CALL + CALLS).is_none());
    assert!(CALLS == 13);
};

/// `match` on a host call's function id, one arm per [`HostCall`] (every
/// variant must have one: the exhaustive match inside fails to compile
/// otherwise) and `unknown` for any other id.
macro_rules! by_id {
    ($id:expr; unknown => $unknown:expr, $($call:ident => $arm:expr,)*) => {{
        const _: fn(HostCall) = |c| match c {
            $(HostCall::$call => {})*
        };
        #[allow(non_upper_case_globals, reason = "each id is named after its call")]
        mod ids {
            $(pub(super) const $call: u64 = super::HostCall::$call as u64;)*
        }
        match $id {
            $(ids::$call => $arm,)*
            _ => $unknown,
        }
    }};
}

impl<A: Arch> Engine<A> {
    /// The feature bits `Version` reports.
    #[inline]
    pub fn features(&self) -> u64 {
        self.features
    }

    /// A host `hvc #0`: `regs` are `x0..=x6` on entry and hold the result on
    /// return (for `Done`). The same dispatch as [`Engine::dispatch`] (it
    /// is that dispatch), with the loaded vCPU of a successful `VcpuRun`
    /// handed back instead of run: for callers that drive the guest
    /// themselves (tests, the simulated world switch).
    ///
    /// `cpu` is found in the engine's table of CPU records (a bounds-checked
    /// lookup: this entry is for the portable world; the EL2 image finds its
    /// record from `TPIDR_EL2` and calls [`Engine::dispatch`]). A CPU the
    /// table does not hold still calls, its counts going to a record of its
    /// own that nothing reads.
    pub fn host_call(&self, cpu: u32, regs: &mut [u64; 7]) -> HostCallOutcome {
        let mut out = HostCallOutcome::Done;
        let run = |_: &Self, vcpu, _: &mut _| out = HostCallOutcome::Run(vcpu);
        match usize::try_from(cpu).ok().and_then(|c| self.stats.get(c)) {
            Some(record) => self.dispatch(record, regs, run),
            None => self.dispatch(&CpuStats::new(cpu), regs, run),
        }
        out
    }

    /// The one dispatcher of host calls: `regs` are `x0..=x6` of the host's
    /// `hvc #0` on entry and hold the result on return. A `VcpuRun` that
    /// loads its vCPU calls `run` with it (the world switch, which feeds the
    /// guest's exits to [`Engine::guest_exit`] and ends with
    /// [`Engine::finish_run`], writing the result into `regs`).
    ///
    /// `cpu` is the record of the CPU running this code: the one at
    /// position `cpu.index()` of the engine's table (`crate::stats`'
    /// invariants). Handing over the record, not the index, makes counting
    /// a load, an add and a store into it, with no lookup.
    ///
    /// Shape, for the trap's sake (docs/perf.md): the two calls that need no
    /// lock (an unknown id, `Version`) are answered here, writing the result
    /// registers directly; every other call is its own out-of-line function
    /// (`call_*`) that reads its arguments from `regs` and writes its result
    /// there, so each arm is a tail call and this function needs no stack
    /// frame and saves no register: the short paths pay for nothing the
    /// long ones use. Always inlined: into the EL2 trap handler, whose
    /// convention (preserve_most) makes an extra call frame expensive.
    #[inline(always)]
    pub fn dispatch<R>(&self, cpu: &CpuStats, regs: &mut [u64; 7], run: R)
    where
        R: FnOnce(&Self, LoadedVcpu, &mut [u64; 7]),
    {
        // SMCCC: the function id is `w0`.
        let [id, ..] = *regs;
        let id = id & 0xffff_ffff;
        if id.wrapping_sub(FIRST_CALL) >= CALLS {
            write_status(regs, Status::NotSupported);
            cpu.add(isola_abi::counter::host_calls(Status::NotSupported));
        } else if id == HostCall::Version as u64 {
            self.version(regs);
            cpu.add(isola_abi::counter::host_calls(Status::Success));
        } else {
            self.call_out_of_line(id, cpu, regs, run);
        }
    }

    /// `Version()`: needs no lock and no memory but the engine's own fields.
    #[inline(always)]
    fn version(&self, regs: &mut [u64; 7]) {
        let [x0, x1, x2, x3, ..] = regs;
        *x0 = Status::Success.raw();
        *x1 = ABI_VERSION;
        *x2 = self.features();
        *x3 = MAX_VCPUS as u64;
    }

    /// Every call [`Engine::dispatch`] does not answer itself, by id: one
    /// out-of-line function, so the registers and stack its calls need are
    /// saved only on their path, and each arm is a tail call. (Its
    /// `unknown` and `Version` arms are the same answers as the
    /// dispatcher's, for completeness.)
    #[inline(never)]
    fn call_out_of_line<R>(&self, id: u64, cpu: &CpuStats, regs: &mut [u64; 7], run: R)
    where
        R: FnOnce(&Self, LoadedVcpu, &mut [u64; 7]),
    {
        by_id!(id;
            unknown => write_status(regs, Status::NotSupported),
            Version => self.version(regs),
            VmCreate => self.call_vm_create(regs),
            VmDestroy => self.call_vm_destroy(regs),
            VmTopup => self.call_vm_topup(regs),
            VcpuCreate => self.call_vcpu_create(regs),
            // Counted where it returns: here if it fails to load, in
            // `finish_run` otherwise.
            VcpuRun => return self.call_vcpu_run(cpu, regs, run),
            Donate => self.call_donate(regs),
            Share => self.call_share(regs),
            Unshare => self.call_unshare(regs),
            Reclaim => self.call_reclaim(regs),
            Accounting => self.call_accounting(regs),
            VcpuInterrupts => self.call_vcpu_interrupts(regs),
            VcpuInjectAbort => {
                self.call_vcpu_inject_abort(regs);
                if regs[0] == Status::Success.raw() {
                    cpu.add(isola_abi::counter::GUEST_ABORTS);
                }
            },
        );
        count_status(cpu, regs[0]);
    }

    /// `VcpuRun(handle, index, value)`: loads the vCPU and hands it to `run`,
    /// or writes why not.
    #[inline(never)]
    fn call_vcpu_run<R>(&self, cpu: &CpuStats, regs: &mut [u64; 7], run: R)
    where
        R: FnOnce(&Self, LoadedVcpu, &mut [u64; 7]),
    {
        let [_, a, b, c, ..] = *regs;
        match self.vcpu_load(cpu.index(), a, b, c) {
            Ok(vcpu) => run(self, vcpu, regs),
            Err(s) => {
                write_status(regs, s);
                cpu.add(isola_abi::counter::host_calls(s));
            }
        }
    }
}

/// Counts a returned host call by the status in its `x0`
/// (`isola_abi::counter::host_calls`, without decoding it: a value that is
/// no status lands on no counter).
#[inline]
fn count_status(cpu: &CpuStats, x0: u64) {
    let n = (x0 as i64).wrapping_neg() as u64;
    cpu.add(isola_abi::counter::HOST_CALLS.wrapping_add(n));
}

/// The out-of-line arms of [`Engine::dispatch`]: `$name` reads `x1..=x6`
/// from `regs` as `$args`, runs `$body` and writes its [`CallResult`].
macro_rules! call_arms {
    ($($(#[$doc:meta])* $name:ident([$($args:tt)*]) => $body:expr;)*) => {
        impl<A: Arch> Engine<A> {
            $(
                $(#[$doc])*
                #[inline(never)]
                fn $name(&self, regs: &mut [u64; 7]) {
                    let [_, $($args)*] = *regs;
                    let result: CallResult = $body(self);
                    write_result(regs, result);
                }
            )*
        }
    };
}

call_arms! {
    /// `VmCreate(pool, pages, max vcpus)`.
    call_vm_create([a, b, c, ..]) => |e: &Self| e.vm_create(PhysAddr::new(a), b, c);
    /// `VmDestroy(handle)`.
    call_vm_destroy([a, ..]) => |e: &Self| e.vm_destroy(a);
    /// `VmTopup(handle, pa, pages)`.
    call_vm_topup([a, b, c, ..]) => |e: &Self| e.vm_topup(a, PhysAddr::new(b), c);
    /// `VcpuCreate(handle, index, pc, x0, flags)`.
    call_vcpu_create([a, b, c, d, e, _]) => |s: &Self| s.vcpu_create(a, b, c, d, e);
    /// `Donate(handle, pa, ipa, perms, pages)`.
    call_donate([a, b, c, d, e, _]) =>
        |s: &Self| s.donate(a, PhysAddr::new(b), Ipa::new(c), d, e);
    /// `Share(handle, pa, ipa, perms)`.
    call_share([a, b, c, d, ..]) => |e: &Self| e.share(a, PhysAddr::new(b), Ipa::new(c), d);
    /// `Unshare(handle, pa, ipa)`.
    call_unshare([a, b, c, ..]) => |e: &Self| e.host_unshare(a, PhysAddr::new(b), Ipa::new(c));
    /// `Reclaim(pa)`.
    call_reclaim([a, ..]) => |e: &Self| e.reclaim(PhysAddr::new(a));
    /// `Accounting(selector, handle)`.
    call_accounting([a, b, ..]) => |e: &Self| e.accounting(a, b);
    /// `VcpuInterrupts(handle, index, lr0..lr3)`.
    call_vcpu_interrupts([a, b, l0, l1, l2, l3]) =>
        |e: &Self| e.vcpu_interrupts(a, b, [l0, l1, l2, l3]);
    /// `VcpuInjectAbort(handle, index)`.
    call_vcpu_inject_abort([a, b, ..]) => |e: &Self| e.vcpu_inject_abort(a, b);
}

fn vcpu_index(g: &MutexGuard<'_, VmInner>, index: u64) -> Result<usize, Status> {
    if index >= u64::from(g.max_vcpus) {
        return Err(Status::NotFound);
    }
    usize::try_from(index).map_err(|_| Status::NotFound)
}

fn s2_status(e: S2Error) -> Status {
    match e {
        S2Error::NoMemory => Status::NoMemory,
        S2Error::AlreadyMapped => Status::AlreadyMapped,
        S2Error::NotMapped => Status::NotMapped,
        S2Error::OutOfRange => Status::InvalidArgument,
    }
}

fn write_result(regs: &mut [u64; 7], result: CallResult) {
    match result {
        Ok([a, b, c]) => {
            let [x0, x1, x2, x3, ..] = regs;
            *x0 = Status::Success.raw();
            *x1 = a;
            *x2 = b;
            *x3 = c;
        }
        Err(s) => write_status(regs, s),
    }
}

/// A failed call's result: the status in `x0`, zero in `x1..=x3`.
fn write_status(regs: &mut [u64; 7], status: Status) {
    let [x0, x1, x2, x3, ..] = regs;
    *x0 = status.raw();
    *x1 = 0;
    *x2 = 0;
    *x3 = 0;
}
