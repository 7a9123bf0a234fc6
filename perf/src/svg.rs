//! Hand-written SVG charts for the benchmark figures (`docs/figures/`): no
//! network, no fonts to embed, output that diffs well in review.
//!
//! Two shapes: a horizontal bar chart on a log scale (instruction counts that
//! span four orders of magnitude, each with its goal or anchor marked) and a
//! line chart (scaling ratio against thread count). Values that are not
//! finite or not positive where a log scale needs them are drawn at the
//! axis' minimum and labelled, never dropped silently.

use std::fmt::Write;

/// One bar: a label, the measured value, and an optional reference value
/// (a goal or an anchor) drawn as a tick across the bar's row.
#[derive(Clone, Debug)]
pub struct Bar {
    /// Row label (the operation).
    pub label: String,
    /// Measured value.
    pub value: f64,
    /// Reference to compare against, with its own short label.
    pub reference: Option<(f64, String)>,
}

/// One line of a line chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour (any SVG colour).
    pub color: String,
    /// Points `(x, y)`, in x order.
    pub points: Vec<(f64, f64)>,
}

/// Escapes text for SVG character data and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn header(out: &mut String, w: f64, h: f64, title: &str) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        w / 2.0,
        esc(title)
    );
}

/// Decades `10^k` covering `[lo, hi]` (both > 0).
fn decades(lo: f64, hi: f64) -> (i32, i32) {
    let a = lo.log10().floor();
    let b = hi.log10().ceil();
    // Bounded: the inputs are finite positive f64, whose log10 is within
    // about +-324, so the casts cannot saturate.
    let (a, b) = (a as i32, b as i32);
    (a, if b > a { b } else { a.saturating_add(1) })
}

/// A horizontal bar chart with a log-10 x axis.
pub fn log_bars(title: &str, x_label: &str, bars: &[Bar]) -> String {
    let row = 26.0;
    let (left, right, top) = (250.0, 230.0, 40.0);
    let plot_w = 560.0;
    let n = bars.len() as f64;
    let h = top + n * row + 60.0;
    let w = left + plot_w + right;
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let values = bars
        .iter()
        .flat_map(|b| std::iter::once(b.value).chain(b.reference.as_ref().map(|r| r.0)))
        .filter(|v| positive(*v));
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (1.0, 10.0) };
    let (d0, d1) = decades(lo, hi);
    let span = f64::from(d1.saturating_sub(d0));
    let x_of = |v: f64| {
        let v = if positive(v) { v } else { 10f64.powi(d0) };
        left + (v.log10() - f64::from(d0)) / span * plot_w
    };
    let mut out = String::new();
    header(&mut out, w, h, title);
    let bottom = top + n * row;
    for d in d0..=d1 {
        let x = x_of(10f64.powi(d));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            10u64.saturating_pow(d.max(0).unsigned_abs())
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        bottom + 36.0,
        esc(x_label)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = top + i as f64 * row;
        let x = x_of(b.value);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 17.0,
            esc(&b.label)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4878b0"/>"##,
            y + 5.0,
            (x - left).max(1.0),
            row - 10.0
        );
        let shown = if positive(b.value) {
            format!("{:.0}", b.value)
        } else {
            "n/a".to_string()
        };
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{shown}</text>"#,
            x + 4.0,
            y + 17.0
        );
        if let Some((r, name)) = &b.reference {
            let rx = x_of(*r);
            let _ = writeln!(
                out,
                r##"<line x1="{rx:.1}" y1="{:.1}" x2="{rx:.1}" y2="{:.1}" stroke="#c03030" stroke-width="2"/>"##,
                y + 2.0,
                y + row - 2.0
            );
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" fill="#c03030" font-size="10">{}</text>"##,
                left + plot_w + 8.0,
                y + 17.0,
                esc(name)
            );
        }
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" font-size="10" fill="#c03030">red tick: goal or anchor</text>"##,
        left,
        h - 8.0
    );
    out.push_str("</svg>\n");
    out
}

