//! isola's test guest: one image, run at EL1 in a VM with the MMU off, whose
//! behaviour the host picks with the `x0` it gives each vCPU (see the
//! library's `Behaviour`).
//!
//! With the MMU off every data access is Device-nGnRnE: no exclusives or
//! atomics (there are none here) and only aligned accesses (the target is
//! `strict-align`). Each vCPU runs on its own stack, found from its index
//! (`GuestCall::Info`) before any Rust code runs; the guest keeps no mutable
//! statics, so vCPUs share nothing but the data region they only read.
//!
//! The guest's own EL1 vectors catch the exceptions a probe provokes at
//! stage 1 (a probe arms them by setting `TPIDR_EL1` to 1; the handler stores
//! `ESR_EL1 | 1 << 63` there and skips the instruction). Any other exception
//! is reported as `msg::FATAL` and the vCPU turns off. Stage-2 faults never
//! reach the guest: they exit to the host.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
#[allow(
    unsafe_code,
    reason = "the guest program: its entry, vectors, hypercalls and probes are the CPU's"
)]
mod guest;

#[cfg(target_os = "none")]
#[allow(
    unsafe_code,
    reason = "the census writes the instructions it probes and runs them behind its own vectors"
)]
mod census;

/// On the build machine the binary is empty: only the library (the protocol)
/// has meaning there.
#[cfg(not(target_os = "none"))]
fn main() {}
