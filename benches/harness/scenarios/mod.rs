//! The seven scenarios of the suite. Each starts its own sims, nginx and
//! switchyard, runs the same load against all three targets, and returns one
//! or more table rows plus the raw run reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::load::{self, blocking_request, LoadSpec, Mode};
use crate::procs::{clock_ticks, free_port, local, tree_cpu_ticks, Pinning, ScratchDir};
use crate::report::{self, Cell, Options, Results, Row, ScenarioResult, Verdict};
use crate::stats::{cdf_points, Quantile, Recorder, RunReport};
use crate::targets::{
    Env, Floor, Nginx, NginxConf, Policy, PolicyArm, PolicyBackend, Sim, SimTiming, Switchyard,
    MODEL,
};
use crate::Result;

mod cache;
mod cost;
mod cpu;
mod ladder;
mod latency;
mod prefix;
mod shadow;
mod streaming;
mod swap;

/// Sizes and lengths of every scenario; the smoke profile shrinks them all.
struct Params {
    /// The smoke profile (scenario 9 sizes its workload from it).
    smoke: bool,
    /// Scenario 1: measured requests per target, and rounds they are split in.
    c1_samples: u64,
    c1_rounds: u64,
    /// Scenarios 1-3 (the hot-path targets) run this many times; the table shows the round
    /// with the median ratio and the range of the ratio over the rounds.
    headline_rounds: usize,
    /// Scenario 2.
    cpu_duration: Duration,
    /// Scenario 3: first rate, growth factor, step length, highest rate tried.
    ladder_start: f64,
    ladder_factor: f64,
    ladder_step: Duration,
    ladder_max: f64,
    ladder_refine: u32,
    /// Scenario 4.
    stream_events: u32,
    stream_timing: SimTiming,
    stream_concurrency: usize,
    stream_duration: Duration,
    /// Scenario 5.
    body_sizes: &'static [usize],
    body_duration: Duration,
    /// Scenario 6: run length, swaps, rate.
    swap_duration: Duration,
    swaps: u32,
    swap_rate: f64,
    /// Scenario 7: run length per variant, rounds it is split in, rate,
    /// shadow sim delay.
    shadow_duration: Duration,
    shadow_rounds: u32,
    shadow_rate: f64,
    shadow_delay_ms: u64,
    /// Scenario 8: each policy's run length.
    cost_duration: Duration,
}

impl Params {
    fn suite() -> Self {
        Self {
            smoke: false,
            c1_samples: 12_000,
            c1_rounds: 10,
            headline_rounds: 3,
            cpu_duration: Duration::from_secs(5),
            ladder_start: 1000.0,
            ladder_factor: 1.5,
            ladder_step: Duration::from_millis(1500),
            ladder_max: 60_000.0,
            ladder_refine: 2,
            stream_events: 64,
            stream_timing: SimTiming {
                ttft_ms: 50,
                tpot_ms: 20,
            },
            stream_concurrency: 128,
            stream_duration: Duration::from_secs(8),
            body_sizes: &[4 << 10, 64 << 10, 400 << 10],
            body_duration: Duration::from_millis(1500),
            swap_duration: Duration::from_secs(30),
            swaps: 100,
            swap_rate: 500.0,
            shadow_duration: Duration::from_secs(12),
            shadow_rounds: 6,
            shadow_rate: 200.0,
            shadow_delay_ms: 200,
            cost_duration: Duration::from_secs(4),
        }
    }

    fn smoke() -> Self {
        Self {
            smoke: true,
            c1_samples: 300,
            c1_rounds: 3,
            headline_rounds: 1,
            cpu_duration: Duration::from_millis(300),
            ladder_start: 500.0,
            ladder_factor: 2.0,
            ladder_step: Duration::from_millis(250),
            ladder_max: 1000.0,
            ladder_refine: 0,
            stream_events: 8,
            stream_timing: SimTiming {
                ttft_ms: 5,
                tpot_ms: 5,
            },
            stream_concurrency: 4,
            stream_duration: Duration::from_millis(300),
            body_sizes: &[4 << 10, 400 << 10],
            body_duration: Duration::from_millis(150),
            swap_duration: Duration::from_millis(1000),
            swaps: 5,
            swap_rate: 200.0,
            shadow_duration: Duration::from_millis(400),
            shadow_rounds: 2,
            shadow_rate: 100.0,
            shadow_delay_ms: 20,
            cost_duration: Duration::from_millis(400),
        }
    }
}

