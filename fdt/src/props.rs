//! Property values: `reg` entries and string lists, read and written.

use crate::blob::be32;
use crate::error::FdtError;

/// A physical address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Range {
    /// One past the last byte, if it does not overflow.
    pub fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size)
    }
}

/// Whether a string-list property (NUL-separated) contains `want`.
pub fn strlist_contains(list: &[u8], want: &str) -> bool {
    list.split(|&b| b == 0).any(|s| s == want.as_bytes())
}

fn read_cells(b: &[u8], off: usize, cells: u32) -> Option<u64> {
    match cells {
        1 => be32(b, off).map(u64::from),
        2 => {
            let hi = u64::from(be32(b, off)?);
            let lo = u64::from(be32(b, off.checked_add(4)?)?);
            Some(hi << 32 | lo)
        }
        _ => None,
    }
}

/// The `index`-th `(address, size)` entry of a `reg` value.
pub fn reg_entry(reg: &[u8], ac: u32, sc: u32, index: usize) -> Result<Option<Range>, FdtError> {
    if !(1..=2).contains(&ac) || sc > 2 {
        return Err(FdtError::BadReg);
    }
    let entry = usize::try_from(ac.checked_add(sc).ok_or(FdtError::BadReg)?)
        .map_err(|_| FdtError::BadReg)?
        .checked_mul(4)
        .ok_or(FdtError::BadReg)?;
    if !reg.len().is_multiple_of(entry) {
        return Err(FdtError::BadReg);
    }
    let off = index.checked_mul(entry).ok_or(FdtError::BadReg)?;
    if off >= reg.len() {
        return Ok(None);
    }
    let base = read_cells(reg, off, ac).ok_or(FdtError::BadReg)?;
    let size = if sc == 0 {
        0
    } else {
        let soff = off
            .checked_add((ac as usize).saturating_mul(4))
            .ok_or(FdtError::BadReg)?;
        read_cells(reg, soff, sc).ok_or(FdtError::BadReg)?
    };
    Ok(Some(Range { base, size }))
}

fn write_cells(b: &mut [u8], off: usize, cells: u32, v: u64) -> Result<(), FdtError> {
    let bytes: &[u8] = &v.to_be_bytes();
    let take = match cells {
        1 if v <= u64::from(u32::MAX) => bytes.get(4..),
        2 => Some(bytes),
        _ => None,
    }
    .ok_or(FdtError::EditDoesNotFit)?;
    let end = off.checked_add(take.len()).ok_or(FdtError::Truncated)?;
    b.get_mut(off..end)
        .ok_or(FdtError::Truncated)?
        .copy_from_slice(take);
    Ok(())
}

/// Writes `r` as the `index`-th `(address, size)` entry of a `reg` value.
pub(crate) fn write_reg_entry(
    reg: &mut [u8],
    ac: u32,
    sc: u32,
    index: usize,
    r: Range,
) -> Result<(), FdtError> {
    let entry = (ac.saturating_add(sc) as usize).saturating_mul(4);
    let off = index.checked_mul(entry).ok_or(FdtError::BadReg)?;
    write_cells(reg, off, ac, r.base)?;
    write_cells(
        reg,
        off.saturating_add((ac as usize).saturating_mul(4)),
        sc,
        r.size,
    )
}
