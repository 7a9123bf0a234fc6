// The guest's memory layout: plain constants only, because `build.rs`
// `include!`s this file to write the linker script, so the image and the host
// that loads it can never disagree.

/// IPA the guest image is linked at and entered at (its first byte is the
/// header, whose first word branches over it).
pub const IPA_BASE: u64 = 0x4000_0000;

/// Host physical address the image's ELF segments are loaded at by QEMU's
/// generic loader (`-device loader,file=<isola-guest ELF>`; the segments'
/// physical addresses, `p_paddr`, are set here by the linker script). The host
/// copies the image from there into the pages it donates to each VM.
pub const IMAGE_LOAD_PA: u64 = 0x7FF0_0000;

/// Largest image the loader window holds (1 MiB below the host's VM pool).
pub const IMAGE_MAX_BYTES: u64 = 0x10_0000;

/// Most vCPUs a guest VM may have: one stack each.
pub const MAX_VCPUS: u64 = 8;

/// Stack per vCPU (16 KiB), at the top of the image's memory: vCPU `i`'s stack
/// ends at `__stack_top - i * STACK_BYTES`.
pub const STACK_BYTES: u64 = 0x4000;

/// Private data the host fills with [`pattern`](crate::pattern) before donating
/// it, and the checksum behaviour hashes.
pub const DATA_IPA: u64 = 0x4010_0000;
/// Pages in the data region.
pub const DATA_PAGES: u64 = 16;

/// One page per vCPU the guest owns and shares with the host (behaviour
/// `Share`): vCPU `i` uses `SHARE_IPA + i * 4096`.
pub const SHARE_IPA: u64 = 0x4020_0000;

/// A page the host lends (`HostCall::Share`) to the guest: borrowed, so the
/// guest must not be able to share it onwards.
pub const BORROW_IPA: u64 = 0x4030_0000;

/// A code page per vCPU for the register census (`Behaviour::Census`): the
/// guest writes each `MRS`/`MSR` it probes there and runs it. The host
/// donates these pages (RWX) to census VMs only: vCPU `i` uses
/// `CENSUS_IPA + i * 4096`.
pub const CENSUS_IPA: u64 = 0x4040_0000;

/// Unmapped at start: vCPU `i` touches `DEMAND_IPA + i * 4096` and the host
/// backs it when it sees `Exit::MemFault` there.
pub const DEMAND_IPA: u64 = 0x4100_0000;

/// End of the window where the host backs memory faults with fresh pages
/// (from `IPA_BASE`); a fault outside it stops the vCPU. It reaches past the
/// host's own RAM on purpose: a guest that names another VM's (or the
/// engine's) physical address gets a fresh page of its own there.
pub const DEMAND_LIMIT: u64 = 0xC000_0000;

/// The emulated console: a byte written to `CONSOLE_IPA + CONSOLE_DATA` is a
/// character; a read of `CONSOLE_IPA + CONSOLE_COUNTER` returns a per-VM value
/// that increases by one on every read. It lies in the engine's guest MMIO
/// window, `[0xC000_0000, 0x1_0000_0000)` (boot/src/engine.rs): an access
/// there exits to the host as `Exit::Mmio`; anywhere else unmapped it is a
/// `MemFault`.
pub const CONSOLE_IPA: u64 = 0xC000_0000;
/// Offset of the console's data register (write, 1 byte).
pub const CONSOLE_DATA: u64 = 0x0;
/// Offset of the console's counter register (read, 8 bytes).
pub const CONSOLE_COUNTER: u64 = 0x8;