/// The p99 a throughput step must stay under.
const LADDER_P99: Duration = Duration::from_millis(5);

/// A chat request with a prompt of about `prompt_bytes` bytes.
pub fn chat_body(prompt_bytes: usize) -> String {
    let prompt = "lorem ipsum ".repeat(prompt_bytes / 12 + 1);
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": &prompt[..prompt_bytes]}],
        "max_tokens": 8,
    })
    .to_string()
}

/// A streaming chat request for `events` token events.
pub fn stream_body(events: u32) -> String {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": events,
        "stream": true,
    })
    .to_string()
}

/// The load generator's runtime: one thread, so it competes for as little
/// CPU as possible with what it measures.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// The three columns of every table row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Direct,
    Nginx,
    Switchyard,
    /// A bare pingora `ProxyHttp` (`switchyard-bench floor`); not a column, a row of its own.
    Floor,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Direct, Kind::Nginx, Kind::Switchyard];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Nginx => "nginx",
            Kind::Switchyard => "switchyard",
            Kind::Floor => "pingora-floor",
        }
    }
}

/// An address to load and the process whose CPU that costs.
#[derive(Debug, Clone, Copy)]
struct Target {
    kind: Kind,
    addr: SocketAddr,
    pid: u32,
}

/// One scenario's processes: the sims, and each proxy unless it failed to
/// start (then the reason stands in its column).
struct Stack {
    sims: Vec<Sim>,
    nginx: std::result::Result<Nginx, String>,
    switchyard: std::result::Result<Switchyard, String>,
}

impl Stack {
    /// Sims named `names` with `timing`, nginx and a single-arm switchyard
    /// in front of the first.
    fn single(env: &Env, tag: &str, timing: SimTiming) -> Result<Self> {
        Self::threaded(env, tag, timing, 1)
    }

    /// `single`, with `threads` switchyard threads and as many nginx workers.
    fn threaded(env: &Env, tag: &str, timing: SimTiming, threads: usize) -> Result<Self> {
        let sim = Sim::start(env, &format!("{tag}-a"), timing)?;
        let mut conf = NginxConf::new(local(free_port()), sim.addr);
        conf.workers = threads;
        let nginx = Nginx::start(env, tag, &conf);
        let mut policy = Policy::single(local(free_port()), local(free_port()), &sim);
        policy.threads = threads;
        let switchyard = start_switchyard(env, tag, &policy);
        Ok(Self {
            sims: vec![sim],
            nginx,
            switchyard,
        })
    }

    fn targets(&self) -> Vec<Target> {
        let sim = &self.sims[0];
        let mut t = vec![Target {
            kind: Kind::Direct,
            addr: sim.addr,
            pid: sim.proc.pid(),
        }];
        if let Ok(n) = &self.nginx {
            t.push(Target {
                kind: Kind::Nginx,
                addr: n.addr,
                pid: n.proc.pid(),
            });
        }
        if let Ok(s) = &self.switchyard {
            t.push(Target {
                kind: Kind::Switchyard,
                addr: s.addr,
                pid: s.proc.pid(),
            });
        }
        t
    }

    /// `targets()` and the pingora floor, when it started (else said on stderr).
    fn targets_with(&self, floor: &Result<Floor>) -> Vec<Target> {
        let mut targets = self.targets();
        match floor {
            Ok(f) => targets.push(Target {
                kind: Kind::Floor,
                addr: f.addr,
                pid: f.proc.pid(),
            }),
            Err(e) => eprintln!("pingora floor did not start: {e}"),
        }
        targets
    }

    /// Why a column has no figures, if it has none.
    fn missing(&self, kind: Kind) -> Option<String> {
        match kind {
            Kind::Direct => None,
            Kind::Nginx => self.nginx.as_ref().err().cloned(),
            Kind::Switchyard => self.switchyard.as_ref().err().cloned(),
            Kind::Floor => None,
        }
    }
}

struct Ctx {
    env: Env,
    rt: tokio::runtime::Runtime,
    p: Params,
    ticks_per_s: u64,
}

fn start_switchyard(
    env: &Env,
    tag: &str,
    policy: &Policy,
) -> std::result::Result<Switchyard, String> {
    Switchyard::start(env, tag, policy).map_err(|e| format!("did not start: {e}"))
}

impl Ctx {
    /// The environment of a concurrency-1 scenario: everything on one CPU
    /// (unless pinning is off). Pins the load generator too; `main` restores
    /// the default before the next scenario.
    fn one_cpu_env(&self) -> Env {
        let mut env = self.env.clone();
        if env.pin.proxy_cpu.is_some() {
            env.pin = Pinning::one_cpu();
        }
        env.pin.pin_self();
        env
    }

