//! Device trees made for a scenario: QEMU virt's own tree, dumped and then
//! patched into one the engine must refuse.

use std::path::PathBuf;
use std::process::Stdio;

use crate::build::Images;

/// QEMU virt's own tree, with the interrupt controller renamed to one the
/// engine does not know (`arm,gic-v9`): without a GICv3 the host cannot be
/// given one, so the engine must refuse to start. (QEMU rewrites `/psci`
/// when it loads a tree, so PSCI's conduit cannot be broken this way.)
pub fn unknown_gic(images: &Images) -> Result<PathBuf, String> {
    let dir = images.engine.parent().ok_or("no image directory")?;
    let path = dir.join("virt-unknown-gic.dtb");
    let mut c = crate::machine::virt(&format!(",dumpdtb={}", path.display()), 1, "2G");
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::cmd::run(c)?;
    let mut blob = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let at = blob
        .windows(11)
        .position(|w| w == b"arm,gic-v3\0")
        .ok_or("QEMU's tree has no arm,gic-v3 node")?;
    blob[at + 9] = b'9';
    // QEMU's dump is padded to 1 MiB; QEMU doubles a -dtb file's size when
    // it loads it, which would no longer fit below the engine. The strings
    // block comes last, so the tree ends with it: trim the padding.
    let be32 = |i: usize| {
        blob.get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let end = be32(12)
        .zip(be32(32))
        .map(|(off, len)| off + len)
        .ok_or("QEMU's tree is truncated")?;
    blob.truncate(end);
    blob[4..8].copy_from_slice(&(end as u32).to_be_bytes());
    std::fs::write(&path, blob).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}
