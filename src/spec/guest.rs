//! Guest calls, guest memory accesses and interrupts while a guest runs.
//!
//! A guest runs on a physical CPU between the host's `VcpuRun` and the next
//! exit. Its loads and stores to pages mapped with enough permission simply
//! happen; everything else traps to the engine, which either answers the
//! guest (a guest call) or ends the `VcpuRun` with an [`isola_abi::Exit`].
//! An exit carries only what the ABI names for it: nothing else of the
//! guest's registers or memory reaches the host.

use isola_abi::{
    ABI_VERSION, Exit, ExitStatus, GuestCall, LrState, PAGE_SIZE, Status, lr, perms, psci,
};

use super::host::{store, truncate};
use super::state::{
    Contents, Cpu, GPRS, Handle, INITIAL_PSTATE, Owner, PageState, Pending, RunState, Vcpu,
};
use super::{Event, Model, Outcome, fail, ok};

/// Data abort from a lower exception level (ESR_EL2.EC).
const EC_DABT_LOW: u64 = 0x24;
/// Fault status code: translation fault at level 3 (nothing mapped).
pub const FSC_TRANS_L3: u64 = 0x07;
/// Fault status code: permission fault at level 3 (mapped without that permission).
pub const FSC_PERM_L3: u64 = 0x0f;
/// ESR_EL2 of an exception with an unknown reason (EC 0, IL 1), e.g. an
/// undefined instruction: nothing the engine handles.
pub const ESR_UNKNOWN: u64 = 1 << 25;

/// ESR_EL2 of a data abort from the guest with a valid syndrome: a `size`-byte
/// unsigned access (`write` or not) to/from 64-bit register `x<reg>`, fault
/// status `dfsc`. This is the Arm architecture's encoding (ISS for EC 0x24:
/// ISV, SAS, SSE = 0, SRT, SF = 1, WnR, DFSC), the value the engine reports
/// in [`Exit::Error`].
pub fn data_abort_esr(size: u8, write: bool, reg: u8, dfsc: u64) -> u64 {
    let sas: u64 = match size {
        1 => 0,
        2 => 1,
        4 => 2,
        _ => 3,
    };
    let il = 1 << 25;
    let isv = 1 << 24;
    EC_DABT_LOW << 26
        | il
        | isv
        | sas << 22
        | u64::from(reg & 0x1f) << 16
        | 1 << 15
        | u64::from(write) << 6
        | dfsc
}

/// Writes `value` to register `reg` of a context; out-of-range `reg` is ignored.
pub(super) fn set_reg(regs: &mut [u64; GPRS], reg: u8, value: u64) {
    if let Some(r) = regs.get_mut(usize::from(reg)) {
        *r = value;
    }
}

/// Widest intermediate physical address the architecture can produce: a
/// guest's Stage-1 output is at most 52 bits, and HPFAR_EL2 reports no more.
const IPA_MAX_BITS: u32 = 52;

/// Whether a guest access can happen at all: `size` is an access size,
/// `ipa` is aligned to it and fits the architecture's address size, and
/// `reg` is a general-purpose register.
fn well_formed(ipa: u64, size: u8, reg: u8) -> bool {
    matches!(size, 1 | 2 | 4 | 8)
        && ipa.is_multiple_of(u64::from(size))
        && ipa >> IPA_MAX_BITS == 0
        && usize::from(reg) < GPRS
}

/// Makes vCPU `v` take a synchronous external abort for the access at
/// instruction `at` to address `far`, as the architecture delivers it to
/// EL1 (the model's guests never change `VBAR_EL1` or `SCTLR_EL1` from
/// their reset values: vectors at 0, `SPAN` set, `DSSBS` clear).
pub(super) fn take_external_abort(v: &mut Vcpu, at: u64, far: u64, write: bool, fetch: bool) {
    let from_el0 = v.pstate & 0xf == 0;
    let ec: u64 = match (fetch, from_el0) {
        (true, true) => 0x20,
        (true, false) => 0x21,
        (false, true) => 0x24,
        (false, false) => 0x25,
    };
    v.el1.esr = ec << 26 | 1 << 25 | if write && !fetch { 1 << 6 } else { 0 } | 0x10;
    v.el1.far = far;
    v.el1.elr = at;
    v.el1.spsr = v.pstate;
    v.pc = match v.pstate & 0xf {
        0b0000 => 0x400,
        0b0100 => 0,
        _ => 0x200,
    };
    // SPAN set: PAN keeps its value; DSSBS clear: SSBS clear.
    v.pstate = INITIAL_PSTATE | (v.pstate & 1 << 22);
    v.pending = Pending::None;
}

