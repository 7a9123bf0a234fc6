//! The reader must read what QEMU virt's tree says, make the edits the
//! engine needs, and never panic, loop or read out of bounds on a damaged
//! tree.

use crate::{self as fdt, Event, Fdt, Platform, PsciConduit, Range};

mod devices;

/// A node of a tree to build: name, properties, children.
struct Node {
    name: &'static str,
    props: Vec<(&'static str, Vec<u8>)>,
    children: Vec<Node>,
}

fn node(name: &'static str, props: Vec<(&'static str, Vec<u8>)>, children: Vec<Node>) -> Node {
    Node {
        name,
        props,
        children,
    }
}

fn cells(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|c| c.to_be_bytes()).collect()
}

fn string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Serialises `root` as a version-17 DTB.
fn build(root: &Node) -> Vec<u8> {
    fn walk(n: &Node, st: &mut Vec<u8>, strings: &mut Vec<u8>) {
        st.extend(1u32.to_be_bytes());
        st.extend(n.name.as_bytes());
        st.push(0);
        while !st.len().is_multiple_of(4) {
            st.push(0);
        }
        for (name, value) in &n.props {
            let off = strings.len() as u32;
            strings.extend(name.as_bytes());
            strings.push(0);
            st.extend(3u32.to_be_bytes());
            st.extend((value.len() as u32).to_be_bytes());
            st.extend(off.to_be_bytes());
            st.extend(value);
            while !st.len().is_multiple_of(4) {
                st.push(0);
            }
        }
        for c in &n.children {
            walk(c, st, strings);
        }
        st.extend(2u32.to_be_bytes());
    }
    let (mut st, mut strings) = (Vec::new(), Vec::new());
    walk(root, &mut st, &mut strings);
    st.extend(9u32.to_be_bytes());
    let off_rsv = 40u32;
    let off_struct = off_rsv + 16;
    let off_strings = off_struct.wrapping_add(st.len() as u32);
    let total = off_strings.wrapping_add(strings.len() as u32);
    let mut b = Vec::new();
    for v in [
        0xd00d_feed,
        total,
        off_struct,
        off_strings,
        off_rsv,
        17,
        16,
        0,
        strings.len() as u32,
        st.len() as u32,
    ] {
        b.extend(u32::to_be_bytes(v));
    }
    b.extend([0u8; 16]);
    b.extend(st);
    b.extend(strings);
    b
}

/// A tree shaped like QEMU virt's (2 GiB, `cpus` CPUs, GICv3, PL011).
fn virt(cpus: u32) -> Vec<u8> {
    let cpu_nodes = (0..cpus)
        .map(|i| {
            node(
                "cpu@0",
                vec![
                    ("device_type", string("cpu")),
                    ("reg", cells(&[((i / 16) << 8) | (i % 16)])),
                    ("enable-method", string("psci")),
                ],
                vec![],
            )
        })
        .collect();
    build(&node(
        "",
        vec![
            ("#address-cells", cells(&[2])),
            ("#size-cells", cells(&[2])),
            ("compatible", string("linux,dummy-virt")),
        ],
        vec![
            node(
                "psci",
                vec![
                    ("compatible", string("arm,psci-1.0")),
                    ("method", string("smc")),
                ],
                vec![],
            ),
            node(
                "memory@40000000",
                vec![
                    ("device_type", string("memory")),
                    ("reg", cells(&[0, 0x4000_0000, 0, 0x8000_0000])),
                ],
                vec![],
            ),
            node(
                "pl011@9000000",
                vec![
                    ("compatible", b"arm,pl011\0arm,primecell\0".to_vec()),
                    ("reg", cells(&[0, 0x0900_0000, 0, 0x1000])),
                ],
                vec![],
            ),
            node(
                "intc@8000000",
                vec![
                    ("compatible", string("arm,gic-v3")),
                    ("#redistributor-regions", cells(&[1])),
                    (
                        "reg",
                        cells(&[0, 0x0800_0000, 0, 0x10000, 0, 0x080a_0000, 0, 0xf6_0000]),
                    ),
                ],
                vec![node(
                    "its@8080000",
                    vec![("reg", cells(&[0, 0x0808_0000, 0, 0x20000]))],
                    vec![],
                )],
            ),
            node(
                "chosen",
                vec![("bootargs", string("isola.test=smp"))],
                vec![],
            ),
            node(
                "cpus",
                vec![
                    ("#address-cells", cells(&[1])),
                    ("#size-cells", cells(&[0])),
                ],
                cpu_nodes,
            ),
        ],
    ))
}

