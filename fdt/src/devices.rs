//! Which devices of the machine's tree the host gets: the default-deny
//! device policy, the reader that finds every device node, and the edit
//! that removes what the host does not get from its copy of the tree.
//!
//! Every node that describes memory-mapped registers (a `reg` with sizes
//! under a parent whose addresses are the CPU's, or a bus with non-empty
//! `ranges`) is classified by its `compatible` (docs/devices.md says why for
//! each kind):
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
//! - Read with [`Fdt::walk`], so every read is bounds-checked; a malformed
//!   tree is an [`Error`], never a fault.
//! - The edit only overwrites whole tokens with `FDT_NOP`
//!   ([`crate::edit::nop_out`]): the tree keeps its size, structure and
//!   offsets, and stays valid.

use crate::blob::{Event, Fdt, be32};
use crate::edit::nop_out;
use crate::error::FdtError;
use crate::props::Range;

/// Most device nodes recorded.
pub const MAX_NODES: usize = 64;
/// Most address ranges recorded per node.
pub const MAX_REGS: usize = 4;
/// Most properties of one node the edit removes.
const MAX_PROP_EDITS: usize = 4;
/// Deepest nesting followed (the walker's own limit).
const MAX_DEPTH: usize = 16;
/// Bytes of a node name kept.
const NAME_BYTES: usize = 32;

/// A redistributor region's frames (GICv3: `RD_base` then `SGI_base`, 64 KiB
/// each): the first 16 pages of every 32 are `RD_base`, which the host gets
/// read-only.
pub const GICR_FRAME_PAGES: u64 = 32;
/// Pages of the `RD_base` frame at the start of each redistributor.
pub const GICR_RD_PAGES: u64 = 16;

/// What is wrong with a tree, for the device reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not a device tree, or its structure or a property is malformed.
    Malformed(FdtError),
    /// More device nodes, ranges or removable properties than recorded.
    TooMany,
}

impl From<FdtError> for Error {
    fn from(e: FdtError) -> Self {
        Self::Malformed(e)
    }
}

/// The kinds of device the policy knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Anything else. First, so that an empty record is all zeros (the EL2
    /// image keeps its copy in `.bss`, not in the image).
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
    name: [u8; NAME_BYTES],
    name_len: usize,
    /// Its address ranges (for PCIe: the ECAM, then the windows).
    regs: [Range; MAX_REGS],
    nregs: usize,
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
        name: [0; NAME_BYTES],
        name_len: 0,
        regs: [Range { base: 0, size: 0 }; MAX_REGS],
        nregs: 0,
        begin: 0,
        end: 0,
        props: [(0, 0); MAX_PROP_EDITS],
        nprops: 0,
    };

    /// The node's name (its first 32 bytes).
    pub fn name(&self) -> &str {
        let n = self.name.get(..self.name_len).unwrap_or(&[]);
        core::str::from_utf8(n).unwrap_or("?")
    }

    /// Its address ranges: `reg`, then the parent side of `ranges`.
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

/// One node being read: what its properties said so far.
#[derive(Clone, Copy)]
struct Open<'a> {
    begin: usize,
    name: &'a str,
    /// `#address-cells`, `#size-cells` for its children.
    child_cells: (u32, u32),
    /// Whether its children's addresses are the CPU's (the root, and every
    /// node under it with no or an empty `ranges`).
    identity: bool,
    kind: Kind,
    memory: bool,
    props: [(usize, usize); MAX_PROP_EDITS],
    nprops: usize,
    reg: Option<&'a [u8]>,
    ranges: Option<&'a [u8]>,
}

impl Open<'_> {
    const ROOT: Open<'static> = Open {
        begin: 0,
        name: "",
        child_cells: (2, 1),
        identity: true,
        kind: Kind::Unknown,
        memory: false,
        props: [(0, 0); MAX_PROP_EDITS],
        nprops: 0,
        reg: None,
        ranges: None,
    };
}

