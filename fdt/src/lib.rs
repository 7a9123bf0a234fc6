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
//! | [`devices`] | which devices the host gets: the default-deny policy, the device nodes ([`Devices`]) |
//! | [`edit`] | in-place edits of the host's copy ([`clip_memory_below`], [`nop_out`]) |
//!
//! A reader of a new kind of node belongs beside [`platform`] and
//! [`devices`]; a new edit beside [`edit::clip_memory_below`], using the
//! `offset` of [`Event::Begin`], [`Event::Prop`] and [`Event::End`] to find
//! the bytes to rewrite.
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
pub mod devices;
pub mod edit;
mod error;
pub mod platform;
pub mod props;
#[cfg(test)]
mod tests;

pub use blob::{Event, FDT_MAGIC, Fdt, header_total_size};
pub use devices::{Devices, Kind, Verdict};
pub use edit::{clip_memory_below, nop_out};
pub use error::FdtError;
pub use platform::{MAX_CPUS, MAX_GICR, MAX_RAM, Platform, PsciConduit, bootargs, parse_platform};
pub use props::{Range, reg_entry, strlist_contains};
