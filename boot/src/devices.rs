//! The default-deny device policy: which devices of the machine's device
//! tree the host gets, which the engine keeps, and which nobody gets — and
//! the edit that removes the withheld ones from the host's copy of the tree.
//!
//! Every node that describes memory-mapped registers (a `reg` under an
//! identity-mapped parent, or a bus with non-empty `ranges`) is classified
//! by its `compatible` (docs/devices.md says why for each kind):
//!
//! | kind | verdict |
//! |---|---|
//! | PL011 UART, PL031 RTC, PL061 GPIO | host: registers only, they cannot master the bus |
//! | GICv3 distributor and redistributors | host, each redistributor's `RD_base` frame read-only (no LPI table base can be set) |
//! | GICv3 ITS | withheld: its tables are DMA |
//! | PCIe host bridge (ECAM and windows) | host, when the engine's SMMU holds every StreamID; else withheld |
//! | SMMUv3 | engine |
//! | fw_cfg, virtio-mmio | withheld: DMA past any IOMMU |
//! | CFI flash, platform bus, anything else | withheld (default deny) |
//!
//! "Withheld" means: never mapped in the host's Stage-2 (the engine gives
//! the core only the host's ranges) and turned into `FDT_NOP` tokens in the
//! host's copy of the tree, so the host does not even look for it. The
//! PCIe node the host keeps loses its `iommu-map`, `iommu-map-mask`,
//! `msi-map` and `msi-parent` properties: the host is not told about the
//! SMMU (its DMA addresses are its physical addresses) nor about the ITS.
//!
//! Invariants:
//! - Portable, no `unsafe`: every read of the blob is bounds-checked; a
//!   malformed tree is an [`Error`], never a fault. Tested on the host
//!   (`xtask`'s tests include this file).
//! - The edit only overwrites whole tokens with `FDT_NOP`: the tree keeps its
//!   size, structure and offsets, and stays valid.
#![forbid(unsafe_code)]

/// Most device nodes recorded.
pub const MAX_NODES: usize = 64;
/// Most address ranges recorded per node.
pub const MAX_REGS: usize = 4;
/// Most properties of one node the edit removes.
const MAX_PROP_EDITS: usize = 4;
/// Deepest nesting followed.
const MAX_DEPTH: usize = 16;

const FDT_MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

/// What is wrong with a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not a device tree, or a block lies outside it.
    Malformed,
    /// More device nodes, ranges or nesting than recorded.
    TooMany,
}

/// An address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub base: u64,
    /// Bytes.
    pub size: u64,
}

impl Range {
    /// One past the last byte (saturating).
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// The kinds of device the policy knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Anything else. First, so that an empty record is all zeros and the
    /// engine's static copy lives in `.bss`, not in the image.
    Unknown,
    /// `arm,pl011`.
    Uart,
    /// `arm,pl031`.
    Rtc,
    /// `arm,pl061`.
    Gpio,
    /// `arm,gic-v3`: `reg` is the distributor, then redistributor regions.
    Gic,
    /// `arm,gic-v3-its`.
    Its,
    /// `pci-host-ecam-generic`: `reg` is the ECAM, then the windows.
    Pcie,
    /// `arm,smmu-v3`.
    Smmu,
    /// `qemu,fw-cfg-mmio`.
    FwCfg,
    /// `virtio,mmio`.
    VirtioMmio,
    /// `cfi-flash`.
    Flash,
    /// `qemu,platform` (a bus of dynamically created devices).
    PlatformBus,
}

/// Who gets a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Mapped in the host's Stage-2 (on first access) and left in its tree.
    Host,
    /// The engine's: not mapped for the host, removed from its tree.
    Engine,
    /// Nobody's: not mapped for the host, removed from its tree.
    Withheld,
}

impl Verdict {
    /// The word the boot log uses.
    pub const fn word(self) -> &'static str {
        match self {
            Verdict::Host => "host",
            Verdict::Engine => "engine",
            Verdict::Withheld => "withheld",
        }
    }
}

