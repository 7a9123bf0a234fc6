//! VMSAv8-64 Stage-2 descriptors, 4 KiB granule (Arm ARM D8.3).
//!
//! Layout of a block or page descriptor:
//!
//! | bits  | field | meaning |
//! |-------|-------|---------|
//! | 0     | valid | |
//! | 1     | type  | 1 = table (levels 0–2) or page (level 3); 0 = block |
//! | 5:2   | MemAttr | with `HCR_EL2.FWB = 0`: 0b1111 Normal WB, 0b0001 Device-nGnRE; with `HCR_EL2.FWB = 1`: 0b0110 Normal WB whatever stage 1 says, 0b0001 Device-nGnRE |
//! | 7:6   | S2AP  | bit 6 = readable, bit 7 = writable |
//! | 9:8   | SH    | 0b11 inner shareable |
//! | 10    | AF    | access flag, always set (no access-flag faults) |
//! | 47:12 | output address | |
//! | 54:53 | XN    | 0b00 executable, 0b10 never executable |
//! | 58:55 | software | bit 55: [`SW_BORROWED`] |
//!
//! A table descriptor is `next-level table address | 0b11`.

use crate::addr::PhysAddr;

/// Valid bit.
pub const VALID: u64 = 1;
/// Table (levels 0–2) or page (level 3) when set with [`VALID`].
pub const TYPE_TABLE_OR_PAGE: u64 = 1 << 1;
/// MemAttr field shift.
pub const MEMATTR_SHIFT: u32 = 2;
/// MemAttr for Normal memory, inner and outer write-back cacheable.
pub const MEMATTR_NORMAL_WB: u64 = 0b1111 << MEMATTR_SHIFT;
/// MemAttr with `HCR_EL2.FWB = 1` (FEAT_S2FWB): Normal write-back, forced
/// whatever the stage-1 attributes say, so no world can make a non-cacheable
/// alias of RAM.
pub const MEMATTR_NORMAL_FORCED_WB: u64 = 0b0110 << MEMATTR_SHIFT;
/// MemAttr for Device-nGnRE memory (the same encoding with or without FWB).
pub const MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << MEMATTR_SHIFT;
/// MemAttr field mask.
pub const MEMATTR_MASK: u64 = 0b1111 << MEMATTR_SHIFT;
/// S2AP read permission.
pub const S2AP_R: u64 = 1 << 6;
/// S2AP write permission.
pub const S2AP_W: u64 = 1 << 7;
/// Inner shareable.
pub const SH_INNER: u64 = 0b11 << 8;
/// Access flag.
pub const AF: u64 = 1 << 10;
/// Output address mask (bits 47:12).
pub const OA_MASK: u64 = 0x0000_ffff_ffff_f000;
/// XN = 0b10: execute never at EL1 and EL0.
pub const XN: u64 = 0b10 << 53;
/// XN field mask.
pub const XN_MASK: u64 = 0b11 << 53;
/// Software bit: this VM mapping is of a page the VM borrows (the host's,
/// shared with it), not one it owns.
pub const SW_BORROWED: u64 = 1 << 55;

/// Access permissions of a leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perms {
    /// Readable.
    pub r: bool,
    /// Writable.
    pub w: bool,
    /// Executable.
    pub x: bool,
}

impl Perms {
    /// Read, write, execute.
    pub const RWX: Perms = Perms {
        r: true,
        w: true,
        x: true,
    };
    /// Read, write.
    pub const RW: Perms = Perms {
        r: true,
        w: true,
        x: false,
    };

    /// From the ABI's permission bits (`isola_abi::perms`): `None` if any
    /// undefined bit is set or no permission at all is requested.
    pub const fn from_abi(bits: u64) -> Option<Perms> {
        use isola_abi::perms;
        if bits & !perms::ALL != 0 || bits == 0 {
            return None;
        }
        Some(Perms {
            r: bits & perms::R != 0,
            w: bits & perms::W != 0,
            x: bits & perms::X != 0,
        })
    }

    /// Back to the ABI's permission bits.
    pub const fn to_abi(self) -> u64 {
        use isola_abi::perms;
        (if self.r { perms::R } else { 0 })
            | (if self.w { perms::W } else { 0 })
            | (if self.x { perms::X } else { 0 })
    }
}

/// The memory type of a leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemType {
    /// RAM: Normal, write-back, inner shareable; the stage-1 attributes
    /// combine with it (`HCR_EL2.FWB = 0`), so a world may still map it
    /// non-cacheable.
    Normal,
    /// RAM with `HCR_EL2.FWB = 1`: Normal write-back, inner shareable,
    /// whatever stage 1 says (no non-cacheable alias can exist).
    NormalForcedWb,
    /// MMIO: Device-nGnRE.
    Device,
}

/// A raw Stage-2 descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Desc(pub u64);

impl Desc {
    /// The invalid descriptor.
    pub const INVALID: Desc = Desc(0);

    /// Whether the valid bit is set.
    pub const fn is_valid(self) -> bool {
        self.0 & VALID != 0
    }

    /// Whether this is a table descriptor at `level` (< 3).
    pub const fn is_table(self, level: u8) -> bool {
        level < 3 && self.is_valid() && self.0 & TYPE_TABLE_OR_PAGE != 0
    }

