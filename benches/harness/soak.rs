//! `switchyard-bench soak`: a long bounded run of mixed traffic against the release gateway and
//! sims — plain, streaming, erroring and slow requests while the policy is swapped every few
//! seconds — sampling the gateway's RSS and open descriptors from `/proc`. It answers "does it
//! leak, and does it mishandle anything over minutes", which the short scenarios cannot.
//!
//! A *failure* is a request the gateway mishandled: no answer within the hang limit, a broken
//! connection, a body that is not what the status says, or a 5xx on a route whose backends do
//! not fail. The erroring route's 5xx answers and mid-stream error events are expected
//! outcomes (its sim injects them) and are counted apart.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;

use crate::load::blocking_request;
use crate::procs::{free_port, local, ScratchDir};
use crate::targets::{Env, Sim, SimTiming, Switchyard, MODEL, TOKEN_ENV};
use crate::Result;
use std::net::SocketAddr;

/// Options of one soak run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub switchyard: PathBuf,
    pub duration: Duration,
    /// Concurrent client loops.
    pub workers: usize,
    /// Time between policy swaps.
    pub swap_every: Duration,
    /// Time between RSS/fd samples.
    pub sample_every: Duration,
    /// `[guardrails] span` of the soak's policy (the gateway's default, 15 min, when `None`):
    /// a short span lets a short soak show RSS levelling off once the windows are full.
    pub guardrail_span: Option<String>,
}

/// A request with no complete answer within this long counts as a hang.
const HANG: Duration = Duration::from_secs(30);
/// How long the gateway idles after the load before the "end" sample, so memory freed
/// when connections close is counted as freed.
const SETTLE: Duration = Duration::from_secs(5);
/// Failures described in the report (the rest are only counted).
const FAILURES_KEPT: usize = 20;

/// The traffic classes, in the order workers cycle through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Plain,
    Stream,
    Erroring,
    ErroringStream,
    Slow,
}

const CLASSES: [Class; 5] = [
    Class::Plain,
    Class::Stream,
    Class::Erroring,
    Class::ErroringStream,
    Class::Slow,
];

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Plain => "plain",
            Class::Stream => "streaming",
            Class::Erroring => "erroring (plain)",
            Class::ErroringStream => "erroring (streaming)",
            Class::Slow => "slow (streaming)",
        }
    }

    fn body(self) -> String {
        let (model, stream, tokens) = match self {
            Class::Plain => (MODEL, false, 16),
            Class::Stream => (MODEL, true, 16),
            Class::Erroring => ("flaky", false, 8),
            Class::ErroringStream => ("flaky", true, 8),
            Class::Slow => ("slow", true, 10),
        };
        serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "soak: tell me something"}],
            "max_tokens": tokens,
            "stream": stream,
        })
        .to_string()
    }

    /// Whether the backend behind this class injects failures.
    fn erroring(self) -> bool {
        matches!(self, Class::Erroring | Class::ErroringStream)
    }

    fn stream(self) -> bool {
        matches!(self, Class::Stream | Class::ErroringStream | Class::Slow)
    }
}

/// How one answer is judged.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// An error the erroring backend called for.
    ExpectedError,
    Failure(String),
}

/// Judges one answer of `class`: `status` and the whole `body`.
fn judge(class: Class, status: u16, body: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(body);
    let openai_error = || {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .is_some_and(|v| v["error"]["message"].is_string() && v["error"]["code"].is_string())
    };
    match status {
        200 if class.stream() => {
            if !text.contains("data: [DONE]") {
                return Verdict::Failure(format!("{}: stream without [DONE]", class.name()));
            }
            let error_event = text
                .split("\n\n")
                .any(|e| e.starts_with("data: {\"error\""));
            match (error_event, class.erroring()) {
                (false, _) => Verdict::Ok,
                (true, true) => Verdict::ExpectedError,
                (true, false) => Verdict::Failure(format!(
                    "{}: error event on a healthy route: {:.200}",
                    class.name(),
                    text
                )),
            }
        }
        200 => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) if v["choices"][0]["message"]["content"].is_string() => Verdict::Ok,
            _ => Verdict::Failure(format!("{}: 200 with body {:.200}", class.name(), text)),
        },
        500..=599 if class.erroring() && openai_error() => Verdict::ExpectedError,
        _ => Verdict::Failure(format!("{}: HTTP {status}: {:.200}", class.name(), text)),
    }
}