impl Kind {
    fn from_compatible(value: &[u8]) -> Kind {
        for s in value.split(|&b| b == 0) {
            let k = match s {
                b"arm,pl011" => Kind::Uart,
                b"arm,pl031" => Kind::Rtc,
                b"arm,pl061" => Kind::Gpio,
                b"arm,gic-v3" => Kind::Gic,
                b"arm,gic-v3-its" => Kind::Its,
                b"pci-host-ecam-generic" => Kind::Pcie,
                b"arm,smmu-v3" => Kind::Smmu,
                b"qemu,fw-cfg-mmio" => Kind::FwCfg,
                b"virtio,mmio" => Kind::VirtioMmio,
                b"cfi-flash" => Kind::Flash,
                b"qemu,platform" => Kind::PlatformBus,
                _ => continue,
            };
            return k;
        }
        Kind::Unknown
    }

    /// The verdict, given whether the engine's SMMU contains PCIe DMA.
    pub const fn verdict(self, smmu_holds: bool) -> Verdict {
        match self {
            Kind::Uart | Kind::Rtc | Kind::Gpio | Kind::Gic => Verdict::Host,
            Kind::Pcie if smmu_holds => Verdict::Host,
            Kind::Smmu => Verdict::Engine,
            _ => Verdict::Withheld,
        }
    }

    /// Why, in a few words (the boot log prints it).
    pub const fn reason(self, smmu_holds: bool) -> &'static str {
        match self {
            Kind::Uart => "PL011 UART: registers only, no bus master",
            Kind::Rtc => "PL031 RTC: registers only, no bus master",
            Kind::Gpio => "PL061 GPIO: registers only, no bus master",
            Kind::Gic => {
                "GICv3: redistributors' RD_base frames read-only, so no LPI table base can be set"
            }
            Kind::Its => "GICv3 ITS: its command queue and tables are DMA",
            Kind::Pcie if smmu_holds => "PCIe: every function's DMA goes through the engine's SMMU",
            Kind::Pcie => "PCIe: bus masters and no SMMU to contain them",
            Kind::Smmu => "SMMUv3: translates the host's DMA through the host's Stage-2",
            Kind::FwCfg => "fw_cfg: its DMA interface writes memory past any IOMMU",
            Kind::VirtioMmio => "virtio-mmio: DMA past any IOMMU",
            Kind::Flash => "CFI flash: not needed by the host",
            Kind::PlatformBus => "platform bus: devices of unknown kinds",
            Kind::Unknown => "unknown kind: default deny",
        }
    }
}

/// One device node.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    /// Its kind.
    pub kind: Kind,
    name: [u8; 32],
    name_len: usize,
    /// Its address ranges (for PCIe: the ECAM, then the windows).
    pub regs: [Range; MAX_REGS],
    /// How many of `regs` are used.
    pub nregs: usize,
    /// Byte offset of its `FDT_BEGIN_NODE` token.
    begin: usize,
    /// Byte offset just past its `FDT_END_NODE` token.
    end: usize,
    /// Properties the host's copy loses even if the node stays: `[from, to)`.
    props: [(usize, usize); MAX_PROP_EDITS],
    nprops: usize,
}

impl Node {
    const EMPTY: Node = Node {
        kind: Kind::Unknown,
        name: [0; 32],
        name_len: 0,
        regs: [Range { base: 0, size: 0 }; MAX_REGS],
        nregs: 0,
        begin: 0,
        end: 0,
        props: [(0, 0); MAX_PROP_EDITS],
        nprops: 0,
    };

    /// The node's name (truncated to 32 bytes).
    pub fn name(&self) -> &str {
        let n = self.name.get(..self.name_len).unwrap_or(&[]);
        core::str::from_utf8(n).unwrap_or("?")
    }

    /// The ranges in use.
    pub fn ranges(&self) -> &[Range] {
        self.regs.get(..self.nregs).unwrap_or(&[])
    }
}