/// A line chart with linear axes starting at zero; `note` is printed small
/// under the plot (the conditions of the measurement).
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_ref: Option<(f64, &str)>,
    note: &str,
) -> String {
    let (left, right, top, bottom_pad) = (70.0, 200.0, 40.0, 60.0);
    let (plot_w, plot_h) = (480.0, 300.0);
    let w = left + plot_w + right;
    let h = top + plot_h + bottom_pad;
    let finite = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (xmax, ymax) = finite.fold((1.0_f64, 0.0_f64), |(a, b), &(x, y)| (a.max(x), b.max(y)));
    let ymax = ymax.max(y_ref.map_or(0.0, |r| r.0)).max(1.0) * 1.15;
    let x_of = |x: f64| left + x / xmax * plot_w;
    let y_of = |y: f64| top + plot_h - y / ymax * plot_h;
    let mut out = String::new();
    header(&mut out, w, h, title);
    let bottom = top + plot_h;
    let _ = writeln!(
        out,
        r#"<line x1="{left}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="black"/>"#,
        left + plot_w
    );
    let _ = writeln!(
        out,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>"#
    );
    // x ticks at every integer up to xmax (thread counts are small).
    let mut t = 0.0;
    while t <= xmax {
        let x = x_of(t);
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{t}</text>"#,
            bottom + 16.0
        );
        t += if xmax > 16.0 {
            (xmax / 8.0).ceil()
        } else {
            1.0
        };
    }
    let steps = 5;
    for i in 0..=steps {
        let v = ymax * f64::from(i) / f64::from(steps);
        let y = y_of(v);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/>"##,
            left + plot_w
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"#,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        bottom + 36.0,
        esc(x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">{1}</text>"#,
        top + plot_h / 2.0,
        esc(y_label)
    );
    if let Some((r, name)) = y_ref {
        let y = y_of(r);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#c03030" stroke-dasharray="5,4"/>"##,
            left + plot_w
        );
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{:.1}" fill="#c03030" font-size="10">{}</text>"##,
            left + plot_w + 8.0,
            y + 4.0,
            esc(name)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            esc(&s.color),
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                out,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                esc(&s.color)
            );
        }
        let ly = top + 20.0 + i as f64 * 18.0;
        let lx = left + plot_w + 8.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"/>"#,
            lx + 20.0,
            esc(&s.color)
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{left}" y="{}" font-size="10" fill="#555">{}</text>"##,
        h - 8.0,
        esc(note)
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_well_formed_and_escape_labels() {
        let bars = [
            Bar {
                label: "a<b".into(),
                value: 150.0,
                reference: Some((100.0, "goal 100".into())),
            },
            Bar {
                label: "big".into(),
                value: 1.0e6,
                reference: None,
            },
            Bar {
                label: "none".into(),
                value: f64::NAN,
                reference: None,
            },
        ];
        let s = log_bars("t", "instructions", &bars);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("a&lt;b") && !s.contains("a<b"));
        assert!(
            s.contains(">n/a<"),
            "a missing value is labelled, not dropped"
        );
        assert!(
            s.contains(">1000000<"),
            "the axis reaches the largest value's decade"
        );
        assert_eq!(s.matches("<rect").count(), 1 + bars.len());
    }

    #[test]
    fn lines_plot_every_point() {
        let s = lines(
            "t",
            "threads",
            "ratio",
            &[Series {
                name: "x".into(),
                color: "red".into(),
                points: vec![(1.0, 1.0), (2.0, 1.9)],
            }],
            Some((2.0, "ideal")),
            "load 0.5",
        );
        assert_eq!(s.matches("<circle").count(), 2);
        assert!(s.contains("ideal") && s.contains("load 0.5"));
    }

    #[test]
    fn decades_cover_the_range() {
        assert_eq!(decades(149.0, 1_074_953.0), (2, 7));
        assert_eq!(decades(100.0, 100.0), (2, 3));
    }
}
