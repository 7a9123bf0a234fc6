//! vCPU contexts: the layout of the page that holds a vCPU's registers, and
//! the vCPU's load state.
//!
//! A context lives in one page of its VM's donated pool, so its cost is the
//! VM's, not the engine's. The layout is fixed (byte offsets below) so the
//! world switch in `boot/` can save and restore registers straight into it.
//!
//! Invariants: a context page is accessed only by the CPU that has the vCPU
//! loaded ([`VcpuState::Loaded`]), or, while it is not loaded, under the
//! VM's lock. The load state itself changes only under the VM's lock, so two
//! CPUs racing to load the same vCPU serialise there: one sees `Idle` and
//! wins, the other sees `Loaded` and gets `Busy`.

use crate::addr::PhysAddr;
use crate::mem::{Page, PhysMem};

/// The most vCPUs a VM may have (reported by `HostCall::Version` in `x3`).
pub const MAX_VCPUS: usize = 8;

/// Byte offset of `x0`; `xN` is at `8 * N` (N = 0..=30).
pub const OFF_X: u64 = 0;
/// Byte offset of the guest PC (`ELR_EL2` on exit).
pub const OFF_PC: u64 = 31 * 8;
/// Byte offset of the guest PSTATE (`SPSR_EL2` on exit).
pub const OFF_PSTATE: u64 = 32 * 8;
/// Byte offset of the first EL1 system register; see [`SysReg`].
pub const OFF_SYSREGS: u64 = 33 * 8;
/// Byte offset of `V0`; `Vn` is at `OFF_V + 16 * n` (little-endian u128).
pub const OFF_V: u64 = 512;
/// Byte offset of FPSR.
pub const OFF_FPSR: u64 = 1024;
/// Byte offset of FPCR.
pub const OFF_FPCR: u64 = 1032;
/// Byte offset of `ICH_LR0_EL2`; `ICH_LR<n>_EL2` is at `OFF_LR + 8 * n`
/// (n < [`isola_abi::lr::SLOTS`]). The host sets them (`VcpuInterrupts`);
/// the world switch loads the first `list_regs` into the CPU before the
/// guest runs and saves them back after; the core reads them at every exit.
pub const OFF_LR: u64 = 1088;
/// Byte offset of `ICH_VMCR_EL2` (the guest's virtual CPU interface
/// control: priority mask, group enables), saved and restored by the world
/// switch, never shown to the host.
pub const OFF_VMCR: u64 = 1120;
/// Byte offset of `ICH_AP0R0_EL2`; `ICH_AP0R<n>_EL2` at `+ 8 * n`, n < 4.
pub const OFF_AP0R: u64 = 1128;
/// Byte offset of `ICH_AP1R0_EL2`; `ICH_AP1R<n>_EL2` at `+ 8 * n`, n < 4.
pub const OFF_AP1R: u64 = 1160;
/// End of the virtual-interface area.
pub const OFF_VGIC_END: u64 = 1192;
/// Byte offset of the guest's `VDISR_EL2`: what it reads and writes as
/// `DISR_EL1` while `HCR_EL2.AMO` routes SErrors to EL2 (on a CPU with
/// FEAT_RAS). The world switch loads it before entry and saves it after,
/// so no guest reads another's.
pub const OFF_VDISR: u64 = 1192;
/// End of the EL2 registers that hold guest state.
pub const OFF_EL2_END: u64 = 1200;
/// Engine-private: pending resume action (see [`Pending`]).
const OFF_PENDING: u64 = 2048;
/// Engine-private: the faulting virtual address of a pending access
/// (`FAR_EL2` at its exit), for an abort the host may ask to inject.
const OFF_PENDING_FAR: u64 = 2056;

/// PSTATE a vCPU starts with: EL1h, D, A, I, F masked.
pub const INITIAL_PSTATE: u64 = 0x3c5;
/// SCTLR_EL1 a vCPU starts with: the RES1 bits, MMU and caches off.
pub const INITIAL_SCTLR: u64 = 0x30d0_0800;

/// `SCTLR_EL1.SPAN`: clear, exception entry to EL1 sets `PSTATE.PAN`.
const SCTLR_SPAN: u64 = 1 << 23;
/// `SCTLR_EL1.DSSBS`: `PSTATE.SSBS` on exception entry.
const SCTLR_DSSBS: u64 = 1 << 44;
/// `PSTATE.PAN`.
const PSTATE_PAN: u64 = 1 << 22;
/// `PSTATE.SSBS`.
const PSTATE_SSBS: u64 = 1 << 12;

