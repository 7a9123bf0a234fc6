//! The only ways the engine stops: the host's clean power-off, and a fatal
//! error, each reported on the console and then the machine powered off
//! through PSCI (or, if the firmware refuses, the CPU parked).
//!
//! Invariant: every failure the engine cannot recover from, at boot or
//! later, in Rust or in a vector, goes through [`fatal`]: one line naming
//! it, one line with the failure status, power off. Nothing in the image
//! reaches core's panic machinery (`cargo xtask test` disassembles the image
//! and fails on any call into it); the panic handler exists because `no_std`
//! requires one.

use core::fmt;

use crate::{console, cpu, psci, smmu};

/// How the run ended, as the final console line states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The host powered the machine off, the engine saw nothing wrong.
    Ok,
    /// The engine stopped on an error.
    Failure,
}

/// Prints the final status line and powers the machine off. The harness
/// (xtask's console judge) reads that line as the run's exit status.
pub fn power_off(verdict: Verdict, why: &str) -> ! {
    let status = match verdict {
        Verdict::Ok => "ok",
        Verdict::Failure => "failure",
    };
    // The last DMA faults the SMMU recorded, before the verdict.
    let _ = smmu::faults();
    console::line(format_args!(
        "isola: power off ({why}); exit status: {status}"
    ));
    psci::system_off();
    // The firmware refused: nothing else can stop the machine.
    cpu::halt()
}

/// Reports a fatal engine error and powers the machine off with a failure
/// status. Usable from any state (it does not need the console lock).
#[cold]
pub fn fatal(args: fmt::Arguments<'_>) -> ! {
    cpu::mask_all();
    console::emergency_line(format_args!("isola: FATAL on cpu {}: {args}", cpu::index()));
    console::emergency_line(format_args!(
        "isola: power off (fatal error); exit status: failure"
    ));
    psci::system_off();
    cpu::halt()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fatal(format_args!("panic: {info}"))
}
