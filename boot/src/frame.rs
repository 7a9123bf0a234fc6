//! The trap frame: what the lower-EL vector (`vectors.rs`) saves on the EL2
//! stack before it calls the Rust handler, and restores after.
//!
//! Invariant: the frame holds the registers of the interrupted lower EL that
//! the Rust handler's convention lets it clobber: `x0..=x18` and `x30` for
//! the C handler of most traps (AAPCS64); for a host `hvc`, whose handler
//! has the preserve_most convention, only `x0..=x8`, `x16..=x18` and `x30`
//! (the slots of `x9..=x15` are not written; nothing on that path reads
//! them). The handler writes results there (`x0..=x6`) and nothing else of
//! it changes unless the handler means it to. `x19..=x29`, `SP_EL1` and the
//! FP/SIMD registers are never in it: the handler preserves them itself (the
//! image is built softfloat).

/// The registers of the interrupted lower EL that the Rust handler may
/// clobber, as saved on the EL2 stack: `x0..=x18` and `x30`.
#[repr(C)]
pub struct TrapFrame {
    /// `x0..=x18`.
    pub x: [u64; 19],
    /// `x30` (the link register).
    pub lr: u64,
}

/// Bytes of a [`TrapFrame`] (the vector's assembly depends on it; a
/// multiple of 16 keeps `SP_EL2` aligned).
pub const FRAME_SIZE: usize = 160;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == FRAME_SIZE);
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));

impl TrapFrame {
    /// Register `xN` for `n` in `0..=18` (0 otherwise: no host-trap path
    /// reads a callee-saved register, and the frame does not hold them).
    pub fn reg(&self, n: usize) -> u64 {
        self.x.get(n).copied().unwrap_or(0)
    }

    /// Sets register `xN` for `n` in `0..=18` (ignored otherwise).
    pub fn set_reg(&mut self, n: usize, v: u64) {
        if let Some(r) = self.x.get_mut(n) {
            *r = v;
        }
    }
}
