//! Reads the point estimates criterion saves after a run
//! (`<target>/criterion/<group>/<bench>/new/estimates.json`), so the scaling
//! figure is computed from the same numbers criterion reported, without a
//! JSON dependency: the file's shape is fixed by criterion and only one
//! number is needed from it.

use std::path::Path;

/// The point estimate of statistic `stat` (`"slope"`, `"mean"`, ...) in an
/// `estimates.json` text; `None` if absent or `null` (criterion writes
/// `"slope":null` when it sampled flat).
pub fn point_estimate(json: &str, stat: &str) -> Option<f64> {
    let key = format!("\"{stat}\":");
    let after = json.get(json.find(&key)?.checked_add(key.len())?..)?;
    if !after.trim_start().starts_with('{') {
        return None;
    }
    let pe = "\"point_estimate\":";
    let rest = after.get(after.find(pe)?.checked_add(pe.len())?..)?;
    let end = rest.find([',', '}'])?;
    rest.get(..end)?.trim().parse().ok()
}

/// Criterion's headline time per iteration (ns): the slope of its linear
/// regression when it has one, else the mean, as in its console report.
pub fn typical_ns(json: &str) -> Option<f64> {
    point_estimate(json, "slope").or_else(|| point_estimate(json, "mean"))
}

/// The headline time (ns per iteration) of benchmark `id` in `group`, from
/// the criterion directory `dir` (usually `<target>/criterion`).
pub fn load_typical_ns(dir: &Path, group: &str, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(group).join(id).join("new").join("estimates.json"))
        .ok()?;
    typical_ns(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_named_statistic() {
        let ci = r#"{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0}"#;
        let j = format!(
            r#"{{"mean":{{"confidence_interval":{ci},"point_estimate":2.5,"standard_error":0.1}},"median":{{"confidence_interval":{ci},"point_estimate":9.0,"standard_error":0.1}},"slope":null,"std_dev":{{"confidence_interval":{ci},"point_estimate":7.0,"standard_error":0.1}}}}"#
        );
        assert_eq!(point_estimate(&j, "mean"), Some(2.5));
        assert_eq!(point_estimate(&j, "median"), Some(9.0));
        assert_eq!(
            point_estimate(&j, "slope"),
            None,
            "null slope is not the next statistic's value"
        );
        assert_eq!(typical_ns(&j), Some(2.5));
        let with_slope = j.replace(r#""slope":null"#, &format!(r#""slope":{{"confidence_interval":{ci},"point_estimate":4.0,"standard_error":0.1}}"#));
        assert_eq!(typical_ns(&with_slope), Some(4.0));
        assert_eq!(typical_ns("{}"), None);
        assert_eq!(
            point_estimate(r#"{"mean":{"point_estimate":x}}"#, "mean"),
            None
        );
    }
}
