//! Virtual interrupts: what the engine accepts in a vCPU's list registers,
//! and what an exit tells the host about them and about the guest's timer.
//!
//! The host emulates the distributor and redistributors; the engine only
//! presents, through the GICv3 virtual CPU interface, the interrupts the
//! host put in the vCPU's list registers (`HostCall::VcpuInterrupts`), and
//! reports back what the guest did with them. Everything here is a pure
//! function of the list-register words and the guest's `CNTV_CTL_EL0`, so it
//! is tested without a GIC.
//!
//! Invariants:
//! - A list register holds 0 or a word [`isola_abi::lr::acceptable`] allows
//!   (no LPI, no `HW` bit: no physical interrupt ever reaches a guest), and
//!   no two valid registers of a vCPU carry the same vINTID (the
//!   architecture leaves that UNPREDICTABLE). The host can write nothing
//!   else ([`check_lrs`]); the hardware only changes state bits.
//! - A register the guest has deactivated with `EOI` set (the only way a
//!   non-zero word reaches the invalid state) is reported once, then
//!   cleared ([`take_eoi_completions`]), so its maintenance interrupt does
//!   not fire again.
//! - The guest's virtual timer is masked for a run exactly when the last
//!   exit saw its interrupt asserted ([`vtimer_asserted`]): the host was
//!   told, and injects it, so the physical timer interrupt must not keep
//!   ending the guest's turn; as soon as an exit sees it deasserted (the
//!   guest re-armed or masked its timer) it is unmasked again.

use isola_abi::{ExitStatus, LrState, Status, lr};

use crate::addr::PhysAddr;
use crate::arch::Arch;
use crate::engine::Engine;
use crate::vcpu::{Context, VcpuState};

/// `CNTV_CTL_EL0.ENABLE`.
pub const CNTV_ENABLE: u64 = 1;
/// `CNTV_CTL_EL0.IMASK`.
pub const CNTV_IMASK: u64 = 1 << 1;
/// `CNTV_CTL_EL0.ISTATUS`.
pub const CNTV_ISTATUS: u64 = 1 << 2;

/// `InvalidArgument` unless `lrs` may be given to a vCPU on an engine with
/// `count` usable list registers: every word acceptable, zero from `count`
/// on, and no vINTID twice among the non-zero words.
pub fn check_lrs(lrs: &[u64; lr::SLOTS], count: usize) -> Result<(), Status> {
    for (n, &w) in lrs.iter().enumerate() {
        if !lr::acceptable(w) || (n >= count && w != 0) {
            return Err(Status::InvalidArgument);
        }
        let twice = lrs
            .iter()
            .skip(n.saturating_add(1))
            .any(|&o| w != 0 && o != 0 && lr::intid(o) == lr::intid(w));
        if twice {
            return Err(Status::InvalidArgument);
        }
    }
    Ok(())
}

/// Whether the guest deactivated this register's interrupt with `EOI` set:
/// a non-zero word in the invalid state with `EOI` (and not `HW`).
pub const fn eoi_completed(word: u64) -> bool {
    word != 0 && word >> 62 == 0 && word & lr::EOI != 0 && word & lr::HW == 0
}

/// Clears every register whose interrupt completed with `EOI` (see
/// [`eoi_completed`]) and returns how many there were.
pub fn take_eoi_completions(lrs: &mut [u64; lr::SLOTS]) -> usize {
    let mut n = 0usize;
    for w in lrs.iter_mut() {
        if eoi_completed(*w) {
            *w = 0;
            n = n.saturating_add(1);
        }
    }
    n
}

/// Whether the guest's virtual timer interrupt is asserted: enabled, its
/// condition met and not masked by the guest.
pub const fn vtimer_asserted(cntv_ctl: u64) -> bool {
    cntv_ctl & (CNTV_ENABLE | CNTV_IMASK | CNTV_ISTATUS) == CNTV_ENABLE | CNTV_ISTATUS
}

/// The guest's timer deadline, if its timer is armed (enabled, unmasked).
pub const fn vtimer_deadline(cntv_ctl: u64, cntv_cval: u64) -> Option<u64> {
    if cntv_ctl & (CNTV_ENABLE | CNTV_IMASK) == CNTV_ENABLE {
        Some(cntv_cval)
    } else {
        None
    }
}

/// What an exit reports: each register's state and the timer's level.
pub fn exit_status(lrs: &[u64; lr::SLOTS], cntv_ctl: u64) -> ExitStatus {
    ExitStatus {
        vtimer: vtimer_asserted(cntv_ctl),
        lrs: core::array::from_fn(|n| lrs.get(n).map_or(LrState::Invalid, |&w| lr::state(w))),
    }
}

