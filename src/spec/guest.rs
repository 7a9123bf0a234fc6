//! Guest calls, guest memory accesses and interrupts while a guest runs.
//!
//! A guest runs on a physical CPU between the host's `VcpuRun` and the next
//! exit. Its loads and stores to pages mapped with enough permission simply
//! happen; everything else traps to the engine, which either answers the
//! guest (a guest call) or ends the `VcpuRun` with an [`isola_abi::Exit`].
//! An exit carries only what the ABI names for it: nothing else of the
//! guest's registers or memory reaches the host.

use isola_abi::{ABI_VERSION, Exit, GuestCall, PAGE_SIZE, Status, perms, psci};

use super::host::{store, truncate};
use super::state::{Contents, Cpu, GPRS, Handle, Owner, PageState, Pending, RunState, Vcpu};
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
                self.update(h, index, |v| v.pc = v.pc.wrapping_add(4));
                self.exit(cpu, h, index, RunState::Ready, Exit::Wfx)
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
    fn exit(&mut self, cpu: usize, h: Handle, index: u64, run: RunState, exit: Exit) -> Outcome {
        self.update(h, index, |v| v.run = run);
        if let Some(c) = self.state.cpus.get_mut(cpu) {
            *c = Cpu::Host;
        }
        Outcome::Exit(exit.encode())
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
            None if id == u64::from(psci::CPU_OFF) => {
                return self.exit(cpu, h, index, RunState::Off, Exit::CpuOff);
            }
            None if id == u64::from(psci::SYSTEM_OFF) || id == u64::from(psci::SYSTEM_RESET) => {
                if let Some(vm) = self.state.vms.get_mut(&h) {
                    vm.off = true;
                }
                let exit = if id == u64::from(psci::SYSTEM_OFF) {
                    Exit::SystemOff
                } else {
                    Exit::SystemReset
                };
                return self.exit(cpu, h, index, RunState::Ready, exit);
            }
            None => Err(Status::NotSupported),
        };
        let x = match result {
            Ok(r) => ok(r),
            Err(s) => fail(s),
        };
        self.answer(h, index, x)
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
                    self.update(h, index, |v| v.pc = v.pc.wrapping_add(4));
                } else {
                    self.update(h, index, |v| v.pending = Pending::MmioRead { reg, size });
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

/// The three guest page calls.
#[derive(Clone, Copy)]
enum PageOp {
    Share,
    Unshare,
    Relinquish,
}