    /// Runs `spec` against `target`, measuring the CPU its process tree used.
    fn run(&self, target: &Target, spec: LoadSpec) -> (Recorder, RunReport) {
        self.run_beside(target, spec, None)
    }

    /// `run`, with `beside` (already addressed) running at the same time
    /// and not measured: background load on another process.
    fn run_beside(
        &self,
        target: &Target,
        mut spec: LoadSpec,
        beside: Option<LoadSpec>,
    ) -> (Recorder, RunReport) {
        spec.addr = target.addr;
        let offered = match spec.mode {
            Mode::Open { rate, .. } => Some(rate),
            Mode::Closed { .. } => None,
        };
        let before = tree_cpu_ticks(target.pid);
        let rec = self.rt.block_on(async {
            match beside {
                Some(b) => tokio::join!(load::run(spec), load::run(b)).0,
                None => load::run(spec).await,
            }
        });
        let used = tree_cpu_ticks(target.pid).saturating_sub(before);
        let mut report = rec.report(target.kind.name());
        report.offered_rps = offered;
        if rec.ok > 0 {
            let us = used as f64 * 1e6 / self.ticks_per_s as f64 / rec.ok as f64;
            report.cpu_us_per_req = Some(crate::stats::round3(us));
        }
        (rec, report)
    }

    /// Runs `a` and `b` at once against `target` (mixed workloads); both recorders.
    fn run_pair(&self, target: &Target, mut a: LoadSpec, mut b: LoadSpec) -> (Recorder, Recorder) {
        a.addr = target.addr;
        b.addr = target.addr;
        self.rt
            .block_on(async { tokio::join!(load::run(a), load::run(b)) })
    }

    fn spec(&self, body: String) -> LoadSpec {
        LoadSpec::new(local(0), Bytes::from(body))
    }
}

/// Entry point of `suite` and `smoke`.
pub fn main(opts: Options) -> Result<()> {
    let started = Instant::now();
    let pin = if opts.pin {
        Pinning::split()
    } else {
        Pinning::none()
    };
    let switchyard = match opts.switchyard.clone() {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("switchyard"),
    };
    if !switchyard.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --locked)",
            switchyard.display()
        ));
    }
    let nginx = opts.nginx.clone().or_else(find_nginx);
    if nginx.is_none() && !opts.smoke {
        return Err(
            "nginx not found: install it (apt-get install -y nginx-light) or pass --nginx".into(),
        );
    }
    crate::procs::kill_children_on_signal();
    let tmp = ScratchDir::new()?;
    let token = format!("bench-{:016x}", rand::random::<u64>());
    let ctx = Ctx {
        env: Env {
            switchyard,
            nginx,
            pin,
            dir: tmp.path().to_owned(),
            token,
        },
        rt: runtime(),
        p: if opts.smoke {
            Params::smoke()
        } else {
            Params::suite()
        },
        ticks_per_s: clock_ticks(),
    };

    type Scenario = fn(&Ctx) -> Result<ScenarioResult>;
    let all: [(u8, Scenario); 10] = [
        (1, latency::added_latency),
        (2, cpu::cpu_per_request),
        (3, ladder::throughput_ladder),
        (4, streaming::streaming),
        (5, latency::body_sizes),
        (6, swap::swap_under_load),
        (7, shadow::shadow),
        (8, cost::cost_routing),
        (9, prefix::prefix_affinity),
        (10, cache::cache_hits),
    ];
    let mut results = Results::new(&opts, &ctx.env);
    for (id, scenario) in all {
        if !opts.only.is_empty() && !opts.only.contains(&id) {
            continue;
        }
        let t = Instant::now();
        eprintln!("scenario {id} …");
        let rounds = if id <= 3 { ctx.p.headline_rounds } else { 1 };
        let mut each = Vec::new();
        for _ in 0..rounds {
            ctx.env.pin.pin_self();
            each.push(scenario(&ctx).map_err(|e| format!("scenario {id}: {e}"))?);
        }
        let mut r = median_round(each);
        r.id = id;
        r.seconds = crate::stats::round3(t.elapsed().as_secs_f64());
        for row in &r.rows {
            eprintln!("  {}", row.console());
        }
        results.scenarios.push(r);
    }
    results.meta.seconds = crate::stats::round3(started.elapsed().as_secs_f64());
    let failures = results.smoke_failures();
    report::write_all(&results, &opts)?;
    drop(ctx);
    drop(tmp);
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    if opts.smoke && !failures.is_empty() {
        return Err(format!("smoke failed:\n  {}", failures.join("\n  ")));
    }
    Ok(())
}