impl<A: Arch> Engine<A> {
    /// `VcpuInterrupts(handle, index, lrs)`: checks every word, then the
    /// vCPU, and replaces its list registers. Check order: format
    /// (`InvalidArgument`), handle and index (`NotFound`), loaded (`Busy`).
    /// The vCPU is loaded nowhere and we hold its VM's lock, so its context
    /// is ours to write.
    pub fn vcpu_interrupts(
        &self,
        handle: u64,
        index: u64,
        lrs: [u64; lr::SLOTS],
    ) -> Result<[u64; 3], Status> {
        check_lrs(&lrs, self.list_regs())?;
        let (_, g) = self.lock_vm(handle)?;
        if index >= u64::from(g.max_vcpus) {
            return Err(Status::NotFound);
        }
        let v = usize::try_from(index)
            .ok()
            .and_then(|i| g.vcpus.get(i).copied())
            .ok_or(Status::NotFound)?;
        match v.state {
            VcpuState::Absent => return Err(Status::NotFound),
            VcpuState::Loaded(_) => return Err(Status::Busy),
            _ => {}
        }
        Context::new(PhysAddr::new(v.ctx)).set_lrs(&self.mem, lrs);
        Ok([0; 3])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = lr::PENDING;

    #[test]
    fn list_registers_are_checked_whole() {
        let ok = [lr::pending(27, 0xa0, true), lr::pending(33, 0, false), 0, 0];
        assert_eq!(check_lrs(&ok, 4), Ok(()));
        assert_eq!(check_lrs(&ok, 2), Ok(()));
        // Beyond the engine's count: refused, even though valid.
        assert_eq!(check_lrs(&ok, 1), Err(Status::InvalidArgument));
        assert_eq!(check_lrs(&[0; 4], 0), Ok(()));
        // The same vINTID twice, in any two registers.
        let dup = [P | 40, 0, 0, lr::ACTIVE | 40];
        assert_eq!(check_lrs(&dup, 4), Err(Status::InvalidArgument));
        // One bad word spoils the call.
        let lpi = [P | 33, P | 8192, 0, 0];
        assert_eq!(check_lrs(&lpi, 4), Err(Status::InvalidArgument));
        let hw = [P | lr::HW | 27 | 27 << 32, 0, 0, 0];
        assert_eq!(check_lrs(&hw, 4), Err(Status::InvalidArgument));
        let invalid_with_content = [lr::EOI | 27, 0, 0, 0];
        assert_eq!(
            check_lrs(&invalid_with_content, 4),
            Err(Status::InvalidArgument)
        );
    }

    #[test]
    fn eoi_completions_are_reported_once() {
        let done = lr::EOI | lr::GROUP1 | 27;
        let mut lrs = [done, P | 33, lr::ACTIVE | lr::EOI | 34, 0];
        assert!(eoi_completed(done));
        assert!(!eoi_completed(P | lr::EOI | 33));
        assert!(!eoi_completed(lr::GROUP1 | 33), "no EOI requested");
        assert_eq!(take_eoi_completions(&mut lrs), 1);
        assert_eq!(lrs, [0, P | 33, lr::ACTIVE | lr::EOI | 34, 0]);
        assert_eq!(take_eoi_completions(&mut lrs), 0);
    }

    #[test]
    fn the_timer_level_follows_enable_istatus_and_imask() {
        assert!(vtimer_asserted(CNTV_ENABLE | CNTV_ISTATUS));
        assert!(!vtimer_asserted(CNTV_ENABLE | CNTV_ISTATUS | CNTV_IMASK));
        assert!(!vtimer_asserted(CNTV_ISTATUS));
        assert!(!vtimer_asserted(CNTV_ENABLE));
        assert_eq!(vtimer_deadline(CNTV_ENABLE, 77), Some(77));
        assert_eq!(vtimer_deadline(CNTV_ENABLE | CNTV_ISTATUS, 77), Some(77));
        assert_eq!(vtimer_deadline(CNTV_ENABLE | CNTV_IMASK, 77), None);
        assert_eq!(vtimer_deadline(0, 77), None);
    }

    #[test]
    fn exit_status_reads_the_state_bits() {
        let lrs = [P | 1, lr::ACTIVE | 2, P | lr::ACTIVE | 3, lr::EOI | 4];
        let s = exit_status(&lrs, CNTV_ENABLE | CNTV_ISTATUS);
        assert!(s.vtimer);
        assert_eq!(
            s.lrs,
            [
                LrState::Pending,
                LrState::Active,
                LrState::PendingActive,
                LrState::Invalid
            ]
        );
    }
}
