//! The machine as its device tree describes it: written once by the boot
//! CPU during bring-up, read-only afterwards by every CPU.
//!
//! Invariant: [`set_up`] runs on the boot CPU alone, before any other CPU
//! starts; [`get`] is only answered after it published the description
//! (a Release store paired with an Acquire load), and nobody writes it again.

use core::cell::UnsafeCell;

use isola_fdt::Platform;
use isola_sync::atomic::{AtomicBool, Ordering};

use crate::stop::fatal;

/// The platform description, written once by the boot CPU before any other
/// CPU runs.
struct PlatformCell(UnsafeCell<Platform>);

// SAFETY: mutated only by the boot CPU in `set_up` before `READY` is set and
// before any other CPU is started; read-only afterwards.
unsafe impl Sync for PlatformCell {}

static PLATFORM: PlatformCell = PlatformCell(UnsafeCell::new(Platform::empty()));
static READY: AtomicBool = AtomicBool::new(false);

/// Fills the description with `fill` (which stops the machine on what it
/// cannot accept) and publishes it.
///
/// # Safety
/// Only on the boot CPU, once, before any other CPU runs.
pub unsafe fn set_up(fill: impl FnOnce(&mut Platform)) -> &'static Platform {
    if READY.load(Ordering::Relaxed) {
        fatal(format_args!("the platform description was read twice"));
    }
    // SAFETY: only this CPU runs (the caller's contract), and `READY` is
    // still clear, so no reference to the platform exists yet.
    let p = unsafe { &mut *PLATFORM.0.get() };
    fill(p);
    // Release: pairs with `get`'s Acquire.
    READY.store(true, Ordering::Release);
    get()
}

/// The machine as the device tree describes it (after bring-up read it).
pub fn get() -> &'static Platform {
    // Acquire: pairs with the Release in `set_up`.
    if !READY.load(Ordering::Acquire) {
        fatal(format_args!("platform description used before it was read"));
    }
    // SAFETY: once `READY` is set nobody writes `PLATFORM` again.
    unsafe { &*PLATFORM.0.get() }
}