#[derive(Default)]
struct ClassTally {
    sent: AtomicU64,
    ok: AtomicU64,
    expected: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
/// One reading of the gateway's `/proc`: resident memory and open descriptors.
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
}

/// Reads `/proc/PID`; `None` once the process is gone.
pub fn sample(pid: u32, at: Duration) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample { at, rss_kib, fds })
}

/// The policy of the soak: a two-arm chat route (weights swapped back and forth), a route to a
/// sim that fails a share of its requests, and a route to a slow sim.
/// `backends` are (name, address) of the champion's, the canary's, the erroring and the slow
/// sim.
fn policy(
    listen: SocketAddr,
    admin: SocketAddr,
    backends: &[(&str, SocketAddr); 4],
    canary: u32,
    guardrail_span: Option<&str>,
) -> String {
    let [a, b, flaky, slow] = backends.map(|(name, _)| name);
    let mut s = format!(
        "# generated by switchyard-bench soak\n[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nadmin_token_env = \"{TOKEN_ENV}\"\nthreads = 1\n"
    );
    if let Some(span) = guardrail_span {
        let _ = write!(s, "\n[guardrails]\nspan = \"{span}\"\n");
    }
    for (name, addr) in backends {
        let _ = write!(
            s,
            "\n[[backends]]\nname = \"{name}\"\nurl = \"http://{addr}\"\nmodel = \"{MODEL}\"\n"
        );
    }
    let _ = write!(
        s,
        "\n[[routes]]\nname = \"chat\"\nmodels = [\"{MODEL}\"]\nsticky = \"none\"\n\
         \n  [[routes.arms]]\n  name = \"champion\"\n  backends = [\"{}\"]\n  weight = {}\n\
         \n  [[routes.arms]]\n  name = \"canary\"\n  backends = [\"{}\"]\n  weight = {canary}\n",
        a,
        100 - canary,
        b
    );
    for (route, sim) in [("flaky", flaky), ("slow", slow)] {
        let _ = write!(
            s,
            "\n[[routes]]\nname = \"{route}\"\nmodels = [\"{route}\"]\nsticky = \"none\"\n\
             \n  [[routes.arms]]\n  name = \"only\"\n  backends = [\"{}\"]\n  weight = 100\n",
            sim
        );
    }
    s
}

