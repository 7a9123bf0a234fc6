//! Judging a console against its expected story.
//!
//! A console passes only if
//! - every line is expected: lines are compared exactly, in order, except
//!   that lines one CPU each prints (which CPUs interleave freely) are
//!   compared as a set where the story says so ([`Expect::AnyOrder`]);
//! - no expected line is missing.

/// One step of an expected console: a line, or lines in any order.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Exactly this line, here.
    Line(String),
    /// Each of these lines exactly once, in any order, before what follows.
    AnyOrder(Vec<String>),
}

/// An exact line.
pub fn line(s: impl Into<String>) -> Expect {
    Expect::Line(s.into())
}

/// Compares a console with its expectation (see the module docs).
pub fn check(lines: &[String], expected: &[Expect]) -> Result<(), String> {
    // The step being matched, and what of it is still wanted.
    let mut step = 0_usize;
    let mut wanted: Vec<&String> = Vec::new();
    let load = |step: usize| -> Vec<&String> {
        match expected.get(step) {
            Some(Expect::Line(l)) => vec![l],
            Some(Expect::AnyOrder(ls)) => ls.iter().collect(),
            None => Vec::new(),
        }
    };
    for (n, got) in lines.iter().enumerate() {
        while wanted.is_empty() && step < expected.len() {
            wanted = load(step);
            step += 1;
        }
        match wanted.iter().position(|w| *w == got) {
            Some(i) => {
                wanted.swap_remove(i);
            }
            None => {
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
        }
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
    fn a_set_line_twice_fails() {
        let e = vec![Expect::AnyOrder(vec!["x".into(), "y".into()])];
        assert!(check(&lines(&["x", "x"]), &e).is_err());
    }
}
