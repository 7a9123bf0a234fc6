//! Judging a console against its expected story.
//!
//! A console passes only if
//! - every line is expected: lines are compared exactly, in order, except
//!   that lines one CPU each prints (which CPUs interleave freely) are
//!   compared as a set where the story says so ([`Expect::AnyOrder`]), and
//!   a table the run prints (the register census's) is taken as it comes
//!   where the story says so ([`Expect::Table`]): any number of lines, each
//!   starting with one of its prefixes, which other checks read;
//! - no expected line is missing.

/// One step of an expected console: a line, or lines in any order.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Exactly this line, here.
    Line(String),
    /// Each of these lines exactly once, in any order, before what follows.
    AnyOrder(Vec<String>),
    /// Any number of lines (none too), each starting with one of these
    /// prefixes and not the next expected line.
    Table(Vec<String>),
}

/// An exact line.
pub fn line(s: impl Into<String>) -> Expect {
    Expect::Line(s.into())
}

/// Compares a console with its expectation (see the module docs).
pub fn check(lines: &[String], expected: &[Expect]) -> Result<(), String> {
    // The step being matched, what of it is still wanted, and the prefixes
    // of a table that ends where those lines begin.
    let mut step = 0_usize;
    let mut wanted: Vec<&String> = Vec::new();
    let mut table: Option<&[String]> = None;
    let load = |step: usize| -> Vec<&String> {
        match expected.get(step) {
            Some(Expect::Line(l)) => vec![l],
            Some(Expect::AnyOrder(ls)) => ls.iter().collect(),
            Some(Expect::Table(_)) | None => Vec::new(),
        }
    };
    for (n, got) in lines.iter().enumerate() {
        while wanted.is_empty() && step < expected.len() {
            if let Some(Expect::Table(prefixes)) = expected.get(step) {
                table = Some(prefixes);
            } else {
                wanted = load(step);
            }
            step += 1;
        }
        if let Some(i) = wanted.iter().position(|w| *w == got) {
            wanted.swap_remove(i);
            table = None;
            continue;
        }
        if table.is_some_and(|t| t.iter().any(|p| got.starts_with(p.as_str()))) {
            continue;
        }
        let want = match wanted.as_slice() {
            [] => "expected nothing more".to_string(),
            [one] => format!("expected {one:?}"),
            many => format!("expected one of {many:?}"),
        };
        return Err(format!(
            "unexpected console line {}: {got:?} ({want})",
            n + 1
        ));
    }
    let mut missing: Vec<String> = wanted.into_iter().cloned().collect();
    for s in step..expected.len() {
        missing.extend(load(s).into_iter().cloned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing expected console lines: {missing:#?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }
    #[test]
    fn ordered_and_unordered_lines_match() {
        let e = vec![
            line("a"),
            Expect::AnyOrder(vec!["x".into(), "y".into()]),
            line("b"),
        ];
        assert!(check(&lines(&["a", "y", "x", "b"]), &e).is_ok());
        assert!(check(&lines(&["a", "x", "y", "b"]), &e).is_ok());
    }

    #[test]
    fn an_unexpected_line_fails() {
        let e = vec![line("a"), line("b")];
        let err = check(&lines(&["a", "panic: boom", "b"]), &e).unwrap_err();
        assert!(err.contains("unexpected console line 2"), "{err}");
    }

    #[test]
    fn a_missing_line_fails() {
        let e = vec![
            line("a"),
            Expect::AnyOrder(vec!["x".into(), "y".into()]),
            line("b"),
        ];
        let err = check(&lines(&["a", "x"]), &e).unwrap_err();
        assert!(err.contains("\"y\"") && err.contains("\"b\""), "{err}");
    }

    #[test]
    fn a_table_takes_its_lines_and_ends_at_the_next_step() {
        let e = vec![
            line("a"),
            Expect::Table(vec!["t: ".into()]),
            line("t: end"),
            line("b"),
        ];
        assert!(check(&lines(&["a", "t: 1", "t: 2", "t: end", "b"]), &e).is_ok());
        assert!(check(&lines(&["a", "t: end", "b"]), &e).is_ok(), "empty");
        let err = check(&lines(&["a", "t: 1", "u: 2", "t: end", "b"]), &e).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        // After the table ends, its prefix is no longer taken.
        let err = check(&lines(&["a", "t: end", "t: 3", "b"]), &e).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn a_set_line_twice_fails() {
        let e = vec![Expect::AnyOrder(vec!["x".into(), "y".into()])];
        assert!(check(&lines(&["x", "x"]), &e).is_err());
    }
}
