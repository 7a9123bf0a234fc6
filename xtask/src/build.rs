//! Building the images every boot needs: the EL2 engine for its softfloat
//! target, the EL1 payloads for theirs, each set in a target directory of
//! its own so host builds are not invalidated; and finding the pinned
//! toolchain's LLVM tools (`llvm-nm`, `llvm-objdump`) that read them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{cargo, root};

/// The two ELF images a boot needs.
pub struct Images {
    /// The EL2 engine (`-kernel`).
    pub engine: PathBuf,
    /// The EL1 test host (`-device loader,file=...`).
    pub host: PathBuf,
    /// The test guest (`-device loader,file=...`: its segments' physical
    /// addresses put it in host RAM at 0x7ff0_0000, docs/guests.md).
    pub guest: PathBuf,
}

/// The target of the EL2 image (`isola-boot` and every crate it pulls in):
/// softfloat, so no engine code can use the FP/SIMD registers, which the
/// host trap vector therefore need not save (see boot/src/vectors.rs).
pub const EL2_TARGET: &str = "aarch64-unknown-none-softfloat";
/// The target of the EL1 payloads (test host, guests): they use FP/SIMD.
pub const PAYLOAD_TARGET: &str = "aarch64-unknown-none";

/// Builds the engine (`isola-boot`, with `engine_features`) for
/// [`EL2_TARGET`] and `payloads` for [`PAYLOAD_TARGET`] into `dir`; returns
/// the two output directories (engine's, payloads').
pub fn build_for_targets(
    dir: &Path,
    engine_features: &[&str],
    payloads: &[&str],
) -> Result<(PathBuf, PathBuf), String> {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "--target",
        EL2_TARGET,
        "-p",
        "isola-boot",
    ])
    .env("CARGO_TARGET_DIR", dir);
    for f in engine_features {
        c.args(["--features", f]);
    }
    crate::cmd::run(c)?;
    if !payloads.is_empty() {
        let mut c = cargo();
        c.args(["build", "--release", "--target", PAYLOAD_TARGET])
            .env("CARGO_TARGET_DIR", dir);
        for p in payloads {
            c.args(["-p", p]);
        }
        crate::cmd::run(c)?;
    }
    Ok((
        dir.join(EL2_TARGET).join("release"),
        dir.join(PAYLOAD_TARGET).join("release"),
    ))
}

/// Builds the engine for [`EL2_TARGET`] and the payloads for
/// [`PAYLOAD_TARGET`], in a target directory of their own so host builds are
/// not invalidated.
pub fn build_images() -> Result<Images, String> {
    build_images_with(&[])
}

/// [`build_images`] with `engine_features` of `isola-boot` (a planted bug,
/// for a check that must fail on it), in a target directory of their own
/// (`target/aarch64-<features>`) so the real images are never confused with
/// them.
pub fn build_images_with(engine_features: &[&str]) -> Result<Images, String> {
    let name = if engine_features.is_empty() {
        "aarch64".to_string()
    } else {
        format!("aarch64-{}", engine_features.join("-"))
    };
    let dir = root().join("target").join(name);
    let (el2, payloads) = build_for_targets(
        &dir,
        engine_features,
        &["isola-host-payload", "isola-guest-payload"],
    )?;
    let images = Images {
        engine: el2.join("isola"),
        host: payloads.join("isola-host"),
        guest: payloads.join("isola-guest"),
    };
    for p in [&images.engine, &images.host, &images.guest] {
        if !p.is_file() {
            return Err(format!("build produced no {}", p.display()));
        }
    }
    Ok(images)
}

/// An LLVM tool (`llvm-nm`, `llvm-objdump`) from the pinned toolchain's
/// `llvm-tools` component (`rust-toolchain.toml` installs it).
pub fn llvm_tool(name: &str) -> Result<PathBuf, String> {
    let out = |args: &[&str]| {
        Command::new("rustc")
            .current_dir(root())
            .args(args)
            .output()
            .map_err(|e| format!("rustc: {e}"))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let sysroot = out(&["--print", "sysroot"])?;
    let host = out(&["-vV"])?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or("rustc -vV names no host")?;
    let tool = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin")
        .join(name);
    if tool.exists() {
        Ok(tool)
    } else {
        Err(format!(
            "{} not found (rustup component add llvm-tools)",
            tool.display()
        ))
    }
}
