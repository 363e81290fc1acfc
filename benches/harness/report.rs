//! What a suite run leaves behind: `latest.json`, `BENCHMARKS.md` and the
//! SVG plots. The JSON holds every raw run; the markdown holds one table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::stats::RunReport;
use crate::svg::{Chart, Scale};
use crate::targets::Env;
use crate::Result;

/// What the suite's command line asked for; the report says what it ran with.
pub struct Options {
    pub smoke: bool,
    pub switchyard: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    pub pin: bool,
    pub out_dir: PathBuf,
    pub markdown: PathBuf,
    pub only: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub scenarios: Vec<ScenarioResult>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Meta {
    pub mode: String,
    pub command: String,
    pub commit: String,
    pub date: String,
    pub machine: Machine,
    pub pinning: String,
    /// `/proc/loadavg` when the run started: other work on the machine.
    pub loadavg_at_start: String,
    pub nginx: String,
    pub seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

/// One scenario: its table rows, the raw runs behind them, and plot data.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct ScenarioResult {
    pub id: u8,
    pub title: String,
    pub seconds: f64,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub runs: BTreeMap<String, RunReport>,
    /// Plot series by name, e.g. `cdf/nginx` or `ladder/switchyard`.
    pub series: BTreeMap<String, Vec<(f64, f64)>>,
}

impl ScenarioResult {
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            ..Self::default()
        }
    }
}

/// One table row: a metric for direct, nginx and switchyard.
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    pub metric: String,
    pub cells: [Cell; 3],
    /// switchyard ÷ nginx of the row's headline figure.
    pub ratio: Option<f64>,
    pub target: Option<Verdict>,
}

impl Row {
    pub fn console(&self) -> String {
        format!(
            "{}: direct {} | nginx {} | switchyard {} | ratio {} | {}",
            self.metric,
            self.cells[0].text,
            self.cells[1].text,
            self.cells[2].text,
            self.ratio.map_or("—".into(), |r| format!("{r:.2}")),
            self.target.as_ref().map_or(String::new(), Verdict::text)
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    pub text: String,
    /// False when the column has no figures (not installed, failed to start,
    /// not implemented); `text` says why.
    pub available: bool,
}

impl Cell {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            available: true,
        }
    }

    pub fn na(why: &str) -> Self {
        Self {
            text: if why.starts_with("not available") {
                why.to_owned()
            } else {
                format!("n/a: {why}")
            },
            available: false,
        }
    }
}

/// A target from the issue, reported (never asserted).
#[derive(Debug, Serialize, Deserialize)]
pub struct Verdict {
    pub goal: String,
    pub value: Option<f64>,
    pub limit: f64,
    /// `None` when there was nothing to compare.
    pub met: Option<bool>,
}

impl Verdict {
    pub fn at_most(goal: &str, value: Option<f64>, limit: f64) -> Self {
        Self {
            goal: goal.to_owned(),
            value,
            limit,
            met: value.map(|v| v <= limit),
        }
    }

    pub fn at_least(goal: &str, value: Option<f64>, limit: f64) -> Self {
        Self {
            goal: goal.to_owned(),
            value,
            limit,
            met: value.map(|v| v >= limit),
        }
    }

