//! The seam to the portable core (`isola`): initialisation, the host's
//! Stage-2, hypercalls and host aborts. Every decision is the core's.
//!
//! (Bring-up stage: the core's dispatcher and abort policy are not yet
//! integrated; until they are, the host runs without Stage-2, every
//! hypercall answers `NotSupported` and every Stage-2 abort injects an SEA.)

use isola_abi::Status;

use crate::exception::TrapFrame;
use crate::fdt::Platform;
use crate::layout::Sections;
use crate::trap::AbortAction;

/// Initialises the core with the machine's memory.
pub fn init(_p: &Platform, _s: &Sections) -> Result<(), &'static str> {
    Ok(())
}

/// Installs the host's Stage-2 on this CPU; returns the HCR_EL2 value.
pub fn prepare_host_cpu() -> Result<u64, &'static str> {
    Ok(crate::host::HCR_HOST)
}

/// A host `hvc`.
pub fn host_hypercall(frame: &mut TrapFrame) {
    frame.set_reg(0, Status::NotSupported.raw());
}

/// A host Stage-2 abort.
pub fn host_abort(_ipa: u64, _write: bool, _exec: bool, _esr: u64) -> AbortAction {
    AbortAction::InjectSea
}
