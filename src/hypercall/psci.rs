//! Guest PSCI (Arm DEN0022, version 1.0), handled by the engine: the
//! per-vCPU power state machine and the calls that read or drive it.
//!
//! States (in [`crate::vcpu::VcpuState`]): a created vCPU is *on* (`Idle`,
//! `Loaded`, and `Stopped`, which never turned itself off), *off* (`Off`:
//! created with `vcpu_flags::OFF`, or after `CPU_OFF`) or *on-pending*
//! (`OnPending`: a `CPU_ON` named it; it becomes on when the host first
//! runs it). Transitions:
//!
//! | call | target state | result | effect |
//! |---|---|---|---|
//! | `CPU_ON` | off | `SUCCESS`, `Exit::CpuOn` | context reset to the entry point and context id; on-pending |
//! | `CPU_ON` | on-pending | `ON_PENDING` | – |
//! | `CPU_ON` | on | `ALREADY_ON` | – |
//! | `CPU_ON` | not a created vCPU of this VM | `INVALID_PARAMETERS` | – |
//! | `CPU_ON` | off, entry not 4-byte aligned or beyond the IPA space | `INVALID_ADDRESS` | – |
//! | `CPU_OFF` | (the caller) | `Exit::CpuOff` | off |
//! | `AFFINITY_INFO` | any | `ON` / `OFF` / `ON_PENDING` | – |
//!
//! Every transition of another vCPU happens under the VM's lock, and only
//! from off, where the vCPU is loaded nowhere, so its context page is
//! written by no one else (the invariant of [`crate::vcpu`]).
//!
//! `CPU_SUSPEND` is a `WFI` that returns `SUCCESS` (every power state is
//! treated as standby, which PSCI allows); `MIGRATE_INFO_TYPE` says no
//! Trusted OS needs migrating; `SYSTEM_OFF` and `SYSTEM_RESET` power the
//! VM off. Any other PSCI id is `NOT_SUPPORTED`.

use isola_abi::Exit;
use isola_abi::psci::{self, affinity, ret};

use crate::arch::Arch;
use crate::engine::Engine;
use crate::hypercall::{GuestExitAction, LoadedVcpu};
use crate::vcpu::{Context, Regs, SysReg, VcpuState};
use crate::vgic;

/// The PSCI ids `PSCI_FEATURES` reports as implemented.
const IMPLEMENTED: [u32; 12] = [
    psci::VERSION,
    psci::CPU_SUSPEND32,
    psci::CPU_SUSPEND,
    psci::CPU_OFF,
    psci::CPU_ON32,
    psci::CPU_ON,
    psci::AFFINITY_INFO32,
    psci::AFFINITY_INFO,
    psci::MIGRATE_INFO_TYPE,
    psci::SYSTEM_OFF,
    psci::SYSTEM_RESET,
    psci::FEATURES,
];

/// Whether `id` (a 32-bit function id) is in PSCI's ranges.
pub const fn is_psci(id: u64) -> bool {
    matches!(id & !0x1f, 0x8400_0000 | 0xC400_0000)
}

/// The PSCI state of a vCPU, as `AFFINITY_INFO` reports it (`None`: no such vCPU).
pub const fn affinity_of(state: VcpuState) -> Option<u64> {
    match state {
        VcpuState::Absent => None,
        VcpuState::Off => Some(affinity::OFF),
        VcpuState::OnPending => Some(affinity::ON_PENDING),
        VcpuState::Idle | VcpuState::Loaded(_) | VcpuState::Stopped => Some(affinity::ON),
    }
}

/// Writes a PSCI result into the guest's `x0..=x3` (`x1..=x3` zero).
fn answer(ctx: Regs<'_>, x0: i64) {
    ctx.set_x(0, x0 as u64);
    ctx.set_x(1, 0);
    ctx.set_x(2, 0);
    ctx.set_x(3, 0);
}

