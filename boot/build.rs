//! Links the EL2 image at its fixed load address. The addresses and sizes
//! come from `isola_layout` (written to `layout.ld`, which `link.ld`
//! includes), so the image, its linker script and the Rust code agree by
//! construction. Only the bare-metal build gets the script: a host build of
//! this crate (e.g. `cargo clippy --workspace` without `--target`) must not
//! be handed an AArch64 linker script.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo:warning=OUT_DIR is not set");
        return;
    };
    use isola_layout as l;
    let symbols = format!(
        "/* Written by boot/build.rs from isola_layout. */\n\
         ISOLA_IMAGE_BASE = {:#x};\n\
         ISOLA_CARVEOUT_END = {:#x};\n\
         ISOLA_MAX_CPUS = {};\n\
         ISOLA_STACK_SLOT = {:#x};\n\
         ISOLA_EMERGENCY_SLOT = {:#x};\n\
         ISOLA_CPU_RECORD = {:#x};\n",
        l::ENGINE_IMAGE_BASE,
        l::CARVEOUT_END,
        l::MAX_CPUS,
        l::ENGINE_STACK_SLOT,
        l::ENGINE_EMERGENCY_SLOT,
        l::ENGINE_CPU_RECORD,
    );
    if let Err(e) = std::fs::write(out.join("layout.ld"), symbols) {
        println!("cargo:warning=cannot write layout.ld: {e}");
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-link-arg-bins=-L{}", out.display());
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
}