    pub fn text(&self) -> String {
        let status = match self.met {
            Some(true) => "**met**",
            Some(false) => "**missed**",
            None => "not measured",
        };
        match self.value {
            Some(v) => format!("{}: {status} ({})", self.goal, short(v)),
            None => format!("{}: {status}", self.goal),
        }
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Results {
    pub fn new(opts: &Options, env: &Env) -> Self {
        let pinning = match env.pin.proxy_cpu {
            Some(_) => format!(
                "scenarios 1 and 5 (concurrency 1): {}; the others: {}",
                crate::procs::Pinning::one_cpu().describe(),
                env.pin.describe()
            ),
            None => "none".to_owned(),
        };
        Self {
            meta: Meta {
                mode: if opts.smoke { "smoke" } else { "suite" }.to_owned(),
                command: invocation(),
                commit: commit(),
                date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                machine: machine(),
                pinning,
                loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                nginx: env.nginx.as_ref().map_or("not installed".into(), |n| {
                    let out = Command::new(n).arg("-v").output();
                    out.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                        .unwrap_or_default()
                }),
                seconds: 0.0,
            },
            scenarios: Vec::new(),
        }
    }

    /// What makes `smoke` fail: the harness or a target visibly broken. The
    /// figures themselves are not judged — a CI machine is too noisy for that.
    pub fn smoke_failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.scenarios {
            for (key, r) in &s.runs {
                if r.ok == 0 {
                    out.push(format!("scenario {} {key}: no request succeeded", s.id));
                }
                if key.starts_with("direct") && r.errors > 0 {
                    out.push(format!(
                        "scenario {} {key}: {} errors straight to the sim {:?}",
                        s.id, r.errors, r.error_kinds
                    ));
                }
            }
            for row in &s.rows {
                for (cell, name) in row.cells.iter().zip(["direct", "nginx", "switchyard"]) {
                    let nginx_absent = name == "nginx" && cell.text.contains("not installed");
                    let not_yet = cell.text.starts_with("not available");
                    let line = format!("scenario {} {name}: {}", s.id, cell.text);
                    if !cell.available && !nginx_absent && !not_yet && !out.contains(&line) {
                        out.push(line);
                    }
                }
            }
        }
        out
    }
}

/// How the run was started, without the build folder: `make bench` for the plain suite.
fn invocation() -> String {
    let mut args = std::env::args();
    let program = args
        .next()
        .map(|p| {
            Path::new(&p)
                .file_name()
                .map_or(p.clone(), |n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let rest: Vec<String> = args.collect();
    if rest == ["suite"] {
        return "make bench".to_owned();
    }
    std::iter::once(program)
        .chain(rest)
        .collect::<Vec<_>>()
        .join(" ")
}

fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // The previous run's own outputs do not make the measured code dirty.
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!BENCHMARKS.md",
        ":!benches/results",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
    }
}

/// Hand-written findings (profiles, explanations) kept beside the harness and
/// copied into every generated `BENCHMARKS.md`.
const FINDINGS: &str = "benches/findings.md";

/// Plots: (file name, title, series prefix, x axis, y axis, horizontal line).
const PLOTS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "latency-cdf-c1.svg",
        "Latency CDF, concurrency 1, small body",
        "cdf/",
        "latency (µs, log)",
        "fraction of requests ≤ x",
    ),
    (
        "streaming-ttfe-cdf.svg",
        "Time to first SSE event, CDF",
        "ttfe/",
        "time to first event (µs, log)",
        "fraction of streams ≤ x",
    ),
    (
        "throughput-ladder.svg",
        "Throughput ladder: p99 latency by offered rate",
        "ladder/",
        "offered rate (req/s, log)",
        "p99 latency (ms, log)",
    ),
];