/// The device nodes of a tree, in tree order.
#[derive(Clone, Copy, Debug)]
pub struct Devices {
    nodes: [Node; MAX_NODES],
    n: usize,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn cells(b: &[u8], n: u32) -> Option<u64> {
    match n {
        1 => be32(b, 0).map(u64::from),
        2 => Some(u64::from(be32(b, 0)?) << 32 | u64::from(be32(b, 4)?)),
        _ => None,
    }
}

fn align4(x: usize) -> Option<usize> {
    Some(x.checked_add(3)? & !3)
}

/// One node being read: what its properties said so far.
#[derive(Clone, Copy)]
struct Open {
    begin: usize,
    name: [u8; 32],
    name_len: usize,
    /// `#address-cells`, `#size-cells` for its children.
    child_cells: (u32, u32),
    /// Whether addresses of its children are its parent's (no or empty
    /// `ranges`, or the root).
    identity: bool,
    kind: Option<Kind>,
    memory: bool,
    props: [(usize, usize); MAX_PROP_EDITS],
    nprops: usize,
    /// The raw `ranges` value (offset, length) and whether the node had one.
    ranges: Option<(usize, usize)>,
    reg: Option<(usize, usize)>,
}

impl Open {
    const ROOT: Open = Open {
        begin: 0,
        name: [0; 32],
        name_len: 0,
        child_cells: (2, 1),
        identity: true,
        kind: None,
        memory: false,
        props: [(0, 0); MAX_PROP_EDITS],
        nprops: 0,
        ranges: None,
        reg: None,
    };
}

/// Reads the device nodes of the tree in `blob` into `out` (in place: a
/// [`Devices`] is about 13 KiB, too big for a 16 KiB EL2 stack to hold
/// twice).
pub fn scan_into(blob: &[u8], out: &mut Devices) -> Result<(), Error> {
    out.n = 0;
    let hdr = |i: usize| be32(blob, i.wrapping_mul(4)).ok_or(Error::Malformed);
    if hdr(0)? != FDT_MAGIC {
        return Err(Error::Malformed);
    }
    let total = usize::try_from(hdr(1)?).map_err(|_| Error::Malformed)?;
    let blob = blob.get(..total).ok_or(Error::Malformed)?;
    let off_struct = usize::try_from(hdr(2)?).map_err(|_| Error::Malformed)?;
    let off_strings = usize::try_from(hdr(3)?).map_err(|_| Error::Malformed)?;
    let size_struct = usize::try_from(hdr(9)?).map_err(|_| Error::Malformed)?;
    let end_struct = off_struct
        .checked_add(size_struct)
        .ok_or(Error::Malformed)?;
    if end_struct > total || off_strings > total {
        return Err(Error::Malformed);
    }
    let mut stack = [Open::ROOT; MAX_DEPTH];
    let mut depth = 0usize; // nodes open
    let mut pos = off_struct;
    loop {
        let tok_at = pos;
        let token = be32(blob, pos).ok_or(Error::Malformed)?;
        pos = pos.checked_add(4).ok_or(Error::Malformed)?;
        if pos > end_struct {
            return Err(Error::Malformed);
        }
        match token {
            BEGIN_NODE => {
                let rest = blob.get(pos..end_struct).ok_or(Error::Malformed)?;
                let len = rest.iter().position(|&b| b == 0).ok_or(Error::Malformed)?;
                let name = rest.get(..len).ok_or(Error::Malformed)?;
                pos = align4(
                    pos.checked_add(len)
                        .and_then(|p| p.checked_add(1))
                        .ok_or(Error::Malformed)?,
                )
                .ok_or(Error::Malformed)?;
                let parent = if depth == 0 {
                    Open::ROOT
                } else {
                    *stack.get(depth.wrapping_sub(1)).ok_or(Error::Malformed)?
                };
                let slot = stack.get_mut(depth).ok_or(Error::TooMany)?;
                *slot = Open::ROOT;
                slot.begin = tok_at;
                let n = len.min(32);
                slot.name_len = n;
                if let (Some(dst), Some(src)) = (slot.name.get_mut(..n), name.get(..n)) {
                    dst.copy_from_slice(src);
                }
                slot.identity = parent.identity;
                depth = depth.checked_add(1).ok_or(Error::TooMany)?;
            }
            END_NODE => {
                depth = depth.checked_sub(1).ok_or(Error::Malformed)?;
                let node = *stack.get(depth).ok_or(Error::Malformed)?;
                let parent_cells = if depth == 0 {
                    (2, 1)
                } else {
                    stack
                        .get(depth.wrapping_sub(1))
                        .map_or((2, 1), |p| p.child_cells)
                };
                let parent_identity =
                    depth == 0 || stack.get(depth.wrapping_sub(1)).is_some_and(|p| p.identity);
                finish(blob, &node, parent_cells, parent_identity, pos, out)?;
                if depth == 0 {
                    // The root closed; only END may follow.
                }
            }
            PROP => {
                let len = usize::try_from(be32(blob, pos).ok_or(Error::Malformed)?)
                    .map_err(|_| Error::Malformed)?;
                let nameoff = usize::try_from(
                    be32(blob, pos.checked_add(4).ok_or(Error::Malformed)?)
                        .ok_or(Error::Malformed)?,
                )
                .map_err(|_| Error::Malformed)?;
                let value_at = pos.checked_add(8).ok_or(Error::Malformed)?;
                let value_end = value_at.checked_add(len).ok_or(Error::Malformed)?;
                let value = blob.get(value_at..value_end).ok_or(Error::Malformed)?;
                pos = align4(value_end).ok_or(Error::Malformed)?;
                if pos > end_struct {
                    return Err(Error::Malformed);
                }
                let name_at = off_strings.checked_add(nameoff).ok_or(Error::Malformed)?;
                let names = blob.get(name_at..).ok_or(Error::Malformed)?;
                let nlen = names.iter().position(|&b| b == 0).ok_or(Error::Malformed)?;
                let pname = names.get(..nlen).ok_or(Error::Malformed)?;
                let Some(cur) = depth.checked_sub(1).and_then(|d| stack.get_mut(d)) else {
                    return Err(Error::Malformed);
                };
                match pname {
                    b"compatible" => cur.kind = Some(Kind::from_compatible(value)),
                    b"device_type" => cur.memory = value.starts_with(b"memory\0"),
                    b"#address-cells" => {
                        cur.child_cells.0 = be32(value, 0).ok_or(Error::Malformed)?;
                    }
                    b"#size-cells" => cur.child_cells.1 = be32(value, 0).ok_or(Error::Malformed)?,
                    b"reg" => cur.reg = Some((value_at, len)),
                    b"ranges" => {
                        cur.ranges = Some((value_at, len));
                        if len > 0 {
                            cur.identity = false;
                        }
                    }
                    b"iommu-map" | b"iommu-map-mask" | b"msi-map" | b"msi-parent" => {
                        let e = cur.props.get_mut(cur.nprops).ok_or(Error::TooMany)?;
                        *e = (tok_at, pos);
                        cur.nprops = cur.nprops.wrapping_add(1);
                    }
                    _ => {}
                }
            }
            NOP => {}
            END => {
                return if depth == 0 {
                    Ok(())
                } else {
                    Err(Error::Malformed)
                };
            }
            _ => return Err(Error::Malformed),
        }
    }
}

/// Records `node` (just closed, ending at `end`) if it describes registers.
fn finish(
    blob: &[u8],
    node: &Open,
    parent_cells: (u32, u32),
    parent_identity: bool,
    end: usize,
    out: &mut Devices,
) -> Result<(), Error> {
    if node.memory || !parent_identity {
        return Ok(());
    }
    let (ac, sc) = parent_cells;
    let mut rec = Node::EMPTY;
    rec.kind = node.kind.unwrap_or(Kind::Unknown);
    rec.name = node.name;
    rec.name_len = node.name_len;
    rec.begin = node.begin;
    rec.end = end;
    rec.props = node.props;
    rec.nprops = node.nprops;
    let mut push = |r: Range| -> Result<(), Error> {
        let slot = rec.regs.get_mut(rec.nregs).ok_or(Error::TooMany)?;
        *slot = r;
        rec.nregs = rec.nregs.wrapping_add(1);
        Ok(())
    };
    // `reg`, in the parent's address space (only if it has sizes: a `reg`
    // with `#size-cells = 0` names a CPU or a bus address, not registers).
    if let Some((at, len)) = node.reg
        && sc > 0
        && (ac == 1 || ac == 2)
        && (sc == 1 || sc == 2)
    {
        let entry = (ac.wrapping_add(sc) as usize).wrapping_mul(4);
        let a_len = (ac as usize).wrapping_mul(4);
        let value = blob.get(at..at.wrapping_add(len)).ok_or(Error::Malformed)?;
        for e in value.chunks_exact(entry) {
            let a = e.get(..a_len).ok_or(Error::Malformed)?;
            let s = e.get(a_len..).ok_or(Error::Malformed)?;
            push(Range {
                base: cells(a, ac).ok_or(Error::Malformed)?,
                size: cells(s, sc).ok_or(Error::Malformed)?,
            })?;
        }
    }
    // Non-empty `ranges`: what the node's children are reached through
    // (the parent addresses), e.g. the PCIe windows or a platform bus.
    if let Some((at, len)) = node.ranges
        && len > 0
    {
        let (cac, csc) = node.child_cells;
        let entry = (cac.wrapping_add(ac).wrapping_add(csc) as usize).wrapping_mul(4);
        if entry == 0 || !(ac == 1 || ac == 2) || !(csc == 1 || csc == 2) {
            return Err(Error::Malformed);
        }
        let value = blob.get(at..at.wrapping_add(len)).ok_or(Error::Malformed)?;
        let child_len = (cac as usize).wrapping_mul(4);
        let parent_end = (cac.wrapping_add(ac) as usize).wrapping_mul(4);
        for e in value.chunks_exact(entry) {
            let p = e.get(child_len..parent_end).ok_or(Error::Malformed)?;
            let s = e.get(parent_end..).ok_or(Error::Malformed)?;
            push(Range {
                base: cells(p, ac).ok_or(Error::Malformed)?,
                size: cells(s, csc).ok_or(Error::Malformed)?,
            })?;
        }
    }
    if rec.nregs == 0 {
        return Ok(());
    }
    let slot = out.nodes.get_mut(out.n).ok_or(Error::TooMany)?;
    *slot = rec;
    out.n = out.n.wrapping_add(1);
    Ok(())
}

/// Reads the device nodes of the tree in `blob` (hosted tests: the result
/// is returned by value).
#[cfg(not(target_os = "none"))]
pub fn scan(blob: &[u8]) -> Result<Devices, Error> {
    let mut d = Devices::EMPTY;
    scan_into(blob, &mut d)?;
    Ok(d)
}

impl Devices {
    /// No nodes.
    pub const EMPTY: Devices = Devices {
        nodes: [Node::EMPTY; MAX_NODES],
        n: 0,
    };