/// One result from several rounds of a scenario: each row is taken from the round whose ratio
/// is the row's median, and says the range of the ratio over all rounds; every round's raw runs
/// are kept (prefixed `round N/`), plots come from the round of the first row's median.
fn median_round(mut rounds: Vec<ScenarioResult>) -> ScenarioResult {
    if rounds.len() <= 1 {
        return rounds.pop().unwrap_or_default();
    }
    let n = rounds.len();
    // Per row: the rounds' ratios in order, and the round holding the median.
    let picks: Vec<(usize, Vec<f64>)> = (0..rounds[0].rows.len())
        .map(|row| {
            let mut by_ratio: Vec<(usize, f64)> = rounds
                .iter()
                .enumerate()
                .filter_map(|(i, r)| Some((i, r.rows.get(row)?.ratio?)))
                .collect();
            by_ratio.sort_by(|a, b| a.1.total_cmp(&b.1));
            let median = by_ratio.get(by_ratio.len() / 2).map_or(0, |&(i, _)| i);
            (median, by_ratio.into_iter().map(|(_, v)| v).collect())
        })
        .collect();
    let plot_round = picks.first().map_or(0, |(i, _)| *i);
    let mut table: Vec<Vec<Option<Row>>> = rounds
        .iter_mut()
        .map(|r| std::mem::take(&mut r.rows).into_iter().map(Some).collect())
        .collect();
    let mut out = ScenarioResult {
        title: rounds[0].title.clone(),
        notes: std::mem::take(&mut rounds[plot_round].notes),
        series: std::mem::take(&mut rounds[plot_round].series),
        ..Default::default()
    };
    let mut summary = Vec::new();
    for (row, (round, ratios)) in picks.iter().enumerate() {
        let Some(mut r) = table[*round].get_mut(row).and_then(Option::take) else {
            continue;
        };
        let listed: Vec<String> = ratios.iter().map(|v| format!("{v:.2}")).collect();
        summary.push(format!("{}: {}", r.metric, listed.join(", ")));
        if let (Some(lo), Some(hi)) = (ratios.first(), ratios.last()) {
            r.metric = format!(
                "{} — median of {n} rounds (ratio {lo:.2}–{hi:.2})",
                r.metric
            );
        }
        out.rows.push(r);
    }
    out.notes.push(format!(
        "{n} rounds; each row's ratio (as its metric says), sorted: {}",
        summary.join(" | ")
    ));
    for (i, round) in rounds.into_iter().enumerate() {
        for (k, v) in round.runs {
            out.runs.insert(format!("round {}/{k}", i + 1), v);
        }
    }
    out
}

fn find_nginx() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// `proxy − direct` at quantile `q`, in µs.
fn added(reports: &BTreeMap<Kind, RunReport>, kind: Kind, q: Quantile) -> Option<f64> {
    let direct = reports.get(&Kind::Direct)?.latency?;
    let proxy = reports.get(&kind)?.latency?;
    Some(proxy.at(q) - direct.at(q))
}

/// switchyard ÷ nginx; none when nginx's figure is not positive (an added
/// latency within noise of zero has no meaningful ratio). A negative
/// switchyard figure counts as 0.
fn ratio(sy: Option<f64>, nginx: Option<f64>) -> Option<f64> {
    match (sy, nginx) {
        (Some(s), Some(n)) if n > f64::EPSILON => Some(s.max(0.0) / n),
        _ => None,
    }
}

/// Cells of one row: `value(kind)` for present columns, the reason for absent ones.
fn cells(stack: &Stack, mut value: impl FnMut(Kind) -> Option<String>) -> [Cell; 3] {
    Kind::ALL.map(|k| match stack.missing(k) {
        Some(why) => Cell::na(&why),
        None => value(k).map_or_else(|| Cell::na("no data"), Cell::text),
    })
}

fn errors_note(reports: &BTreeMap<Kind, RunReport>) -> Vec<String> {
    reports
        .values()
        .filter(|r| r.errors > 0)
        .map(|r| format!("{}: {} errors {:?}", r.target, r.errors, r.error_kinds))
        .collect()
}

fn store(result: &mut ScenarioResult, key: &str, report: RunReport) {
    result.runs.insert(key.to_owned(), report);
}