    /// Whether this is a leaf (block or page) at `level`.
    pub const fn is_leaf(self, level: u8) -> bool {
        self.is_valid() && !self.is_table(level)
    }

    /// The output address (next table or mapped memory).
    pub const fn addr(self) -> PhysAddr {
        PhysAddr::new(self.0 & OA_MASK)
    }

    /// A table descriptor pointing at `table`.
    pub const fn table(table: PhysAddr) -> Desc {
        Desc((table.raw() & OA_MASK) | VALID | TYPE_TABLE_OR_PAGE)
    }

    /// A leaf descriptor at `level` mapping `pa`.
    pub const fn leaf(pa: PhysAddr, level: u8, perms: Perms, mem: MemType, sw: u64) -> Desc {
        let mut d = (pa.raw() & OA_MASK) | VALID | AF;
        if level == 3 {
            d |= TYPE_TABLE_OR_PAGE;
        }
        d |= match mem {
            MemType::Normal => MEMATTR_NORMAL_WB | SH_INNER,
            MemType::NormalForcedWb => MEMATTR_NORMAL_FORCED_WB | SH_INNER,
            MemType::Device => MEMATTR_DEVICE_NGNRE,
        };
        if perms.r {
            d |= S2AP_R;
        }
        if perms.w {
            d |= S2AP_W;
        }
        if !perms.x {
            d |= XN;
        }
        Desc(d | (sw & SW_BORROWED))
    }

    /// The permissions of a leaf.
    pub const fn perms(self) -> Perms {
        Perms {
            r: self.0 & S2AP_R != 0,
            w: self.0 & S2AP_W != 0,
            x: self.0 & XN_MASK == 0,
        }
    }

    /// The memory type of a leaf.
    pub const fn mem_type(self) -> MemType {
        match self.0 & MEMATTR_MASK {
            MEMATTR_NORMAL_WB => MemType::Normal,
            MEMATTR_NORMAL_FORCED_WB => MemType::NormalForcedWb,
            _ => MemType::Device,
        }
    }

    /// Whether the [`SW_BORROWED`] software bit is set.
    pub const fn borrowed(self) -> bool {
        self.0 & SW_BORROWED != 0
    }

    /// The same leaf one level down, mapping `pa` (used to split a block).
    pub const fn with_level_and_addr(self, level: u8, pa: PhysAddr) -> Desc {
        let mut d = (self.0 & !OA_MASK & !TYPE_TABLE_OR_PAGE) | (pa.raw() & OA_MASK);
        if level == 3 {
            d |= TYPE_TABLE_OR_PAGE;
        }
        Desc(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_and_block_encodings() {
        let p = Desc::leaf(PhysAddr::new(0x4000_1000), 3, Perms::RW, MemType::Normal, 0);
        assert_eq!(
            p.0,
            0x4000_1000
                | 0b11
                | (0b1111 << 2)
                | (0b11 << 6)
                | (0b11 << 8)
                | (1 << 10)
                | (0b10 << 53)
        );
        assert!(p.is_leaf(3) && !p.is_table(3));
        assert_eq!(p.perms(), Perms::RW);
        let b = Desc::leaf(
            PhysAddr::new(0x4020_0000),
            2,
            Perms::RWX,
            MemType::Device,
            SW_BORROWED,
        );
        assert_eq!(b.0 & 0b11, 0b01, "block descriptor");
        assert!(b.is_leaf(2) && !b.is_table(2));
        assert_eq!(b.mem_type(), MemType::Device);
        assert!(b.borrowed());
        assert_eq!(b.perms(), Perms::RWX);
        let f = Desc::leaf(
            PhysAddr::new(0x4000_1000),
            3,
            Perms::RW,
            MemType::NormalForcedWb,
            0,
        );
        assert_eq!(f.0 & MEMATTR_MASK, 0b0110 << 2, "FWB: forced write-back");
        assert_eq!(f.mem_type(), MemType::NormalForcedWb);
        let t = Desc::table(PhysAddr::new(0x4000_3000));
        assert!(t.is_table(1) && !t.is_leaf(1));
        let s = b.with_level_and_addr(3, PhysAddr::new(0x4020_1000));
        assert_eq!(s.0 & 0b11, 0b11);
        assert_eq!(s.addr(), PhysAddr::new(0x4020_1000));
        assert_eq!(s.perms(), b.perms());
    }

    #[test]
    fn every_permission_set_round_trips_through_a_leaf() {
        for bits in 1..8 {
            let p = Perms::from_abi(bits).unwrap();
            for level in [2, 3] {
                let d = Desc::leaf(PhysAddr::new(0x4020_0000), level, p, MemType::Normal, 0);
                assert_eq!(d.perms(), p, "{bits:#b} at level {level}");
                assert_eq!(d.mem_type(), MemType::Normal);
            }
        }
    }

    #[test]
    fn abi_perms_reject_unknown_and_empty() {
        assert_eq!(Perms::from_abi(0), None);
        assert_eq!(Perms::from_abi(8), None);
        assert_eq!(Perms::from_abi(isola_abi::perms::ALL), Some(Perms::RWX));
        for bits in 1..8 {
            assert_eq!(Perms::from_abi(bits).map(Perms::to_abi), Some(bits));
        }
    }
}