/// The EL1 (and EL0-visible) system registers a guest owns, in context
/// order: register `r` is at `OFF_SYSREGS + 8 * (r as u64)`.
#[allow(missing_docs, reason = "each variant is the register it names")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SysReg {
    SctlrEl1,
    Ttbr0El1,
    Ttbr1El1,
    TcrEl1,
    MairEl1,
    AmairEl1,
    VbarEl1,
    ContextidrEl1,
    TpidrEl0,
    TpidrroEl0,
    TpidrEl1,
    SpEl0,
    SpEl1,
    ElrEl1,
    SpsrEl1,
    EsrEl1,
    FarEl1,
    Afsr0El1,
    Afsr1El1,
    ParEl1,
    CpacrEl1,
    CntkctlEl1,
    CntvCtlEl0,
    CntvCvalEl0,
    CsselrEl1,
    MdscrEl1,
}

/// Number of [`SysReg`]s.
pub const SYSREG_COUNT: u64 = 26;

/// Where a vCPU is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VcpuState {
    /// Never created.
    #[default]
    Absent,
    /// Created, not running anywhere.
    Idle,
    /// Loaded on this physical CPU.
    Loaded(u32),
    /// Powered off: created with `vcpu_flags::OFF`, or turned itself off
    /// (PSCI `CPU_OFF`); `VcpuRun` fails `Denied` until a `CPU_ON`.
    Off,
    /// A guest's `CPU_ON` named it and reset its context; it has not run
    /// since (`AFFINITY_INFO` says `ON_PENDING`). Runs like `Idle`.
    OnPending,
    /// Stopped after an `Exit::Error`; `VcpuRun` fails `Denied`.
    Stopped,
}

/// What the next `VcpuRun` must do with the host's value (`x3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Nothing: the value is ignored.
    None,
    /// An MMIO read: the value goes to `reg` (31 = XZR, discarded),
    /// truncated to `size` bytes, sign-extended if `sign`, to 64 bits if
    /// `sf`, else to 32 bits with the upper half zero.
    MmioRead {
        reg: u8,
        size: u8,
        sign: bool,
        sf: bool,
    },
    /// A `GuestCall::HostCall`: `x0 = Success`, `x1 = value`.
    HostReply,
    /// An MMIO store the host has seen: nothing to deliver (the PC already
    /// stepped over it), but the host may still answer it with an abort.
    MmioWrite,
    /// A fault on unmapped guest RAM (`Exit::MemFault`): the access runs
    /// again on resume unless the host answers it with an abort.
    MemFault {
        /// A store.
        write: bool,
        /// An instruction fetch.
        fetch: bool,
    },
}

impl Pending {
    fn encode(self) -> u64 {
        match self {
            Pending::None => 0,
            Pending::HostReply => 1,
            Pending::MmioWrite => 3,
            Pending::MemFault { write, fetch } => {
                4 | (u64::from(write) << 8) | (u64::from(fetch) << 9)
            }
            Pending::MmioRead {
                reg,
                size,
                sign,
                sf,
            } => {
                2 | (u64::from(reg) << 8)
                    | (u64::from(size) << 16)
                    | (u64::from(sign) << 24)
                    | (u64::from(sf) << 25)
            }
        }
    }

    fn decode(v: u64) -> Pending {
        match v & 0xff {
            1 => Pending::HostReply,
            2 => Pending::MmioRead {
                reg: ((v >> 8) & 0x1f) as u8,
                size: ((v >> 16) & 0xff) as u8,
                sign: v & (1 << 24) != 0,
                sf: v & (1 << 25) != 0,
            },
            3 => Pending::MmioWrite,
            4 => Pending::MemFault {
                write: v & (1 << 8) != 0,
                fetch: v & (1 << 9) != 0,
            },
            _ => Pending::None,
        }
    }
}

/// A view of one vCPU context page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    page: PhysAddr,
}

impl Context {
    /// The context in `page`.
    pub const fn new(page: PhysAddr) -> Self {
        Self { page }
    }

    /// The page's physical address (for the world switch).
    pub const fn page(&self) -> PhysAddr {
        self.page
    }

