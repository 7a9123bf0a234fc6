//! The host's console: the PL011 the device tree names, written one whole
//! line at a time under a lock, so lines from different CPUs never
//! interleave; and the count of checks that failed, which the verdict reads.
//!
//! Invariant: every line is written while the console lock is held, except
//! the report of an unexpected exception ([`emergency_line`]), which takes the
//! lock if it can within a bounded spin (this CPU may hold it already) and
//! then writes anyway.

use core::fmt::{self, Write};

use isola_sync::Mutex;
use isola_sync::atomic::{AtomicU64, Ordering};

/// The PL011 the device tree names (QEMU virt's until it is read).
static UART: AtomicU64 = AtomicU64::new(isola_layout::VIRT_UART);
/// Held while a line is written.
static LOCK: Mutex<()> = Mutex::new(());
/// Checks that went wrong, in every test of the run.
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// Moves the console to the PL011 at `base` (before any other CPU runs).
pub fn set_uart(base: u64) {
    UART.store(base, Ordering::Relaxed);
}

struct Pl011;

fn put(byte: u8) {
    let base = UART.load(Ordering::Relaxed);
    // SAFETY: the PL011's flag and data registers, device-mapped by the
    // host's stage-1 map; the console lock (or the emergency path, which
    // owns the machine) serialises the writers.
    unsafe {
        while core::ptr::read_volatile(base.wrapping_add(0x18) as *const u32) & (1 << 5) != 0 {}
        core::ptr::write_volatile(base as *mut u32, u32::from(byte));
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

/// Takes the console lock without joining its queue: with more CPUs than
/// QEMU has host threads, a FIFO queue would hand the lock to CPUs that are
/// not running (the engine's console does the same).
fn lock() -> isola_sync::MutexGuard<'static, ()> {
    loop {
        if let Some(guard) = LOCK.try_lock() {
            return guard;
        }
        while LOCK.is_locked() {
            isola_sync::spin_hint();
        }
    }
}

/// Writes `host: <args>` as one line.
pub fn line(args: fmt::Arguments<'_>) {
    let _guard = lock();
    let _ = Pl011.write_fmt(format_args!("host: {args}\n"));
}

/// Writes `host: <args>` from the report of an unexpected exception.
pub fn emergency_line(args: fmt::Arguments<'_>) {
    let mut guard = None;
    for _ in 0..1_000_000_u32 {
        guard = LOCK.try_lock();
        if guard.is_some() {
            break;
        }
        isola_sync::spin_hint();
    }
    let _ = Pl011.write_fmt(format_args!("host: {args}\n"));
    drop(guard);
}

/// Prints one line on the host console, prefixed `host: `.
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::line(format_args!($($arg)*)) };
}
pub(crate) use say;

/// Counts a failed check and says what failed.
pub fn fail(args: fmt::Arguments<'_>) {
    FAILURES.fetch_add(1, Ordering::Relaxed);
    say!("check failed: {args}");
}

/// Failed checks so far.
pub fn failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}
