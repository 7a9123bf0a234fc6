//! The guest's physical address map.
//!
//! RAM starts at 1 GiB, as on QEMU's `virt` board, and ends below the
//! engine's guest MMIO window (accesses there exit to the host as `Mmio`;
//! anywhere else unmapped they are `MemFault`s), which holds every emulated
//! device: the GICv3 distributor, one redistributor (two 64 KiB frames)
//! per vCPU, and the PL011.

/// Guest RAM base (IPA).
pub const RAM_BASE: u64 = 0x4000_0000;
/// The engine's guest MMIO window on QEMU virt (`boot/src/engine.rs`):
/// `[start, end)`.
pub const MMIO_WINDOW: (u64, u64) = (0xC000_0000, 0x1_0000_0000);
/// The distributor's offset in the MMIO window, and its size.
pub const GICD: (u64, u64) = (0, 0x1_0000);
/// The first redistributor's offset; vCPU `n`'s is `n * GICR_STRIDE` above.
pub const GICR_OFFSET: u64 = 0x10_0000;
/// One redistributor: the RD and SGI frames.
pub const GICR_STRIDE: u64 = 0x2_0000;
/// The PL011's offset and size.
pub const UART: (u64, u64) = (0x20_0000, 0x1000);
/// Bytes of the window the devices use.
const DEVICES_END: u64 = 0x20_1000;
/// The UART's SPI (INTID 33 = SPI 1).
pub const UART_SPI: u32 = 1;
/// Most vCPUs a guest may have (the engine's limit).
pub const MAX_VCPUS: usize = 8;

/// A guest's RAM size and vCPU count, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// RAM bytes from [`RAM_BASE`] (a multiple of 2 MiB).
    pub ram_size: u64,
    /// vCPUs.
    pub vcpus: usize,
    /// Base of the engine's guest MMIO window (see [`MMIO_WINDOW`]).
    pub mmio: u64,
}

/// Why a layout is impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// RAM empty, not a multiple of 2 MiB, or overlapping the MMIO window.
    BadRam,
    /// The MMIO window is too small for the devices.
    BadWindow,
    /// No vCPU, or more than [`MAX_VCPUS`].
    BadVcpus,
}

impl Layout {
    /// A layout with `ram_size` bytes of RAM and `vcpus` vCPUs, its
    /// devices in the engine's MMIO window on QEMU virt.
    pub fn new(ram_size: u64, vcpus: usize) -> Result<Self, LayoutError> {
        Self::with_window(ram_size, vcpus, MMIO_WINDOW)
    }

    /// The same with the engine's guest MMIO window at `[start, end)`.
    pub fn with_window(
        ram_size: u64,
        vcpus: usize,
        (start, end): (u64, u64),
    ) -> Result<Self, LayoutError> {
        let ram_end = RAM_BASE.checked_add(ram_size);
        let disjoint = ram_end.is_some_and(|e| e <= start || RAM_BASE >= end);
        if ram_size == 0 || !ram_size.is_multiple_of(2 << 20) || !disjoint {
            return Err(LayoutError::BadRam);
        }
        if start.checked_add(DEVICES_END).is_none_or(|e| e > end) {
            return Err(LayoutError::BadWindow);
        }
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(LayoutError::BadVcpus);
        }
        Ok(Self {
            ram_size,
            vcpus,
            mmio: start,
        })
    }

    /// The distributor: base and size.
    pub fn gicd(&self) -> (u64, u64) {
        (self.mmio.wrapping_add(GICD.0), GICD.1)
    }

    /// The UART: base and size.
    pub fn uart(&self) -> (u64, u64) {
        (self.mmio.wrapping_add(UART.0), UART.1)
    }

    /// One past the last RAM byte.
    pub fn ram_end(&self) -> u64 {
        RAM_BASE.wrapping_add(self.ram_size)
    }

    /// The redistributor region: base and size for all vCPUs.
    pub fn gicr(&self) -> (u64, u64) {
        (
            self.mmio.wrapping_add(GICR_OFFSET),
            GICR_STRIDE.wrapping_mul(self.vcpus as u64),
        )
    }

    /// Whether `ipa` is guest RAM.
    pub fn is_ram(&self, ipa: u64) -> bool {
        (RAM_BASE..self.ram_end()).contains(&ipa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_sit_in_the_mmio_window_and_ram_below_it() {
        let l = Layout::new(512 << 20, 8).unwrap();
        for (base, size) in [l.gicd(), l.gicr(), l.uart()] {
            assert!(base >= MMIO_WINDOW.0 && base + size <= MMIO_WINDOW.1);
        }
        let (gicr, gicr_size) = l.gicr();
        assert!(l.gicd().0 + GICD.1 <= gicr && gicr + gicr_size <= l.uart().0);
        assert_eq!(l.uart().0, 0xC020_0000);
        assert_eq!(
            Layout::with_window(2 << 20, 1, (0x0900_0000, 0x0910_0000)),
            Err(LayoutError::BadWindow)
        );
        assert!(Layout::with_window(2 << 20, 1, (0x0900_0000, 0x0a00_0000)).is_ok());
        assert!(l.is_ram(RAM_BASE) && !l.is_ram(l.ram_end()));
        assert_eq!(Layout::new(0, 1), Err(LayoutError::BadRam));
        assert_eq!(Layout::new(1 << 20, 1), Err(LayoutError::BadRam));
        assert_eq!(Layout::new(3 << 30, 1), Err(LayoutError::BadRam));
        assert_eq!(
            Layout::with_window(2 << 20, 1, (RAM_BASE, RAM_BASE + (1 << 30))),
            Err(LayoutError::BadRam)
        );
        assert_eq!(Layout::new(2 << 20, 9), Err(LayoutError::BadVcpus));
    }
}