impl<A: Arch> Engine<A> {
    /// A guest PSCI call with 32-bit function id `id` (`is_psci(id)`): the
    /// registers are in `ctx`.
    pub(crate) fn guest_psci(&self, vcpu: &LoadedVcpu, ctx: Regs<'_>, id: u64) -> GuestExitAction {
        // SMC32 calls take 32-bit arguments: the upper halves are ignored.
        let narrow = id & 0x4000_0000 == 0;
        let arg = |n: u8| {
            let v = ctx.x(n);
            if narrow { v & 0xffff_ffff } else { v }
        };
        let Ok(id32) = u32::try_from(id) else {
            answer(ctx, ret::NOT_SUPPORTED);
            return GuestExitAction::Resume;
        };
        let result = match id32 {
            psci::VERSION => psci::GUEST_VERSION as i64,
            psci::FEATURES => {
                let asked = ctx.x(1) & 0xffff_ffff;
                if IMPLEMENTED.iter().any(|&f| u64::from(f) == asked) {
                    ret::SUCCESS
                } else {
                    ret::NOT_SUPPORTED
                }
            }
            psci::MIGRATE_INFO_TYPE => psci::MIGRATE_NONE as i64,
            psci::CPU_SUSPEND | psci::CPU_SUSPEND32 => {
                answer(ctx, ret::SUCCESS);
                return GuestExitAction::ExitToHost(Exit::Wfx {
                    wfe: false,
                    deadline: vgic::vtimer_deadline(
                        ctx.sysreg(SysReg::CntvCtlEl0),
                        ctx.sysreg(SysReg::CntvCvalEl0),
                    ),
                });
            }
            psci::CPU_OFF => return GuestExitAction::ExitToHost(Exit::CpuOff),
            psci::SYSTEM_OFF | psci::SYSTEM_RESET => {
                if let Some(s) = self.vms.get(usize::from(vcpu.slot())) {
                    s.inner.lock().off = true;
                }
                return GuestExitAction::ExitToHost(if id32 == psci::SYSTEM_OFF {
                    Exit::SystemOff
                } else {
                    Exit::SystemReset
                });
            }
            psci::AFFINITY_INFO | psci::AFFINITY_INFO32 => self.affinity_info(vcpu, arg(1), arg(2)),
            psci::CPU_ON | psci::CPU_ON32 => match self.cpu_on(vcpu, arg(1), arg(2), arg(3)) {
                Ok(target) => {
                    answer(ctx, ret::SUCCESS);
                    return GuestExitAction::ExitToHost(Exit::CpuOn { vcpu: target });
                }
                Err(r) => r,
            },
            _ => ret::NOT_SUPPORTED,
        };
        answer(ctx, result);
        GuestExitAction::Resume
    }

    /// `AFFINITY_INFO(target, lowest level)`: only level 0 is supported.
    fn affinity_info(&self, vcpu: &LoadedVcpu, target: u64, level: u64) -> i64 {
        let Some(t) = psci::target_index(target) else {
            return ret::INVALID_PARAMETERS;
        };
        if level != 0 {
            return ret::INVALID_PARAMETERS;
        }
        let Some(s) = self.vms.get(usize::from(vcpu.slot())) else {
            return ret::INVALID_PARAMETERS;
        };
        let g = s.inner.lock();
        let state = if t < g.max_vcpus {
            g.vcpus.get(usize::from(t)).map(|v| v.state)
        } else {
            None
        };
        state
            .and_then(affinity_of)
            .map_or(ret::INVALID_PARAMETERS, |a| a as i64)
    }

    /// `CPU_ON(target, entry, context id)`: the target's index, or the
    /// PSCI error. Check order: target, its state, the entry address.
    fn cpu_on(&self, vcpu: &LoadedVcpu, target: u64, entry: u64, context: u64) -> Result<u16, i64> {
        let t = psci::target_index(target).ok_or(ret::INVALID_PARAMETERS)?;
        let s = self
            .vms
            .get(usize::from(vcpu.slot()))
            .ok_or(ret::INVALID_PARAMETERS)?;
        let mut g = s.inner.lock();
        if t >= g.max_vcpus {
            return Err(ret::INVALID_PARAMETERS);
        }
        let v = g
            .vcpus
            .get_mut(usize::from(t))
            .ok_or(ret::INVALID_PARAMETERS)?;
        match v.state {
            VcpuState::Absent => return Err(ret::INVALID_PARAMETERS),
            VcpuState::OnPending => return Err(ret::ON_PENDING),
            VcpuState::Idle | VcpuState::Loaded(_) | VcpuState::Stopped => {
                return Err(ret::ALREADY_ON);
            }
            VcpuState::Off => {}
        }
        if entry & 3 != 0 || entry >= self.vm_s2.ipa_limit() {
            return Err(ret::INVALID_ADDRESS);
        }
        // Off: loaded nowhere, and we hold the VM's lock.
        Context::new(crate::addr::PhysAddr::new(v.ctx)).reset(&self.mem, entry, context);
        v.state = VcpuState::OnPending;
        Ok(t)
    }
}
