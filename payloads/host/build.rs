//! Links the host payload at the host's entry point, with the addresses and
//! sizes of `isola_layout` (written to `layout.ld`, which `link.ld`
//! includes); only for the bare-metal target.

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
    let symbols = format!(
        "/* Written by payloads/host/build.rs from isola_layout. */\n\
         HOST_ENTRY = {:#x};\n\
         HOST_MAX_CPUS = {};\n\
         HOST_STACK = {:#x};\n",
        isola_layout::HOST_ENTRY,
        isola_layout::MAX_CPUS,
        isola_layout::HOST_PAYLOAD_STACK,
    );
    if let Err(e) = std::fs::write(out.join("layout.ld"), symbols) {
        println!("cargo:warning=cannot write layout.ld: {e}");
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-link-arg-bins=-L{}", out.display());
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
}
