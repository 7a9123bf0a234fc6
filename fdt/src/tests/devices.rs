//! The device policy (`devices.rs`): on a tree shaped like QEMU virt's with
//! every kind of device it has, each node gets its verdict, the edit removes
//! what the host must not see and keeps the tree valid, and a damaged tree
//! never makes the reader panic.

use super::{build, cells, node, string};
use crate::devices::{self as dev, Kind, Verdict};
use crate::{self as fdt, Event, Fdt, Range};

fn device(name: &'static str, compatible: &[u8], reg: &[u32]) -> super::Node {
    node(
        name,
        vec![("compatible", compatible.to_vec()), ("reg", cells(reg))],
        vec![],
    )
}

fn scan(blob: &[u8]) -> Result<dev::Devices, dev::Error> {
    dev::scan(&Fdt::new(blob)?)
}

/// QEMU virt's tree with `iommu=smmuv3,highmem-ecam=off,highmem-mmio=off`
/// (its ITS on), as `-machine dumpdtb` shows it, minus what the policy
/// does not read.
fn virt() -> Vec<u8> {
    let mut children = vec![
        node(
            "memory@40000000",
            vec![
                ("device_type", string("memory")),
                ("reg", cells(&[0, 0x4000_0000, 0, 0x8000_0000])),
            ],
            vec![],
        ),
        node(
            "platform-bus@c000000",
            vec![
                ("#address-cells", cells(&[1])),
                ("#size-cells", cells(&[1])),
                ("ranges", cells(&[0, 0, 0x0c00_0000, 0x0200_0000])),
                ("compatible", b"qemu,platform\0simple-bus\0".to_vec()),
            ],
            vec![],
        ),
        device(
            "fw-cfg@9020000",
            b"qemu,fw-cfg-mmio\0",
            &[0, 0x0902_0000, 0, 0x18],
        ),
    ];
    for i in 0..32u32 {
        let base = 0x0a00_0000_u32.wrapping_add(i.wrapping_mul(0x200));
        children.push(device(
            String::leak(format!("virtio_mmio@{base:x}")),
            b"virtio,mmio\0",
            &[0, base, 0, 0x200],
        ));
    }
    children.extend([
        device(
            "pl061@9030000",
            b"arm,pl061\0arm,primecell\0",
            &[0, 0x0903_0000, 0, 0x1000],
        ),
        device(
            "smmuv3@9050000",
            b"arm,smmu-v3\0",
            &[0, 0x0905_0000, 0, 0x20000],
        ),
        node(
            "pcie@10000000",
            vec![
                ("iommu-map", cells(&[0, 0x800b, 0, 0x10000])),
                (
                    "ranges",
                    cells(&[
                        0x0100_0000,
                        0,
                        0,
                        0,
                        0x3eff_0000,
                        0,
                        0x10000,
                        0x0200_0000,
                        0,
                        0x1000_0000,
                        0,
                        0x1000_0000,
                        0,
                        0x2eff_0000,
                    ]),
                ),
                ("reg", cells(&[0, 0x3f00_0000, 0, 0x0100_0000])),
                ("msi-map", cells(&[0, 0x800a, 0, 0x10000])),
                ("#size-cells", cells(&[2])),
                ("#address-cells", cells(&[3])),
                ("device_type", string("pci")),
                ("compatible", string("pci-host-ecam-generic")),
            ],
            vec![],
        ),
        device(
            "pl031@9010000",
            b"arm,pl031\0arm,primecell\0",
            &[0, 0x0901_0000, 0, 0x1000],
        ),
        device(
            "pl011@9000000",
            b"arm,pl011\0arm,primecell\0",
            &[0, 0x0900_0000, 0, 0x1000],
        ),
        node(
            "intc@8000000",
            vec![
                (
                    "reg",
                    cells(&[0, 0x0800_0000, 0, 0x10000, 0, 0x080a_0000, 0, 0xf6_0000]),
                ),
                ("compatible", string("arm,gic-v3")),
                ("ranges", vec![]),
                ("#size-cells", cells(&[2])),
                ("#address-cells", cells(&[2])),
            ],
            vec![device(
                "its@8080000",
                b"arm,gic-v3-its\0",
                &[0, 0x0808_0000, 0, 0x20000],
            )],
        ),
        device(
            "flash@0",
            b"cfi-flash\0",
            &[0, 0, 0, 0x0400_0000, 0, 0x0400_0000, 0, 0x0400_0000],
        ),
        node(
            "cpus",
            vec![
                ("#address-cells", cells(&[1])),
                ("#size-cells", cells(&[0])),
            ],
            vec![node("cpu@0", vec![("reg", cells(&[0]))], vec![])],
        ),
        node(
            "chosen",
            vec![("bootargs", string("isola.test=dma"))],
            vec![],
        ),
    ]);
    build(&node(
        "",
        vec![
            ("#address-cells", cells(&[2])),
            ("#size-cells", cells(&[2])),
        ],
        children,
    ))
}

