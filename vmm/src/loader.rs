//! Loading an arm64 Linux `Image` (Documentation/arch/arm64/booting.rst):
//! the 64-byte header, where kernel, initramfs and device tree go in guest
//! RAM, and the registers the boot vCPU starts with.
//!
//! The kernel goes `text_offset` above a 2 MiB-aligned base (RAM's start),
//! the initramfs at the next 2 MiB boundary after the kernel's
//! `image_size` (its whole footprint, BSS included), the device tree at the
//! next one after that; the boot vCPU starts at the kernel's first byte
//! with `x0` = the device tree's address (and `x1..x3` = 0, which the
//! engine's fresh context already is), MMU off, D A I F masked.

use crate::layout::{Layout, RAM_BASE};

/// `ARM\x64`, little-endian, at offset 56.
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
/// Alignment of the kernel's base and of what follows it.
const ALIGN_2M: u64 = 2 << 20;
/// Largest device tree the boot protocol allows.
pub const DTB_MAX: u64 = 2 << 20;

/// The fields of an `Image` header the loader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Load offset from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies once running (0 in pre-3.17 kernels).
    pub image_size: u64,
    /// Flags: bit 0 big-endian, bits 2:1 page size, bit 3 placement.
    pub flags: u64,
}

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Shorter than the header, or no `ARM\x64` magic.
    NotAnImage,
    /// A big-endian kernel.
    BigEndian,
    /// Kernel, initramfs and device tree do not fit in guest RAM.
    TooBig,
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Parses the header of `image`.
pub fn parse_header(image: &[u8]) -> Result<ImageHeader, LoadError> {
    let magic = image
        .get(56..60)
        .and_then(|m| m.try_into().ok())
        .map(u32::from_le_bytes);
    if magic != Some(IMAGE_MAGIC) {
        return Err(LoadError::NotAnImage);
    }
    let h = ImageHeader {
        text_offset: u64_at(image, 8).ok_or(LoadError::NotAnImage)?,
        image_size: u64_at(image, 16).ok_or(LoadError::NotAnImage)?,
        flags: u64_at(image, 24).ok_or(LoadError::NotAnImage)?,
    };
    if h.flags & 1 != 0 {
        return Err(LoadError::BigEndian);
    }
    Ok(h)
}

/// Where everything goes, and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// The kernel's load address, also its entry point.
    pub kernel: u64,
    /// The kernel's footprint in bytes (`image_size`, or the file's
    /// length for an old image).
    pub kernel_size: u64,
    /// The initramfs `[start, end)`, if one is loaded.
    pub initrd: Option<(u64, u64)>,
    /// Where the device tree goes (at most [`DTB_MAX`] bytes).
    pub dtb: u64,
}

impl BootPlan {
    /// `(pc, x0)` of the boot vCPU.
    pub fn entry(&self) -> (u64, u64) {
        (self.kernel, self.dtb)
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a.checked_sub(1)?)? & !(a.checked_sub(1)?))
}

/// Plans the load of a kernel of `image_len` bytes with header `h` and an
/// initramfs of `initrd_len` bytes (0: none) into `layout`'s RAM.
pub fn plan(
    layout: &Layout,
    h: &ImageHeader,
    image_len: u64,
    initrd_len: u64,
) -> Result<BootPlan, LoadError> {
    // A pre-3.17 image (image_size 0) is loaded 0x80000 in, as it expects.
    let (text_offset, size) = if h.image_size == 0 {
        (0x8_0000, image_len)
    } else {
        (h.text_offset, h.image_size.max(image_len))
    };
    let kernel = RAM_BASE.checked_add(text_offset).ok_or(LoadError::TooBig)?;
    let kernel_end = kernel.checked_add(size).ok_or(LoadError::TooBig)?;
    let mut next = align_up(kernel_end, ALIGN_2M).ok_or(LoadError::TooBig)?;
    let initrd = if initrd_len > 0 {
        let end = next.checked_add(initrd_len).ok_or(LoadError::TooBig)?;
        let r = (next, end);
        next = align_up(end, ALIGN_2M).ok_or(LoadError::TooBig)?;
        Some(r)
    } else {
        None
    };
    let dtb = next;
    let dtb_end = dtb.checked_add(DTB_MAX).ok_or(LoadError::TooBig)?;
    if dtb_end > layout.ram_end() {
        return Err(LoadError::TooBig);
    }
    Ok(BootPlan {
        kernel,
        kernel_size: size,
        initrd,
        dtb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, flags: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        h
    }

    #[test]
    fn kernel_initrd_and_dtb_in_order_on_2mib_boundaries() {
        let l = Layout::new(256 << 20, 4).unwrap();
        let h = parse_header(&header(0, 0x2a0_0000, 0b1010)).unwrap();
        let p = plan(&l, &h, 0x200_0000, 0x10_0001).unwrap();
        assert_eq!(p.kernel, RAM_BASE);
        assert_eq!(p.initrd, Some((0x42a0_0000, 0x42b0_0001)));
        assert_eq!(p.dtb, 0x42c0_0000);
        assert_eq!(p.entry(), (RAM_BASE, 0x42c0_0000));
        // Without an initramfs the tree follows the kernel.
        assert_eq!(plan(&l, &h, 0x200_0000, 0).unwrap().dtb, 0x42a0_0000);
    }

    #[test]
    fn bad_images_and_too_little_ram() {
        assert_eq!(parse_header(&[0; 63]), Err(LoadError::NotAnImage));
        assert_eq!(parse_header(&[0; 64]), Err(LoadError::NotAnImage));
        assert_eq!(parse_header(&header(0, 1, 1)), Err(LoadError::BigEndian));
        let l = Layout::new(4 << 20, 1).unwrap();
        let h = parse_header(&header(0, 3 << 20, 0)).unwrap();
        assert_eq!(plan(&l, &h, 3 << 20, 0), Err(LoadError::TooBig));
        // An old image: loaded 512 KiB in.
        let old = parse_header(&header(0, 0, 0)).unwrap();
        let l = Layout::new(16 << 20, 1).unwrap();
        assert_eq!(
            plan(&l, &old, 1 << 20, 0).unwrap().kernel,
            RAM_BASE + 0x8_0000
        );
    }
}
