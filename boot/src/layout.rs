//! The EL2 image's place in memory: the memory plan shared with the payloads
//! and xtask (`isola_layout`, re-exported here under the image's own names),
//! and the section boundaries the linker script fixes (`boot/link.ld`, whose
//! symbols `boot/build.rs` writes from the same constants).
//!
//! Invariants:
//! - Everything from [`CARVEOUT_BASE`] to [`CARVEOUT_END`] is the engine's:
//!   QEMU's device tree, the image, its stacks, its page tables and the pool
//!   the core allocates from. None of it is ever shown to the host: the host's
//!   device tree starts its RAM at [`CARVEOUT_END`], and the core's host-abort
//!   policy never maps an engine page into the host's Stage-2.
//! - The image ends inside the carve-out (`link.ld` asserts it at link time).

pub use isola_layout::{
    CARVEOUT_BASE, CARVEOUT_END, ENGINE_EMERGENCY_SLOT as EMERGENCY_SLOT,
    ENGINE_STACK_SIZE as STACK_SIZE, ENGINE_STACK_SLOT as STACK_SLOT, HOST_DTB, HOST_DTB_MAX,
    HOST_ENTRY, MAX_CPUS,
};

unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __data_end: u8;
    static __stacks_start: u8;
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
            emergency_start: a(&raw const __emergency_start),
            emergency_end: a(&raw const __emergency_end),
            image_end: a(&raw const __image_end),
        }
    }

    /// Top (initial stack pointer) of `cpu`'s EL2 stack.
    pub fn stack_top(&self, cpu: usize) -> Option<u64> {
        let slots = u64::try_from(cpu).ok()?.checked_add(1)?;
        self.stacks_start
            .checked_add(slots.checked_mul(STACK_SLOT)?)
    }
}
