//! The platform's PSCI (Arm DEN0022), called with `smc` from EL2, and the
//! relay of the host's PSCI calls.
//!
//! Invariants:
//! - Every CPU the host starts (or resumes from a power-down suspend) enters
//!   the engine's warm entry first, never the host's entry point directly:
//!   the relay passes the engine's entry and the CPU index to the firmware,
//!   and keeps the host's entry and context id in [`HOST_BOOT`].
//! - A [`HOST_BOOT`] slot is written by the CPU relaying `CPU_ON` (or by the
//!   suspending CPU itself) before the firmware call, and consumed (taken) by
//!   the target CPU in its warm entry; a slot that is still full makes a
//!   second `CPU_ON` fail with `ON_PENDING` rather than overwrite it.
//! - `CPU_SUSPEND` writes its own CPU's slot whatever it holds (a `CPU_ON`
//!   racing it will get `ALREADY_ON`). So whoever clears a slot after a
//!   failed or returned firmware call clears it only if it still holds that
//!   call's own entry ([`take_if`]; each entry names the CPU that wrote it):
//!   a `CPU_ON` rolling back never removes a suspending CPU's resume entry.

use isola_abi::psci;
use isola_sync::Mutex;

use crate::cpu;
use crate::layout::MAX_CPUS;

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
    /// A `CPU_ON` for this CPU is in progress.
    pub const ON_PENDING: i64 = -5;
}

/// `AFFINITY_INFO` result: the CPU is off.
pub const AFFINITY_OFF: i64 = 1;

/// Where a host CPU enters EL1 once the engine has set it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBoot {
    /// The host's entry point.
    pub entry: u64,
    /// The host's context id, passed in `x0`.
    pub context: u64,
    /// Index of the CPU that wrote the entry (the one relaying `CPU_ON`,
    /// or the suspending CPU itself): two calls that pass the same entry
    /// and context still write different values, so [`take_if`] cannot
    /// mistake one for the other.
    pub writer: u64,
}

/// Per-CPU pending host entry (see the module invariants). One lock for
/// all: it is taken only on the rare CPU_ON, suspend and warm entry.
pub static HOST_BOOT: Mutex<[Option<HostBoot>; MAX_CPUS]> = Mutex::new([None; MAX_CPUS]);

/// Takes CPU `index`'s pending host entry, if any.
pub fn take_pending(index: usize) -> Option<HostBoot> {
    HOST_BOOT.lock().get_mut(index).and_then(Option::take)
}

/// Clears CPU `index`'s pending host entry only if it is still `expected`
/// (the entry this caller wrote): a compare-exchange under the lock.
/// Returns whether it did.
pub fn take_if(index: usize, expected: HostBoot) -> bool {
    let mut table = HOST_BOOT.lock();
    match table.get_mut(index) {
        Some(slot) if *slot == Some(expected) => {
            *slot = None;
            true
        }
        _ => false,
    }
}

fn call(fid: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    cpu::smc(u64::from(fid), a1, a2, a3)[0] as i64
}

unsafe extern "C" {
    /// The engine's warm entry (see `main.rs`): `x0` = CPU index.
    fn isola_secondary_entry();
}

/// Physical address of the warm entry.
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

/// The host's PSCI call in `fid` with arguments `a`: what the engine does.
/// Returns the value for the host's `x0`, or does not return (CPU off,
/// system off, reset).
pub fn relay(fid: u32, a: [u64; 3]) -> i64 {
    let platform = crate::platform();
    match fid {
        psci::VERSION => call(psci::VERSION, 0, 0, 0),
        psci::FEATURES => match u32::try_from(a[0]) {
            Ok(
                f @ (psci::VERSION
                | psci::FEATURES
                | psci::CPU_ON
                | psci::CPU_OFF
                | psci::CPU_SUSPEND
                | psci::SYSTEM_OFF
                | psci::SYSTEM_RESET
                | AFFINITY_INFO
                | MIGRATE_INFO_TYPE),
            ) => call(psci::FEATURES, u64::from(f), 0, 0),
            _ => status::NOT_SUPPORTED,
        },
        psci::CPU_ON => {
            let [mpidr, entry, context] = a;
            let Some(index) = platform.cpu_index(mpidr) else {
                return status::INVALID_PARAMETERS;
            };
            let ours = HostBoot {
                entry,
                context,
                writer: cpu::cpu_index(),
            };
            {
                let mut table = HOST_BOOT.lock();
                let Some(slot) = table.get_mut(index) else {
                    return status::INVALID_PARAMETERS;
                };
                if slot.is_some() {
                    return status::ON_PENDING;
                }
                *slot = Some(ours);
            }
            let r = cpu_on(mpidr, index);
            if r != status::SUCCESS {
                // The target will not run: take back what it would have
                // consumed, but only if it is still ours. A target that is
                // already on may meanwhile have entered CPU_SUSPEND and put
                // its own resume entry in the slot: that one must stay.
                let _ = take_if(index, ours);
            }
            r
        }
        psci::CPU_OFF => {
            cpu_off();
            status::DENIED
        }
        psci::CPU_SUSPEND => {
            let [power_state, entry, context] = a;
            let index = cpu::cpu_index();
            let Ok(i) = usize::try_from(index) else {
                return status::DENIED;
            };
            let ours = HostBoot {
                entry,
                context,
                writer: index,
            };
            match HOST_BOOT.lock().get_mut(i) {
                Some(slot) => *slot = Some(ours),
                None => return status::DENIED,
            }
            let r = call(psci::CPU_SUSPEND, power_state, warm_entry(), index);
            // A standby (or refused) suspend returns here: our entry is ours
            // to clear (and only ours). A power-down suspend resumes in the
            // warm entry, which consumes it instead.
            let _ = take_if(i, ours);
            r
        }
        AFFINITY_INFO => call(AFFINITY_INFO, a[0], a[1], 0),
        MIGRATE_INFO_TYPE => call(MIGRATE_INFO_TYPE, 0, 0, 0),
        psci::SYSTEM_OFF => crate::power_off(crate::Verdict::Ok, "host called PSCI SYSTEM_OFF"),
        psci::SYSTEM_RESET => {
            crate::console::say!("host called PSCI SYSTEM_RESET");
            system_reset();
            status::DENIED
        }
        _ => status::NOT_SUPPORTED,
    }
}
