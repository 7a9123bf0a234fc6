//! No panic path in the EL2 image: the built image is disassembled
//! (`llvm-objdump` from the pinned toolchain) and every direct call or
//! branch into core's panic machinery is a failure, named by its caller.
//!
//! The lints deny `unwrap`, `expect`, `panic!`, indexing and unchecked
//! arithmetic in engine code, but a library call can still reach a panic
//! (`split_at_mut`, `copy_from_slice`, `swap` on a slice index the
//! compiler cannot prove in bounds...), and boot code once did. What the
//! image contains is what counts: with LTO, a panic path that survives
//! optimisation is one the compiler could not prove unreachable.
//!
//! The same disassembly bounds every function's stack frame: the image
//! has no stack probes, so a frame larger than the 4 KiB guard page below
//! each EL2 stack could step over it and write into the slot below
//! unnoticed. A frame of at most the guard size less the largest single
//! push cannot: the function whose frame first reaches below the stack
//! leaves its stack pointer inside the guard, and its next push, or its
//! callee's, faults there (AArch64 has no red zone: nothing is stored
//! below the stack pointer).
//!
//! The check can fail: `isola-boot`'s `planted-bug-panic-path` feature
//! builds an image with one bounds-checked index the compiler cannot prove,
//! and the test command checks that image too and requires the failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::{build_for_targets, llvm_tool};

/// Symbols (demangled) that are core's panic machinery: the panic entry
/// points, the bounds and slice-index failures, `unwrap`/`expect` on
/// `None`/`Err`, a `RefCell` borrowed twice, and the panic handler itself.
pub const FORBIDDEN: &[&str] = &[
    "core::panicking::",
    "core::panic::",
    "panic_bounds_check",
    "slice_start_index_len_fail",
    "slice_end_index_len_fail",
    "slice_index_order_fail",
    "slice_error_fail",
    "str_index_overflow_fail",
    "unwrap_failed",
    "expect_failed",
    "panic_already_borrowed",
    "panic_already_mutably_borrowed",
    "rust_begin_unwind",
    "rust_panic",
];

/// Whether `symbol` (demangled) is part of the panic machinery.
fn forbidden(symbol: &str) -> bool {
    FORBIDDEN.iter().any(|f| symbol.contains(f))
}

/// What the disassembly showed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Functions of the image.
    pub functions: usize,
    /// Direct calls and branches (`bl`, `b`, `b.<cond>`, `cbz`, `tbz`...).
    pub branches: usize,
    /// `caller -> callee` for every branch into the panic machinery.
    pub panic_calls: Vec<String>,
    /// Panic-machinery functions present in the image (reached some other
    /// way, e.g. through a function pointer, if `panic_calls` is empty).
    pub panic_functions: Vec<String>,
    /// `(function, bytes)`: the stack each function allocates, summed over
    /// every `sub sp, sp, #imm` and pre-indexed push in it (an
    /// over-approximation where paths differ); `u64::MAX` for a frame sized
    /// at run time (`sub sp, sp, <register>`).
    pub frames: Vec<(String, u64)>,
    /// The largest single pre-indexed push (`stp ..., [sp, #-n]!`).
    pub largest_push: u64,
}

impl Findings {
    /// The largest frame, and its function.
    pub fn largest_frame(&self) -> Option<&(String, u64)> {
        self.frames.iter().max_by_key(|(_, b)| *b)
    }
}

/// How much one instruction moves the stack pointer down (`None` if it does
/// not), and whether that is a push (`[sp, #-n]!`). `u64::MAX` for a
/// register-sized move.
fn stack_allocation(mnemonic: &str, operands: &str) -> Option<(u64, bool)> {
    let ops = operands.split('<').next().unwrap_or(operands).trim();
    if mnemonic == "sub" {
        let rest = ops.strip_prefix("sp, sp, ")?;
        let Some(imm) = rest.strip_prefix('#') else {
            return Some((u64::MAX, false));
        };
        let (value, shift) = match imm.split_once(", lsl #") {
            Some((v, s)) => (v, s.trim().parse::<u32>().ok()?),
            None => (imm, 0),
        };
        let value = parse_imm(value)?;
        return Some((value.checked_shl(shift).unwrap_or(u64::MAX), false));
    }
    if matches!(mnemonic, "stp" | "str" | "stur") {
        let pre = ops.strip_suffix("]!")?;
        let (_, at) = pre.rsplit_once("[sp, #-")?;
        return Some((parse_imm(at)?, true));
    }
    None
}