/// `cells` 32-bit cells at the start of `b` as one number (1 or 2 cells).
fn read_cells(b: &[u8], cells: u32) -> Option<u64> {
    match cells {
        1 => be32(b, 0).map(u64::from),
        2 => Some(u64::from(be32(b, 0)?) << 32 | u64::from(be32(b, 4)?)),
        _ => None,
    }
}

fn align4(x: usize) -> Option<usize> {
    Some(x.checked_add(3)? & !3)
}

const BAD: Error = Error::Malformed(FdtError::BadStructure);
const BAD_REG: Error = Error::Malformed(FdtError::BadReg);

impl Devices {
    /// No nodes.
    pub const EMPTY: Devices = Devices {
        nodes: [Node::EMPTY; MAX_NODES],
        n: 0,
    };

    /// Reads the device nodes of `tree` into `self` (in place: a [`Devices`]
    /// is about 13 KiB, too big for an EL2 stack to hold twice).
    pub fn scan(&mut self, tree: &Fdt<'_>) -> Result<(), Error> {
        self.n = 0;
        let mut stack = [Open::ROOT; MAX_DEPTH];
        let mut error = None;
        tree.walk(|ev| {
            if error.is_none()
                && let Err(e) = self.step(&mut stack, ev)
            {
                error = Some(e);
            }
        })?;
        error.map_or(Ok(()), Err)
    }

    /// The nodes, in tree order.
    pub fn nodes(&self) -> &[Node] {
        self.nodes.get(..self.n).unwrap_or(&[])
    }

    /// The first node of `kind`.
    pub fn find(&self, kind: Kind) -> Option<&Node> {
        self.nodes().iter().find(|n| n.kind == kind)
    }

    /// Turns everything the host does not get into `FDT_NOP` in `blob` (the
    /// tree [`Devices::scan`] read, or an identical copy): withheld and
    /// engine nodes whole, and the IOMMU and MSI properties of the nodes it
    /// keeps. Returns how many nodes were removed.
    pub fn remove_from(&self, blob: &mut [u8], smmu_holds: bool) -> Result<usize, FdtError> {
        let mut removed = 0_usize;
        for n in self.nodes() {
            if n.kind.verdict(smmu_holds) == Verdict::Host {
                for &(from, to) in n.props.get(..n.nprops).unwrap_or(&[]) {
                    nop_out(blob, from, to)?;
                }
            } else {
                nop_out(blob, n.begin, n.end)?;
                removed = removed.saturating_add(1);
            }
        }
        Ok(removed)
    }

