//! isola's memory plan on QEMU virt, in one place: every constant that the
//! EL2 image (`boot/`), the test payloads (`payloads/`), the device-tree
//! reader (`fdt/`), the per-CPU slots (`percpu/`) and xtask must agree on.
//!
//! Plain constants only, so a build script can read them too: `boot/build.rs`
//! and `payloads/host/build.rs` write the linker-script symbols from them,
//! so the image, its linker script and the tools that load it cannot
//! disagree. docs/boot.md draws the memory map.
//!
//! Invariants:
//! - `[CARVEOUT_BASE, CARVEOUT_END)` is the engine's: QEMU's device tree, the
//!   EL2 image ([`ENGINE_IMAGE_BASE`] upwards), its stacks, tables and the
//!   pool the core allocates from. The host never sees it: its device tree
//!   starts RAM at [`CARVEOUT_END`].
//! - Everything from [`CARVEOUT_END`] to the end of RAM is the host's; the
//!   host payload is linked at [`HOST_ENTRY`], above the host's device tree
//!   ([`HOST_DTB`], at most [`HOST_DTB_MAX`] bytes).
#![no_std]
#![forbid(unsafe_code)]

/// Most CPUs isola runs on: QEMU virt's limit with GICv3. The EL2 image has
/// stacks for this many, a device-tree `Platform` records this many, and
/// every per-CPU table has this many slots.
pub const MAX_CPUS: usize = 512;

/// Start of RAM on QEMU virt.
pub const RAM_BASE: u64 = 0x4000_0000;

/// QEMU virt's first PL011 UART: the console until the device tree names it.
pub const VIRT_UART: u64 = 0x0900_0000;

/// First byte of the engine's carve-out: the start of RAM, where QEMU also
/// places its device tree.
pub const CARVEOUT_BASE: u64 = RAM_BASE;
/// End (exclusive) of the engine's carve-out: 64 MiB.
pub const CARVEOUT_END: u64 = 0x4400_0000;

/// Where the EL2 image is linked and loaded (QEMU's `-kernel`): 2 MiB into
/// RAM, so QEMU finds room for its device tree below it.
pub const ENGINE_IMAGE_BASE: u64 = 0x4020_0000;

/// Bytes of one CPU's EL2 stack.
pub const ENGINE_STACK_SIZE: u64 = 0x4000;
/// Unmapped bytes below each EL2 stack: an overflow faults instead of
/// corrupting the neighbour's stack.
pub const ENGINE_GUARD_SIZE: u64 = 0x1000;
/// One CPU's slot in the EL2 stack area: its guard page, then its stack.
pub const ENGINE_STACK_SLOT: u64 = ENGINE_GUARD_SIZE + ENGINE_STACK_SIZE;
/// One CPU's EL2 emergency stack, used only to report a fatal exception.
pub const ENGINE_EMERGENCY_SLOT: u64 = 0x1000;
/// Bytes of one CPU's record, which its `TPIDR_EL2` points to: the core's
/// `CpuStats` (the CPU's index, then its event counters). The image keeps
/// [`MAX_CPUS`] of them side by side; boot checks at compile time that the
/// type is exactly this size, so they form one array.
pub const ENGINE_CPU_RECORD: u64 = 0x180;

/// Where the engine writes the host's copy of the device tree (the first
/// page of host RAM).
pub const HOST_DTB: u64 = CARVEOUT_END;
/// Most bytes the host's device tree may take: it must end below the host
/// payload.
pub const HOST_DTB_MAX: u64 = 0x0100_0000;
/// The host's entry point: the test host payload is linked here and loaded by
/// QEMU's generic loader; a Linux host's `Image` is loaded here too.
pub const HOST_ENTRY: u64 = 0x4800_0000;
/// Bytes of one CPU's stack in the test host payload.
pub const HOST_PAYLOAD_STACK: u64 = 0x4000;

const _: () = assert!(HOST_DTB + HOST_DTB_MAX <= HOST_ENTRY);
const _: () = assert!(CARVEOUT_BASE < ENGINE_IMAGE_BASE && ENGINE_IMAGE_BASE < CARVEOUT_END);

/// Where `cargo xtask guest` (QEMU's generic loader, raw bytes) puts the
/// Linux guest's kernel `Image` in host RAM, for the test host to copy into
/// the pages it donates to the guest (docs/guests.md, "A Linux guest"). Its
/// length is on the host's command line (`isola.linux=`).
pub const GUEST_KERNEL_STAGE: u64 = 0x5800_0000;
/// Most bytes the staged kernel may take: it must end below the initramfs.
pub const GUEST_KERNEL_MAX: u64 = 0x0400_0000;
/// Where the Linux guest's initramfs is staged, likewise.
pub const GUEST_INITRD_STAGE: u64 = GUEST_KERNEL_STAGE + GUEST_KERNEL_MAX;
/// Most bytes the staged initramfs may take: it must end below the heap.
pub const GUEST_INITRD_MAX: u64 = 0x0200_0000;
/// The test host's heap (its VMM's device models, device trees, console
/// buffers): `[HOST_HEAP_BASE, HOST_HEAP_END)`, host RAM nothing else uses.
pub const HOST_HEAP_BASE: u64 = GUEST_INITRD_STAGE + GUEST_INITRD_MAX;
/// End (exclusive) of the test host's heap: 32 MiB.
pub const HOST_HEAP_END: u64 = HOST_HEAP_BASE + 0x0200_0000;
/// The host RAM the test host donates to Linux guests (their RAM and their
/// VM pools): `[LINUX_POOL_BASE, LINUX_POOL_END)`, above the 16 MiB the DMA
/// test uses from 0x6000_0000 and up to the test guest's image, which
/// QEMU's loader puts at 0x7ff0_0000: room for three 128 MiB guests.
pub const LINUX_POOL_BASE: u64 = 0x6100_0000;
/// End (exclusive) of the Linux guests' pool.
pub const LINUX_POOL_END: u64 = 0x7ff0_0000;

const _: () = assert!(HOST_ENTRY + 0x0100_0000 <= GUEST_KERNEL_STAGE);
const _: () = assert!(HOST_HEAP_END == 0x6000_0000 && HOST_HEAP_END < LINUX_POOL_BASE);
const _: () = assert!(LINUX_POOL_BASE < LINUX_POOL_END);
