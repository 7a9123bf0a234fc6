//! A small, bounds-checked reader of flattened device trees (DTB, devicetree
//! specification v0.4, chapter 5), and the one edit the engine makes to the
//! host's copy: shrinking `/memory` so the engine's carve-out disappears.
//!
//! Invariants:
//! - Every read goes through `get`/checked arithmetic: a malformed or
//!   truncated tree yields an [`FdtError`], never a fault or a panic.
//! - Nothing is read outside `[0, totalsize)` of the blob, and `totalsize`
//!   itself is bounded by the caller's slice.
//!
//! The module is portable (no `unsafe`, no CPU access): the host payload
//! includes the same file to find its CPUs and its boot arguments.
#![forbid(unsafe_code)]

/// `magic` of every DTB header.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Most CPUs a [`Platform`] records (QEMU virt's limit with GICv3).
pub const MAX_CPUS: usize = 512;
/// Most RAM ranges a [`Platform`] records.
pub const MAX_RAM: usize = 8;
/// Most redistributor regions a [`Platform`] records.
pub const MAX_GICR: usize = 4;
/// Deepest node nesting the walker follows.
const MAX_DEPTH: usize = 16;

const TOKEN_BEGIN_NODE: u32 = 1;
const TOKEN_END_NODE: u32 = 2;
const TOKEN_PROP: u32 = 3;
const TOKEN_NOP: u32 = 4;
const TOKEN_END: u32 = 9;

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

fn be32(b: &[u8], off: usize) -> Option<u32> {
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
    /// A node starts at `depth` (the root is depth 0).
    Begin { depth: usize, name: &'a str },
    /// A property of the node at `depth`; `offset` is where `value` starts in
    /// the blob (for in-place edits).
    Prop {
        depth: usize,
        name: &'a str,
        value: &'a [u8],
        offset: usize,
    },
    /// The node at `depth` ends.
    End { depth: usize },
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
                    f(Event::Begin { depth, name });
                }
                TOKEN_END_NODE => {
                    if !open {
                        return Err(FdtError::BadStructure);
                    }
                    f(Event::End { depth });
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

/// How the platform firmware's PSCI is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciConduit {
    /// `smc #0` (QEMU virt with `virtualization=on`).
    Smc,
    /// `hvc #0`: useless to an engine that *is* the hypervisor.
    Hvc,
}

/// What the engine needs to know about the machine.
#[derive(Clone, Debug)]
pub struct Platform {
    /// RAM ranges (`/memory*` nodes), in tree order.
    pub ram: [Range; MAX_RAM],
    /// How many entries of `ram` are valid.
    pub ram_count: usize,
    /// MPIDR affinity of each CPU (`/cpus/cpu@*/reg`), in tree order.
    pub cpus: [u64; MAX_CPUS],
    /// How many entries of `cpus` are valid.
    pub cpu_count: usize,
    /// The PSCI conduit (`/psci` `method`), if there is a PSCI node.
    pub psci: Option<PsciConduit>,
    /// GICv3 distributor.
    pub gicd: Option<Range>,
    /// GICv3 redistributor regions.
    pub gicr: [Range; MAX_GICR],
    /// How many entries of `gicr` are valid.
    pub gicr_count: usize,
    /// The first PL011 UART.
    pub uart: Option<Range>,
}

impl Platform {
    /// A description of nothing (filled by [`parse_platform`]).
    pub const fn empty() -> Self {
        Self {
            ram: [Range { base: 0, size: 0 }; MAX_RAM],
            ram_count: 0,
            cpus: [0; MAX_CPUS],
            cpu_count: 0,
            psci: None,
            gicd: None,
            gicr: [Range { base: 0, size: 0 }; MAX_GICR],
            gicr_count: 0,
            uart: None,
        }
    }

    /// The valid RAM ranges.
    pub fn ram(&self) -> &[Range] {
        self.ram.get(..self.ram_count).unwrap_or(&[])
    }

    /// The valid CPU MPIDRs.
    pub fn cpus(&self) -> &[u64] {
        self.cpus.get(..self.cpu_count).unwrap_or(&[])
    }

    /// The valid redistributor regions.
    pub fn gicr(&self) -> &[Range] {
        self.gicr.get(..self.gicr_count).unwrap_or(&[])
    }

    /// The index of the CPU with this MPIDR affinity.
    pub fn cpu_index(&self, mpidr: u64) -> Option<usize> {
        self.cpus().iter().position(|&m| m == mpidr)
    }
}

/// The properties of one node that [`parse_platform`] looks at.
#[derive(Clone, Copy, Default)]
struct NodeProps<'a> {
    name: &'a str,
    device_type: &'a [u8],
    compatible: &'a [u8],
    reg: &'a [u8],
    method: &'a [u8],
    redist_regions: Option<u32>,
    address_cells: Option<u32>,
    size_cells: Option<u32>,
}

