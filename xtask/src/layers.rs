//! The layering rule of the EL2 image, checked against its code: the table
//! under "Layers" in `boot/src/main.rs` (the crate root, which only declares
//! the modules) gives each module of `boot/src` a row, and a module may
//! import (`crate::<module>`) only modules on a lower row. So the image's modules have no import circle, and the table a reader
//! trusts is the one the code keeps.

use std::collections::BTreeMap;
use std::path::Path;

/// The rows of the table: module name -> row (higher = nearer the top).
pub fn rows(main_rs: &str) -> Result<BTreeMap<String, u32>, String> {
    let mut rows = BTreeMap::new();
    let mut in_layers = false;
    for line in main_rs.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.trim();
        if doc.starts_with("# ") {
            in_layers = doc == "# Layers";
            continue;
        }
        let cells: Vec<&str> = doc.split('|').map(str::trim).collect();
        let [_, row, modules, ..] = cells.as_slice() else {
            continue;
        };
        if !in_layers {
            continue;
        }
        let Ok(row) = row.parse::<u32>() else {
            continue;
        };
        for m in modules.split(',') {
            let m = m.trim().trim_matches('`');
            if rows.insert(m.to_string(), row).is_some() {
                return Err(format!("module {m} has two rows in the Layers table"));
            }
        }
    }
    if rows.is_empty() {
        return Err("no Layers table in boot/src/main.rs".into());
    }
    Ok(rows)
}

/// The modules of this crate a source file names (`crate::<module>`, in a
/// `use` or a path, and each first-level name of `use crate::{a, b::c}`),
/// comments left out.
pub fn imports(src: &str) -> Vec<String> {
    let code: String = src
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        // `$crate::` is a macro's own crate path, `isola_crate::` another name.
        if matches!(before, Some(c) if c == '$' || c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of each item at the group's own depth.
            let mut depth = 0_u32;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() && name != "self" {
                            found.push(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Every import of every module of `boot/src` (`dir`) against the table:
/// the list of what breaks the rule, empty if nothing does.
pub fn violations(dir: &Path) -> Result<Vec<String>, String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let rows = rows(&read(&dir.join("main.rs"))?)?;
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let module = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or("a file name that is not UTF-8")?
            .to_string();
        // The crate root declares the modules and sits above every row.
        if module == "main" {
            continue;
        }
        seen.push(module.clone());
        let Some(&row) = rows.get(&module) else {
            wrong.push(format!(
                "boot/src/{module}.rs has no row in the Layers table"
            ));
            continue;
        };
        for import in imports(&read(&path)?) {
            match rows.get(&import) {
                Some(&r) if import == module || r < row => {}
                Some(&r) => wrong.push(format!(
                    "{module} (row {row}) imports {import} (row {r}): only lower rows may be imported"
                )),
                None => wrong.push(format!("{module} imports crate::{import}, which is no module of the table")),
            }
        }
    }
    for m in rows.keys() {
        if !seen.contains(m) {
            wrong.push(format!("the Layers table names {m}, which has no file"));
        }
    }
    wrong.sort();
    Ok(wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "//! # Layers\n//!\n//! | row | modules | what |\n//! |---|---|---|\n//! | 3 | `bringup`, `dispatch` | top |\n//! | 2 | `engine` | middle |\n//! | 1 | `sysreg`, `frame` | ground |\n//!\n//! # Other\n//! | 9 | `nope` | not in the table |\n";

    #[test]
    fn reads_the_table() {
        let r = rows(TABLE).unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r["dispatch"], 3);
        assert_eq!(r["bringup"], 3);
        assert_eq!(r["frame"], 1);
        assert!(!r.contains_key("nope"));
    }

    #[test]
    fn finds_imports_but_not_comments_or_macro_paths() {
        let src = "use crate::frame::TrapFrame;\nuse crate::{engine, sysreg::{A, B}};\n// crate::dispatch in a comment\n$crate::console::line\nlet x = crate::stop::fatal;\n";
        assert_eq!(imports(src), ["engine", "frame", "stop", "sysreg"]);
    }

    /// The broken twin: a module that imports one above it is caught.
    #[test]
    fn an_upward_import_is_reported() {
        let dir = std::env::temp_dir().join(format!("isola-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("main.rs"), TABLE).unwrap();
        std::fs::write(dir.join("dispatch.rs"), "use crate::engine::x;\n").unwrap();
        std::fs::write(dir.join("bringup.rs"), "use crate::{engine, frame};\n").unwrap();
        std::fs::write(dir.join("engine.rs"), "use crate::sysreg::y;\n").unwrap();
        std::fs::write(dir.join("sysreg.rs"), "").unwrap();
        std::fs::write(dir.join("frame.rs"), "use crate::sysreg::z;\n").unwrap();
        let ok = violations(&dir).unwrap();
        std::fs::write(dir.join("engine.rs"), "use crate::dispatch::x;\n").unwrap();
        let bad = violations(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            ok,
            ["frame (row 1) imports sysreg (row 1): only lower rows may be imported"]
        );
        assert!(
            bad.iter()
                .any(|v| v.starts_with("engine (row 2) imports dispatch (row 3)")),
            "{bad:?}"
        );
    }

    /// The EL2 image keeps its own table.
    #[test]
    fn boot_imports_point_down() {
        let wrong = violations(&crate::cmd::root().join("boot/src")).unwrap();
        assert!(
            wrong.is_empty(),
            "boot/src breaks its layering:\n{}",
            wrong.join("\n")
        );
    }
}