    fn step<'a>(&mut self, stack: &mut [Open<'a>; MAX_DEPTH], ev: Event<'a>) -> Result<(), Error> {
        match ev {
            Event::Begin {
                depth,
                name,
                offset,
            } => {
                let identity = match depth.checked_sub(1) {
                    None => true,
                    Some(p) => stack.get(p).ok_or(BAD)?.identity,
                };
                *stack.get_mut(depth).ok_or(BAD)? = Open {
                    begin: offset,
                    name,
                    identity,
                    ..Open::ROOT
                };
            }
            Event::Prop {
                depth,
                name,
                value,
                offset,
            } => {
                let cur = stack.get_mut(depth).ok_or(BAD)?;
                match name {
                    "compatible" => cur.kind = Kind::from_compatible(value),
                    "device_type" => cur.memory = value.starts_with(b"memory\0"),
                    "#address-cells" => cur.child_cells.0 = be32(value, 0).ok_or(BAD)?,
                    "#size-cells" => cur.child_cells.1 = be32(value, 0).ok_or(BAD)?,
                    "reg" => cur.reg = Some(value),
                    "ranges" => {
                        cur.ranges = Some(value);
                        if !value.is_empty() {
                            cur.identity = false;
                        }
                    }
                    "iommu-map" | "iommu-map-mask" | "msi-map" | "msi-parent" => {
                        // The property's token starts 12 bytes before its
                        // value (token, length, name offset).
                        let from = offset.checked_sub(12).ok_or(BAD)?;
                        let to = offset
                            .checked_add(value.len())
                            .and_then(align4)
                            .ok_or(BAD)?;
                        let slot = cur.props.get_mut(cur.nprops).ok_or(Error::TooMany)?;
                        *slot = (from, to);
                        cur.nprops = cur.nprops.saturating_add(1);
                    }
                    _ => {}
                }
            }
            Event::End { depth, offset } => {
                let node = *stack.get(depth).ok_or(BAD)?;
                let (parent_cells, parent_identity) = match depth.checked_sub(1) {
                    None => ((2, 1), true),
                    Some(p) => {
                        let p = stack.get(p).ok_or(BAD)?;
                        (p.child_cells, p.identity)
                    }
                };
                if !node.memory && parent_identity {
                    let end = offset.checked_add(4).ok_or(BAD)?;
                    self.finish(&node, parent_cells, end)?;
                }
            }
        }
        Ok(())
    }

    /// Records `node` (just closed, its tokens ending at `end`) if it
    /// describes registers.
    fn finish(
        &mut self,
        node: &Open<'_>,
        parent_cells: (u32, u32),
        end: usize,
    ) -> Result<(), Error> {
        let (ac, sc) = parent_cells;
        let mut rec = Node::EMPTY;
        rec.kind = node.kind;
        let n = node.name.len().min(NAME_BYTES);
        if let (Some(dst), Some(src)) = (rec.name.get_mut(..n), node.name.as_bytes().get(..n)) {
            dst.copy_from_slice(src);
        }
        rec.name_len = n;
        rec.begin = node.begin;
        rec.end = end;
        rec.props = node.props;
        rec.nprops = node.nprops;
        let mut push = |r: Range| -> Result<(), Error> {
            let slot = rec.regs.get_mut(rec.nregs).ok_or(Error::TooMany)?;
            *slot = r;
            rec.nregs = rec.nregs.saturating_add(1);
            Ok(())
        };
        // `reg`, in the parent's address space (only if it has sizes: a `reg`
        // with `#size-cells = 0` names a CPU or a bus address, not
        // registers; cell counts the reader does not know leave it out).
        if let Some(reg) = node.reg
            && (1..=2).contains(&ac)
            && (1..=2).contains(&sc)
        {
            let a_len = (ac as usize).saturating_mul(4);
            let entry = ((ac.saturating_add(sc)) as usize).saturating_mul(4);
            for e in reg.chunks_exact(entry) {
                push(Range {
                    base: read_cells(e, ac).ok_or(BAD_REG)?,
                    size: read_cells(e.get(a_len..).ok_or(BAD_REG)?, sc).ok_or(BAD_REG)?,
                })?;
            }
        }
        // Non-empty `ranges`: what the node's children are reached through
        // (the parent addresses), e.g. the PCIe windows or a platform bus.
        let (cac, csc) = node.child_cells;
        if let Some(ranges) = node.ranges
            && !ranges.is_empty()
        {
            if !(1..=2).contains(&ac) || !(1..=2).contains(&csc) || cac > 3 {
                return Err(BAD_REG);
            }
            let child_len = (cac as usize).saturating_mul(4);
            let parent_end = (cac.saturating_add(ac) as usize).saturating_mul(4);
            let entry = (cac.saturating_add(ac).saturating_add(csc) as usize).saturating_mul(4);
            for e in ranges.chunks_exact(entry) {
                push(Range {
                    base: read_cells(e.get(child_len..).ok_or(BAD_REG)?, ac).ok_or(BAD_REG)?,
                    size: read_cells(e.get(parent_end..).ok_or(BAD_REG)?, csc).ok_or(BAD_REG)?,
                })?;
            }
        }
        if rec.nregs == 0 {
            return Ok(());
        }
        let slot = self.nodes.get_mut(self.n).ok_or(Error::TooMany)?;
        *slot = rec;
        self.n = self.n.saturating_add(1);
        Ok(())
    }
}

/// Reads the device nodes of `tree` (host tests and tools: the result is
/// returned by value).
pub fn scan(tree: &Fdt<'_>) -> Result<Devices, Error> {
    let mut d = Devices::EMPTY;
    d.scan(tree)?;
    Ok(d)
}