fn parse(blob: &[u8]) -> Result<Platform, fdt::FdtError> {
    let mut p = Platform::empty();
    fdt::parse_platform(&Fdt::new(blob)?, &mut p)?;
    Ok(p)
}

#[test]
fn reads_what_qemu_virt_says() {
    let blob = virt(20);
    let p = parse(&blob).unwrap();
    assert_eq!(
        p.ram(),
        &[Range {
            base: 0x4000_0000,
            size: 0x8000_0000
        }]
    );
    assert_eq!(p.cpus().len(), 20);
    assert_eq!(p.cpus()[17], 0x101);
    assert_eq!(p.psci, Some(PsciConduit::Smc));
    assert_eq!(
        p.gicd,
        Some(Range {
            base: 0x0800_0000,
            size: 0x10000
        })
    );
    assert_eq!(
        p.gicr(),
        &[Range {
            base: 0x080a_0000,
            size: 0xf6_0000
        }]
    );
    assert_eq!(
        p.uart,
        Some(Range {
            base: 0x0900_0000,
            size: 0x1000
        })
    );
    assert_eq!(
        fdt::bootargs(&Fdt::new(&blob).unwrap()).unwrap(),
        Some("isola.test=smp")
    );
}

#[test]
fn hides_the_carve_out_from_the_host() {
    let mut blob = virt(1);
    assert_eq!(fdt::clip_memory_below(&mut blob, 0x4400_0000), Ok(1));
    assert_eq!(
        parse(&blob).unwrap().ram(),
        &[Range {
            base: 0x4400_0000,
            size: 0x7c00_0000
        }]
    );
    // Idempotent: nothing left below the line.
    assert_eq!(fdt::clip_memory_below(&mut blob, 0x4400_0000), Ok(0));
    // A range wholly below the line becomes empty.
    assert_eq!(fdt::clip_memory_below(&mut blob, 0xd000_0000), Ok(1));
    assert_eq!(parse(&blob).unwrap().ram()[0].size, 0);
}

#[test]
fn rejects_bad_headers() {
    let blob = virt(1);
    let mut bad = blob.clone();
    bad[0] ^= 1;
    assert_eq!(Fdt::new(&bad).err(), Some(fdt::FdtError::BadMagic));
    assert_eq!(
        Fdt::new(&blob[..blob.len() - 1]).err(),
        Some(fdt::FdtError::Truncated)
    );
    assert_eq!(Fdt::new(&blob[..7]).err(), Some(fdt::FdtError::Truncated));
}

/// Every prefix, and every byte changed to each of a few values, parses or
/// fails cleanly: no panic, no out-of-bounds read, no endless loop.
#[test]
fn damaged_trees_never_panic() {
    let blob = virt(3);
    for len in 0..blob.len() {
        let _ = parse(&blob[..len]);
    }
    for i in 0..blob.len() {
        for v in [0x00, 0x01, 0x02, 0x03, 0x09, 0x7f, 0xff] {
            let mut b = blob.clone();
            b[i] = v;
            let _ = parse(&b);
            let _ = fdt::clip_memory_below(&mut b, 0x4400_0000);
            if let Ok(t) = Fdt::new(&b) {
                let _ = fdt::bootargs(&t);
            }
        }
    }
}

/// A node's `offset` names its `FDT_BEGIN_NODE` token, and a property's its
/// value: what an in-place edit rewrites.
#[test]
fn events_locate_their_bytes() {
    let blob = virt(2);
    let tree = Fdt::new(&blob).unwrap();
    let (mut nodes, mut props) = (0, 0);
    tree.walk(|ev| match ev {
        Event::Begin { name, offset, .. } => {
            nodes += 1;
            assert_eq!(blob[offset..offset + 4], 1u32.to_be_bytes());
            assert_eq!(&blob[offset + 4..offset + 4 + name.len()], name.as_bytes());
        }
        Event::Prop { value, offset, .. } => {
            props += 1;
            assert_eq!(&blob[offset..offset + value.len()], value);
        }
        Event::End { .. } => {}
    })
    .unwrap();
    assert!(nodes > 5 && props > 10, "{nodes} nodes, {props} properties");
}