impl<'a> NodeProps<'a> {
    fn named(name: &'a str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    fn take(&mut self, name: &str, value: &'a [u8]) {
        match name {
            "device_type" => self.device_type = value,
            "compatible" => self.compatible = value,
            "reg" => self.reg = value,
            "method" => self.method = value,
            "#redistributor-regions" => self.redist_regions = be32(value, 0),
            "#address-cells" => self.address_cells = be32(value, 0),
            "#size-cells" => self.size_cells = be32(value, 0),
            _ => {}
        }
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

/// Fills `p` from the tree: RAM, CPUs, PSCI conduit, GIC, UART.
///
/// `p` is passed in (rather than returned) because a [`Platform`] is a few
/// KiB and lives in a static at EL2.
pub fn parse_platform(fdt: &Fdt<'_>, p: &mut Platform) -> Result<(), FdtError> {
    *p = Platform::empty();
    let mut root = NodeProps::default();
    let mut depth1 = NodeProps::default();
    let mut depth2 = NodeProps::default();
    let mut error = None;
    fdt.walk(|ev| {
        let r = (|| -> Result<(), FdtError> {
            match ev {
                Event::Begin { depth: 1, name } => depth1 = NodeProps::named(name),
                Event::Begin { depth: 2, name } => depth2 = NodeProps::named(name),
                Event::Prop {
                    depth: 0,
                    name,
                    value,
                    ..
                } => root.take(name, value),
                Event::Prop {
                    depth: 1,
                    name,
                    value,
                    ..
                } => depth1.take(name, value),
                Event::Prop {
                    depth: 2,
                    name,
                    value,
                    ..
                } => depth2.take(name, value),
                Event::End { depth: 2 } if depth1.name == "cpus" => {
                    if depth2.device_type.starts_with(b"cpu\0") {
                        let ac = depth1.address_cells.unwrap_or(1);
                        let r = reg_entry(depth2.reg, ac, 0, 0)?.ok_or(FdtError::BadReg)?;
                        if let Some(slot) = p.cpus.get_mut(p.cpu_count) {
                            *slot = r.base;
                            p.cpu_count = p.cpu_count.saturating_add(1);
                        }
                    }
                }
                Event::End { depth: 1 } => {
                    let (ac, sc) = (
                        root.address_cells.unwrap_or(2),
                        root.size_cells.unwrap_or(1),
                    );
                    let n = &depth1;
                    if n.name == "psci" || strlist_contains(n.compatible, "arm,psci-0.2") {
                        p.psci = match n.method {
                            b"smc\0" => Some(PsciConduit::Smc),
                            b"hvc\0" => Some(PsciConduit::Hvc),
                            _ => None,
                        };
                    } else if n.device_type == b"memory\0" {
                        let mut i = 0;
                        while let Some(r) = reg_entry(n.reg, ac, sc, i)? {
                            if let Some(slot) = p.ram.get_mut(p.ram_count) {
                                *slot = r;
                                p.ram_count = p.ram_count.saturating_add(1);
                            }
                            i = i.saturating_add(1);
                        }
                    } else if strlist_contains(n.compatible, "arm,gic-v3") {
                        p.gicd = reg_entry(n.reg, ac, sc, 0)?;
                        let regions = n.redist_regions.unwrap_or(1) as usize;
                        for i in 0..regions.min(MAX_GICR) {
                            if let Some(r) = reg_entry(n.reg, ac, sc, i.saturating_add(1))?
                                && let Some(slot) = p.gicr.get_mut(p.gicr_count)
                            {
                                *slot = r;
                                p.gicr_count = p.gicr_count.saturating_add(1);
                            }
                        }
                    } else if strlist_contains(n.compatible, "arm,pl011") && p.uart.is_none() {
                        p.uart = reg_entry(n.reg, ac, sc, 0)?;
                    }
                }
                _ => {}
            }
            Ok(())
        })();
        if let Err(e) = r {
            error.get_or_insert(e);
        }
    })?;
    error.map_or(Ok(()), Err)
}

/// The `/chosen` `bootargs` string, if any.
pub fn bootargs<'a>(fdt: &Fdt<'a>) -> Result<Option<&'a str>, FdtError> {
    let mut in_chosen = false;
    let mut found = None;
    fdt.walk(|ev| match ev {
        Event::Begin { depth: 1, name } => in_chosen = name == "chosen",
        Event::Prop {
            depth: 1,
            name: "bootargs",
            value,
            ..
        } if in_chosen => {
            let s = value.split(|&b| b == 0).next().unwrap_or(&[]);
            found = core::str::from_utf8(s).ok();
        }
        _ => {}
    })?;
    Ok(found)
}

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
            Event::Begin { depth: 1, name } => {
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
            Event::End { depth: 1 } if node.device_type == b"memory\0" => {
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

fn write_reg_entry(
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