/// What the engine does to a vCPU that touched a system register it
/// neither switches nor emulates: the architecture's Undefined Instruction
/// exception at the guest's own vector, as for [`take_external_abort`]
/// (`ESR_EL1` = EC 0 with `IL`, `ELR_EL1` = the instruction, `SPSR_EL1` =
/// PSTATE, `FAR_EL1` unchanged), and nothing pending changes.
pub(super) fn take_undefined(v: &mut Vcpu) {
    v.el1.esr = 1 << 25;
    v.el1.elr = v.pc;
    v.el1.spsr = v.pstate;
    v.pc = match v.pstate & 0xf {
        0b0000 => 0x400,
        0b0100 => 0,
        _ => 0x200,
    };
    v.pstate = INITIAL_PSTATE | (v.pstate & 1 << 22);
}

/// Whether a list-register word is one whose interrupt the guest finished
/// with `EOI` requested (the maintenance condition): not empty, neither
/// pending nor active, `EOI` set, `HW` clear.
fn eoi_done(w: u64) -> bool {
    w != 0 && w & (lr::PENDING | lr::ACTIVE) == 0 && w & lr::EOI != 0 && w & lr::HW == 0
}

/// The PSCI ids `PSCI_FEATURES` reports.
const PSCI_IMPLEMENTED: [u32; 12] = [
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

impl Model {
    /// An event in the guest running vCPU `index` of VM `h` on `cpu`.
    pub(super) fn guest_event(
        &mut self,
        cpu: usize,
        h: Handle,
        index: u64,
        event: &Event,
    ) -> Outcome {
        let Some(vcpu) = self.vcpu(h, index) else {
            return Outcome::Inapplicable;
        };
        let mut regs = vcpu.regs;
        match *event {
            Event::GuestSetReg { reg, value, .. } if usize::from(reg) < GPRS => {
                set_reg(&mut regs, reg, value);
                self.update(h, index, |v| v.regs = regs);
                Outcome::GuestDone
            }
            Event::GuestHvc { regs: args, .. } => {
                regs[..7].copy_from_slice(&args);
                self.update(h, index, |v| v.regs = regs);
                self.guest_call(cpu, h, index, &args)
            }
            Event::GuestRead { ipa, reg, size, .. } if well_formed(ipa, size, reg) => {
                self.guest_access(cpu, h, index, ipa, reg, size, false)
            }
            Event::GuestWrite { ipa, reg, size, .. } if well_formed(ipa, size, reg) => {
                self.guest_access(cpu, h, index, ipa, reg, size, true)
            }
            Event::GuestWfi { .. } => {
                let deadline = deadline(vcpu.timer);
                self.update(h, index, |v| v.pc = v.pc.wrapping_add(4));
                self.exit(
                    cpu,
                    h,
                    index,
                    RunState::Ready,
                    Exit::Wfx {
                        wfe: false,
                        deadline,
                    },
                )
            }
            Event::GuestSysReg { access, .. } => self.guest_sysreg(cpu, h, index, access),
            Event::GuestTimer { ctl, cval, .. } => {
                self.update(h, index, |v| v.timer = (ctl, cval));
                Outcome::GuestDone
            }
            Event::GuestIntAck { intid, .. } => {
                self.update(h, index, |v| {
                    if let Some(w) = v
                        .lrs
                        .iter_mut()
                        .find(|w| **w & 0xffff_ffff == intid && lr::state(**w) == LrState::Pending)
                    {
                        *w = (*w & !lr::PENDING) | lr::ACTIVE;
                    }
                });
                Outcome::GuestDone
            }
            Event::GuestIntEoi { intid, .. } => {
                let mut maintenance = false;
                self.update(h, index, |v| {
                    if let Some(w) = v
                        .lrs
                        .iter_mut()
                        .find(|w| **w != 0 && **w & 0xffff_ffff == intid && **w & lr::ACTIVE != 0)
                    {
                        *w &= !lr::ACTIVE;
                        maintenance = eoi_done(*w);
                    }
                });
                if maintenance {
                    self.exit(cpu, h, index, RunState::Ready, Exit::Eoi)
                } else {
                    Outcome::GuestDone
                }
            }
            Event::Irq { .. } => self.exit(cpu, h, index, RunState::Ready, Exit::Irq),
            Event::GuestUndefined { .. } => self.exit(
                cpu,
                h,
                index,
                RunState::Stopped,
                Exit::Error { esr: ESR_UNKNOWN },
            ),
            _ => Outcome::Inapplicable,
        }
    }

    /// The vCPU `index` of live VM `h`.
    fn vcpu(&self, h: Handle, index: u64) -> Option<&Vcpu> {
        self.state.vms.get(&h)?.vcpus.get(&index)
    }

    /// Applies `f` to vCPU `index` of VM `h`.
    fn update(&mut self, h: Handle, index: u64, f: impl FnOnce(&mut Vcpu)) {
        if let Some(v) = self
            .state
            .vms
            .get_mut(&h)
            .and_then(|vm| vm.vcpus.get_mut(&index))
        {
            f(v);
        }
    }

    /// Ends the `VcpuRun` on `cpu` with `exit`, leaving the vCPU in `run`.
    /// The exit word also reports each list register's state (after the
    /// ones the guest finished with `EOI` are cleared) and the level of
    /// the guest's virtual timer interrupt.
    fn exit(&mut self, cpu: usize, h: Handle, index: u64, run: RunState, exit: Exit) -> Outcome {
        let mut status = ExitStatus::default();
        self.update(h, index, |v| {
            v.run = run;
            for w in v.lrs.iter_mut() {
                if eoi_done(*w) {
                    *w = 0;
                }
            }
            let (ctl, _) = v.timer;
            status = ExitStatus {
                // ENABLE and ISTATUS set, IMASK clear.
                vtimer: ctl & 0b111 == 0b101,
                lrs: v.lrs.map(lr::state),
            };
        });
        if let Some(c) = self.state.cpus.get_mut(cpu) {
            *c = Cpu::Host;
        }
        let [w, a, b] = exit.encode();
        Outcome::Exit([w | status.to_word(), a, b])
    }

    /// Answers the guest with `x0..=x3`.
    fn answer(&mut self, h: Handle, index: u64, x: [u64; 4]) -> Outcome {
        self.update(h, index, |v| v.regs[..4].copy_from_slice(&x));
        Outcome::GuestReturn(x)
    }

    /// A guest `hvc #0` with `x0..=x6 = args`.
    fn guest_call(&mut self, cpu: usize, h: Handle, index: u64, args: &[u64; 7]) -> Outcome {
        let [id, a, b, ..] = *args;
        let id = id & 0xffff_ffff;
        let result = match GuestCall::from_id(id) {
            Some(GuestCall::Info) => {
                let count = self.state.vms.get(&h).map_or(0, |vm| vm.max_vcpus);
                Ok([ABI_VERSION, index, count])
            }
            Some(GuestCall::Share) => self.guest_page_op(h, a, PageOp::Share),
            Some(GuestCall::Unshare) => self.guest_page_op(h, a, PageOp::Unshare),
            Some(GuestCall::Relinquish) => self.guest_page_op(h, a, PageOp::Relinquish),
            Some(GuestCall::HostCall) => {
                self.update(h, index, |v| v.pending = Pending::HostReply);
                return self.exit(
                    cpu,
                    h,
                    index,
                    RunState::Ready,
                    Exit::HostCall { args: [a, b] },
                );
            }
            None if matches!(id & !0x1f, 0x8400_0000 | 0xC400_0000) => {
                return self.guest_psci(cpu, h, index, args);
            }
            None => Err(Status::NotSupported),
        };
        let x = match result {
            Ok(r) => ok(r),
            Err(s) => fail(s),
        };
        self.answer(h, index, x)
    }

    /// A guest PSCI call (`x0` in PSCI's ranges).
    fn guest_psci(&mut self, cpu: usize, h: Handle, index: u64, args: &[u64; 7]) -> Outcome {
        let id = args[0] & 0xffff_ffff;
        // SMC32 ids (bit 30 clear) take 32-bit arguments.
        let arg = |n: usize| {
            let v = args.get(n).copied().unwrap_or(0);
            if id & 0x4000_0000 == 0 {
                v & 0xffff_ffff
            } else {
                v
            }
        };
        let id = id as u32;
        let answer = |m: &mut Model, x0: i64| m.answer(h, index, [x0 as u64, 0, 0, 0]);
        match id {
            psci::VERSION => answer(self, psci::GUEST_VERSION as i64),
            psci::MIGRATE_INFO_TYPE => answer(self, psci::MIGRATE_NONE as i64),
            psci::FEATURES => {
                let asked = args.get(1).copied().unwrap_or(0) & 0xffff_ffff;
                let known = PSCI_IMPLEMENTED.iter().any(|&f| u64::from(f) == asked);
                answer(
                    self,
                    if known {
                        psci::ret::SUCCESS
                    } else {
                        psci::ret::NOT_SUPPORTED
                    },
                )
            }
            psci::CPU_SUSPEND | psci::CPU_SUSPEND32 => {
                let timer = self.vcpu(h, index).map_or((0, 0), |v| v.timer);
                self.answer(h, index, [0; 4]);
                let exit = Exit::Wfx {
                    wfe: false,
                    deadline: deadline(timer),
                };
                self.exit(cpu, h, index, RunState::Ready, exit)
            }
            psci::CPU_OFF => self.exit(cpu, h, index, RunState::Off, Exit::CpuOff),
            psci::SYSTEM_OFF | psci::SYSTEM_RESET => {
                if let Some(vm) = self.state.vms.get_mut(&h) {
                    vm.off = true;
                }
                let exit = if id == psci::SYSTEM_OFF {
                    Exit::SystemOff
                } else {
                    Exit::SystemReset
                };
                self.exit(cpu, h, index, RunState::Ready, exit)
            }
            psci::AFFINITY_INFO | psci::AFFINITY_INFO32 => {
                let state = psci::target_index(arg(1))
                    .filter(|_| arg(2) == 0)
                    .and_then(|t| self.vcpu(h, u64::from(t)))
                    .map(|v| v.run);
                let r = match state {
                    None => psci::ret::INVALID_PARAMETERS,
                    Some(RunState::Off) => psci::affinity::OFF as i64,
                    Some(RunState::OnPending) => psci::affinity::ON_PENDING as i64,
                    Some(_) => psci::affinity::ON as i64,
                };
                answer(self, r)
            }
            psci::CPU_ON | psci::CPU_ON32 => {
                let (entry, context) = (arg(2), arg(3));
                let Some(t) = psci::target_index(arg(1)).map(u64::from) else {
                    return answer(self, psci::ret::INVALID_PARAMETERS);
                };
                let r = match self.vcpu(h, t).map(|v| v.run) {
                    None => psci::ret::INVALID_PARAMETERS,
                    Some(RunState::OnPending) => psci::ret::ON_PENDING,
                    Some(RunState::Off) => {
                        if entry % 4 != 0 || entry >> self.config.ipa_bits.min(63) != 0 {
                            psci::ret::INVALID_ADDRESS
                        } else {
                            self.update(h, t, |v| {
                                *v = Vcpu {
                                    run: RunState::OnPending,
                                    ..Vcpu::reset(entry, context, v.lrs)
                                };
                            });
                            self.answer(h, index, [0; 4]);
                            let exit = Exit::CpuOn { vcpu: t as u16 };
                            return self.exit(cpu, h, index, RunState::Ready, exit);
                        }
                    }
                    Some(_) => psci::ret::ALREADY_ON,
                };
                answer(self, r)
            }
            _ => answer(self, psci::ret::NOT_SUPPORTED),
        }
    }

    /// A trapped `MRS`/`MSR` by the guest.
    ///
    /// The rules: an `ICC_SGI1R_EL1` write sends an SGI to the vCPUs it
    /// names by Aff0 (all but the writer with `IRM`; nobody when it names
    /// another cluster or range) and exits if it names anyone; the debug
    /// registers (Op0 2) and the PMU registers read as zero and ignore
    /// writes. The model's guests touch no other trapped register but the
    /// implementation-defined space (Op0 3, CRn 15), which is UNDEFINED:
    /// the guest takes an Undefined Instruction exception at its own vector
    /// ([`take_undefined`]). Emulated accesses and refused ones are counted
    /// (`GUEST_SYSREGS`, `GUEST_UNDEFINED`) on `cpu`.
    fn guest_sysreg(
        &mut self,
        cpu: usize,
        h: Handle,
        index: u64,
        a: crate::hypercall::sysreg::Access,
    ) -> Outcome {
        let pmu = a.op0 == 3 && a.op1 == 3 && a.crn == 9 && (12..=14).contains(&a.crm);
        let step = |v: &mut Vcpu| v.pc = v.pc.wrapping_add(4);
        if (a.op0, a.op1, a.crn, a.crm, a.op2, a.read) == (3, 0, 12, 11, 5, false) {
            let value = self
                .vcpu(h, index)
                .and_then(|v| v.regs.get(usize::from(a.rt)).copied())
                .unwrap_or(0);
            let vcpus = self.state.vms.get(&h).map_or(0, |vm| vm.max_vcpus);
            let intid = ((value >> 24) & 0xf) as u8;
            let mine = (0..vcpus).filter(|&i| i < 16).fold(0u16, |m, i| m | 1 << i);
            let targets = if value & 1 << 40 != 0 {
                mine & !(1u16 << index.min(15))
            } else if value & 0x00ff_f0ff_00ff_0000 != 0 {
                0
            } else {
                value as u16 & mine
            };
            self.update(h, index, step);
            if targets == 0 {
                self.count(cpu, isola_abi::counter::GUEST_SYSREGS);
                return Outcome::GuestDone;
            }
            return self.exit(cpu, h, index, RunState::Ready, Exit::Sgi { targets, intid });
        }
        if a.op0 == 2 || pmu {
            self.update(h, index, |v| {
                if a.read {
                    set_reg(&mut v.regs, a.rt, 0);
                }
                step(v);
            });
            self.count(cpu, isola_abi::counter::GUEST_SYSREGS);
            return Outcome::GuestDone;
        }
        self.update(h, index, take_undefined);
        self.count(cpu, isola_abi::counter::GUEST_UNDEFINED);
        Outcome::GuestDone
    }

    /// Guest `Share`, `Unshare` or `Relinquish` of the page mapped at `ipa`.
    fn guest_page_op(&mut self, h: Handle, ipa: u64, op: PageOp) -> Result<[u64; 3], Status> {
        if !ipa.is_multiple_of(PAGE_SIZE)
            || self.config.ipa_bits >= 64
            || ipa >> self.config.ipa_bits != 0
        {
            return Err(Status::InvalidArgument);
        }
        let mapping = self
            .state
            .vms
            .get(&h)
            .and_then(|vm| vm.map.get(&ipa).copied());
        let Some(mapping) = mapping else {
            return Err(Status::NotMapped);
        };
        let page = self.state.page(mapping.pa).ok_or(Status::NotOwner)?;
        let need = match op {
            PageOp::Share | PageOp::Relinquish => PageState::Owned,
            PageOp::Unshare => PageState::Shared { with: Owner::Host },
        };
        if page.owner != Owner::Vm(h) || page.state != need {
            return Err(Status::NotOwner);
        }
        let Some(page) = self.state.pages.get_mut(&mapping.pa) else {
            return Err(Status::NotOwner);
        };
        match op {
            PageOp::Share => page.state = PageState::Shared { with: Owner::Host },
            PageOp::Unshare => page.state = PageState::Owned,
            PageOp::Relinquish => {
                page.owner = Owner::Host;
                page.contents = Some(Contents::new());
                if let Some(vm) = self.state.vms.get_mut(&h) {
                    vm.map.remove(&ipa);
                }
            }
        }
        Ok([0; 3])
    }

    /// A guest load (`write == false`) into, or store from, register `reg`.
    #[allow(
        clippy::too_many_arguments,
        reason = "the access as the trap reports it, part by part; a struct would only rename them"
    )]
    fn guest_access(
        &mut self,
        cpu: usize,
        h: Handle,
        index: u64,
        ipa: u64,
        reg: u8,
        size: u8,
        write: bool,
    ) -> Outcome {
        let page_ipa = ipa & !(PAGE_SIZE - 1);
        if self.config.ipa_bits >= 64 || ipa >> self.config.ipa_bits != 0 {
            let esr = data_abort_esr(size, write, reg, FSC_TRANS_L3);
            return self.exit(cpu, h, index, RunState::Stopped, Exit::Error { esr });
        }
        let mapping = self
            .state
            .vms
            .get(&h)
            .and_then(|vm| vm.map.get(&page_ipa).copied());
        let Some(vcpu) = self.vcpu(h, index) else {
            return Outcome::Inapplicable;
        };
        let source = vcpu.regs.get(usize::from(reg)).copied().unwrap_or(0);
        let Some(m) = mapping else {
            if (self.config.mmio_base..self.config.mmio_end).contains(&ipa) {
                // An MMIO store is done once the host has the value; a load
                // finishes on the next `VcpuRun` (see `vcpu_run`).
                let value = if write { truncate(source, size) } else { 0 };
                if write {
                    self.update(h, index, |v| {
                        v.pc = v.pc.wrapping_add(4);
                        v.pending = Pending::MmioWrite { far: ipa };
                    });
                } else {
                    self.update(h, index, |v| {
                        v.pending = Pending::MmioRead {
                            reg,
                            size,
                            far: ipa,
                        }
                    });
                }
                return self.exit(
                    cpu,
                    h,
                    index,
                    RunState::Ready,
                    Exit::Mmio {
                        ipa,
                        size,
                        write,
                        value,
                    },
                );
            }
            self.update(h, index, |v| {
                v.pending = Pending::MemFault {
                    far: ipa,
                    write,
                    fetch: false,
                }
            });
            return self.exit(
                cpu,
                h,
                index,
                RunState::Ready,
                Exit::MemFault { ipa: page_ipa },
            );
        };
        let need = if write { perms::W } else { perms::R };
        // A permission fault is not "unmapped RAM" (`MemFault`): the
        // engine does not handle it, so it is `Error` and the vCPU stops.
        if m.perms & need == 0 {
            let esr = data_abort_esr(size, write, reg, FSC_PERM_L3);
            return self.exit(cpu, h, index, RunState::Stopped, Exit::Error { esr });
        }
        let offset = ipa % PAGE_SIZE;
        let word = u16::try_from(offset / 8).unwrap_or(0);
        let shift = (offset % 8).wrapping_mul(8);
        let mask = truncate(u64::MAX, size);
        let Some(contents) = self
            .state
            .pages
            .get_mut(&m.pa)
            .and_then(|p| p.contents.as_mut())
        else {
            return Outcome::Inapplicable;
        };
        let old = contents.get(&word).copied().unwrap_or(0);
        if write {
            let new = (old & !(mask << shift)) | (truncate(source, size) << shift);
            store(contents, word, new);
        } else {
            let value = (old >> shift) & mask;
            self.update(h, index, |v| set_reg(&mut v.regs, reg, value));
        }
        // The instruction completed: the guest goes on after it.
        self.update(h, index, |v| v.pc = v.pc.wrapping_add(4));
        Outcome::GuestDone
    }
}

/// The guest's timer deadline, if armed (`ENABLE` set, `IMASK` clear).
fn deadline((ctl, cval): (u64, u64)) -> Option<u64> {
    (ctl & 0b11 == 0b01).then_some(cval)
}

/// The three guest page calls.
#[derive(Clone, Copy)]
enum PageOp {
    Share,
    Unshare,
    Relinquish,
}