/// Writes the JSON, and for a full suite the markdown and the plots.
pub fn write_all(results: &Results, opts: &Options) -> Result<()> {
    let dir = if opts.smoke {
        opts.out_dir.join("tmp")
    } else {
        opts.out_dir.clone()
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json_name = if opts.smoke {
        "smoke.json"
    } else {
        "latest.json"
    };
    let json = serde_json::to_string_pretty(results).expect("results serialise");
    write(&dir.join(json_name), &json)?;
    eprintln!("wrote {}", dir.join(json_name).display());
    let markdown = (!opts.smoke).then_some(opts.markdown.as_path());
    write_plots_and_markdown(results, &dir, markdown)
}

/// `switchyard-bench render`: rewrites the plots and the markdown from
/// `latest.json`, e.g. after editing the hand-written findings.
pub fn render(out_dir: &Path, markdown: &Path) -> Result<()> {
    let path = out_dir.join("latest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let results: Results =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    write_plots_and_markdown(&results, out_dir, Some(markdown))
}

fn write_plots_and_markdown(results: &Results, dir: &Path, markdown: Option<&Path>) -> Result<()> {
    let mut plots = Vec::new();
    for (file, title, prefix, x, y) in PLOTS {
        let series: Vec<(String, Vec<(f64, f64)>)> = results
            .scenarios
            .iter()
            .flat_map(|s| &s.series)
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), v.clone())))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let ladder = *prefix == "ladder/";
        let chart = Chart {
            title: (*title).to_owned(),
            x_label: (*x).to_owned(),
            y_label: (*y).to_owned(),
            x_scale: Scale::Log,
            y_scale: if ladder { Scale::Log } else { Scale::Linear },
            series,
            hline: ladder.then(|| (5.0, "p99 limit 5 ms".to_owned())),
        };
        write(&dir.join(file), &chart.render())?;
        plots.push((*file, *title));
    }
    let Some(markdown_path) = markdown else {
        return Ok(());
    };
    let findings = std::fs::read_to_string(FINDINGS).ok();
    let md = self::markdown(results, dir, &plots, findings.as_deref());
    write(markdown_path, &md)?;
    eprintln!("wrote {}", markdown_path.display());
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `|` would end a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn markdown(
    results: &Results,
    plot_dir: &Path,
    plots: &[(&str, &str)],
    findings: Option<&str>,
) -> String {
    let m = &results.meta;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\n\
Generated by `make bench` — do not edit by hand: rerun it. Hand-written \
findings live in `{FINDINGS}` and are copied in below. Raw figures of every run: \
`{}/latest.json`.\n",
        plot_dir.display()
    );
    let _ = writeln!(md, "- **Command:** `{}`", m.command);
    let _ = writeln!(md, "- **Commit:** `{}`", m.commit);
    let _ = writeln!(
        md,
        "- **Machine:** {} cores, {}, {} GiB RAM, Linux {}",
        m.machine.cores, m.machine.cpu_model, m.machine.memory_gib, m.machine.kernel
    );
    let _ = writeln!(md, "- **Date:** {}", m.date);
    let _ = writeln!(md, "- **Pinning:** {}", m.pinning);
    let _ = writeln!(
        md,
        "- **Load average at start:** {} (anything well above 0 means other work shared the CPUs)",
        m.loadavg_at_start
    );
    let _ = writeln!(
        md,
        "- **Proxies:** {} with `worker_processes 1`, upstream keep-alive; switchyard with `[server] threads = 1`, one route, one arm",
        m.nginx
    );
    let _ = writeln!(md, "- **Suite time:** {:.0} s\n", m.seconds);
    let _ = writeln!(
        md,
        "Added figures are the proxy's percentile minus the direct run's percentile \
(same load, same sim). Latencies of open-loop runs are measured from each \
request's intended send time.\n"
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "| # | Scenario | Metric | direct | nginx | switchyard | switchyard / nginx | Target |\n|---|---|---|---|---|---|---|---|"
    );
    for s in &results.scenarios {
        for (i, row) in s.rows.iter().enumerate() {
            let (id, title) = if i == 0 {
                (s.id.to_string(), s.title.clone())
            } else {
                (String::new(), String::new())
            };
            let _ = writeln!(
                md,
                "| {id} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&title),
                cell(&row.metric),
                cell(&row.cells[0].text),
                cell(&row.cells[1].text),
                cell(&row.cells[2].text),
                row.ratio.map_or("—".into(), |r| format!("{r:.2}")),
                row.target
                    .as_ref()
                    .map_or(String::new(), |t| cell(&t.text())),
            );
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for (file, title) in plots {
            let _ = writeln!(md, "![{title}]({}/{file})\n", plot_dir.display());
        }
    }
    let _ = writeln!(md, "## Scenario notes\n");
    for s in &results.scenarios {
        let _ = writeln!(md, "**{}. {}** ({:.0} s)\n", s.id, s.title, s.seconds);
        for n in &s.notes {
            let _ = writeln!(md, "- {n}");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Findings\n");
    let _ = writeln!(md, "Targets from issue 4, as measured in this run:\n");
    for s in &results.scenarios {
        for t in s.rows.iter().filter_map(|r| r.target.as_ref()) {
            let _ = writeln!(md, "- {}. {}", s.id, t.text());
        }
    }
    if let Some(f) = findings {
        let _ = writeln!(md, "\n{}", f.trim());
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        let mut s = ScenarioResult::new("Added latency");
        s.id = 1;
        s.rows.push(Row {
            metric: "p99 | µs".into(),
            cells: [
                Cell::text("50"),
                Cell::text("+20"),
                Cell::na("did not start: boom"),
            ],
            ratio: Some(1.1),
            target: Some(Verdict::at_most("≤ 1.25×", Some(1.1), 1.25)),
        });
        Results {
            meta: Meta {
                mode: "suite".into(),
                command: "switchyard-bench suite".into(),
                commit: "abc".into(),
                date: "2026-01-01T00:00:00Z".into(),
                machine: machine(),
                pinning: "none".into(),
                loadavg_at_start: "0.00 0.00 0.00 1/100 1".into(),
                nginx: "nginx/1.22.1".into(),
                seconds: 1.0,
            },
            scenarios: vec![s],
        }
    }

    #[test]
    fn markdown_has_one_escaped_row_per_metric() {
        let md = markdown(
            &results(),
            Path::new("benches/results"),
            &[],
            Some("hand notes"),
        );
        let row = md
            .lines()
            .find(|l| l.starts_with("| 1 |"))
            .expect("scenario row");
        assert!(row.contains("p99 \\| µs"), "pipes are escaped: {row}");
        assert!(row.contains("n/a: did not start: boom"));
        assert!(row.contains("1.10"));
        assert!(row.contains("**met**"));
        assert!(md.contains("- **Commit:** `abc`"));
        assert!(md.trim_end().ends_with("hand notes"));
    }

    #[test]
    fn results_json_shape() {
        let v = serde_json::to_value(results()).unwrap();
        assert_eq!(v["meta"]["mode"], "suite");
        assert!(v["meta"]["machine"]["cores"].as_u64().unwrap() >= 1);
        let row = &v["scenarios"][0]["rows"][0];
        assert_eq!(row["cells"][2]["available"], false);
        assert_eq!(row["target"]["met"], true);
        assert_eq!(row["ratio"], 1.1);
        let back: Results = serde_json::from_value(v).expect("`render` reads it back");
        assert_eq!(back.scenarios[0].rows[0].cells[1].text, "+20");
    }

    #[test]
    fn smoke_fails_on_a_proxy_that_did_not_start_but_not_on_missing_features() {
        let mut r = results();
        assert_eq!(r.smoke_failures().len(), 1, "{:?}", r.smoke_failures());
        r.scenarios[0].rows[0].cells[2] = Cell::na("not available: shadow not implemented");
        assert!(r.smoke_failures().is_empty());
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::at_most("x", Some(2.0), 1.5).met, Some(false));
        assert_eq!(Verdict::at_most("x", Some(0.0), 0.0).met, Some(true));
        assert_eq!(Verdict::at_most("x", None, 1.0).met, None);
    }
}
