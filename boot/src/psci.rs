//! The platform firmware's PSCI (Arm DEN0022), called with `smc` from EL2:
//! the engine's own calls. The relay of the host's PSCI calls, which uses
//! these, is `relay.rs`.

use isola_abi::psci;

use crate::cpu;

/// PSCI `AFFINITY_INFO` (SMC64).
pub const AFFINITY_INFO: u32 = 0xC400_0004;
/// PSCI `MIGRATE_INFO_TYPE`.
pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;

/// PSCI return codes.
pub mod status {
    /// Success.
    pub const SUCCESS: i64 = 0;
    /// Not supported.
    pub const NOT_SUPPORTED: i64 = -1;
    /// Invalid parameters.
    pub const INVALID_PARAMETERS: i64 = -2;
    /// Denied.
    pub const DENIED: i64 = -3;
    /// The CPU is already on.
    pub const ALREADY_ON: i64 = -4;
    /// A `CPU_ON` for this CPU is in progress.
    pub const ON_PENDING: i64 = -5;
}

/// `AFFINITY_INFO` result: the CPU is off.
pub const AFFINITY_OFF: i64 = 1;

/// A PSCI call with function id `fid`; returns the firmware's `x0`.
pub fn call(fid: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    cpu::smc(u64::from(fid), a1, a2, a3)[0] as i64
}

unsafe extern "C" {
    /// The engine's warm entry (`entry.rs`): `x0` = CPU index.
    fn isola_secondary_entry();
}

/// Physical address of the engine's warm entry, where every CPU the
/// firmware starts or resumes enters first.
pub fn warm_entry() -> u64 {
    isola_secondary_entry as *const () as u64
}

/// Starts CPU `index` (MPIDR `mpidr`) at the engine's warm entry.
pub fn cpu_on(mpidr: u64, index: usize) -> i64 {
    call(psci::CPU_ON, mpidr, warm_entry(), index as u64)
}

/// Turns this CPU off; returns only if the firmware refuses.
pub fn cpu_off() -> i64 {
    call(psci::CPU_OFF, 0, 0, 0)
}

/// `AFFINITY_INFO` for one CPU (level 0).
pub fn affinity_info(mpidr: u64) -> i64 {
    call(AFFINITY_INFO, mpidr, 0, 0)
}

/// Powers the machine off; returns only if the firmware refuses.
pub fn system_off() -> i64 {
    call(psci::SYSTEM_OFF, 0, 0, 0)
}

/// Resets the machine; returns only if the firmware refuses.
pub fn system_reset() -> i64 {
    call(psci::SYSTEM_RESET, 0, 0, 0)
}
