//! A small virtual-machine monitor over isola's ABI: what a host needs,
//! besides the engine, to boot an unmodified arm64 Linux kernel as a guest.
//!
//! The engine keeps the guest's memory and registers; this crate holds the
//! host's part, which is all device emulation and bookkeeping:
//!
//! | module | owns |
//! |---|---|
//! | [`layout`] | the guest's physical map: RAM, the GICv3 frames and the UART inside the engine's guest MMIO window |
//! | [`fdt`] | the device tree the kernel boots with |
//! | [`loader`] | the arm64 `Image` header, where kernel, initramfs and device tree go, the boot registers |
//! | [`pl011`] | an emulated PL011 UART (the guest's console) |
//! | [`gic`] | a GICv3 distributor and redistributors, and which interrupts go into each vCPU's list registers |
//! | [`vm`] | one guest: exits in, actions out (MMIO, PSCI's runnable vCPUs, SGIs, the timer, interrupt injection) |
//!
//! Portable and `no_std` (with `alloc`): it never touches hardware and
//! never calls the engine itself. The caller (the bare-metal test host, or a
//! Linux-host VMM later) issues the hypercalls, feeds every exit to
//! [`vm::Vm::exit`] and hands the engine what [`vm::Vm::list_registers`]
//! says before each run.
//!
//! Invariants: guest-controlled values (MMIO addresses, sizes and data, SGI
//! targets, PSCI arguments as the engine reports them) are never trusted:
//! every access is bounds-checked and an unknown register reads as zero, so
//! a guest can neither crash the VMM nor reach another guest's devices.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod fdt;
pub mod gic;
pub mod layout;
pub mod loader;
pub mod pl011;
pub mod vm;