    fn word(&self, mem: &PhysMem, off: u64) -> u64 {
        mem.read_u64(self.page.wrapping_add_bytes(off)).unwrap_or(0)
    }

    fn set_word(&self, mem: &PhysMem, off: u64, v: u64) {
        let _ = mem.write_u64(self.page.wrapping_add_bytes(off), v);
    }

    /// Initialises a fresh (zeroed) context to start at `pc` with `x0`.
    pub fn init(&self, mem: &PhysMem, pc: u64, x0: u64) {
        self.set_x(mem, 0, x0);
        self.set_pc(mem, pc);
        self.set_word(mem, OFF_PSTATE, INITIAL_PSTATE);
        self.set_sysreg(mem, SysReg::SctlrEl1, INITIAL_SCTLR);
    }

    /// Resets the context as a PSCI `CPU_ON` does: every register (general,
    /// FP/SIMD, EL1 system, timer, virtual CPU interface) to its reset
    /// value, nothing pending, then [`Context::init`] with the guest's
    /// entry point and context id. The list registers stay: they are the
    /// host's (what it asked to present), and it learns their states at
    /// the vCPU's next exit.
    pub fn reset(&self, mem: &PhysMem, pc: u64, x0: u64) {
        let lrs = self.lrs(mem);
        #[cfg(not(feature = "planted-bug-cpu-on-keeps-registers"))]
        let _ = mem.zero_page(self.page);
        self.set_lrs(mem, lrs);
        self.init(mem, pc, x0);
    }

    /// The list-register words (host-given, as the world switch last saved them).
    pub fn lrs(&self, mem: &PhysMem) -> [u64; isola_abi::lr::SLOTS] {
        core::array::from_fn(|n| self.word(mem, lr_offset(n)))
    }

    /// Sets the list-register words.
    pub fn set_lrs(&self, mem: &PhysMem, lrs: [u64; isola_abi::lr::SLOTS]) {
        for (n, w) in lrs.into_iter().enumerate() {
            self.set_word(mem, lr_offset(n), w);
        }
    }

    /// The faulting address of the pending access.
    pub fn pending_far(&self, mem: &PhysMem) -> u64 {
        self.word(mem, OFF_PENDING_FAR)
    }

    /// `x[n]`; `n == 31` reads as zero (XZR), larger `n` too.
    pub fn x(&self, mem: &PhysMem, n: u8) -> u64 {
        if n >= 31 {
            0
        } else {
            self.word(mem, OFF_X.wrapping_add(u64::from(n).wrapping_mul(8)))
        }
    }

    /// Sets `x[n]`; writes to `n >= 31` (XZR) are discarded.
    pub fn set_x(&self, mem: &PhysMem, n: u8, v: u64) {
        if n < 31 {
            self.set_word(mem, OFF_X.wrapping_add(u64::from(n).wrapping_mul(8)), v);
        }
    }

    /// The PC.
    pub fn pc(&self, mem: &PhysMem) -> u64 {
        self.word(mem, OFF_PC)
    }

    /// Sets the PC.
    pub fn set_pc(&self, mem: &PhysMem, v: u64) {
        self.set_word(mem, OFF_PC, v);
    }

    /// PSTATE.
    pub fn pstate(&self, mem: &PhysMem) -> u64 {
        self.word(mem, OFF_PSTATE)
    }

    /// Sets PSTATE (test aid: the world switch is the only other writer).
    pub fn set_pstate(&self, mem: &PhysMem, v: u64) {
        self.set_word(mem, OFF_PSTATE, v);
    }

    /// A system register.
    pub fn sysreg(&self, mem: &PhysMem, r: SysReg) -> u64 {
        self.word(mem, OFF_SYSREGS.wrapping_add((r as u64).wrapping_mul(8)))
    }

    /// Sets a system register.
    pub fn set_sysreg(&self, mem: &PhysMem, r: SysReg, v: u64) {
        self.set_word(mem, OFF_SYSREGS.wrapping_add((r as u64).wrapping_mul(8)), v);
    }

    /// FP/SIMD register `Vn` (n < 32, else zero).
    pub fn v(&self, mem: &PhysMem, n: u8) -> u128 {
        if n >= 32 {
            return 0;
        }
        let off = OFF_V.wrapping_add(u64::from(n).wrapping_mul(16));
        u128::from(self.word(mem, off)) | (u128::from(self.word(mem, off.wrapping_add(8))) << 64)
    }

