//! `VcpuRun`: loading a vCPU on this CPU, every guest exit (hypercalls,
//! trapped `smc`, `WFI`/`WFE`, Stage-2 aborts and MMIO decoding, interrupts),
//! the guest's calls, and unloading with the exit the host is told.

use crate::abort::{self, Esr, GuestAbort, ec};
use crate::addr::{Ipa, PhysAddr};
use crate::arch::Arch;
use crate::engine::Engine;
use crate::vcpu::{Context, Pending, Regs, VcpuState};
use isola_abi::{ABI_VERSION, Exit, GuestCall, Status, lr};

use super::memory::PageOp;
use super::*;

impl<A: Arch> Engine<A> {
    /// The first half of `VcpuRun`: checks, loads the vCPU on `cpu` and
    /// delivers the host's `value` to what the vCPU awaits (an MMIO read's
    /// register, or a `HostCall` reply).
    pub fn vcpu_load(
        &self,
        cpu: u32,
        handle: u64,
        index: u64,
        value: u64,
    ) -> Result<LoadedVcpu, Status> {
        let (slot, mut g) = self.lock_vm(handle)?;
        let i = vcpu_index(&g, index)?;
        let v = g.vcpus.get(i).copied().ok_or(Status::NotFound)?;
        match v.state {
            VcpuState::Absent => return Err(Status::NotFound),
            VcpuState::Loaded(_) => return Err(Status::Busy),
            VcpuState::Off | VcpuState::Stopped => return Err(Status::Denied),
            VcpuState::Idle | VcpuState::OnPending if g.off => return Err(Status::Denied),
            VcpuState::Idle | VcpuState::OnPending => {}
        }
        let ctx = Context::new(PhysAddr::new(v.ctx));
        if let Some(r) = ctx.regs(&self.mem) {
            r.complete_pending(value);
        }
        if let Some(v) = g.vcpus.get_mut(i) {
            v.state = VcpuState::Loaded(cpu);
        }
        let vttbr = g.s2.map_or(0, |s| s.vttbr());
        Ok(LoadedVcpu {
            slot: slot as u16,
            index: i as u16,
            cpu,
            ctx,
            vttbr,
            vcpus: g.max_vcpus,
        })
    }

    /// `VcpuInjectAbort(handle, index)`: the vCPU's unanswered `Mmio` or
    /// `MemFault` exit becomes a synchronous external abort the guest takes
    /// when it next runs ([`Regs::inject_external_abort`]). The vCPU is not
    /// loaded (`Busy` otherwise) and we hold its VM's lock, so its context
    /// is ours to edit.
    pub(super) fn vcpu_inject_abort(&self, handle: u64, index: u64) -> CallResult {
        let (_, g) = self.lock_vm(handle)?;
        let i = vcpu_index(&g, index)?;
        let v = g.vcpus.get(i).copied().ok_or(Status::NotFound)?;
        match v.state {
            VcpuState::Absent => return Err(Status::NotFound),
            VcpuState::Loaded(_) => return Err(Status::Busy),
            VcpuState::Off | VcpuState::Stopped => return Err(Status::Denied),
            VcpuState::Idle | VcpuState::OnPending if g.off => return Err(Status::Denied),
            VcpuState::Idle | VcpuState::OnPending => {}
        }
        let regs = Context::new(PhysAddr::new(v.ctx))
            .regs(&self.mem)
            .ok_or(Status::Denied)?;
        if regs.inject_external_abort() {
            Ok([0; 3])
        } else {
            Err(Status::Denied)
        }
    }

    /// The second half of `VcpuRun`: unloads the vCPU (its state follows the
    /// exit: `CpuOff` turns it off, `Error` stops it) and writes the
    /// `VcpuRun` result (`Success`, the encoded exit) into the host's `regs`.
    ///
    /// The exit word also carries the [`isola_abi::ExitStatus`]: the state
    /// of each list register (registers the guest finished with `EOI` are
    /// cleared here, after being reported as `Invalid`) and the level of
    /// the guest's virtual timer interrupt.
    pub fn finish_run(&self, vcpu: LoadedVcpu, exit: Exit, regs: &mut [u64; 7]) {
        let status = vcpu.ctx.regs(&self.mem).map_or(0, |ctx| {
            let mut lrs: [u64; lr::SLOTS] = core::array::from_fn(|n| ctx.lr(n));
            if crate::vgic::take_eoi_completions(&mut lrs) > 0 {
                for (n, w) in lrs.iter().enumerate() {
                    ctx.set_lr(n, *w);
                }
            }
            crate::vgic::exit_status(&lrs, ctx.sysreg(crate::vcpu::SysReg::CntvCtlEl0)).to_word()
        });
        if let Some(s) = self.vms.get(usize::from(vcpu.slot)) {
            let mut g = s.inner.lock();
            if let Some(v) = g.vcpus.get_mut(usize::from(vcpu.index)) {
                v.state = match exit {
                    Exit::Error { .. } => VcpuState::Stopped,
                    Exit::CpuOff => VcpuState::Off,
                    _ => VcpuState::Idle,
                };
            }
        }
        let [word, a, b] = exit.encode();
        self.count(
            vcpu.cpu,
            isola_abi::counter::EXITS.wrapping_add(word & 0xff),
        );
        self.count(vcpu.cpu, isola_abi::counter::host_calls(Status::Success));
        write_result(regs, Ok([word | status, a, b]));
    }

