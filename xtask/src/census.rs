//! The register census's table, docs/census.md: made from the `census`
//! scenario's console (payloads/host/src/census.rs prints one line per run
//! of encodings anybody reaches), each encoding named by the pinned
//! toolchain's own disassembler (`llvm-objdump`, which knows the Arm ARM's
//! register names) and checked against the registers the `aarch64-cpu`
//! crate names. `cargo xtask census` writes it; the test command checks
//! the committed one is what the census says on the same QEMU version.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use crate::build::llvm_tool;
use crate::cmd::root;

/// Where the table lives.
pub const DOC: &str = "docs/census.md";

/// One line of the census: the encodings `first..=last` and what each side
/// saw (`el1`, `el0`: letters and treatment; `host`: `r`, `v` or `-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    first: u32,
    last: u32,
    el1: String,
    el0: String,
    host: String,
}

/// `(op0, op1, CRn, CRm, op2)` packed as the census does (15 bits), from
/// `s<op0>_<op1>_c<n>_c<m>_<op2>`.
fn encoding(name: &str) -> Option<u32> {
    let mut f = name.strip_prefix('s')?.split('_');
    let mut num = |strip: &str| -> Option<u32> { f.next()?.strip_prefix(strip)?.parse().ok() };
    let (op0, op1, crn, crm, op2) = (num("")?, num("")?, num("c")?, num("c")?, num("")?);
    ((2..=3).contains(&op0) && op1 < 8 && crn < 16 && crm < 16 && op2 < 8)
        .then_some((op0 & 1) << 14 | op1 << 11 | crn << 7 | crm << 3 | op2)
}

/// The census's own spelling of an encoding.
fn spelled(e: u32) -> String {
    format!(
        "s{}_{}_c{}_c{}_{}",
        2 | (e >> 14 & 1),
        e >> 11 & 7,
        e >> 7 & 15,
        e >> 3 & 15,
        e & 7
    )
}

/// The table lines of a census console, and its probe count.
pub fn parse(lines: &[String]) -> Result<(Vec<Row>, u64), String> {
    let mut rows = Vec::new();
    let mut probes = 0;
    for l in lines {
        if let Some(p) = l.strip_prefix("host: census: probes: ") {
            probes = p
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("census: unreadable probe count in {l:?}"))?;
            continue;
        }
        let Some(rest) = l.strip_prefix("host: census: s") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let span = fields.next().unwrap_or("");
        let (a, b) = span.split_once("..").unwrap_or((span, span));
        let a = format!("s{}", a.trim_start_matches('s'));
        let bad = || format!("census: unreadable line {l:?}");
        let first = encoding(&a).ok_or_else(bad)?;
        let last = encoding(b).or_else(|| encoding(&a)).ok_or_else(bad)?;
        let mut get = |key: &str| -> Result<String, String> {
            fields
                .next()
                .and_then(|f| f.strip_prefix(key))
                .map(str::to_string)
                .ok_or_else(bad)
        };
        rows.push(Row {
            first,
            last,
            el1: get("el1=")?,
            el0: get("el0=")?,
            host: get("host=")?,
        });
    }
    if rows.is_empty() {
        return Err("census: the console has no table".into());
    }
    Ok((rows, probes))
}

/// The disassembler's name of every encoding in `encs` (`MRS x0, <name>`).
fn names(encs: &BTreeSet<u32>) -> Result<BTreeMap<u32, String>, String> {
    let dir = root().join("target").join("census");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bin = dir.join("mrs.bin");
    let obj = dir.join("mrs.o");
    let words: Vec<u8> = encs
        .iter()
        .flat_map(|e| (0xd530_0000u32 | e << 5).to_le_bytes())
        .collect();
    std::fs::write(&bin, words).map_err(|e| format!("{}: {e}", bin.display()))?;
    let status = Command::new(llvm_tool("llvm-objcopy")?)
        .args(["-I", "binary", "-O", "elf64-littleaarch64"])
        .args(["--rename-section", ".data=.text,code,alloc,load"])
        .arg(&bin)
        .arg(&obj)
        .status()
        .map_err(|e| format!("llvm-objcopy: {e}"))?;
    if !status.success() {
        return Err(format!("llvm-objcopy exited with {status}"));
    }
    // Every feature whose registers have names, so a name never depends on
    // what the disassembler assumes by default.
    let out = Command::new(llvm_tool("llvm-objdump")?)
        .args(["-d", "--no-show-raw-insn"])
        .arg("--mattr=+v9.5a,+sve,+sme,+sme2,+mte,+gcs,+ras,+the,+d128,+spe,+trbe,+brbe,+amvs,+ecv,+fgt,+lor,+pan,+rme,+mpam,+tme,+ite,+pauth,+rand,+ls64,+fpmr,+s1pie,+s1poe,+tcr2,+sctlr2")
        .arg(&obj)
        .output()
        .map_err(|e| format!("llvm-objdump: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found: Vec<String> = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .split_once("mrs\tx0, ")
                .map(|(_, n)| n.trim().to_string())
        })
        .collect();
    if found.len() != encs.len() {
        return Err(format!(
            "llvm-objdump named {} of {} encodings",
            found.len(),
            encs.len()
        ));
    }
    Ok(encs.iter().copied().zip(found).collect())
}

