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
use crate::report::{self, Cell, Results, Row, ScenarioResult, Verdict};
use crate::stats::{cdf_points, Quantile, Recorder, RunReport};
use crate::targets::{
    Env, Nginx, NginxConf, Policy, PolicyArm, PolicyBackend, Sim, SimTiming, Switchyard, MODEL,
};
use crate::Result;

/// What the command line asked for.
pub struct Options {
    pub smoke: bool,
    pub switchyard: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    pub pin: bool,
    pub out_dir: PathBuf,
    pub markdown: PathBuf,
    pub only: Vec<u8>,
}

/// Sizes and lengths of every scenario; the smoke profile shrinks them all.
struct Params {
    /// Scenario 1: measured requests per target, and rounds they are split in.
    c1_samples: u64,
    c1_rounds: u64,
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
}

impl Params {
    fn suite() -> Self {
        Self {
            c1_samples: 12_000,
            c1_rounds: 10,
            cpu_duration: Duration::from_secs(5),
            ladder_start: 1000.0,
            ladder_factor: 1.5,
            ladder_step: Duration::from_secs(2),
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
        }
    }

    fn smoke() -> Self {
        Self {
            c1_samples: 300,
            c1_rounds: 3,
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
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Direct, Kind::Nginx, Kind::Switchyard];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Nginx => "nginx",
            Kind::Switchyard => "switchyard",
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
        let sim = Sim::start(env, &format!("{tag}-a"), timing)?;
        let nginx = Nginx::start(env, tag, &NginxConf::new(local(free_port()), sim.addr));
        let policy = Policy::single(local(free_port()), local(free_port()), &sim);
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

    /// Why a column has no figures, if it has none.
    fn missing(&self, kind: Kind) -> Option<String> {
        match kind {
            Kind::Direct => None,
            Kind::Nginx => self.nginx.as_ref().err().cloned(),
            Kind::Switchyard => self.switchyard.as_ref().err().cloned(),
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
    let all: [(u8, Scenario); 7] = [
        (1, added_latency),
        (2, cpu_per_request),
        (3, throughput_ladder),
        (4, streaming),
        (5, body_sizes),
        (6, swap_under_load),
        (7, shadow),
    ];
    let mut results = Results::new(&opts, &ctx.env);
    for (id, scenario) in all {
        if !opts.only.is_empty() && !opts.only.contains(&id) {
            continue;
        }
        let t = Instant::now();
        eprintln!("scenario {id} …");
        ctx.env.pin.pin_self();
        let mut r = scenario(&ctx).map_err(|e| format!("scenario {id}: {e}"))?;
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

// 1 ───────────────────────────────────────────────────────────────────────────

fn added_latency(ctx: &Ctx) -> Result<ScenarioResult> {
    let stack = Stack::single(&ctx.one_cpu_env(), "s1", SimTiming::default())?;
    let targets = stack.targets();
    let per_round = ctx.p.c1_samples.div_ceil(ctx.p.c1_rounds);
    let mut recs: BTreeMap<Kind, Recorder> = BTreeMap::new();
    for round in 0..ctx.p.c1_rounds {
        // Rotate the order each round so no target always runs first.
        for i in 0..targets.len() {
            let t = &targets[(i + round as usize) % targets.len()];
            let mut spec = ctx.spec(chat_body(16));
            spec.max_requests = Some(per_round);
            spec.duration = Duration::from_secs(60);
            let (rec, _) = ctx.run(t, spec);
            recs.entry(t.kind).or_default().merge(&rec);
        }
    }
    let mut result = ScenarioResult::new("Added latency, concurrency 1, small body");
    let mut reports = BTreeMap::new();
    for (kind, rec) in &recs {
        let mut r = rec.report(kind.name());
        r.cdf = Some(cdf_points(&rec.latency, 200));
        result.series.insert(
            format!("cdf/{}", kind.name()),
            r.cdf.clone().unwrap_or_default(),
        );
        reports.insert(*kind, r);
    }
    let qs = [Quantile::P50, Quantile::P99, Quantile::P999];
    let [d, n, s] = cells(&stack, |k| {
        let v: Vec<String> = if k == Kind::Direct {
            let l = reports.get(&k)?.latency?;
            qs.iter().map(|q| format!("{:.0}", l.at(*q))).collect()
        } else {
            qs.iter()
                .map(|q| added(&reports, k, *q).map(|v| format!("{v:+.0}")))
                .collect::<Option<_>>()?
        };
        Some(v.join(" / "))
    });
    let r99 = ratio(
        added(&reports, Kind::Switchyard, Quantile::P99),
        added(&reports, Kind::Nginx, Quantile::P99),
    );
    result.rows.push(Row {
        metric: "p50 / p99 / p99.9 µs (direct: absolute; proxies: added over direct)".into(),
        cells: [d, n, s],
        ratio: r99,
        target: Some(Verdict::at_most("added p99 ≤ 1.25× nginx's", r99, 1.25)),
    });
    result.notes = errors_note(&reports);
    result.notes.push(format!(
        "{} rounds × {per_round} requests per target, order rotated each round; ratio is of added p99",
        ctx.p.c1_rounds
    ));
    for (k, r) in reports {
        store(&mut result, k.name(), r);
    }
    Ok(result)
}

// 2 ───────────────────────────────────────────────────────────────────────────

fn cpu_per_request(ctx: &Ctx) -> Result<ScenarioResult> {
    let stack = Stack::single(&ctx.env, "s2", SimTiming::default())?;
    let mut reports = BTreeMap::new();
    for t in stack.targets() {
        let mut spec = ctx.spec(chat_body(16));
        spec.mode = Mode::Closed { concurrency: 8 };
        spec.duration = ctx.p.cpu_duration;
        let (_, r) = ctx.run(&t, spec);
        reports.insert(t.kind, r);
    }
    let cpu = |k: Kind| reports.get(&k).and_then(|r| r.cpu_us_per_req);
    let [d, n, s] = cells(&stack, |k| {
        let r = reports.get(&k)?;
        let c = r.cpu_us_per_req?;
        Some(if k == Kind::Direct {
            format!("({c:.1} sim) @ {:.0} rps", r.achieved_rps)
        } else {
            format!("{c:.1} @ {:.0} rps", r.achieved_rps)
        })
    });
    let r = ratio(cpu(Kind::Switchyard), cpu(Kind::Nginx));
    let mut result = ScenarioResult::new("CPU per request, concurrency 8");
    result.rows.push(Row {
        metric: "proxy user+sys CPU µs/request (direct: the sim's own)".into(),
        cells: [d, n, s],
        ratio: r,
        target: Some(Verdict::at_most("≤ 1.5× nginx", r, 1.5)),
    });
    result.notes = errors_note(&reports);
    result.notes.push(format!(
        "/proc/PID/stat utime+stime of the process tree (nginx: master + worker), {} ticks/s, over {:?} per target",
        ctx.ticks_per_s, ctx.p.cpu_duration
    ));
    for (k, r) in reports {
        store(&mut result, k.name(), r);
    }
    Ok(result)
}

// 3 ───────────────────────────────────────────────────────────────────────────

fn throughput_ladder(ctx: &Ctx) -> Result<ScenarioResult> {
    let stack = Stack::single(&ctx.env, "s3", SimTiming::default())?;
    let mut result = ScenarioResult::new("Throughput ladder (open loop, 32 connections)");
    let mut best: BTreeMap<Kind, f64> = BTreeMap::new();
    for t in stack.targets() {
        let mut points = Vec::new();
        let step = |rate: f64| {
            let mut spec = ctx.spec(chat_body(16));
            spec.mode = Mode::Open {
                rate,
                connections: 32,
            };
            spec.duration = ctx.p.ladder_step;
            spec.request_timeout = Duration::from_secs(2);
            let (_, r) = ctx.run(&t, spec);
            let p99 = r.latency.map_or(f64::INFINITY, |l| l.p99_us);
            let pass = r.errors == 0 && r.ok > 0 && p99 < LADDER_P99.as_micros() as f64;
            (pass, p99, r)
        };
        let (mut pass_rate, mut fail_rate) = (0.0f64, None);
        let mut rate = ctx.p.ladder_start;
        while rate <= ctx.p.ladder_max {
            let (pass, p99, r) = step(rate);
            points.push((rate, p99 / 1000.0));
            store(&mut result, &format!("{}@{rate:.0}", t.kind.name()), r);
            if !pass {
                fail_rate = Some(rate);
                break;
            }
            pass_rate = rate;
            rate *= ctx.p.ladder_factor;
        }
        if let Some(mut hi) = fail_rate {
            for _ in 0..ctx.p.ladder_refine {
                let mid = ((pass_rate + hi) / 2.0).round();
                let (pass, p99, r) = step(mid);
                points.push((mid, p99 / 1000.0));
                store(&mut result, &format!("{}@{mid:.0}", t.kind.name()), r);
                if pass {
                    pass_rate = mid;
                } else {
                    hi = mid;
                }
            }
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        result
            .series
            .insert(format!("ladder/{}", t.kind.name()), points);
        best.insert(t.kind, pass_rate);
    }
    let [d, n, s] = cells(&stack, |k| {
        let b = *best.get(&k)?;
        Some(if b >= ctx.p.ladder_max {
            format!("≥ {b:.0}")
        } else if b == 0.0 {
            format!("< {:.0}", ctx.p.ladder_start)
        } else {
            format!("{b:.0}")
        })
    });
    let r = ratio(
        best.get(&Kind::Switchyard).copied(),
        best.get(&Kind::Nginx).copied(),
    );
    result.rows.push(Row {
        metric: "highest req/s with 0 errors and p99 < 5 ms".into(),
        cells: [d, n, s],
        ratio: r,
        target: None,
    });
    result.notes.push(format!(
        "rates from {:.0} ×{} per step ({:?} each), then {} bisection steps; latency from intended send time",
        ctx.p.ladder_start, ctx.p.ladder_factor, ctx.p.ladder_step, ctx.p.ladder_refine
    ));
    Ok(result)
}

// 4 ───────────────────────────────────────────────────────────────────────────

fn streaming(ctx: &Ctx) -> Result<ScenarioResult> {
    let timing = ctx.p.stream_timing;
    let stack = Stack::single(&ctx.env, "s4", timing)?;
    let mut reports = BTreeMap::new();
    let mut result = ScenarioResult::new("Streaming SSE");
    for t in stack.targets() {
        let mut spec = ctx.spec(stream_body(ctx.p.stream_events));
        spec.stream = true;
        spec.mode = Mode::Closed {
            concurrency: ctx.p.stream_concurrency,
        };
        spec.duration = ctx.p.stream_duration;
        spec.warmup = 1;
        spec.request_timeout = Duration::from_secs(30);
        spec.ramp =
            Duration::from_millis(timing.ttft_ms + timing.tpot_ms * u64::from(ctx.p.stream_events));
        let (rec, r) = ctx.run(&t, spec);
        result.series.insert(
            format!("ttfe/{}", t.kind.name()),
            cdf_points(&rec.ttfe, 200),
        );
        reports.insert(t.kind, r);
    }
    let ttfe = |k: Kind, q: Quantile| Some(reports.get(&k)?.ttfe?.at(q));
    let gap = |k: Kind, q: Quantile| Some(reports.get(&k)?.gap?.at(q));
    let added_by = |f: &dyn Fn(Kind, Quantile) -> Option<f64>, k: Kind, q: Quantile| {
        Some(f(k, q)? - f(Kind::Direct, q)?)
    };
    let ms = |us: f64| format!("{:.2}", us / 1000.0);
    let [d, n, s] = cells(&stack, |k| {
        if k == Kind::Direct {
            Some(format!(
                "{} / {}",
                ms(ttfe(k, Quantile::P50)?),
                ms(ttfe(k, Quantile::P99)?)
            ))
        } else {
            Some(format!(
                "{:+.2} / {:+.2}",
                added_by(&ttfe, k, Quantile::P50)? / 1000.0,
                added_by(&ttfe, k, Quantile::P99)? / 1000.0
            ))
        }
    });
    let sy_ttfe99 = added_by(&ttfe, Kind::Switchyard, Quantile::P99);
    result.rows.push(Row {
        metric: "time to first event p50 / p99 ms (proxies: added)".into(),
        cells: [d, n, s],
        ratio: ratio(sy_ttfe99, added_by(&ttfe, Kind::Nginx, Quantile::P99)),
        target: Some(Verdict::at_most(
            "switchyard added TTFE p99 ≤ 1 ms",
            sy_ttfe99.map(|v| v / 1000.0),
            1.0,
        )),
    });
    let [d, n, s] = cells(&stack, |k| {
        let r = reports.get(&k)?;
        let incomplete = r.error_kinds.get("incomplete_stream").copied().unwrap_or(0);
        let g = if k == Kind::Direct {
            ms(gap(k, Quantile::P99)?)
        } else {
            format!("{:+.2}", added_by(&gap, k, Quantile::P99)? / 1000.0)
        };
        Some(format!(
            "{g}; {} stalls; {}/{} complete",
            r.stalls,
            r.ok,
            r.ok + incomplete
        ))
    });
    let sy_stalls = reports.get(&Kind::Switchyard).map(|r| r.stalls as f64);
    result.rows.push(Row {
        metric: "p99 gap between events ms (proxies: added); stalls ≥ 40 ms; complete streams"
            .into(),
        cells: [d, n, s],
        ratio: ratio(
            added_by(&gap, Kind::Switchyard, Quantile::P99),
            added_by(&gap, Kind::Nginx, Quantile::P99),
        ),
        target: Some(Verdict::at_most("no 40 ms stalls", sy_stalls, 0.0)),
    });
    result.notes = errors_note(&reports);
    result.notes.push(format!(
        "{} events per stream, sim TTFT {} ms and {} ms per token, {} concurrent streams for {:?}",
        ctx.p.stream_events,
        timing.ttft_ms,
        timing.tpot_ms,
        ctx.p.stream_concurrency,
        ctx.p.stream_duration
    ));
    for (k, r) in reports {
        store(&mut result, k.name(), r);
    }
    Ok(result)
}

// 5 ───────────────────────────────────────────────────────────────────────────

fn body_sizes(ctx: &Ctx) -> Result<ScenarioResult> {
    let stack = Stack::single(&ctx.one_cpu_env(), "s5", SimTiming::default())?;
    let mut result = ScenarioResult::new("Request body size, concurrency 1");
    for &size in ctx.p.body_sizes {
        let mut reports = BTreeMap::new();
        for t in stack.targets() {
            let mut spec = ctx.spec(chat_body(size));
            spec.duration = ctx.p.body_duration;
            let (_, r) = ctx.run(&t, spec);
            reports.insert(t.kind, r);
        }
        let [d, n, s] = cells(&stack, |k| {
            let r = reports.get(&k)?;
            let errs = if r.errors > 0 {
                format!(" ({} errors)", r.errors)
            } else {
                String::new()
            };
            let l = r.latency?;
            Some(if k == Kind::Direct {
                format!("{:.0} / {:.0}{errs}", l.p50_us, l.p99_us)
            } else {
                format!(
                    "{:+.0} / {:+.0}{errs}",
                    added(&reports, k, Quantile::P50)?,
                    added(&reports, k, Quantile::P99)?
                )
            })
        });
        let kib = size >> 10;
        let sy_errors = reports.get(&Kind::Switchyard).map(|r| r.errors as f64);
        result.rows.push(Row {
            metric: format!("{kib} KiB prompt: p50 / p99 µs (proxies: added)"),
            cells: [d, n, s],
            ratio: ratio(
                added(&reports, Kind::Switchyard, Quantile::P99),
                added(&reports, Kind::Nginx, Quantile::P99),
            ),
            target: Some(Verdict::at_most("0 errors", sy_errors, 0.0)),
        });
        result.notes.extend(errors_note(&reports));
        for (k, r) in reports {
            store(&mut result, &format!("{}/{kib}KiB", k.name()), r);
        }
    }
    Ok(result)
}

// 6 ───────────────────────────────────────────────────────────────────────────

/// What a series of policy swaps (or nginx reloads) came to.
#[derive(Debug, Default)]
struct SwapTally {
    accepted: u32,
    attempted: u32,
    slowest: Duration,
    first_error: Option<String>,
}

/// Calls `swap(i)` `count` times, `every` apart, starting `every` from now.
fn run_swaps(every: Duration, count: u32, swap: &(dyn Fn(u32) -> Result<()> + Sync)) -> SwapTally {
    let mut tally = SwapTally::default();
    let start = Instant::now();
    for i in 0..count {
        let at = start + every * (i + 1);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let outcome = swap(i);
        tally.slowest = tally.slowest.max(t.elapsed());
        tally.attempted += 1;
        match outcome {
            Ok(()) => tally.accepted += 1,
            Err(e) => {
                tally.first_error.get_or_insert(e);
            }
        }
    }
    tally
}

fn swap_under_load(ctx: &Ctx) -> Result<ScenarioResult> {
    let a = Sim::start(&ctx.env, "s6-a", SimTiming::default())?;
    let b = Sim::start(&ctx.env, "s6-b", SimTiming::default())?;
    let conf_a = NginxConf::new(local(free_port()), a.addr);
    let conf_b = NginxConf::new(conf_a.listen, b.addr);
    let nginx = Nginx::start(&ctx.env, "s6", &conf_a);
    let policy_a = {
        let mut p = Policy::single(local(free_port()), local(free_port()), &a);
        p.backends.push(PolicyBackend {
            name: b.name.clone(),
            addr: b.addr,
        });
        p
    };
    let policy_b = {
        let mut p = policy_a.clone();
        p.arms[0].backends = vec![b.name.clone()];
        p
    };
    let (toml_a, toml_b) = (policy_a.render(), policy_b.render());
    let switchyard = start_switchyard(&ctx.env, "s6", &policy_a);
    let stack = Stack {
        sims: vec![a, b],
        nginx,
        switchyard,
    };

    let swaps = ctx.p.swaps;
    let every = ctx.p.swap_duration / (swaps + 1);
    let mut result = ScenarioResult::new("Policy swap under load (open loop)");
    let mut reports = BTreeMap::new();
    let mut tallies = BTreeMap::new();
    for t in stack.targets() {
        let mut spec = ctx.spec(chat_body(16));
        spec.mode = Mode::Open {
            rate: ctx.p.swap_rate,
            connections: 16,
        };
        // Direct has nothing to swap: a shorter run gives its baseline.
        spec.duration = match t.kind {
            Kind::Direct => ctx.p.swap_duration / 3,
            _ => ctx.p.swap_duration,
        };
        let swap: Option<Box<dyn Fn(u32) -> Result<()> + Sync + '_>> =
            match (t.kind, &stack.nginx, &stack.switchyard) {
                (Kind::Nginx, Ok(n), _) => Some(Box::new(|i: u32| {
                    n.reload(if i.is_multiple_of(2) {
                        &conf_b
                    } else {
                        &conf_a
                    })
                })),
                (Kind::Switchyard, _, Ok(sy)) => Some(Box::new(|i: u32| {
                    let body = if i.is_multiple_of(2) {
                        &toml_b
                    } else {
                        &toml_a
                    };
                    let token = Some(ctx.env.token.as_str());
                    match blocking_request(
                        sy.admin,
                        "PUT",
                        "/admin/config",
                        token,
                        body,
                        Duration::from_secs(5),
                    ) {
                        Ok((200, _)) => Ok(()),
                        Ok((status, body)) => Err(format!("HTTP {status}: {body:.200}")),
                        Err(e) => Err(e.to_string()),
                    }
                })),
                _ => None,
            };
        let (r, tally) = std::thread::scope(|scope| {
            let swapper = swap
                .as_deref()
                .map(|f| scope.spawn(move || run_swaps(every, swaps, f)));
            let (_, r) = ctx.run(&t, spec);
            (
                r,
                swapper.map(|h| h.join().expect("swapper thread does not panic")),
            )
        });
        if let Some(tally) = tally {
            tallies.insert(t.kind, tally);
        }
        reports.insert(t.kind, r);
    }
    let [d, n, s] = cells(&stack, |k| {
        let r = reports.get(&k)?;
        let p99 = r.latency?.p99_us;
        Some(match tallies.get(&k) {
            None => format!("{} errors; p99 {p99:.0} µs", r.errors),
            Some(t) => format!(
                "{} errors; {}/{} swaps; p99 {p99:.0} µs",
                r.errors, t.accepted, t.attempted
            ),
        })
    });
    let sy_errors = reports.get(&Kind::Switchyard).map(|r| r.errors as f64);
    result.rows.push(Row {
        metric: "request errors; swaps accepted; p99 latency".into(),
        cells: [d, n, s],
        ratio: None,
        target: Some(Verdict::at_most("0 errors across swaps", sy_errors, 0.0)),
    });
    result.notes = errors_note(&reports);
    result.notes.push(format!(
        "{:.0} req/s for {:?}; {swaps} swaps {every:?} apart alternating the arm between two sims. nginx: config rewritten + SIGHUP (its reload); switchyard: PUT /admin/config",
        ctx.p.swap_rate, ctx.p.swap_duration
    ));
    for (k, t) in &tallies {
        let served = reports.get(k).map(|r| &r.backends);
        result.notes.push(format!(
            "{}: slowest swap {:?}; responses by sim {served:?}{}",
            k.name(),
            t.slowest,
            t.first_error
                .as_ref()
                .map_or(String::new(), |e| format!("; first failed swap: {e}"))
        ));
    }
    for (k, r) in reports {
        store(&mut result, k.name(), r);
    }
    Ok(result)
}

// 7 ───────────────────────────────────────────────────────────────────────────

/// Responses a sim has sent so far, from its `/metrics`.
fn sim_responses(sim: &Sim) -> Option<u64> {
    let (status, text) = blocking_request(
        sim.addr,
        "GET",
        "/metrics",
        None,
        "",
        Duration::from_secs(2),
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let total = text
        .lines()
        .filter(|l| l.starts_with("switchyard_sim_responses_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    Some(total as u64)
}

/// The gateway's own shadow counters of the first route, from `/admin/shadow`.
fn shadow_report(sy: &Switchyard) -> Option<String> {
    let (status, text) = blocking_request(
        sy.admin,
        "GET",
        "/admin/shadow",
        None,
        "",
        Duration::from_secs(2),
    )
    .ok()?;
    // The body may be chunked; the JSON is what lies between the outer braces.
    let json = &text[text.find('{')?..=text.rfind('}')?];
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let route = value.get("routes")?.get(0)?;
    let fields = ["mirrored", "dropped", "compared", "shadow_errors"]
        .map(|f| format!("{f} {}", route.get(f).unwrap_or(&serde_json::Value::Null)));
    (status == 200).then(|| fields.join(", "))
}

fn shadow(ctx: &Ctx) -> Result<ScenarioResult> {
    let champion = Sim::start(&ctx.env, "s7-champion", SimTiming::default())?;
    let canary = Sim::start(&ctx.env, "s7-canary", SimTiming::default())?;
    let slow = Sim::start(
        &ctx.env,
        "s7-shadow",
        SimTiming {
            ttft_ms: ctx.p.shadow_delay_ms,
            tpot_ms: 0,
        },
    )?;
    let policy = |shadow| Policy {
        listen: local(free_port()),
        admin: local(free_port()),
        backends: [&champion, &canary, &slow]
            .iter()
            .map(|s| PolicyBackend {
                name: s.name.clone(),
                addr: s.addr,
            })
            .collect(),
        arms: vec![
            PolicyArm {
                name: "champion".into(),
                backends: vec![champion.name.clone()],
                weight: 90,
            },
            PolicyArm {
                name: "canary".into(),
                backends: vec![canary.name.clone()],
                weight: 10,
            },
        ],
        shadow,
    };
    let mut missing: BTreeMap<&str, String> = BTreeMap::new();

    // Every variant stays up for the whole scenario so rounds can alternate
    // between them: off and on see the same machine drift.
    let mut nginx = BTreeMap::new();
    for (key, mirror) in [("nginx/off", None), ("nginx/on", Some(slow.addr))] {
        let conf = NginxConf {
            listen: local(free_port()),
            upstreams: vec![(champion.addr, 9), (canary.addr, 1)],
            mirror,
        };
        match Nginx::start(&ctx.env, &key.replace('/', "-"), &conf) {
            Ok(n) => {
                nginx.insert(key, n);
            }
            Err(e) => {
                missing.insert(key, e);
            }
        }
    }
    let mut gateways = BTreeMap::new();
    for (key, shadow) in [
        ("switchyard/off", None),
        ("switchyard/on", Some((slow.name.clone(), 100, 64))),
    ] {
        let policy = policy(shadow);
        let tag = key.replace('/', "-");
        let on = policy.shadow.is_some();
        // A gateway without shadow support rejects the table: report that,
        // don't fail the suite.
        let checked = if on {
            Switchyard::check(&ctx.env, &tag, &policy).map_err(|e| format!("switchyard check: {e}"))
        } else {
            Ok(())
        };
        match checked.and_then(|()| start_switchyard(&ctx.env, &tag, &policy)) {
            Ok(sy) => {
                gateways.insert(key, sy);
            }
            Err(e) if on => {
                missing.insert(key, format!("not available: shadow not implemented ({e})"));
            }
            Err(e) => {
                missing.insert(key, e);
            }
        }
    }

    // (key, target, also load the shadow sim directly)
    let mut variants: Vec<(&str, Target, bool)> = ["direct/off", "direct/on"]
        .iter()
        .map(|key| {
            let t = Target {
                kind: Kind::Direct,
                addr: champion.addr,
                pid: champion.proc.pid(),
            };
            (*key, t, key.ends_with("/on"))
        })
        .collect();
    for (key, n) in &nginx {
        let t = Target {
            kind: Kind::Nginx,
            addr: n.addr,
            pid: n.proc.pid(),
        };
        variants.push((key, t, false));
    }
    for (key, sy) in &gateways {
        let t = Target {
            kind: Kind::Switchyard,
            addr: sy.addr,
            pid: sy.proc.pid(),
        };
        variants.push((key, t, false));
    }

    let spec = || {
        let mut spec = ctx.spec(chat_body(16));
        spec.mode = Mode::Open {
            rate: ctx.p.shadow_rate,
            connections: 64,
        };
        spec.duration = ctx.p.shadow_duration / ctx.p.shadow_rounds;
        spec
    };
    let mut recs: BTreeMap<&str, Recorder> = BTreeMap::new();
    let mut mirrored: Option<u64> = Some(0);
    for round in 0..ctx.p.shadow_rounds as usize {
        for i in 0..variants.len() {
            let (key, target, copies) = variants[(i + round) % variants.len()];
            // The control for "on" without a proxy: the same copies sent
            // straight to the shadow sim alongside the primary load.
            let beside = copies.then(|| {
                let mut s = spec();
                s.addr = slow.addr;
                s
            });
            let before = sim_responses(&slow);
            let (rec, _) = ctx.run_beside(&target, spec(), beside);
            if key == "switchyard/on" {
                let after = sim_responses(&slow);
                mirrored = mirrored
                    .zip(after.zip(before))
                    .map(|(m, (a, b))| m + a.saturating_sub(b + 1));
            }
            recs.entry(key).or_default().merge(&rec);
        }
    }

    let mut result = ScenarioResult::new("Canary 90/10 with a 100 % shadow to a slow sim");
    if let Some(sy) = gateways.get("switchyard/on") {
        result.notes.push(format!(
            "switchyard/on: the shadow sim answered {} requests; /admin/shadow: {}",
            mirrored.map_or("an unknown number of".into(), |m| m.to_string()),
            shadow_report(sy).unwrap_or_else(|| "unavailable".into())
        ));
        if mirrored == Some(0) {
            recs.remove("switchyard/on");
            missing.insert(
                "switchyard/on",
                "not available: policy accepted but nothing reached the shadow sim".into(),
            );
        }
    }
    let mut p99: BTreeMap<&str, f64> = BTreeMap::new();
    let mut p50: BTreeMap<&str, f64> = BTreeMap::new();
    for (key, rec) in &recs {
        let r = rec.report(key);
        if let Some(l) = r.latency {
            p99.insert(key, l.p99_us);
            p50.insert(key, l.p50_us);
        }
        if r.errors > 0 {
            result
                .notes
                .push(format!("{key}: {} errors {:?}", r.errors, r.error_kinds));
        }
        store(&mut result, key, r);
    }

    let change = |proxy: &str| {
        let off = p99.get(format!("{proxy}/off").as_str())?;
        let on = p99.get(format!("{proxy}/on").as_str())?;
        Some((on / off - 1.0) * 100.0)
    };
    let cell = |proxy: &str| {
        let (off_key, on_key) = (format!("{proxy}/off"), format!("{proxy}/on"));
        let why = |key: &str| {
            missing
                .get(key)
                .map_or("no data", |s| s.as_str())
                .to_owned()
        };
        let Some(off) = p99.get(off_key.as_str()) else {
            return Cell::na(&why(&off_key));
        };
        let median = |key: &str| p50.get(key).map_or("?".into(), |v| format!("{v:.0}"));
        match (p99.get(on_key.as_str()), change(proxy)) {
            (Some(on), Some(pct)) => Cell::text(format!(
                "{off:.0} → {on:.0} ({pct:+.1} %); p50 {} → {}",
                median(&off_key),
                median(&on_key)
            )),
            _ => Cell::text(format!("{off:.0} → {}", why(&on_key))),
        }
    };
    result.rows.push(Row {
        metric: "primary p99 µs, shadow off → on (change); p50".into(),
        cells: [cell("direct"), cell("nginx"), cell("switchyard")],
        ratio: None,
        target: Some(Verdict::at_most(
            "shadow moves primary p99 ≤ 10 %",
            change("switchyard"),
            10.0,
        )),
    });
    result.notes.push(format!(
        "{:.0} req/s open loop, {} interleaved rounds, {:?} per variant in all; shadow sim answers after {} ms; nginx's shadow is `mirror` with the request body; direct \"on\" sends the same copies straight to the shadow sim (the floor: what the shadow's work costs the primary on this machine with no proxy)",
        ctx.p.shadow_rate, ctx.p.shadow_rounds, ctx.p.shadow_duration, ctx.p.shadow_delay_ms
    ));
    Ok(result)
}