    /// Sets `Vn` (n < 32).
    pub fn set_v(&self, mem: &PhysMem, n: u8, v: u128) {
        if n < 32 {
            let off = OFF_V.wrapping_add(u64::from(n).wrapping_mul(16));
            self.set_word(mem, off, v as u64);
            self.set_word(mem, off.wrapping_add(8), (v >> 64) as u64);
        }
    }

    /// FPSR and FPCR.
    pub fn fp_status(&self, mem: &PhysMem) -> (u64, u64) {
        (self.word(mem, OFF_FPSR), self.word(mem, OFF_FPCR))
    }

    /// The pending resume action.
    pub fn pending(&self, mem: &PhysMem) -> Pending {
        Pending::decode(self.word(mem, OFF_PENDING))
    }

    /// Sets the pending resume action.
    pub fn set_pending(&self, mem: &PhysMem, p: Pending) {
        self.set_word(mem, OFF_PENDING, p.encode());
    }

    /// The context with its page checked once, for the run path's many
    /// register accesses; `None` if the page is not in the window (never
    /// for a context the engine made: it comes from a VM's pool).
    pub fn regs<'a>(&self, mem: &'a PhysMem) -> Option<Regs<'a>> {
        mem.page(self.page).map(|page| Regs { page })
    }
}

/// A vCPU context whose page was checked once ([`Context::regs`]): the same
/// registers as [`Context`], each access a single load or store.
#[derive(Clone, Copy, Debug)]
pub struct Regs<'a> {
    page: Page<'a>,
}