/// The registers `aarch64-cpu` names (its `src/registers/*.rs`, upper-cased),
/// found through `cargo metadata`.
fn aarch64_cpu_names() -> Result<BTreeSet<String>, String> {
    let out = crate::cmd::cargo()
        .args(["metadata", "--format-version", "1"])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    let meta = String::from_utf8_lossy(&out.stdout);
    // The manifest path of the aarch64-cpu package, without a JSON parser:
    // the `"manifest_path"` that follows its `"name":"aarch64-cpu"`.
    let at = meta
        .find("\"name\":\"aarch64-cpu\"")
        .ok_or("cargo metadata does not list aarch64-cpu")?;
    let rest = meta.get(at..).unwrap_or("");
    let key = "\"manifest_path\":\"";
    let start = rest.find(key).ok_or("aarch64-cpu has no manifest path")? + key.len();
    let path = rest
        .get(start..)
        .and_then(|r| r.split('"').next())
        .ok_or("aarch64-cpu's manifest path is unreadable")?;
    let dir = PathBuf::from(path)
        .parent()
        .map(|p| p.join("src").join("registers"))
        .ok_or("aarch64-cpu's manifest path has no parent")?;
    let names = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".rs").map(str::to_uppercase)
        })
        .filter(|n| n != "MOD" && n != "MACROS")
        .collect();
    Ok(names)
}

/// The QEMU version the table is made on (`major.minor.micro`).
fn qemu() -> String {
    Command::new(crate::machine::QEMU)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split("version ")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What a treatment means (the legend, in table order).
const TREATMENTS: [(&str, &str); 10] = [
    (
        "switched",
        "VM A's write took effect, came back after its own exit, and VM B, fresh on the same CPU, did not see it: saved and restored per vCPU",
    ),
    (
        "reset",
        "VM A's value did not survive its own exit (and VM B did not see it)",
    ),
    (
        "ignored",
        "a direct write left the register as it was (read-only bits, write-ignored, or write-only)",
    ),
    (
        "emulated",
        "the access trapped to EL2 and the engine answered it: reads as zero and ignores writes, an ID register's guest view, an SGI",
    ),
    (
        "read-only",
        "read directly, the same for every vCPU at every reading",
    ),
    (
        "volatile",
        "read directly, changing by itself (a counter, a timer's TVAL, a random number) or with another register (CCSIDR with CSSELR)",
    ),
    (
        "pstate",
        "a field of PSTATE, which the switch keeps in SPSR_EL2 with the PC (the census's own code and `eret`s set it, so it cannot be planted)",
    ),
    (
        "none",
        "UNDEFINED to this side: natively (`-`) or because the engine refuses the trapped access (`x`, the guest takes an Undefined Instruction exception)",
    ),
    (
        "LEAKS",
        "VM B read what VM A left: a failure (the census prints FAIL)",
    ),
    ("", ""),
];

/// The table as docs/census.md holds it.
pub fn render(lines: &[String]) -> Result<String, String> {
    let (rows, probes) = parse(lines)?;
    let mut encs = BTreeSet::new();
    for r in &rows {
        encs.insert(r.first);
        encs.insert(r.last);
    }
    let names = names(&encs)?;
    let ours = aarch64_cpu_names()?;
    let name = |e: u32| names.get(&e).cloned().unwrap_or_else(|| spelled(e));
    let mut counts: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut t = String::new();
    t.push_str("# The register census\n\n");
    t.push_str(&format!(
        "Generated by `cargo xtask census` from the `census` scenario on QEMU {} (`-cpu max,pauth-impdef=on`, `virtualization=on`, GICv3): {probes} probes. Do not edit; the test command checks it is what the census says on the same QEMU version. How the census works and what it proves: [guests.md](guests.md#the-register-census).\n\n",
        qemu()
    ));
    t.push_str("Every `MRS` and `MSR` encoding a lower EL can name (`op0` 2 or 3: 32768 each) was tried by a guest at EL1 and at EL0. A row is one encoding, or a run of consecutive encodings that every side saw the same way; an encoding nobody can reach (UNDEFINED to both guests and to the host) has no row. Names are the disassembler's (`llvm-objdump` of the pinned toolchain; `S<op0>_...` where the architecture names none); *aarch64-cpu* says whether that crate names the register.\n\n");
    t.push_str("Columns: for EL1 and EL0, what the guest's read and write did — `r`/`w` executed without a trap, `e` trapped and emulated by the engine, `x` trapped and refused (UNDEFINED to the guest), `-` UNDEFINED natively — and the register's treatment; *host*: how the host (EL1) reads it — `r` the same before and after the guests ran, `v` changing by itself, `-` not at all.\n\n");
    t.push_str("| treatment | meaning |\n|---|---|\n");
    for (k, m) in TREATMENTS.iter().filter(|(k, _)| !k.is_empty()) {
        t.push_str(&format!("| {k} | {m} |\n"));
    }
    t.push_str("\n| encoding | name | aarch64-cpu | EL1 | EL1 treatment | EL0 | EL0 treatment | host |\n|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let (enc, nm, known) = if r.first == r.last {
            let n = name(r.first);
            let known = if ours.contains(&n.to_uppercase()) {
                "yes"
            } else {
                ""
            };
            (format!("`{}`", spelled(r.first)), format!("`{n}`"), known)
        } else {
            let count = r.last - r.first + 1;
            (
                format!("`{}` … `{}`", spelled(r.first), spelled(r.last)),
                format!("`{}` … `{}` ({count})", name(r.first), name(r.last)),
                "",
            )
        };
        let split = |v: &str| -> (String, String) {
            let (a, b) = v.split_once(':').unwrap_or((v, ""));
            (format!("`{a}`"), b.to_string())
        };
        let (a1, t1) = split(&r.el1);
        let (a0, t0) = split(&r.el0);
        let n = r.last - r.first + 1;
        *counts.entry(("EL1".into(), t1.clone())).or_default() += n;
        *counts.entry(("EL0".into(), t0.clone())).or_default() += n;
        t.push_str(&format!(
            "| {enc} | {nm} | {known} | {a1} | {t1} | {a0} | {t0} | `{}` |\n",
            r.host
        ));
    }
    t.push_str("\n## Encodings by treatment\n\n| view | treatment | encodings |\n|---|---|---:|\n");
    for ((view, tr), n) in &counts {
        t.push_str(&format!("| {view} | {tr} | {n} |\n"));
    }
    Ok(t)
}

