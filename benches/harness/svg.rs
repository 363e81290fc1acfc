//! Minimal hand-written SVG line charts: enough for latency CDFs and the
//! throughput ladder, with no plotting dependency.

use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log,
}

impl Scale {
    fn map(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log => v.max(f64::MIN_POSITIVE).log10(),
        }
    }

    /// Tick values between `lo` and `hi` (data units).
    fn ticks(self, lo: f64, hi: f64) -> Vec<f64> {
        match self {
            Scale::Log => {
                let mut out = Vec::new();
                let mut decade = 10f64.powf(lo.max(f64::MIN_POSITIVE).log10().floor());
                while decade <= hi * 1.0001 {
                    for m in [1.0, 2.0, 5.0] {
                        let v = decade * m;
                        if v >= lo * 0.9999 && v <= hi * 1.0001 {
                            out.push(v);
                        }
                    }
                    decade *= 10.0;
                }
                out
            }
            Scale::Linear => {
                let span = (hi - lo).max(f64::EPSILON);
                let raw = span / 5.0;
                let mag = 10f64.powf(raw.log10().floor());
                let step = [1.0, 2.0, 5.0, 10.0]
                    .iter()
                    .map(|m| m * mag)
                    .find(|s| span / s <= 6.0)
                    .unwrap_or(10.0 * mag);
                let mut v = (lo / step).ceil() * step;
                let mut out = Vec::new();
                while v <= hi + step * 1e-9 {
                    out.push(v);
                    v += step;
                }
                out
            }
        }
    }
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    /// (legend name, points) — drawn in order, one colour each.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// A dashed reference line at this y, with a label.
    pub hline: Option<(f64, String)>,
}

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Fixed colours per target so every plot reads the same way.
fn colour(name: &str, i: usize) -> &'static str {
    match name {
        "direct" => "#6b7280",
        "nginx" => "#16a34a",
        "switchyard" => "#dc2626",
        _ => ["#2563eb", "#9333ea", "#ea580c"][i % 3],
    }
}

fn label(v: f64) -> String {
    if v >= 1000.0 && v % 1000.0 == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    /// Axis range covering every point (and, for y, the reference line).
    fn bounds(&self, pick: impl Fn(&(f64, f64)) -> f64, scale: Scale, is_y: bool) -> (f64, f64) {
        let vals = self
            .series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(&pick))
            .chain(self.hline.iter().map(|(y, _)| *y).filter(|_| is_y))
            .filter(|v| v.is_finite() && (scale == Scale::Linear || *v > 0.0));
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if !lo.is_finite() {
            return (1.0, 10.0);
        }
        match scale {
            Scale::Linear => (lo.min(0.0), if hi > lo { hi } else { lo + 1.0 }),
            Scale::Log => (
                10f64.powf(lo.log10().floor()),
                10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
            ),
        }
    }

    pub fn render(&self) -> String {
        let (x0, x1) = self.bounds(|p| p.0, self.x_scale, false);
        let (y0, y1) = self.bounds(|p| p.1, self.y_scale, true);
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let px = |x: f64| {
            let (a, b) = (self.x_scale.map(x0), self.x_scale.map(x1));
            LEFT + (self.x_scale.map(x) - a) / (b - a) * pw
        };
        let py = |y: f64| {
            let (a, b) = (self.y_scale.map(y0), self.y_scale.map(y1));
            TOP + ph - (self.y_scale.map(y) - a) / (b - a) * ph
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            W / 2.0,
            escape(&self.title)
        );
        for x in self.x_scale.ticks(x0, x1) {
            let xp = px(x);
            let _ = writeln!(
                s,
                r##"<line x1="{xp:.1}" y1="{TOP}" x2="{xp:.1}" y2="{:.1}" stroke="#e5e7eb"/><text x="{xp:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                label(x)
            );
        }
        for y in self.y_scale.ticks(y0, y1) {
            let yp = py(y);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{yp:.1}" x2="{:.1}" y2="{yp:.1}" stroke="#e5e7eb"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                yp + 4.0,
                label(y)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#374151"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 18.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        if let Some((y, text)) = &self.hline {
            if *y >= y0 && *y <= y1 {
                let yp = py(*y);
                let _ = writeln!(
                    s,
                    r##"<line x1="{LEFT}" y1="{yp:.1}" x2="{:.1}" y2="{yp:.1}" stroke="#111827" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                    LEFT + pw,
                    LEFT + pw - 4.0,
                    yp - 4.0,
                    escape(text)
                );
            }
        }
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let c = colour(name, i);
            let path: Vec<String> = pts
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .filter(|(x, y)| {
                    (self.x_scale == Scale::Linear || *x > 0.0)
                        && (self.y_scale == Scale::Linear || *y > 0.0)
                })
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            let ly = TOP + 14.0 + 16.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                LEFT + 10.0,
                LEFT + 30.0,
                LEFT + 36.0,
                ly + 4.0,
                escape(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_cover_decades() {
        assert_eq!(
            Scale::Log.ticks(10.0, 1000.0),
            vec![10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
    }

    #[test]
    fn linear_ticks_are_round() {
        let ticks = Scale::Linear.ticks(0.0, 1.0);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(ticks.len(), want.len(), "{ticks:?}");
        for (t, w) in ticks.iter().zip(want) {
            assert!((t - w).abs() < 1e-9, "{ticks:?}");
        }
    }

    #[test]
    fn renders_a_well_formed_chart() {
        let chart = Chart {
            title: "a < b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            series: vec![
                (
                    "nginx".into(),
                    vec![(1000.0, 0.5), (2000.0, 0.9), (4000.0, 7.0)],
                ),
                ("switchyard".into(), vec![(1000.0, 0.6), (2000.0, 0.0)]),
            ],
            hline: Some((5.0, "limit".into())),
        };
        let svg = chart.render();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt; b"), "text is escaped");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("#16a34a"), "nginx keeps its colour");
        assert!(svg.contains("stroke-dasharray"), "the limit line is drawn");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(
            svg.contains(">1k</text>") && !svg.contains(">100</text>"),
            "the x axis spans the data's decade, not the limit line's"
        );
    }
}
