//! The blob itself: its header and a walk over its structure block.

use crate::error::FdtError;

/// `magic` of every DTB header.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Deepest node nesting the walker follows.
const MAX_DEPTH: usize = 16;

const TOKEN_BEGIN_NODE: u32 = 1;
const TOKEN_END_NODE: u32 = 2;
const TOKEN_PROP: u32 = 3;
/// A token a reader skips: an edit may overwrite a node or property with it.
pub const TOKEN_NOP: u32 = 4;
const TOKEN_END: u32 = 9;

/// The big-endian `u32` at `off`, if the blob holds it.
pub(crate) fn be32(b: &[u8], off: usize) -> Option<u32> {
    let end = off.checked_add(4)?;
    let bytes: [u8; 4] = b.get(off..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn align4(x: usize) -> Option<usize> {
    Some(x.checked_add(3)? & !3)
}

/// The total size a DTB header claims, from its first 8 bytes; `None` if
/// the magic is wrong.
pub fn header_total_size(head: &[u8]) -> Option<u32> {
    (be32(head, 0)? == FDT_MAGIC).then_some(())?;
    be32(head, 4)
}

/// One step of a walk over the structure block.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A node starts at `depth` (the root is depth 0); `offset` is where its
    /// `FDT_BEGIN_NODE` token is in the blob (for in-place edits).
    Begin {
        depth: usize,
        name: &'a str,
        offset: usize,
    },
    /// A property of the node at `depth`; `offset` is where `value` starts in
    /// the blob (for in-place edits).
    Prop {
        depth: usize,
        name: &'a str,
        value: &'a [u8],
        offset: usize,
    },
    /// The node at `depth` ends; `offset` is where its `FDT_END_NODE` token
    /// is in the blob (for in-place edits).
    End { depth: usize, offset: usize },
}

/// A validated device tree blob.
#[derive(Clone, Copy, Debug)]
pub struct Fdt<'a> {
    blob: &'a [u8],
    structs: usize,
    structs_end: usize,
    strings: usize,
    strings_end: usize,
}

impl<'a> Fdt<'a> {
    /// Checks the header of `blob` (which may be longer than the tree).
    pub fn new(blob: &'a [u8]) -> Result<Self, FdtError> {
        let field = |i: usize| -> Result<usize, FdtError> {
            let v = be32(blob, i.checked_mul(4).ok_or(FdtError::Truncated)?)
                .ok_or(FdtError::Truncated)?;
            usize::try_from(v).map_err(|_| FdtError::Truncated)
        };
        if field(0)? != FDT_MAGIC as usize {
            return Err(FdtError::BadMagic);
        }
        let total = field(1)?;
        let blob = blob.get(..total).ok_or(FdtError::Truncated)?;
        let (off_struct, off_strings) = (field(2)?, field(3)?);
        if field(6)? > 17 {
            return Err(FdtError::BadVersion);
        }
        let (size_strings, size_struct) = (field(8)?, field(9)?);
        let structs_end = off_struct
            .checked_add(size_struct)
            .ok_or(FdtError::Truncated)?;
        let strings_end = off_strings
            .checked_add(size_strings)
            .ok_or(FdtError::Truncated)?;
        if structs_end > total || strings_end > total {
            return Err(FdtError::Truncated);
        }
        Ok(Self {
            blob,
            structs: off_struct,
            structs_end,
            strings: off_strings,
            strings_end,
        })
    }

    fn cstr(&self, start: usize, end: usize) -> Result<(&'a str, usize), FdtError> {
        let region = self.blob.get(start..end).ok_or(FdtError::Truncated)?;
        let len = region
            .iter()
            .position(|&b| b == 0)
            .ok_or(FdtError::BadString)?;
        let s = region.get(..len).ok_or(FdtError::BadString)?;
        let s = core::str::from_utf8(s).map_err(|_| FdtError::BadString)?;
        Ok((s, len))
    }

    /// Calls `f` for every node start, property and node end, in order.
    pub fn walk(&self, mut f: impl FnMut(Event<'a>)) -> Result<(), FdtError> {
        let mut pos = self.structs;
        let mut depth: usize = 0;
        let mut open = false;
        loop {
            let token_at = pos;
            let token = be32(self.blob, pos).ok_or(FdtError::Truncated)?;
            pos = pos.checked_add(4).ok_or(FdtError::Truncated)?;
            if pos > self.structs_end {
                return Err(FdtError::Truncated);
            }
            match token {
                TOKEN_BEGIN_NODE => {
                    let (name, len) = self.cstr(pos, self.structs_end)?;
                    pos = align4(
                        pos.checked_add(len)
                            .and_then(|p| p.checked_add(1))
                            .ok_or(FdtError::Truncated)?,
                    )
                    .ok_or(FdtError::Truncated)?;
                    if open {
                        depth = depth.checked_add(1).ok_or(FdtError::TooDeep)?;
                    }
                    if depth >= MAX_DEPTH {
                        return Err(FdtError::TooDeep);
                    }
                    open = true;
                    f(Event::Begin {
                        depth,
                        name,
                        offset: token_at,
                    });
                }
                TOKEN_END_NODE => {
                    if !open {
                        return Err(FdtError::BadStructure);
                    }
                    f(Event::End {
                        depth,
                        offset: token_at,
                    });
                    match depth.checked_sub(1) {
                        Some(d) => depth = d,
                        None => open = false,
                    }
                }
                TOKEN_PROP => {
                    if !open {
                        return Err(FdtError::BadStructure);
                    }
                    let len = be32(self.blob, pos).ok_or(FdtError::Truncated)?;
                    let nameoff = be32(self.blob, pos.checked_add(4).ok_or(FdtError::Truncated)?)
                        .ok_or(FdtError::Truncated)?;
                    let value_at = pos.checked_add(8).ok_or(FdtError::Truncated)?;
                    let len = usize::try_from(len).map_err(|_| FdtError::Truncated)?;
                    let value_end = value_at.checked_add(len).ok_or(FdtError::Truncated)?;
                    if value_end > self.structs_end {
                        return Err(FdtError::Truncated);
                    }
                    let value = self
                        .blob
                        .get(value_at..value_end)
                        .ok_or(FdtError::Truncated)?;
                    let name_at = self
                        .strings
                        .checked_add(usize::try_from(nameoff).map_err(|_| FdtError::Truncated)?)
                        .ok_or(FdtError::Truncated)?;
                    let (name, _) = self.cstr(name_at, self.strings_end)?;
                    f(Event::Prop {
                        depth,
                        name,
                        value,
                        offset: value_at,
                    });
                    pos = align4(value_end).ok_or(FdtError::Truncated)?;
                }
                TOKEN_NOP => {}
                TOKEN_END => {
                    return if open {
                        Err(FdtError::BadStructure)
                    } else {
                        Ok(())
                    };
                }
                _ => return Err(FdtError::BadStructure),
            }
        }
    }
}