#[test]
fn every_device_gets_its_verdict() {
    let blob = virt();
    let d = scan(&blob).unwrap();
    let verdicts: Vec<(String, Kind, Verdict)> = d
        .nodes()
        .iter()
        .map(|n| (n.name().to_string(), n.kind, n.kind.verdict(true)))
        .collect();
    let of = |name: &str| verdicts.iter().find(|v| v.0 == name).unwrap().2;
    assert_eq!(of("pl011@9000000"), Verdict::Host);
    assert_eq!(of("pl031@9010000"), Verdict::Host);
    assert_eq!(of("pl061@9030000"), Verdict::Host);
    assert_eq!(of("intc@8000000"), Verdict::Host);
    assert_eq!(of("pcie@10000000"), Verdict::Host);
    assert_eq!(of("smmuv3@9050000"), Verdict::Engine);
    for w in [
        "fw-cfg@9020000",
        "virtio_mmio@a000000",
        "virtio_mmio@a003e00",
        "its@8080000",
        "flash@0",
        "platform-bus@c000000",
    ] {
        assert_eq!(of(w), Verdict::Withheld, "{w}");
    }
    assert!(
        verdicts
            .iter()
            .all(|v| !v.0.starts_with("memory") && !v.0.starts_with("cpu"))
    );
    assert_eq!(verdicts.len(), 2 + 32 + 8, "{verdicts:?}");
    let pcie = d.find(Kind::Pcie).unwrap();
    assert_eq!(
        pcie.ranges(),
        [
            Range {
                base: 0x3f00_0000,
                size: 0x0100_0000
            },
            Range {
                base: 0x3eff_0000,
                size: 0x10000
            },
            Range {
                base: 0x1000_0000,
                size: 0x2eff_0000
            },
        ]
    );
    let gic = d.find(Kind::Gic).unwrap();
    assert_eq!(gic.ranges().len(), 2);
    assert_eq!(
        d.find(Kind::PlatformBus).unwrap().ranges()[0].base,
        0x0c00_0000
    );
    // Without an SMMU to hold it, PCIe is withheld too.
    assert_eq!(Kind::Pcie.verdict(false), Verdict::Withheld);
}

/// The names and properties of every node of a tree.
fn walk(blob: &[u8]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    Fdt::new(blob)
        .unwrap()
        .walk(|e| match e {
            Event::Begin { name, .. } => out.push((name.to_string(), Vec::new())),
            Event::Prop { name, .. } => out.last_mut().unwrap().1.push(name.to_string()),
            Event::End { .. } => {}
        })
        .unwrap();
    out
}

#[test]
fn the_hosts_tree_loses_what_the_host_does_not_get() {
    let mut blob = virt();
    let d = scan(&blob).unwrap();
    let before = blob.len();
    assert_eq!(d.remove_from(&mut blob, true), Ok(2 + 32 + 3));
    assert_eq!(blob.len(), before, "the tree keeps its size");
    let nodes = walk(&blob);
    let names: Vec<&str> = nodes.iter().map(|n| n.0.as_str()).collect();
    for gone in [
        "fw-cfg",
        "virtio_mmio",
        "smmuv3",
        "its@",
        "flash",
        "platform-bus",
    ] {
        assert!(
            !names.iter().any(|n| n.starts_with(gone)),
            "{gone} left: {names:?}"
        );
    }
    for kept in [
        "pl011@9000000",
        "intc@8000000",
        "pcie@10000000",
        "memory@40000000",
        "cpu@0",
    ] {
        assert!(names.contains(&kept), "{kept} missing");
    }
    let pcie = &nodes.iter().find(|n| n.0 == "pcie@10000000").unwrap().1;
    assert!(pcie.contains(&"ranges".to_string()) && pcie.contains(&"reg".to_string()));
    assert!(
        !pcie.iter().any(|p| p == "iommu-map" || p == "msi-map"),
        "{pcie:?}"
    );
    // The engine's own reader still parses it, and a second scan sees only
    // the host's devices.
    let mut p = fdt::Platform::empty();
    fdt::parse_platform(&Fdt::new(&blob).unwrap(), &mut p).unwrap();
    assert_eq!(p.uart.map(|u| u.base), Some(0x0900_0000));
    let again = scan(&blob).unwrap();
    assert!(
        again
            .nodes()
            .iter()
            .all(|n| n.kind.verdict(true) == Verdict::Host)
    );
    // Without the SMMU, PCIe goes as well.
    let mut blob = virt();
    assert_eq!(
        scan(&blob).unwrap().remove_from(&mut blob, false),
        Ok(2 + 32 + 4)
    );
    assert!(!walk(&blob).iter().any(|n| n.0.starts_with("pcie")));
}

#[test]
fn damaged_trees_never_panic() {
    let blob = virt();
    for len in (0..blob.len()).step_by(7) {
        let _ = scan(&blob[..len]);
    }
    for i in 0..blob.len() {
        for v in [0x00, 0x01, 0x02, 0x03, 0x04, 0x09, 0xff] {
            let mut b = blob.clone();
            b[i] = v;
            if let Ok(d) = scan(&b) {
                let _ = d.remove_from(&mut b, true);
            }
        }
    }
}
