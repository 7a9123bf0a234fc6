//! What isola needs to know about the machine, read from its tree.

use crate::blob::{Event, Fdt, be32};
use crate::error::FdtError;
use crate::props::{Range, reg_entry, strlist_contains};

/// Most CPUs a [`Platform`] records (isola's limit, `isola_layout`).
pub const MAX_CPUS: usize = isola_layout::MAX_CPUS;
/// Most RAM ranges a [`Platform`] records.
pub const MAX_RAM: usize = 8;
/// Most redistributor regions a [`Platform`] records.
pub const MAX_GICR: usize = 4;

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
pub(crate) struct NodeProps<'a> {
    pub(crate) name: &'a str,
    pub(crate) device_type: &'a [u8],
    compatible: &'a [u8],
    reg: &'a [u8],
    method: &'a [u8],
    redist_regions: Option<u32>,
    address_cells: Option<u32>,
    size_cells: Option<u32>,
}

impl<'a> NodeProps<'a> {
    pub(crate) fn named(name: &'a str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    pub(crate) fn take(&mut self, name: &str, value: &'a [u8]) {
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
                Event::Begin { depth: 1, name, .. } => depth1 = NodeProps::named(name),
                Event::Begin { depth: 2, name, .. } => depth2 = NodeProps::named(name),
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
                Event::End { depth: 2, .. } if depth1.name == "cpus" => {
                    if depth2.device_type.starts_with(b"cpu\0") {
                        let ac = depth1.address_cells.unwrap_or(1);
                        let r = reg_entry(depth2.reg, ac, 0, 0)?.ok_or(FdtError::BadReg)?;
                        if let Some(slot) = p.cpus.get_mut(p.cpu_count) {
                            *slot = r.base;
                            p.cpu_count = p.cpu_count.saturating_add(1);
                        }
                    }
                }
                Event::End { depth: 1, .. } => {
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
        Event::Begin { depth: 1, name, .. } => in_chosen = name == "chosen",
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