/// Runs the soak and prints its figures; fails when a request was mishandled or the
/// gateway died.
pub fn main(opts: SoakOptions) -> Result<()> {
    if !opts.switchyard.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --locked)",
            opts.switchyard.display()
        ));
    }
    crate::procs::kill_children_on_signal();
    let tmp = ScratchDir::new()?;
    let env = Env::gateway_only(opts.switchyard.clone(), tmp.path().to_owned(), "soak");
    let fast = SimTiming {
        ttft_ms: 5,
        tpot_ms: 2,
    };
    let a = Sim::start(&env, "soak-a", fast)?;
    let b = Sim::start(&env, "soak-b", fast)?;
    let flaky = Sim::start_with(
        &env,
        "soak-flaky",
        fast,
        &[
            "--error-rate".into(),
            "0.3".into(),
            "--error-status".into(),
            "500".into(),
            "--stream-error-after".into(),
            "4".into(),
        ],
    )?;
    let slow = Sim::start(
        &env,
        "soak-slow",
        SimTiming {
            ttft_ms: 250,
            tpot_ms: 40,
        },
    )?;
    let backends = [&a, &b, &flaky, &slow].map(|s| (s.name.as_str(), s.addr));
    let (listen, admin) = (local(free_port()), local(free_port()));
    let texts = [
        policy(listen, admin, &backends, 10, opts.guardrail_span.as_deref()),
        policy(listen, admin, &backends, 50, opts.guardrail_span.as_deref()),
    ];
    let mut gateway = Switchyard::start_text(&env, "soak", listen, admin, &texts[0])?;
    let pid = gateway.proc.pid();

    let started = Instant::now();
    let mut samples = vec![sample(pid, Duration::ZERO).ok_or("cannot read the gateway's /proc")?];
    let tallies: Arc<Vec<ClassTally>> =
        Arc::new(CLASSES.iter().map(|_| ClassTally::default()).collect());
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (swaps_ok, swaps_failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let swap_error = Mutex::new(None::<String>);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let workers: Vec<_> = (0..opts.workers)
        .map(|w| {
            let (tallies, failures, stop) = (tallies.clone(), failures.clone(), stop.clone());
            rt.spawn(worker(w, listen, tallies, failures, stop))
        })
        .collect();

    std::thread::scope(|scope| {
        // Policy swaps, alternating the canary's weight.
        scope.spawn(|| {
            let mut i = 0usize;
            while started.elapsed() + opts.swap_every < opts.duration {
                std::thread::sleep(opts.swap_every);
                i += 1;
                let answer = blocking_request(
                    admin,
                    "PUT",
                    "/admin/config",
                    Some(&env.token),
                    &texts[i % 2],
                    Duration::from_secs(10),
                );
                match answer {
                    Ok((200, _)) => {
                        swaps_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        swaps_failed.fetch_add(1, Ordering::Relaxed);
                        swap_error.lock().get_or_insert(format!("{other:?}"));
                    }
                }
            }
        });
        // Samples, and the progress line.
        while started.elapsed() < opts.duration {
            std::thread::sleep(
                opts.sample_every
                    .min(opts.duration.saturating_sub(started.elapsed())),
            );
            if let Some(s) = sample(pid, started.elapsed()) {
                samples.push(s);
            }
            let sent: u64 = tallies.iter().map(|t| t.sent.load(Ordering::Relaxed)).sum();
            let failed: u64 = tallies
                .iter()
                .map(|t| t.failed.load(Ordering::Relaxed))
                .sum();
            let last = samples.last().copied();
            eprintln!(
                "soak {:>4.0} s: {sent} requests, {failed} failed; rss {} KiB, fds {}",
                started.elapsed().as_secs_f64(),
                last.map_or(0, |s| s.rss_kib),
                last.map_or(0, |s| s.fds),
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    rt.block_on(async {
        for w in workers {
            let _ = tokio::time::timeout(HANG + Duration::from_secs(5), w).await;
        }
    });
    let load_seconds = started.elapsed().as_secs_f64();
    drop(rt);
    std::thread::sleep(SETTLE);
    let end = sample(pid, started.elapsed());
    if let Some(end) = end {
        samples.push(end);
    }
    let died = gateway.proc.exited();

    let peak_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let peak_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let first = samples[0];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {load_seconds:.0} s of load, {} workers, policy swap every {:?} ({} accepted, {} refused), {} samples",
        opts.workers,
        opts.swap_every,
        swaps_ok.load(Ordering::Relaxed),
        swaps_failed.load(Ordering::Relaxed),
        samples.len()
    );
    let _ = writeln!(
        out,
        "gateway RSS KiB: start {} / peak {} / end {} ({:?} after the load)",
        first.rss_kib,
        peak_rss,
        end.map_or(0, |s| s.rss_kib),
        SETTLE
    );
    let _ = writeln!(
        out,
        "gateway open fds: start {} / peak {} / end {}",
        first.fds,
        peak_fds,
        end.map_or(0, |s| s.fds)
    );
    let _ = writeln!(out, "| class | sent | ok | expected errors | failures |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let mut total_failed = 0;
    for (class, t) in CLASSES.iter().zip(tallies.iter()) {
        let failed = t.failed.load(Ordering::Relaxed);
        total_failed += failed;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {failed} |",
            class.name(),
            t.sent.load(Ordering::Relaxed),
            t.ok.load(Ordering::Relaxed),
            t.expected.load(Ordering::Relaxed),
        );
    }
    let rss_series: Vec<String> = samples
        .iter()
        .map(|s| format!("{:.0}s:{}", s.at.as_secs_f64(), s.rss_kib))
        .collect();
    let _ = writeln!(out, "RSS samples (s:KiB): {}", rss_series.join(" "));
    for f in failures.lock().iter() {
        let _ = writeln!(out, "failure: {f}");
    }
    if let Some(e) = swap_error.lock().as_ref() {
        let _ = writeln!(out, "first refused swap: {e}");
    }
    println!("{out}");
    drop(gateway);
    drop(tmp);
    if let Some(status) = died {
        return Err(format!("the gateway exited during the soak: {status}"));
    }
    if total_failed > 0 || swaps_failed.load(Ordering::Relaxed) > 0 {
        return Err(format!(
            "{total_failed} failed requests, {} refused swaps",
            swaps_failed.load(Ordering::Relaxed)
        ));
    }
    Ok(())
}

/// One client loop: cycles through the classes (offset by its index so classes run side by
/// side), one request at a time on a keep-alive pool, until `stop`.
async fn worker(
    index: usize,
    addr: SocketAddr,
    tallies: Arc<Vec<ClassTally>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url = format!("http://{addr}/v1/chat/completions");
    let bodies: Vec<Bytes> = CLASSES.iter().map(|c| Bytes::from(c.body())).collect();
    let mut n = index;
    while !stop.load(Ordering::Relaxed) {
        let which = n % CLASSES.len();
        n += 1;
        let class = CLASSES[which];
        let request = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(bodies[which].clone()))
            .expect("a valid request");
        let answer = tokio::time::timeout(HANG, async {
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await;
        let verdict = match answer {
            Ok(Ok((status, body))) => judge(class, status, &body),
            Ok(Err(e)) => Verdict::Failure(format!("{}: connection: {e:.200}", class.name())),
            Err(_) => Verdict::Failure(format!("{}: no answer within {HANG:?}", class.name())),
        };
        let t = &tallies[which];
        t.sent.fetch_add(1, Ordering::Relaxed);
        match verdict {
            Verdict::Ok => t.ok.fetch_add(1, Ordering::Relaxed),
            Verdict::ExpectedError => t.expected.fetch_add(1, Ordering::Relaxed),
            Verdict::Failure(f) => {
                let mut kept = failures.lock();
                if kept.len() < FAILURES_KEPT {
                    kept.push(f);
                }
                t.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_expected_errors_apart_from_failures() {
        let error =
            br#"{"error":{"message":"boom","type":"server_error","code":"upstream_error"}}"#;
        assert_eq!(judge(Class::Erroring, 500, error), Verdict::ExpectedError);
        assert!(matches!(
            judge(Class::Plain, 502, error),
            Verdict::Failure(_)
        ));
        assert!(matches!(
            judge(Class::Erroring, 502, b"<html>bad gateway</html>"),
            Verdict::Failure(_)
        ));
        let stream_error =
            b"data: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            judge(Class::ErroringStream, 200, stream_error),
            Verdict::ExpectedError
        );
        assert!(matches!(
            judge(Class::Stream, 200, stream_error),
            Verdict::Failure(_)
        ));
        assert!(matches!(
            judge(Class::Slow, 200, b"data: {\"choices\":[]}\n\n"),
            Verdict::Failure(_)
        ));
        let plain = br#"{"choices":[{"message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(judge(Class::Plain, 200, plain), Verdict::Ok);
        assert!(matches!(
            judge(Class::Plain, 200, b"{\"choices\":[]}"),
            Verdict::Failure(_)
        ));
    }

    #[test]
    fn the_soak_policy_validates_at_both_weights() {
        let backends = [
            ("a", local(9001)),
            ("b", local(9002)),
            ("flaky", local(9003)),
            ("slow", local(9004)),
        ];
        for (canary, span) in [(10, None), (50, None), (10, Some("1m"))] {
            let text = policy(local(8080), local(9090), &backends, canary, span);
            let parsed = switchyard::config::parse_policy(&text);
            assert!(parsed.is_ok(), "{text}\n{parsed:?}");
        }
    }
}
