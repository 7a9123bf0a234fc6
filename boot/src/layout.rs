//! The physical memory layout of the engine, as fixed by `boot/link.ld` and
//! documented in docs/boot.md.
//!
//! Invariants:
//! - Everything from [`CARVEOUT_BASE`] to [`CARVEOUT_END`] is the engine's:
//!   QEMU's device tree, the image, its stacks, its page tables and the pool
//!   the core allocates from. None of it is ever shown to the host: the host's
//!   device tree starts its RAM at [`CARVEOUT_END`], and the core's host-abort
//!   policy never maps an engine page into the host's Stage-2.
//! - The stack and emergency-stack sizes here equal the ones in `link.ld`;
//!   [`Sections::check`] verifies it at boot.

/// Most CPUs the image has stacks for (QEMU virt's limit with GICv3).
pub const MAX_CPUS: usize = 512;
/// Bytes of one CPU's EL2 stack.
pub const STACK_SIZE: u64 = 0x4000;
/// Unmapped bytes below each stack: an overflow faults instead of corrupting
/// the neighbour's stack.
pub const GUARD_SIZE: u64 = 0x1000;
/// One CPU's slot in the stack area: its guard page, then its stack.
pub const STACK_SLOT: u64 = GUARD_SIZE + STACK_SIZE;
/// One CPU's emergency stack, used only to report a fatal EL2 exception.
pub const EMERGENCY_SLOT: u64 = 0x1000;

/// First byte of the engine's carve-out: the start of RAM on QEMU virt,
/// where QEMU also places its device tree.
pub const CARVEOUT_BASE: u64 = 0x4000_0000;
/// End (exclusive) of the engine's carve-out: 64 MiB.
pub const CARVEOUT_END: u64 = 0x4400_0000;
/// Where the engine writes the host's copy of the device tree (first page of
/// host RAM).
pub const HOST_DTB: u64 = CARVEOUT_END;
/// Most bytes the host's device tree may take: it must end below the host
/// payload.
pub const HOST_DTB_MAX: u64 = 0x0100_0000;
/// The host payload's entry point: its ELF is linked here and loaded by
/// QEMU's generic loader (`-device loader,file=...`).
pub const HOST_ENTRY: u64 = 0x4800_0000;

unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __data_end: u8;
    static __stacks_start: u8;
    static __stacks_end: u8;
    static __emergency_start: u8;
    static __emergency_end: u8;
    static __image_end: u8;
}

/// The image's section boundaries (identity-mapped physical addresses).
#[derive(Clone, Copy, Debug)]
pub struct Sections {
    /// Start of text (and of the image).
    pub image_start: u64,
    /// End of text, start of rodata.
    pub text_end: u64,
    /// End of rodata, start of data.
    pub rodata_end: u64,
    /// End of data and bss.
    pub data_end: u64,
    /// Start of the stack slots.
    pub stacks_start: u64,
    /// End of the stack slots.
    pub stacks_end: u64,
    /// Start of the emergency stacks.
    pub emergency_start: u64,
    /// End of the emergency stacks.
    pub emergency_end: u64,
    /// End of the image.
    pub image_end: u64,
}

impl Sections {
    /// Reads the linker's symbols.
    pub fn get() -> Self {
        let a = |p: *const u8| p as u64;
        Self {
            image_start: a(&raw const __image_start),
            text_end: a(&raw const __text_end),
            rodata_end: a(&raw const __rodata_end),
            data_end: a(&raw const __data_end),
            stacks_start: a(&raw const __stacks_start),
            stacks_end: a(&raw const __stacks_end),
            emergency_start: a(&raw const __emergency_start),
            emergency_end: a(&raw const __emergency_end),
            image_end: a(&raw const __image_end),
        }
    }

    /// Checks that the linker script and this module agree, and that the
    /// image fits the carve-out; the message names what is wrong.
    pub fn check(&self) -> Result<(), &'static str> {
        let cpus = MAX_CPUS as u64;
        if self.stacks_end.checked_sub(self.stacks_start) != cpus.checked_mul(STACK_SLOT) {
            return Err("link.ld stack area does not match layout::STACK_SLOT * MAX_CPUS");
        }
        if self.emergency_end.checked_sub(self.emergency_start) != cpus.checked_mul(EMERGENCY_SLOT)
        {
            return Err("link.ld emergency stacks do not match layout::EMERGENCY_SLOT");
        }
        if self.image_start < CARVEOUT_BASE || self.image_end > CARVEOUT_END {
            return Err("the image does not fit the engine carve-out");
        }
        Ok(())
    }

    /// Top (initial stack pointer) of `cpu`'s EL2 stack.
    pub fn stack_top(&self, cpu: usize) -> Option<u64> {
        let slots = u64::try_from(cpu).ok()?.checked_add(1)?;
        self.stacks_start
            .checked_add(slots.checked_mul(STACK_SLOT)?)
    }
}