    /// A guest exit on the CPU where `vcpu` is loaded. The world switch has
    /// saved the guest's registers into its context; on `Resume` it restores
    /// them from there (they may have changed).
    pub fn guest_exit(&self, vcpu: &LoadedVcpu, trap: Trap) -> GuestExitAction {
        let (esr, far, hpfar) = match trap {
            Trap::Irq => {
                // The GIC maintenance interrupt: a list register the guest
                // finished with `EOI` set. Anything else is the host's.
                let eoi = vcpu.ctx.regs(&self.mem).is_some_and(|ctx| {
                    (0..lr::SLOTS).any(|n| crate::vgic::eoi_completed(ctx.lr(n)))
                });
                return GuestExitAction::ExitToHost(if eoi { Exit::Eoi } else { Exit::Irq });
            }
            Trap::Sync { esr, far, hpfar } => (esr, far, hpfar),
        };
        let e = Esr(esr);
        // The context page is checked once per exit, not per register.
        let Some(ctx) = vcpu.ctx.regs(&self.mem) else {
            return GuestExitAction::ExitToHost(Exit::Error { esr });
        };
        match e.ec() {
            ec::HVC64 | ec::SMC64 => {
                if e.ec() == ec::SMC64 {
                    // The preferred return of a trapped SMC is the SMC itself.
                    ctx.set_pc(ctx.pc().wrapping_add(4));
                }
                let action = self.guest_call(vcpu, ctx);
                if action == GuestExitAction::Resume {
                    self.count(vcpu.cpu, isola_abi::counter::GUEST_CALLS);
                }
                action
            }
            ec::WFX => {
                ctx.set_pc(ctx.pc().wrapping_add(4));
                GuestExitAction::ExitToHost(Exit::Wfx {
                    // ISS.TI: 0b00 WFI, 0b01 WFE (WFIT/WFET are not
                    // advertised to guests).
                    wfe: esr & 1 != 0,
                    deadline: crate::vgic::vtimer_deadline(
                        ctx.sysreg(crate::vcpu::SysReg::CntvCtlEl0),
                        ctx.sysreg(crate::vcpu::SysReg::CntvCvalEl0),
                    ),
                })
            }
            ec::SYSREG => self.guest_sysreg(vcpu, ctx, e),
            // SVE and SME, which the engine does not switch and the guest's
            // ID registers say are absent: their instructions and registers
            // are UNDEFINED to it, as on a CPU without them.
            ec::SVE | ec::SME => {
                ctx.inject_undefined();
                self.count(vcpu.cpu, isola_abi::counter::GUEST_UNDEFINED);
                GuestExitAction::Resume
            }
            ec::DABT_LOW | ec::IABT_LOW => {
                let limit = self.vm_s2.ipa_limit();
                match abort::classify_guest_abort(
                    e,
                    far,
                    hpfar,
                    |ipa| self.in_guest_mmio(ipa),
                    limit,
                ) {
                    GuestAbort::Mmio {
                        ipa,
                        size,
                        write: true,
                        reg,
                        ..
                    } => {
                        let value = crate::vcpu::mmio_read_value(ctx.x(reg), size, false, true);
                        ctx.set_pc(ctx.pc().wrapping_add(4));
                        ctx.set_pending_access(Pending::MmioWrite, far);
                        GuestExitAction::ExitToHost(Exit::Mmio {
                            ipa: ipa.raw(),
                            size,
                            write: true,
                            value,
                        })
                    }
                    GuestAbort::Mmio {
                        ipa,
                        size,
                        write: false,
                        reg,
                        sign,
                        sf,
                    } => {
                        ctx.set_pending_access(
                            Pending::MmioRead {
                                reg,
                                size,
                                sign,
                                sf,
                            },
                            far,
                        );
                        GuestExitAction::ExitToHost(Exit::Mmio {
                            ipa: ipa.raw(),
                            size,
                            write: false,
                            value: 0,
                        })
                    }
                    GuestAbort::MemFault { ipa } => {
                        let pending = Pending::MemFault {
                            write: e.ec() == ec::DABT_LOW
                                && e.flags().contains(abort::DataAbortIss::WNR),
                            fetch: e.ec() == ec::IABT_LOW,
                        };
                        ctx.set_pending_access(pending, far);
                        GuestExitAction::ExitToHost(Exit::MemFault { ipa: ipa.raw() })
                    }
                    GuestAbort::Error => GuestExitAction::ExitToHost(Exit::Error { esr }),
                }
            }
            _ => GuestExitAction::ExitToHost(Exit::Error { esr }),
        }
    }