    /// The nodes, in tree order.
    pub fn nodes(&self) -> &[Node] {
        self.nodes.get(..self.n).unwrap_or(&[])
    }

    /// The first node of `kind`.
    pub fn find(&self, kind: Kind) -> Option<&Node> {
        self.nodes().iter().find(|n| n.kind == kind)
    }

    /// Turns everything the host does not get into `FDT_NOP` in `blob` (the
    /// tree `scan` read, or an identical copy): withheld and engine nodes
    /// whole, and the IOMMU and MSI properties of the nodes it keeps.
    /// Returns how many nodes were removed.
    pub fn remove_from(&self, blob: &mut [u8], smmu_holds: bool) -> Result<usize, Error> {
        let mut removed = 0usize;
        for n in self.nodes() {
            if n.kind.verdict(smmu_holds) == Verdict::Host {
                for &(from, to) in n.props.get(..n.nprops).unwrap_or(&[]) {
                    nop(blob, from, to)?;
                }
            } else {
                nop(blob, n.begin, n.end)?;
                removed = removed.wrapping_add(1);
            }
        }
        Ok(removed)
    }
}

/// Overwrites the whole tokens in `[from, to)` with `FDT_NOP`.
fn nop(blob: &mut [u8], from: usize, to: usize) -> Result<(), Error> {
    if !from.is_multiple_of(4) || !to.is_multiple_of(4) || from > to {
        return Err(Error::Malformed);
    }
    let words = blob.get_mut(from..to).ok_or(Error::Malformed)?;
    for w in words.chunks_exact_mut(4) {
        w.copy_from_slice(&NOP.to_be_bytes());
    }
    Ok(())
}

/// A redistributor region's frames (GICv3: `RD_base` then `SGI_base`, 64 KiB
/// each): the first 16 pages of every 32 are `RD_base`, which the host gets
/// read-only.
pub const GICR_FRAME_PAGES: u64 = 32;
/// Pages of the `RD_base` frame at the start of each redistributor.
pub const GICR_RD_PAGES: u64 = 16;
