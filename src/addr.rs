//! Typed addresses: physical addresses, intermediate physical addresses and
//! page frame numbers.
//!
//! Invariants: every constructor either checks its input or is named for the
//! rounding it does; no conversion truncates silently (conversions that can
//! overflow return `Option`). The three types never mix implicitly, so an IPA
//! cannot be passed where a physical address is meant.

use core::fmt;

/// log2 of the page size: the 4 KiB granule is the unit of ownership.
pub const PAGE_SHIFT: u32 = 12;
/// Size of a page in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of the offset bits inside a page.
pub const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// Highest physical address bit the engine supports (exclusive): 48 bits, the
/// output address size of VMSAv8-64 without FEAT_LPA.
pub const PA_BITS: u32 = 48;

macro_rules! address {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            /// The address, unchecked: any `u64` is a byte address.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The address if it is page aligned, else `None`.
            pub const fn new_page_aligned(raw: u64) -> Option<Self> {
                if raw & PAGE_MASK == 0 { Some(Self(raw)) } else { None }
            }

            /// The raw value.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// Whether the address is page aligned.
            pub const fn is_page_aligned(self) -> bool {
                self.0 & PAGE_MASK == 0
            }

            /// Whether the address is aligned to `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & align.wrapping_sub(1) == 0
            }

            /// The start of the page containing this address.
            pub const fn page_floor(self) -> Self {
                Self(self.0 & !PAGE_MASK)
            }

            /// The address rounded down to `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !align.wrapping_sub(1))
            }

            /// `self + bytes`, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self + pages * PAGE_SIZE`, or `None` on overflow.
            pub const fn checked_add_pages(self, pages: u64) -> Option<Self> {
                match pages.checked_mul(PAGE_SIZE) {
                    Some(b) => self.checked_add(b),
                    None => None,
                }
            }

            /// Bytes from `base` up to `self`, or `None` if `self < base`.
            pub const fn checked_offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
    };
}

address!(
    /// A physical address (the output of Stage-2, the address of RAM).
    PhysAddr
);
address!(
    /// An intermediate physical address: what a guest (or the host) believes
    /// is physical, the input of Stage-2.
    Ipa
);

/// A physical page frame number (`PhysAddr >> PAGE_SHIFT`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Pfn(u64);

impl Pfn {
    /// The frame number, unchecked.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The frame containing `pa` (rounds down).
    pub const fn containing(pa: PhysAddr) -> Self {
        Self(pa.raw() >> PAGE_SHIFT)
    }

    /// The frame starting at `pa`, or `None` if `pa` is not page aligned.
    pub const fn from_aligned(pa: PhysAddr) -> Option<Self> {
        if pa.is_page_aligned() {
            Some(Self(pa.raw() >> PAGE_SHIFT))
        } else {
            None
        }
    }

    /// The raw frame number.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The frame's first byte, or `None` if it does not fit in 64 bits.
    pub const fn checked_addr(self) -> Option<PhysAddr> {
        if self.0 >> (64 - PAGE_SHIFT) != 0 {
            None
        } else {
            Some(PhysAddr::new(self.0 << PAGE_SHIFT))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_constructors_reject_offsets() {
        assert_eq!(
            PhysAddr::new_page_aligned(0x4000_1000).map(PhysAddr::raw),
            Some(0x4000_1000)
        );
        assert_eq!(PhysAddr::new_page_aligned(0x4000_1008), None);
        assert_eq!(Ipa::new_page_aligned(1), None);
        assert_eq!(Pfn::from_aligned(PhysAddr::new(0x2001)), None);
        assert_eq!(Pfn::from_aligned(PhysAddr::new(0x2000)), Some(Pfn::new(2)));
    }

    #[test]
    fn conversions_do_not_truncate() {
        assert_eq!(Pfn::new(u64::MAX).checked_addr(), None);
        assert_eq!(
            Pfn::new((1 << 52) - 1).checked_addr(),
            Some(PhysAddr::new(!PAGE_MASK))
        );
        assert_eq!(PhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(PhysAddr::new(0).checked_add_pages(u64::MAX), None);
        assert_eq!(
            PhysAddr::new(0x1000).checked_offset_from(PhysAddr::new(0x2000)),
            None
        );
        assert_eq!(Pfn::containing(PhysAddr::new(0x1fff)), Pfn::new(1));
    }

    #[test]
    fn alignment_helpers() {
        let a = Ipa::new(0x4020_3456);
        assert_eq!(a.page_floor(), Ipa::new(0x4020_3000));
        assert_eq!(a.align_down(1 << 21), Ipa::new(0x4020_0000));
        assert!(Ipa::new(0x4020_0000).is_aligned(1 << 21));
        assert!(!a.is_aligned(1 << 21));
    }
}