    /// A guest `hvc #0` (or trapped `smc`): `x0..=x6` are in the context.
    pub(super) fn guest_call(&self, vcpu: &LoadedVcpu, ctx: Regs<'_>) -> GuestExitAction {
        let x = |n| ctx.x(n);
        let id = x(0) & 0xffff_ffff;
        let result = match GuestCall::from_id(id) {
            Some(GuestCall::Info) => {
                let count = self
                    .vms
                    .get(usize::from(vcpu.slot))
                    .map_or(0, |s| s.inner.lock().max_vcpus);
                Ok([ABI_VERSION, u64::from(vcpu.index), u64::from(count)])
            }
            Some(GuestCall::Share) => self.guest_page_op(vcpu, Ipa::new(x(1)), PageOp::Share),
            Some(GuestCall::Unshare) => self.guest_page_op(vcpu, Ipa::new(x(1)), PageOp::Unshare),
            Some(GuestCall::Relinquish) => {
                self.guest_page_op(vcpu, Ipa::new(x(1)), PageOp::Relinquish)
            }
            Some(GuestCall::HostCall) => {
                ctx.set_pending(Pending::HostReply);
                return GuestExitAction::ExitToHost(Exit::HostCall { args: [x(1), x(2)] });
            }
            None if crate::psci::is_psci(id) => return self.guest_psci(vcpu, ctx, id),
            None => Err(Status::NotSupported),
        };
        let r = match result {
            Ok(r) => [Status::Success.raw(), r[0], r[1], r[2]],
            Err(s) => [s.raw(), 0, 0, 0],
        };
        for (n, v) in (0u8..).zip(r) {
            ctx.set_x(n, v);
        }
        GuestExitAction::Resume
    }

    /// Test and model-checking aid: the guest on `vcpu`'s CPU executes
    /// `hvc #0` with `x0..=x6 = args`. Equivalent to the world switch saving
    /// those registers and calling [`Engine::guest_exit`] with an HVC64
    /// syndrome.
    pub fn guest_hvc(&self, vcpu: &LoadedVcpu, args: [u64; 7]) -> GuestExitAction {
        for (n, v) in (0u8..).zip(args) {
            vcpu.ctx.set_x(&self.mem, n, v);
        }
        let esr = (u64::from(ec::HVC64) << 26) | abort::DataAbortIss::IL.bits();
        self.guest_exit(
            vcpu,
            Trap::Sync {
                esr,
                far: 0,
                hpfar: 0,
            },
        )
    }

    /// Test aid: the guest on `vcpu`'s CPU loads (`write == false`) `size`
    /// bytes at `ipa` into `x[reg]`, or stores them from it. A mapped access
    /// with the right permission happens in memory, as the hardware would do
    /// it; anything else takes the Stage-2 abort path exactly as the
    /// hardware would raise it (a data abort with a valid syndrome).
    pub fn guest_access(
        &self,
        vcpu: &LoadedVcpu,
        ipa: Ipa,
        size: u8,
        write: bool,
        reg: u8,
    ) -> GuestExitAction {
        let mem = &self.mem;
        let t = self
            .vms
            .get(usize::from(vcpu.slot))
            .and_then(|s| s.inner.lock().s2)
            .and_then(|s2| s2.translate(mem, ipa));
        let dfsc = match t {
            Some(t) if (write && t.desc.perms().w) || (!write && t.desc.perms().r) => {
                let word = PhysAddr::new(t.pa.raw() & !7);
                let shift = (t.pa.raw() & 7).wrapping_mul(8) as u32;
                let mask = crate::vcpu::mmio_read_value(u64::MAX, size, false, true);
                let old = mem.read_u64(word).unwrap_or(0);
                if write {
                    let v = vcpu.ctx.x(mem, reg) & mask;
                    let new = (old & !mask.wrapping_shl(shift)) | v.wrapping_shl(shift);
                    let _ = mem.write_u64(word, new);
                } else {
                    vcpu.ctx.set_x(mem, reg, old.wrapping_shr(shift) & mask);
                }
                vcpu.ctx.set_pc(mem, vcpu.ctx.pc(mem).wrapping_add(4));
                return GuestExitAction::Resume;
            }
            Some(_) => 0b001111, // permission fault, level 3
            None => 0b000111,    // translation fault, level 3
        };
        let esr = abort::data_abort_esr(size, write, reg, false, true, dfsc);
        let hpfar = (ipa.raw() >> 12) << 4;
        self.guest_exit(
            vcpu,
            Trap::Sync {
                esr,
                far: ipa.raw(),
                hpfar,
            },
        )
    }
}