impl Regs<'_> {
    /// `x[n]`; `n == 31` reads as zero (XZR), larger `n` too.
    pub fn x(&self, n: u8) -> u64 {
        if n >= 31 {
            0
        } else {
            self.page
                .read_u64(OFF_X.wrapping_add(u64::from(n).wrapping_mul(8)))
        }
    }

    /// Sets `x[n]`; writes to `n >= 31` (XZR) are discarded.
    pub fn set_x(&self, n: u8, v: u64) {
        if n < 31 {
            self.page
                .write_u64(OFF_X.wrapping_add(u64::from(n).wrapping_mul(8)), v);
        }
    }

    /// The PC.
    pub fn pc(&self) -> u64 {
        self.page.read_u64(OFF_PC)
    }

    /// Sets the PC.
    pub fn set_pc(&self, v: u64) {
        self.page.write_u64(OFF_PC, v);
    }

    /// Sets the pending resume action.
    pub fn set_pending(&self, p: Pending) {
        self.page.write_u64(OFF_PENDING, p.encode());
    }

    /// Sets the pending resume action for an access that faulted at `far`.
    pub fn set_pending_access(&self, p: Pending, far: u64) {
        self.page.write_u64(OFF_PENDING, p.encode());
        self.page.write_u64(OFF_PENDING_FAR, far);
    }

    /// The pending resume action.
    pub fn pending(&self) -> Pending {
        Pending::decode(self.page.read_u64(OFF_PENDING))
    }

    /// A system register.
    pub fn sysreg(&self, r: SysReg) -> u64 {
        self.page
            .read_u64(OFF_SYSREGS.wrapping_add((r as u64).wrapping_mul(8)))
    }

    /// Sets a system register.
    pub fn set_sysreg(&self, r: SysReg, v: u64) {
        self.page
            .write_u64(OFF_SYSREGS.wrapping_add((r as u64).wrapping_mul(8)), v);
    }

    /// List register `n` (0 beyond the slots).
    pub fn lr(&self, n: usize) -> u64 {
        if n < isola_abi::lr::SLOTS {
            self.page.read_u64(lr_offset(n))
        } else {
            0
        }
    }

    /// Sets list register `n` (ignored beyond the slots).
    pub fn set_lr(&self, n: usize, v: u64) {
        if n < isola_abi::lr::SLOTS {
            self.page.write_u64(lr_offset(n), v);
        }
    }

    /// Makes the guest take a synchronous external abort for its pending
    /// access, as the architecture delivers one to EL1: `ESR_EL1` (data or
    /// instruction abort from the current or a lower EL, `IL`, `WnR` for a
    /// store, fault status 0x10, synchronous external abort), `FAR_EL1` =
    /// the faulting address, `ELR_EL1` = the faulting instruction,
    /// `SPSR_EL1` = PSTATE; PSTATE becomes EL1h with D, A, I, F masked,
    /// `PAN` set unless `SCTLR_EL1.SPAN`, `SSBS` from `SCTLR_EL1.DSSBS`; the
    /// PC the vector for the guest's mode at `VBAR_EL1`. The pending action
    /// is cleared. Returns `false` (changing nothing) when no faulting
    /// access is pending.
    pub fn inject_external_abort(&self) -> bool {
        let (write, fetch, stepped) = match self.pending() {
            Pending::MmioRead { .. } => (false, false, false),
            Pending::MmioWrite => (true, false, true),
            Pending::MemFault { write, fetch } => (write, fetch, false),
            Pending::None | Pending::HostReply => return false,
        };
        let far = self.page.read_u64(OFF_PENDING_FAR);
        let pstate = self.page.read_u64(OFF_PSTATE);
        let pc = self.pc();
        // A store's exit already stepped over it: the abort is taken at it.
        let elr = if stepped { pc.wrapping_sub(4) } else { pc };
        let from_el0 = pstate & 0xf == 0;
        let ec: u64 = match (fetch, from_el0) {
            (true, true) => 0x20,
            (true, false) => 0x21,
            (false, true) => 0x24,
            (false, false) => 0x25,
        };
        let wnr = if write && !fetch { 1 << 6 } else { 0 };
        let esr = ec << 26 | 1 << 25 | wnr | 0x10;
        self.set_sysreg(SysReg::FarEl1, far);
        self.take_exception(esr, elr);
        self.set_pending(Pending::None);
        true
    }

    /// Makes the guest take an Undefined Instruction exception for the
    /// instruction at its PC (a trapped access to a system register the
    /// engine neither switches nor emulates), as the architecture delivers
    /// one to EL1 where the register does not exist: `ESR_EL1` = EC 0
    /// (unknown reason), `IL`; `ELR_EL1` = the instruction; `SPSR_EL1` =
    /// PSTATE; `FAR_EL1` unchanged (UNKNOWN for this exception); PSTATE and
    /// PC as for [`Regs::inject_external_abort`].
    pub fn inject_undefined(&self) {
        self.take_exception(1 << 25, self.pc());
    }

    /// The part every synchronous exception the engine injects shares:
    /// `ESR_EL1` = `esr`, `ELR_EL1` = `elr`, `SPSR_EL1` = PSTATE; PSTATE
    /// becomes EL1h with D, A, I, F masked, `PAN` set unless
    /// `SCTLR_EL1.SPAN`, `SSBS` from `SCTLR_EL1.DSSBS`; the PC the vector
    /// for the guest's mode at `VBAR_EL1` (0x000 from EL1t, 0x200 from
    /// EL1h, 0x400 from EL0).
    fn take_exception(&self, esr: u64, elr: u64) {
        let pstate = self.page.read_u64(OFF_PSTATE);
        let vector: u64 = match pstate & 0xf {
            0b0000 => 0x400,
            0b0100 => 0x000,
            _ => 0x200,
        };
        let sctlr = self.sysreg(SysReg::SctlrEl1);
        let pan = if sctlr & SCTLR_SPAN != 0 {
            pstate & PSTATE_PAN
        } else {
            PSTATE_PAN
        };
        let ssbs = if sctlr & SCTLR_DSSBS != 0 {
            PSTATE_SSBS
        } else {
            0
        };
        self.set_sysreg(SysReg::EsrEl1, esr);
        self.set_sysreg(SysReg::ElrEl1, elr);
        self.set_sysreg(SysReg::SpsrEl1, pstate);
        self.page.write_u64(OFF_PSTATE, INITIAL_PSTATE | pan | ssbs);
        self.set_pc(self.sysreg(SysReg::VbarEl1).wrapping_add(vector));
    }

    /// Completes a pending action with the host's `value` and clears it
    /// (nothing to write when nothing is pending).
    pub fn complete_pending(&self, value: u64) {
        let word = self.page.read_u64(OFF_PENDING);
        if word == 0 {
            return;
        }
        match Pending::decode(word) {
            Pending::None | Pending::MmioWrite | Pending::MemFault { .. } => {}
            Pending::HostReply => {
                self.set_x(0, isola_abi::Status::Success.raw());
                self.set_x(1, value);
                self.set_x(2, 0);
                self.set_x(3, 0);
            }
            Pending::MmioRead {
                reg,
                size,
                sign,
                sf,
            } => {
                self.set_x(reg, mmio_read_value(value, size, sign, sf));
                // The load is complete only now: step over it.
                self.set_pc(self.pc().wrapping_add(4));
            }
        }
        self.set_pending(Pending::None);
    }
}

