//! isola's EL2 image for QEMU virt.
#![no_std]
#![no_main]
