//! The device tree a Linux guest boots with: its memory, vCPUs (enabled by
//! PSCI through `hvc`), the GICv3, the architected timer (virtual timer
//! PPI 11 = INTID 27, the one the engine reports), the PL011 and
//! `/chosen` (command line, console, initramfs).

use alloc::string::String;
use alloc::vec::Vec;
use vm_fdt::{Error, FdtWriter};

use crate::layout::{Layout, RAM_BASE, UART_SPI};

/// What `/chosen` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chosen {
    /// The kernel command line.
    pub bootargs: String,
    /// The initramfs `[start, end)` in guest RAM, if any.
    pub initrd: Option<(u64, u64)>,
}

const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;
/// `#interrupt-cells` kinds of the GIC binding.
const SPI: u32 = 0;
const PPI: u32 = 1;
/// Level-high trigger.
const LEVEL_HIGH: u32 = 4;

/// The device-tree blob for `layout` and `chosen`.
pub fn build(layout: &Layout, chosen: &Chosen) -> Result<Vec<u8>, Error> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let c = w.begin_node("chosen")?;
    w.property_string("bootargs", &chosen.bootargs)?;
    let (uart_base, uart_size) = layout.uart();
    let (gicd, gicd_size) = layout.gicd();
    w.property_string("stdout-path", &alloc::format!("/pl011@{uart_base:x}"))?;
    if let Some((start, end)) = chosen.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    w.end_node(c)?;

    let m = w.begin_node(&alloc::format!("memory@{RAM_BASE:x}"))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[RAM_BASE, layout.ram_size])?;
    w.end_node(m)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for i in 0..layout.vcpus {
        // `reg` is the MPIDR's affinity: the engine gives vCPU n Aff0 = n.
        let cpu = w.begin_node(&alloc::format!("cpu@{i}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,arm-v8")?;
        w.property_u32("reg", i as u32)?;
        w.property_string("enable-method", "psci")?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list(
        "compatible",
        alloc::vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let (gicr, gicr_size) = layout.gicr();
    let gic = w.begin_node(&alloc::format!("intc@{gicd:x}"))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_null("interrupt-controller")?;
    w.property_array_u64("reg", &[gicd, gicd_size, gicr, gicr_size])?;
    w.property_phandle(GIC_PHANDLE)?;
    w.end_node(gic)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    // Secure physical, non-secure physical, virtual, hypervisor PPIs.
    let mut irqs = Vec::new();
    for ppi in [13, 14, 11, 10] {
        irqs.extend([PPI, ppi, LEVEL_HIGH]);
    }
    w.property_array_u32("interrupts", &irqs)?;
    w.property_null("always-on")?;
    w.end_node(timer)?;

    let clk = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", 24_000_000)?;
    w.property_phandle(CLOCK_PHANDLE)?;
    w.end_node(clk)?;

    let uart = w.begin_node(&alloc::format!("pl011@{uart_base:x}"))?;
    w.property_string_list(
        "compatible",
        alloc::vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    w.property_array_u64("reg", &[uart_base, uart_size])?;
    w.property_array_u32("interrupts", &[SPI, UART_SPI, LEVEL_HIGH])?;
    w.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    w.property_string_list(
        "clock-names",
        alloc::vec!["uartclk".into(), "apb_pclk".into()],
    )?;
    w.end_node(uart)?;

    w.end_node(root)?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_with_the_header_and_the_strings() {
        let l = Layout::new(256 << 20, 4).unwrap();
        let dtb = build(
            &l,
            &Chosen {
                bootargs: "console=ttyAMA0".into(),
                initrd: Some((0x4800_0000, 0x4810_0000)),
            },
        )
        .unwrap();
        assert_eq!(&dtb[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        let has = |s: &str| dtb.windows(s.len()).any(|w| w == s.as_bytes());
        for s in [
            "arm,gic-v3",
            "arm,psci-1.0",
            "console=ttyAMA0",
            "cpu@3",
            "pl011@c0200000",
        ] {
            assert!(has(s), "{s}");
        }
        assert!(!has("cpu@4"));
    }
}