/// Byte offset of list register `n`.
const fn lr_offset(n: usize) -> u64 {
    OFF_LR.wrapping_add((n as u64).wrapping_mul(8))
}

/// The register value a load of `size` bytes produces from the host's
/// `value`: truncated to the access size, sign-extended if the load is
/// signed, then to the register width (`sf`: 64 bits, else 32 with the upper
/// half zeroed).
pub fn mmio_read_value(value: u64, size: u8, sign: bool, sf: bool) -> u64 {
    let bits = u32::from(size).saturating_mul(8).min(64);
    let mut v = if bits >= 64 {
        value
    } else {
        value & ((1u64 << bits).wrapping_sub(1))
    };
    if sign && bits < 64 && bits > 0 {
        let shift = 64u32.wrapping_sub(bits);
        v = (((v << shift) as i64) >> shift) as u64;
    }
    if !sf {
        v &= 0xffff_ffff;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_the_page_and_does_not_overlap() {
        const { assert!(OFF_SYSREGS + 8 * SYSREG_COUNT <= OFF_V) };
        assert_eq!(SysReg::MdscrEl1 as u64 + 1, SYSREG_COUNT);
        const { assert!(OFF_FPCR + 8 <= OFF_LR) };
        const { assert!(OFF_LR + 8 * isola_abi::lr::SLOTS as u64 <= OFF_VMCR) };
        const { assert!(OFF_VMCR + 8 <= OFF_AP0R) };
        const { assert!(OFF_AP0R + 32 <= OFF_AP1R) };
        const { assert!(OFF_AP1R + 32 <= OFF_VGIC_END) };
        const { assert!(OFF_VGIC_END <= OFF_VDISR) };
        const { assert!(OFF_VDISR + 8 <= OFF_EL2_END) };
        const { assert!(OFF_EL2_END <= OFF_PENDING) };
        const { assert!(OFF_PENDING_FAR + 8 <= crate::addr::PAGE_SIZE) };
    }

    #[test]
    fn registers_round_trip() {
        let mem = PhysMem::leak_host(PhysAddr::new(0x4000_0000), 1);
        let c = Context::new(PhysAddr::new(0x4000_0000));
        c.init(&mem, 0x8000_0000, 42);
        assert_eq!(
            (c.x(&mem, 0), c.pc(&mem), c.pstate(&mem)),
            (42, 0x8000_0000, INITIAL_PSTATE)
        );
        assert_eq!(c.sysreg(&mem, SysReg::SctlrEl1), INITIAL_SCTLR);
        c.set_x(&mem, 30, 7);
        c.set_x(&mem, 31, 9);
        assert_eq!((c.x(&mem, 30), c.x(&mem, 31)), (7, 0));
        assert_eq!(
            c.pc(&mem),
            0x8000_0000,
            "a write to XZR is not one to the PC"
        );
        let r = c.regs(&mem).unwrap();
        r.set_x(31, 9);
        assert_eq!((r.x(31), r.pc()), (0, 0x8000_0000), "nor through Regs");
        c.set_v(&mem, 31, u128::MAX - 1);
        assert_eq!(c.v(&mem, 31), u128::MAX - 1);
        assert_eq!(c.v(&mem, 30), 0);
        // There is no V32: setting it changes nothing (FPSR and FPCR follow
        // V31 in the context).
        c.set_word(&mem, OFF_FPSR, 0x0800_0010);
        c.set_word(&mem, OFF_FPCR, 0x0340_0000);
        c.set_v(&mem, 32, u128::MAX);
        assert_eq!(c.v(&mem, 32), 0);
        assert_eq!(c.fp_status(&mem), (0x0800_0010, 0x0340_0000));
        assert_eq!(c.v(&mem, 31), u128::MAX - 1);
        for p in [
            Pending::None,
            Pending::HostReply,
            Pending::MmioWrite,
            Pending::MemFault {
                write: true,
                fetch: false,
            },
            Pending::MemFault {
                write: false,
                fetch: true,
            },
            Pending::MmioRead {
                reg: 30,
                size: 8,
                sign: true,
                sf: false,
            },
        ] {
            c.set_pending(&mem, p);
            assert_eq!(c.pending(&mem), p);
        }
    }

    #[test]
    fn list_registers_beyond_the_slots_read_zero_and_ignore_writes() {
        let mem = PhysMem::leak_host(PhysAddr::new(0x4000_0000), 1);
        let c = Context::new(PhysAddr::new(0x4000_0000));
        c.init(&mem, 0x8000_0000, 1);
        // The word after the last slot is the saved ICH_VMCR_EL2.
        assert!(mem.write_u64(PhysAddr::new(0x4000_0000 + OFF_VMCR), 0x77));
        let r = c.regs(&mem).unwrap();
        let slots = isola_abi::lr::SLOTS;
        r.set_lr(slots - 1, 5);
        r.set_lr(slots, 9);
        assert_eq!((r.lr(slots - 1), r.lr(slots)), (5, 0));
        assert_eq!(
            mem.read_u64(PhysAddr::new(0x4000_0000 + OFF_VMCR)),
            Some(0x77)
        );
    }

    #[test]
    fn cpu_on_reset_keeps_only_the_list_registers() {
        let mem = PhysMem::leak_host(PhysAddr::new(0x4000_0000), 1);
        let c = Context::new(PhysAddr::new(0x4000_0000));
        c.init(&mem, 0x8000_0000, 1);
        c.set_x(&mem, 9, 99);
        c.set_sysreg(&mem, SysReg::CntvCtlEl0, 5);
        c.set_v(&mem, 3, 7);
        c.set_lrs(&mem, [isola_abi::lr::pending(27, 0, true), 0, 0, 1]);
        c.set_pending(&mem, Pending::HostReply);
        c.reset(&mem, 0x8000_1000, 0x5eed);
        assert_eq!(
            (c.pc(&mem), c.x(&mem, 0), c.x(&mem, 9)),
            (0x8000_1000, 0x5eed, 0)
        );
        assert_eq!((c.sysreg(&mem, SysReg::CntvCtlEl0), c.v(&mem, 3)), (0, 0));
        assert_eq!(c.sysreg(&mem, SysReg::SctlrEl1), INITIAL_SCTLR);
        assert_eq!(c.pending(&mem), Pending::None);
        assert_eq!(c.lrs(&mem), [isola_abi::lr::pending(27, 0, true), 0, 0, 1]);
    }

    #[test]
    fn an_injected_abort_is_what_the_architecture_delivers() {
        let mem = PhysMem::leak_host(PhysAddr::new(0x4000_0000), 1);
        let c = Context::new(PhysAddr::new(0x4000_0000));
        c.init(&mem, 0x8000_0004, 0);
        c.set_sysreg(&mem, SysReg::VbarEl1, 0x8010_0000);
        let r = c.regs(&mem).unwrap();
        assert!(!r.inject_external_abort(), "nothing pending: refused");
        // A store to MMIO from EL1h: its exit already stepped the PC.
        r.set_pending_access(Pending::MmioWrite, 0xffff_0000_0900_0008);
        assert!(r.inject_external_abort());
        assert_eq!(
            r.sysreg(SysReg::EsrEl1),
            0x25 << 26 | 1 << 25 | 1 << 6 | 0x10
        );
        assert_eq!(r.sysreg(SysReg::FarEl1), 0xffff_0000_0900_0008);
        assert_eq!(r.sysreg(SysReg::ElrEl1), 0x8000_0000);
        assert_eq!(r.sysreg(SysReg::SpsrEl1), INITIAL_PSTATE);
        assert_eq!(r.pc(), 0x8010_0200);
        assert_eq!(r.pending(), Pending::None);
        // SCTLR_EL1.SPAN set (as it starts): entry keeps PSTATE.PAN, clear.
        assert_eq!(c.pstate(&mem), INITIAL_PSTATE);
        // With SCTLR_EL1.DSSBS set, entry sets PSTATE.SSBS.
        c.set_sysreg(&mem, SysReg::SctlrEl1, INITIAL_SCTLR | SCTLR_DSSBS);
        r.inject_undefined();
        assert_eq!(
            c.pstate(&mem),
            INITIAL_PSTATE | 1 << 12,
            "PSTATE.SSBS is bit 12"
        );
        c.set_sysreg(&mem, SysReg::SctlrEl1, INITIAL_SCTLR);
        c.set_pstate(&mem, INITIAL_PSTATE);
        // An instruction fetch from EL0 with PAN clear and SPAN clear:
        // the lower-EL vector, PAN set on entry.
        c.set_pstate(&mem, 0);
        c.set_sysreg(&mem, SysReg::SctlrEl1, INITIAL_SCTLR & !SCTLR_SPAN);
        r.set_pending_access(
            Pending::MemFault {
                write: false,
                fetch: true,
            },
            0x1000,
        );
        assert!(r.inject_external_abort());
        assert_eq!(r.sysreg(SysReg::EsrEl1) >> 26, 0x20);
        assert_eq!(r.sysreg(SysReg::ElrEl1), 0x8010_0200, "not stepped back");
        assert_eq!(r.pc(), 0x8010_0400);
        // PSTATE.PAN is bit 22 (written out: the constant is what is tested).
        assert_eq!(c.pstate(&mem), INITIAL_PSTATE | 1 << 22);
    }

    #[test]
    fn an_undefined_register_is_what_the_architecture_delivers() {
        let mem = PhysMem::leak_host(PhysAddr::new(0x4000_0000), 1);
        let c = Context::new(PhysAddr::new(0x4000_0000));
        c.init(&mem, 0x8000_0040, 0);
        c.set_sysreg(&mem, SysReg::VbarEl1, 0x8010_0000);
        c.set_sysreg(&mem, SysReg::FarEl1, 0x1234);
        let r = c.regs(&mem).unwrap();
        r.set_pending(Pending::HostReply);
        r.inject_undefined();
        assert_eq!(r.sysreg(SysReg::EsrEl1), 1 << 25, "EC 0, IL");
        assert_eq!(r.sysreg(SysReg::ElrEl1), 0x8000_0040, "the instruction");
        assert_eq!(r.sysreg(SysReg::SpsrEl1), INITIAL_PSTATE);
        assert_eq!(r.sysreg(SysReg::FarEl1), 0x1234, "FAR untouched");
        assert_eq!(r.pc(), 0x8010_0200);
        assert_eq!(r.pending(), Pending::HostReply, "nothing pending changes");
        // From EL0: the lower-EL vector.
        c.set_pstate(&mem, 0);
        r.inject_undefined();
        assert_eq!(r.pc(), 0x8010_0400);
        // From EL1t (SP_EL0): the current-EL-with-SP0 vector.
        c.set_pstate(&mem, 0b0100);
        r.inject_undefined();
        assert_eq!(r.pc(), 0x8010_0000);
    }

    #[test]
    fn mmio_read_sizes_and_sign_extension() {
        // A size no syndrome gives (SAS is 1, 2, 4 or 8 bytes) reads as
        // zero, signed or not, without a shift past the register.
        for sign in [false, true] {
            assert_eq!(mmio_read_value(u64::MAX, 0, sign, true), 0);
        }
        assert_eq!(mmio_read_value(0x1234_5678_9abc_def0, 1, false, true), 0xf0);
        assert_eq!(
            mmio_read_value(0x1234_5678_9abc_def0, 1, true, true),
            0xffff_ffff_ffff_fff0
        );
        assert_eq!(
            mmio_read_value(0x1234_5678_9abc_def0, 1, true, false),
            0xffff_fff0
        );
        assert_eq!(
            mmio_read_value(0x1234_5678_9abc_def0, 2, false, false),
            0xdef0
        );
        assert_eq!(
            mmio_read_value(0x1234_5678_9abc_def0, 4, false, false),
            0x9abc_def0
        );
        assert_eq!(
            mmio_read_value(0x1234_5678_9abc_def0, 4, true, true),
            0xffff_ffff_9abc_def0
        );
        assert_eq!(
            mmio_read_value(0x1234_5678_9abc_def0, 8, true, true),
            0x1234_5678_9abc_def0
        );
        assert_eq!(mmio_read_value(0x8000_0000, 4, false, true), 0x8000_0000);
    }
}
