//! The generic timer as EL2 controls it: the host owns the physical timer
//! and counter; a guest gets the virtual timer and may only read the
//! physical counter.

use crate::sysreg::{CNTHCTL_EL2, Value};

/// `CNTHCTL_EL2` for the host: `EL1PCTEN` and `EL1PCEN`, the physical
/// counter and timer are the host's.
pub const CNTHCTL_HOST: Value<CNTHCTL_EL2::Register> =
    Value::new(&[CNTHCTL_EL2::EL1PCTEN::SET, CNTHCTL_EL2::EL1PCEN::SET]);

/// `CNTHCTL_EL2` while a guest runs: `EL1PCTEN` only, so the guest may
/// read the physical counter (time is not a secret here) but any access to
/// the physical timer (`EL1PCEN` clear) traps: that timer is the host's.
/// The guest uses the virtual timer, offset by its `CNTVOFF_EL2`.
pub const CNTHCTL_GUEST: Value<CNTHCTL_EL2::Register> = Value::new(&[CNTHCTL_EL2::EL1PCTEN::SET]);

/// `CNTVOFF_EL2` (a register without fields) for the host: its virtual counter is the physical one.
pub const CNTVOFF_HOST: Value<()> = Value::raw(0);

/// `CNTVOFF_EL2` while a guest runs. The core's context has no per-vCPU
/// offset yet, so a guest's virtual counter reads the physical count; what
/// matters for isolation is that the host's own offset is never shown.
pub const CNTVOFF_GUEST: Value<()> = Value::raw(0);
