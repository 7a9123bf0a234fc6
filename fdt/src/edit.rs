//! In-place edits of a tree (the host's copy): each rewrites bytes of the
//! blob without changing its size, so the header stays valid.

use crate::blob::{Event, Fdt, TOKEN_NOP, be32};
use crate::error::FdtError;
use crate::platform::{MAX_RAM, NodeProps};
use crate::props::{Range, reg_entry, write_reg_entry};

/// Rewrites, in place, every `/memory*` range of the tree in `blob` so that
/// nothing below `keep_from` remains: a range entirely below becomes empty
/// (size 0), a range straddling it starts at `keep_from`. Returns how many
/// ranges changed.
pub fn clip_memory_below(blob: &mut [u8], keep_from: u64) -> Result<usize, FdtError> {
    const MAX_EDITS: usize = MAX_RAM;
    let mut regs: [(usize, usize); MAX_EDITS] = [(0, 0); MAX_EDITS];
    let mut count = 0_usize;
    let (mut ac, mut sc) = (2_u32, 1_u32);
    {
        let fdt = Fdt::new(blob)?;
        let mut node = NodeProps::default();
        let mut reg_at = (0, 0);
        fdt.walk(|ev| match ev {
            Event::Prop {
                depth: 0,
                name: "#address-cells",
                value,
                ..
            } => ac = be32(value, 0).unwrap_or(2),
            Event::Prop {
                depth: 0,
                name: "#size-cells",
                value,
                ..
            } => sc = be32(value, 0).unwrap_or(1),
            Event::Begin { depth: 1, name, .. } => {
                node = NodeProps::named(name);
                reg_at = (0, 0);
            }
            Event::Prop {
                depth: 1,
                name,
                value,
                offset,
            } => {
                node.take(name, value);
                if name == "reg" {
                    reg_at = (offset, value.len());
                }
            }
            Event::End { depth: 1, .. } if node.device_type == b"memory\0" => {
                if let Some(slot) = regs.get_mut(count) {
                    *slot = reg_at;
                    count = count.saturating_add(1);
                }
            }
            _ => {}
        })?;
    }
    let mut changed = 0_usize;
    for &(offset, len) in regs.get(..count).unwrap_or(&[]) {
        let end = offset.checked_add(len).ok_or(FdtError::Truncated)?;
        let reg = blob.get_mut(offset..end).ok_or(FdtError::Truncated)?;
        let mut i = 0;
        while let Some(r) = reg_entry(reg, ac, sc, i)? {
            let r_end = r.end().ok_or(FdtError::BadReg)?;
            let new = if r_end <= keep_from {
                Range {
                    base: r.base,
                    size: 0,
                }
            } else if r.base < keep_from {
                Range {
                    base: keep_from,
                    size: r_end.wrapping_sub(keep_from),
                }
            } else {
                r
            };
            if new != r {
                write_reg_entry(reg, ac, sc, i, new)?;
                changed = changed.saturating_add(1);
            }
            i = i.saturating_add(1);
        }
    }
    Ok(changed)
}

/// Overwrites the whole tokens in `[from, to)` of `blob` with `FDT_NOP`,
/// which every reader skips: a node from its `FDT_BEGIN_NODE` to just past
/// its `FDT_END_NODE`, or one property from its `FDT_PROP`. The tree keeps
/// its size and stays valid if `[from, to)` is such a span (the caller's
/// offsets come from [`Event`]).
pub fn nop_out(blob: &mut [u8], from: usize, to: usize) -> Result<(), FdtError> {
    if !from.is_multiple_of(4) || !to.is_multiple_of(4) || from > to {
        return Err(FdtError::BadStructure);
    }
    let words = blob.get_mut(from..to).ok_or(FdtError::Truncated)?;
    for w in words.chunks_exact_mut(4) {
        w.copy_from_slice(&TOKEN_NOP.to_be_bytes());
    }
    Ok(())
}
