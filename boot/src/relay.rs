//! The relay of the host's PSCI calls (a trapped host `smc`): which the
//! engine passes to the firmware, which it answers itself, and how a CPU the
//! host starts comes through the engine first.
//!
//! Invariants:
//! - Every CPU the host starts (or resumes from a power-down suspend) enters
//!   the engine's warm entry first, never the host's entry point directly:
//!   the relay passes the engine's entry and the CPU index to the firmware,
//!   and keeps the host's entry and context id in [`HOST_BOOT`].
//! - A [`HOST_BOOT`] slot is written by the CPU relaying `CPU_ON` (or by the
//!   suspending CPU itself) before the firmware call, and consumed (taken) by
//!   the target CPU in its warm entry; a slot that is still full makes a
//!   second `CPU_ON` fail rather than overwrite it: with `ON_PENDING` if
//!   another `CPU_ON` wrote it, `ALREADY_ON` if the target itself did (it
//!   is on, suspending).
//! - `CPU_SUSPEND` writes its own CPU's slot whatever it holds (a `CPU_ON`
//!   racing it will get `ALREADY_ON`). So whoever clears a slot after a
//!   failed or returned firmware call clears it only if it still holds that
//!   call's own entry ([`take_if`]; each entry names the CPU that wrote it):
//!   a `CPU_ON` rolling back never removes a suspending CPU's resume entry.
//!
//! `HOST_BOOT` is not a per-CPU slot of `isola-percpu`: the CPU relaying
//! `CPU_ON` writes the *target's* entry, so it is shared, behind one lock.

use isola_abi::psci;
use isola_layout::MAX_CPUS;
use isola_sync::Mutex;

use crate::console::say;
use crate::psci::{AFFINITY_INFO, MIGRATE_INFO_TYPE, call, cpu_off, cpu_on, status};
use crate::stop::{Verdict, power_off};
use crate::{cpu, platform};

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
    pub writer: u32,
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

/// Whether `fid` is in PSCI's function-number ranges (SMC32 and SMC64,
/// `0x00..=0x1f`).
pub fn is_psci(fid: u32) -> bool {
    matches!(fid & !0x1f, 0x8400_0000 | 0xC400_0000)
}

/// The host's PSCI call in `fid` with arguments `a`: what the engine does.
/// Returns the value for the host's `x0`, or does not return (CPU off,
/// system off, reset).
pub fn relay(fid: u32, a: [u64; 3]) -> i64 {
    let platform = platform::get();
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
                writer: cpu::index(),
            };
            {
                let mut table = HOST_BOOT.lock();
                let Some(slot) = table.get_mut(index) else {
                    return status::INVALID_PARAMETERS;
                };
                match slot {
                    // The target wrote it: it is on, suspending (PSCI's
                    // answer for a CPU that is on, suspended or not).
                    Some(b) if b.writer as usize == index => return status::ALREADY_ON,
                    // Another CPU_ON of it is under way.
                    Some(_) => return status::ON_PENDING,
                    None => *slot = Some(ours),
                }
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
            let index = cpu::index();
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
            let r = call(
                psci::CPU_SUSPEND,
                power_state,
                crate::psci::warm_entry(),
                u64::from(index),
            );
            // A standby (or refused) suspend returns here: our entry is ours
            // to clear (and only ours). A power-down suspend resumes in the
            // warm entry, which consumes it instead.
            let _ = take_if(i, ours);
            r
        }
        AFFINITY_INFO => call(AFFINITY_INFO, a[0], a[1], 0),
        MIGRATE_INFO_TYPE => call(MIGRATE_INFO_TYPE, 0, 0, 0),
        psci::SYSTEM_OFF => power_off(Verdict::Ok, "host called PSCI SYSTEM_OFF"),
        psci::SYSTEM_RESET => {
            say!("host called PSCI SYSTEM_RESET");
            crate::psci::system_reset();
            status::DENIED
        }
        _ => status::NOT_SUPPORTED,
    }
}