/// `0x1f0` or `496`.
fn parse_imm(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Reads `llvm-objdump -d -C` output.
pub fn scan(disassembly: &str) -> Findings {
    let mut f = Findings::default();
    let mut current = String::new();
    for line in disassembly.lines() {
        // A function: `0000000040200000 <name>:`.
        if let Some(name) = line
            .split_once(" <")
            .filter(|(addr, _)| !addr.is_empty() && addr.chars().all(|c| c.is_ascii_hexdigit()))
            .and_then(|(_, rest)| rest.strip_suffix(">:"))
        {
            current = name.to_string();
            f.functions += 1;
            f.frames.push((current.clone(), 0));
            if forbidden(name) {
                f.panic_functions.push(name.to_string());
            }
            continue;
        }
        // An instruction with a symbolic target: `addr: \tbl\t0x... <name>`.
        let Some((addr, insn)) = line.split_once(':') else {
            continue;
        };
        let addr = addr.trim();
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let mut words = insn.split_whitespace();
        let Some(mnemonic) = words.next() else {
            continue;
        };
        let operands = insn.trim_start().strip_prefix(mnemonic).unwrap_or("");
        if let Some((bytes, push)) = stack_allocation(mnemonic, operands) {
            if let Some((_, frame)) = f.frames.last_mut() {
                *frame = frame.saturating_add(bytes);
            }
            if push {
                f.largest_push = f.largest_push.max(bytes);
            }
            continue;
        }
        let branch = matches!(mnemonic, "b" | "bl" | "cbz" | "cbnz" | "tbz" | "tbnz")
            || mnemonic.starts_with("b.");
        if !branch {
            continue;
        }
        f.branches += 1;
        let Some(target) = insn
            .split_once('<')
            .and_then(|(_, t)| t.rsplit_once('>'))
            .map(|(t, _)| t)
        else {
            continue;
        };
        // `<name+0x1c>`: a branch inside a function names it with an offset.
        let callee = target.split('+').next().unwrap_or(target);
        if forbidden(callee) && !forbidden(&current) {
            f.panic_calls.push(format!("{current} -> {callee}"));
        }
    }
    f.panic_calls.sort();
    f.panic_calls.dedup();
    f
}

/// Disassembles `image` and scans it.
pub fn check_image(image: &Path) -> Result<Findings, String> {
    let out = Command::new(llvm_tool("llvm-objdump")?)
        .args(["-d", "--no-show-raw-insn", "-C"])
        .arg(image)
        .output()
        .map_err(|e| format!("llvm-objdump: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "llvm-objdump {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let f = scan(&String::from_utf8_lossy(&out.stdout));
    if f.functions == 0 || f.branches == 0 {
        return Err(format!(
            "llvm-objdump found no code in {}: the check would prove nothing",
            image.display()
        ));
    }
    Ok(f)
}

/// The guard page below every EL2 stack (`isola-layout`).
const GUARD: u64 = isola_layout::ENGINE_GUARD_SIZE;

/// The frames too large for the guard page to catch an overflow through
/// them: larger than the guard less the largest push.
pub fn oversized_frames(f: &Findings) -> Vec<&(String, u64)> {
    let bound = GUARD.saturating_sub(f.largest_push);
    f.frames.iter().filter(|(_, b)| *b > bound).collect()
}

/// The verdict on one image: `Ok` with a summary, or every panic path and
/// every frame that could step over a guard page.
fn verdict(image: &Path, f: &Findings) -> Result<String, String> {
    let oversized = oversized_frames(f);
    if !oversized.is_empty() {
        return Err(format!(
            "{} has stack frames the {GUARD}-byte guard page cannot catch \
             (bound: the guard less the largest push, {}): {oversized:#?}",
            image.display(),
            f.largest_push
        ));
    }
    if f.panic_calls.is_empty() && f.panic_functions.is_empty() {
        let (name, bytes) = f.largest_frame().cloned().unwrap_or_default();
        Ok(format!(
            "{}: {} functions, {} direct branches, none into the panic machinery; \
             largest frame {bytes} bytes ({name}), largest push {}, guard {GUARD}",
            image.display(),
            f.functions,
            f.branches,
            f.largest_push
        ))
    } else {
        Err(format!(
            "{} has panic paths:\n  calls: {:#?}\n  panic functions present: {:#?}",
            image.display(),
            f.panic_calls,
            f.panic_functions
        ))
    }
}

/// The step of the test command: the EL2 image the booted scenarios run has
/// no panic path, and the check fails on an image that has one.
pub fn step() -> Result<(), String> {
    let images = crate::build::build_images()?;
    let f = check_image(&images.engine)?;
    println!("{}", verdict(&images.engine, &f)?);
    let planted = planted_image()?;
    let p = check_image(&planted)?;
    match verdict(&planted, &p) {
        Err(found)
            if p.panic_calls
                .iter()
                .any(|c| c.contains("panic_bounds_check")) =>
        {
            println!("the check has teeth: the planted-bug-panic-path image fails it\n{found}");
            Ok(())
        }
        Err(found) => Err(format!(
            "the planted image fails, but not on its planted bounds check:\n{found}"
        )),
        Ok(_) => Err(format!(
            "{} (built with planted-bug-panic-path) passes the check: the check has no teeth",
            planted.display()
        )),
    }
}

/// The EL2 image with `planted-bug-panic-path`, in a target directory of its
/// own (never booted).
fn planted_image() -> Result<PathBuf, String> {
    let dir = crate::cmd::root().join("target").join("aarch64-planted");
    let (el2, _) = build_for_targets(&dir, &["planted-bug-panic-path"], &[])?;
    let image = el2.join("isola");
    if image.is_file() {
        Ok(image)
    } else {
        Err(format!("build produced no {}", image.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "\
0000000040200000 <_start>:
40200000:      \tmsr\tDAIFSet, #0xf
40200004:      \tbl\t0x40200100 <isola_boot_main>
40200008:      \tb.ne\t0x40200000 <_start>

0000000040200100 <isola_boot_main>:
40200100:      \tcbz\tx0, 0x40200108 <isola_boot_main+0x8>
40200104:      \tbl\t0x40200200 <isola::stop::fatal>
";

    /// The step alone (`cargo test -p xtask -- --ignored panic_free`), as
    /// `cargo xtask test` runs it.
    #[test]
    #[ignore = "builds two EL2 images; run by `cargo xtask test`"]
    fn the_el2_image_has_no_panic_path() {
        step().unwrap();
    }

    #[test]
    fn every_frame_is_summed_and_a_large_one_is_refused() {
        let dis = "\
0000000040200000 <isola::engine::Engine::new>:
40200000:      \tstp\tx29, x30, [sp, #-0x60]!
40200004:      \tsub\tsp, sp, #0xc90
40200008:      \tbl\t0x40200100 <isola::stop::fatal>
4020000c:      \tadd\tsp, sp, #0xc90

0000000040200100 <isola::stop::fatal>:
40200100:      \tstr\tx30, [sp, #-0x10]!
40200104:      \tsub\tsp, sp, #0x1, lsl #12
40200108:      \tb\t0x40200100 <isola::stop::fatal>

0000000040200200 <leaf>:
40200200:      \tsub\tsp, sp, x8
";
        let f = scan(dis);
        assert_eq!(
            f.frames,
            [
                ("isola::engine::Engine::new".to_string(), 0x60 + 0xc90),
                ("isola::stop::fatal".to_string(), 0x10 + 0x1000),
                ("leaf".to_string(), u64::MAX),
            ]
        );
        assert_eq!(f.largest_push, 0x60);
        let names: Vec<&str> = oversized_frames(&f)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["isola::stop::fatal", "leaf"]);
        let err = verdict(Path::new("isola"), &f).unwrap_err();
        assert!(err.contains("guard page cannot catch"), "{err}");
        // 0x60 + 0xc90 is within 4096 - 0x60: alone, that frame passes.
        let one = scan(dis.split("\n\n").next().unwrap());
        assert!(oversized_frames(&one).is_empty());
    }

    #[test]
    fn a_clean_image_passes() {
        let f = scan(CLEAN);
        assert_eq!((f.functions, f.branches), (2, 4));
        assert!(f.panic_calls.is_empty() && f.panic_functions.is_empty());
    }

    #[test]
    fn a_bounds_check_and_a_tail_call_are_found() {
        let dirty = format!(
            "{CLEAN}\
40200108:      \tb\t0x40200300 <core::panicking::panic_fmt>

0000000040200180 <isola::dispatch::run_vcpu>:
40200180:      \tb.hs\t0x40200400 <core::panicking::panic_bounds_check>

0000000040200300 <core::panicking::panic_fmt>:
40200300:      \tbl\t0x40200500 <rust_begin_unwind>
"
        );
        let f = scan(&dirty);
        assert_eq!(
            f.panic_calls,
            [
                "isola::dispatch::run_vcpu -> core::panicking::panic_bounds_check",
                "isola_boot_main -> core::panicking::panic_fmt",
            ]
        );
        assert_eq!(f.panic_functions, ["core::panicking::panic_fmt"]);
    }

    #[test]
    fn every_unwrap_and_slice_failure_is_forbidden() {
        for s in [
            "core::option::unwrap_failed",
            "core::result::unwrap_failed",
            "core::option::expect_failed",
            "core::slice::index::slice_end_index_len_fail",
            "core::panicking::panic_const::panic_const_div_by_zero",
            "core::cell::panic_already_borrowed",
        ] {
            assert!(forbidden(s), "{s}");
        }
        assert!(!forbidden("core::fmt::write") && !forbidden("isola::stop::fatal"));
    }
}