/// The committed table matches the census's `lines`, unless the table was
/// made on another QEMU version (then a note, not a failure: QEMU decides
/// which registers exist).
pub fn check_current(lines: &[String]) -> Result<(), String> {
    let want = render(lines)?;
    let path = root().join(DOC);
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have == want {
        return Ok(());
    }
    let version = qemu();
    if !have.contains(&format!("on QEMU {version} ")) {
        println!(
            "note: {DOC} was made on another QEMU version than {version}: not compared (cargo xtask census remakes it)"
        );
        return Ok(());
    }
    Err(format!(
        "{DOC} is not what the census says on this QEMU: run `cargo xtask census` and commit the result"
    ))
}

/// Writes the table made from `lines`.
pub fn write(lines: &[String]) -> Result<(), String> {
    let path = root().join(DOC);
    std::fs::write(&path, render(lines)?).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_spell_both_ways() {
        for e in [0u32, 0x7fff, 0x4800, 0x1234] {
            assert_eq!(encoding(&spelled(e)), Some(e));
        }
        assert_eq!(encoding("s3_0_c1_c0_0"), Some(1 << 14 | 1 << 7));
        assert_eq!(encoding("s4_0_c1_c0_0"), None);
    }

    #[test]
    fn table_lines_parse() {
        let lines: Vec<String> = [
            "host: census: probes: 99 by VMs A and B, at EL1 and at EL0",
            "host: census: s3_0_c1_c0_0 el1=rw:switched el0=--:none host=r",
            "host: census: s2_0_c11_c0_0..s2_0_c11_c15_7 el1=ee:emulated el0=--:none host=-",
            "host: census: no register VM A wrote reached VM B, at EL1 or at EL0",
        ]
        .map(String::from)
        .to_vec();
        let (rows, probes) = parse(&lines).unwrap();
        assert_eq!(probes, 99);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].first, rows[0].last),
            (1 << 14 | 1 << 7, 1 << 14 | 1 << 7)
        );
        assert_eq!(rows[0].el1, "rw:switched");
        assert_eq!(rows[1].last - rows[1].first, 127);
        assert_eq!(rows[1].host, "-");
    }
}
