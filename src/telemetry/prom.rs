//! The Prometheus text exposition format, written by hand but in one place: every family gets
//! its `# HELP`/`# TYPE` lines once, every label value is escaped as the format requires
//! (backslash, double quote and line feed), so a route or arm named `a"b\c` cannot break
//! `/metrics`.

use std::fmt::Write as _;

/// Appends `value` to `out` escaped for a label value (between double quotes).
pub fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `name="value",…` with every value escaped; empty for no labels.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(pairs.len() * 24);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(&mut out, value);
        out.push('"');
    }
    out
}

/// Writes the `# HELP` and `# TYPE` lines of one family. `kind` is `counter`, `gauge` or
/// `histogram`.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one sample: `name{labels} value` (`labels` as made by [`labels`], may be empty).
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Writes a histogram's samples: `cumulative[i]` counts observations ≤ `bounds[i]`.
pub fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    cumulative: &[u64],
    count: u64,
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, c) in bounds.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    sample(out, &format!("{name}_sum"), labels, sum);
    sample(out, &format!("{name}_count"), labels, count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_label_values_are_escaped() {
        assert_eq!(
            labels(&[("route", "a\"b\\c\nd"), ("arm", "x")]),
            r#"route="a\"b\\c\nd",arm="x""#
        );
        let mut out = String::new();
        sample(&mut out, "m", &labels(&[("route", "q\"")]), 3);
        assert_eq!(out, "m{route=\"q\\\"\"} 3\n");
    }

    #[test]
    fn histogram_lines() {
        let mut out = String::new();
        histogram(&mut out, "h", "", &[1.0, 2.5], &[1, 2], 3, 4.5);
        assert_eq!(
            out,
            "h_bucket{le=\"1\"} 1\nh_bucket{le=\"2.5\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 4.5\nh_count 3\n"
        );
    }
}
