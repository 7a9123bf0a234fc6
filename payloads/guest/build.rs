//! Writes the guest's linker script (only for the bare-metal target, so host
//! builds of the protocol library are untouched).
use std::{env, fs, path::PathBuf};

#[allow(
    dead_code,
    reason = "the build script reads only the constants the linker script needs"
)]
mod layout {
    include!("src/layout.rs");
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/layout.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo:warning=OUT_DIR is not set");
        return;
    };
    let stacks = layout::MAX_VCPUS * layout::STACK_BYTES;
    // Sections are placed at the IPA the guest runs at (VMA) and loaded at the
    // host physical address QEMU's loader writes them to (LMA, `AT`), in one
    // contiguous run so the host copies `[IMAGE_LOAD_PA, + image_bytes)`.
    let script = format!(
        "ENTRY(_start)
SECTIONS {{
  . = {base:#x};
  .text : AT({load:#x}) {{ KEEP(*(.text.head)) *(.text .text.*) }}
  .rodata : ALIGN(8) {{ *(.rodata .rodata.*) }}
  .data : ALIGN(8) {{ *(.data .data.*) }}
  . = ALIGN(8);
  __image_end = .;
  .bss (NOLOAD) : ALIGN(16) {{ *(.bss .bss.*) *(COMMON) }}
  . = ALIGN(4096);
  __stack_bottom = .;
  . += {stacks:#x};
  __stack_top = .;
  __mem_end = .;
  ASSERT(__image_end - {base:#x} <= {max:#x}, \"guest image larger than its load window\")
  /DISCARD/ : {{ *(.comment) *(.eh_frame*) *(.note*) }}
}}
",
        base = layout::IPA_BASE,
        load = layout::IMAGE_LOAD_PA,
        max = layout::IMAGE_MAX_BYTES,
    );
    let path = out.join("guest.ld");
    if let Err(e) = fs::write(&path, script) {
        println!("cargo:warning=cannot write {}: {e}", path.display());
        return;
    }
    println!("cargo:rustc-link-arg-bins=-T{}", path.display());
}
