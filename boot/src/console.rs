//! The engine's console: a PL011 UART behind a lock, one whole line per lock
//! hold, so lines from different CPUs never interleave.
//!
//! Invariants:
//! - Every line is formatted and written while the console lock is held.
//! - Only the fatal path ([`emergency_line`]) may write without the lock, and
//!   only after failing to take it for a bounded time (the holder may be the
//!   CPU that faulted). It is about to power the machine off.

use core::fmt::{self, Write};

use isola_sync::Mutex;
use isola_sync::atomic::{AtomicU64, Ordering};

/// QEMU virt's PL011, used until the device tree names the UART (so that a
/// tree the engine cannot parse can still be reported).
pub const EARLY_UART: u64 = isola_layout::VIRT_UART;

/// PL011 data register.
const UARTDR: u64 = 0x000;
/// PL011 flag register.
const UARTFR: u64 = 0x018;
/// UARTFR: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;

/// A PL011 at a device-mapped address.
struct Pl011 {
    base: u64,
}

impl Pl011 {
    fn put(&self, byte: u8) {
        let fr = self.base.wrapping_add(UARTFR) as *const u32;
        let dr = self.base.wrapping_add(UARTDR) as *mut u32;
        // SAFETY: `base` is the PL011 named by the device tree (or QEMU
        // virt's fixed one), mapped as device memory in the EL2 stage-1 map;
        // the registers are 32-bit and aligned. Access is serialised by the
        // console lock (or by the fatal path, which owns the machine).
        unsafe {
            while core::ptr::read_volatile(fr) & FR_TXFF != 0 {
                isola_sync::spin_hint();
            }
            core::ptr::write_volatile(dr, u32::from(byte));
        }
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

static CONSOLE: Mutex<()> = Mutex::new(());
/// The UART's base address; written once by the boot CPU when the device
/// tree has been read, before any other CPU runs.
static UART_BASE: AtomicU64 = AtomicU64::new(EARLY_UART);

/// Switches the console to the UART the device tree names.
pub fn set_uart(base: u64) {
    let _guard = lock_console();
    // Relaxed: written under the console lock, read under it too.
    UART_BASE.store(base, Ordering::Relaxed);
}

/// Takes the console lock without joining its queue: spin until it is free
/// and take it then. With many more vCPUs than host cores (QEMU TCG), a FIFO
/// queue hands the lock to waiters that are not running and everyone waits a
/// scheduler slice per line; whoever runs when the lock is free takes it
/// instead. (Unfair in principle; a line is short and every CPU prints few.)
fn lock_console() -> isola_sync::MutexGuard<'static, ()> {
    loop {
        if let Some(guard) = CONSOLE.try_lock() {
            return guard;
        }
        while CONSOLE.is_locked() {
            isola_sync::spin_hint();
        }
    }
}

/// Writes one line (the arguments, then a newline) under the console lock.
pub fn line(args: fmt::Arguments<'_>) {
    let _guard = lock_console();
    let mut uart = Pl011 {
        base: UART_BASE.load(Ordering::Relaxed),
    };
    // Pl011 never fails; a formatting error of a Display impl is dropped.
    let _ = uart.write_fmt(args);
    let _ = uart.write_str("\n");
}

/// Writes one line from the fatal path: takes the lock if it can within a
/// bounded spin, otherwise writes anyway (the machine is going down).
pub fn emergency_line(args: fmt::Arguments<'_>) {
    let mut guard = None;
    for _ in 0..1_000_000_u32 {
        guard = CONSOLE.try_lock();
        if guard.is_some() {
            break;
        }
        isola_sync::spin_hint();
    }
    let mut uart = Pl011 {
        base: UART_BASE.load(Ordering::Relaxed),
    };
    if guard.is_none() {
        // The holder may be mid-line: start a fresh one.
        let _ = uart.write_str("\n");
    }
    let _ = uart.write_fmt(args);
    let _ = uart.write_str("\n");
    drop(guard);
}

/// Prints one line on the engine console, prefixed `isola: `.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::line(format_args!("isola: {}", format_args!($($arg)*)))
    };
}
pub(crate) use say;
