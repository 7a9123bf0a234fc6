//! A small, bounds-checked reader of flattened device trees (DTB, devicetree
//! specification v0.4, chapter 5), what isola reads from one, and the edits
//! the engine makes to the host's copy.
//!
//! Used by the EL2 image (`boot/`: the machine it runs on, the host's tree),
//! the test host payload (its CPUs and boot arguments) and xtask's tests.
//!
//! | module | job |
//! |---|---|
//! | [`blob`] | the header, the structure-block walk ([`Fdt`], [`Event`]) |
//! | [`props`] | property values: `reg` entries ([`Range`]), string lists |
//! | [`platform`] | what the engine needs to know ([`Platform`]), `/chosen` `bootargs` |
//! | [`edit`] | in-place edits of the host's copy ([`clip_memory_below`]) |
//!
//! A reader of a new kind of node (say, which devices the host gets) belongs
//! beside [`platform`]; a new edit (say, removing a node by overwriting it
//! with `FDT_NOP` tokens, which [`Fdt::walk`] already skips) beside
//! [`edit::clip_memory_below`], using [`Event::Prop`]'s `offset` and
//! [`Event::Begin`]'s `offset` to find the bytes to rewrite.
//!
//! Invariants:
//! - Every read goes through `get`/checked arithmetic: a malformed or
//!   truncated tree yields an [`FdtError`], never a fault or a panic.
//! - Nothing is read outside `[0, totalsize)` of the blob, and `totalsize`
//!   itself is bounded by the caller's slice.
//! - Portable: no `unsafe`, no CPU access; tested on the build machine.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod blob;
pub mod edit;
pub mod platform;
pub mod props;
#[cfg(test)]
mod tests;

pub use blob::{Event, FDT_MAGIC, Fdt, header_total_size};
pub use edit::clip_memory_below;
pub use platform::{MAX_CPUS, MAX_GICR, MAX_RAM, Platform, PsciConduit, bootargs, parse_platform};
pub use props::{Range, reg_entry, strlist_contains};

/// What is wrong with a device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// The header's magic is not `0xd00dfeed`.
    BadMagic,
    /// The header or a block points outside the blob.
    Truncated,
    /// `last_comp_version` is newer than 17.
    BadVersion,
    /// An unknown token, or nodes that do not nest.
    BadStructure,
    /// A name that is not NUL-terminated UTF-8.
    BadString,
    /// Nodes nest deeper than the walker follows.
    TooDeep,
    /// A `reg` property whose length is not a whole number of entries, or
    /// whose cell counts are unsupported.
    BadReg,
    /// An edit would not fit the property it rewrites.
    EditDoesNotFit,
}

impl core::fmt::Display for FdtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Self::BadMagic => "bad magic",
            Self::Truncated => "truncated",
            Self::BadVersion => "unsupported version",
            Self::BadStructure => "malformed structure block",
            Self::BadString => "malformed name",
            Self::TooDeep => "nodes nest too deep",
            Self::BadReg => "malformed reg property",
            Self::EditDoesNotFit => "edit does not fit",
        };
        f.write_str(s)
    }
}
