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
//! | `mod.rs` | the entry types, [`Engine::host_call`]'s dispatch and the result registers |
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
use crate::vcpu::{Context, MAX_VCPUS};
use crate::vm::VmInner;
use isola_abi::{ABI_VERSION, Exit, HostCall, Status, features};
use isola_sync::MutexGuard;

/// Feature bits every engine reports by `Version`; an engine with virtual
/// interrupts adds its list-register count ([`Engine::features`]).
pub const FEATURES: u64 = features::GUEST_PSCI | features::ABORT_INJECTION;

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

impl<A: Arch> Engine<A> {
    /// The feature bits `Version` reports.
    pub fn features(&self) -> u64 {
        let list_regs = self.list_regs();
        if list_regs == 0 {
            FEATURES
        } else {
            FEATURES
                | features::VIRTUAL_INTERRUPTS
                | ((list_regs as u64) << features::LR_COUNT_SHIFT)
        }
    }

    /// A host `hvc #0`: `regs` are `x0..=x6` on entry and hold the result on
    /// return (for `Done`).
    pub fn host_call(&self, cpu: u32, regs: &mut [u64; 7]) -> HostCallOutcome {
        let [id, a, b, c, d, e, _] = *regs;
        let result = match HostCall::from_id(id & 0xffff_ffff) {
            None => Err(Status::NotSupported),
            Some(HostCall::Version) => Ok([ABI_VERSION, self.features(), MAX_VCPUS as u64]),
            Some(HostCall::VmCreate) => self.vm_create(PhysAddr::new(a), b, c),
            Some(HostCall::VmDestroy) => self.vm_destroy(a),
            Some(HostCall::VmTopup) => self.vm_topup(a, PhysAddr::new(b), c),
            Some(HostCall::VcpuCreate) => self.vcpu_create(a, b, c, d, e),
            Some(HostCall::VcpuRun) => match self.vcpu_load(cpu, a, b, c) {
                Ok(l) => return HostCallOutcome::Run(l),
                Err(s) => Err(s),
            },
            Some(HostCall::Donate) => self.donate(a, PhysAddr::new(b), Ipa::new(c), d, e),
            Some(HostCall::Share) => self.share(a, PhysAddr::new(b), Ipa::new(c), d),
            Some(HostCall::Unshare) => self.host_unshare(a, PhysAddr::new(b), Ipa::new(c)),
            Some(HostCall::Reclaim) => self.reclaim(PhysAddr::new(a)),
            Some(HostCall::VcpuInterrupts) => {
                let [.., l0, l1, l2, l3] = *regs;
                self.vcpu_interrupts(a, b, [l0, l1, l2, l3])
            }
            Some(HostCall::VcpuInjectAbort) => {
                let r = self.vcpu_inject_abort(a, b);
                if r.is_ok() {
                    self.count(cpu, isola_abi::counter::GUEST_ABORTS);
                }
                r
            }
            Some(HostCall::Accounting) => self.accounting(a, b),
        };
        self.count(
            cpu,
            isola_abi::counter::host_calls(result.err().unwrap_or(Status::Success)),
        );
        write_result(regs, result);
        HostCallOutcome::Done
    }
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
    let r = match result {
        Ok(r) => [Status::Success.raw(), r[0], r[1], r[2]],
        Err(s) => [s.raw(), 0, 0, 0],
    };
    for (dst, v) in regs.iter_mut().zip(r) {
        *dst = v;
    }
}
