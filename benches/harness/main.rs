//! `switchyard-bench`: measures what switchyard costs against the plain-proxy
//! floor (nginx) and against no proxy at all, side by side in one invocation.
//!
//! - `switchyard-bench suite`: every scenario, full length (about 10 min on 2
//!   cores); writes `benches/results/latest.json`, `BENCHMARKS.md` and SVG plots.
//! - `switchyard-bench smoke`: every scenario for a fraction of a second, loose
//!   bounds, non-zero exit on failure; for CI.
//! - `switchyard-bench render`: rewrites `BENCHMARKS.md` and the plots from
//!   `latest.json`, after editing `benches/findings.md`.
//! - `switchyard-bench load URL …`: one ad-hoc run against any address.
//! - `switchyard-bench soak --minutes 10`: mixed traffic with policy swaps for minutes,
//!   sampling the gateway's RSS and descriptors (`make soak`; not part of CI).
//! - `switchyard-bench flood`: floods of slow connections, the gateway's RSS before / at the
//!   peak / after each (`make flood`; not part of CI).
//! - `switchyard-bench floor`: a bare pingora proxy, to show how much of switchyard's cost is
//!   pingora's own request handling (scenario 2, `benches/count-instructions.sh`).
#![deny(unsafe_code)]

/// Returns early with a formatted setup error.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err(format!($($t)*))
    };
}

mod flood;
mod floor;
mod load;
mod procs;
mod report;
mod scenarios;
mod soak;
mod sse;
mod stats;
mod svg;
mod targets;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};

/// The gateway's allocator, so that the pingora floor (`floor`) is compared on equal terms.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Setup failures are reported as text; the harness has no caller to match on them.
pub type Result<T> = std::result::Result<T, String>;

#[derive(Parser)]
#[command(
    name = "switchyard-bench",
    about = "Side-by-side load harness: direct vs nginx vs switchyard"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct SuiteArgs {
    /// The switchyard binary (default: `switchyard` next to this one).
    #[arg(long)]
    switchyard: Option<PathBuf>,
    /// The nginx binary (default: `nginx` on PATH or /usr/sbin/nginx).
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// Do not pin the proxy and the load generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Where `latest.json` and the SVG plots go.
    #[arg(long, default_value = "benches/results")]
    out_dir: PathBuf,
    /// The markdown report (suite only).
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Run only these scenarios (numbers 1-10, comma separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The full suite (about 10 min on 2 cores); writes JSON, markdown and plots.
    Suite(SuiteArgs),
    /// A few seconds of every scenario with loose bounds, for CI.
    Smoke(SuiteArgs),
    /// Rewrites BENCHMARKS.md and the plots from benches/results/latest.json
    /// (after editing benches/findings.md).
    Render {
        #[arg(long, default_value = "benches/results")]
        out_dir: PathBuf,
        #[arg(long, default_value = "BENCHMARKS.md")]
        markdown: PathBuf,
    },
    /// Minutes of mixed plain, streaming, erroring and slow traffic with policy swaps,
    /// sampling the gateway's RSS and open fds; fails on any mishandled request.
    Soak {
        /// How long the load runs; it stops by itself.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// The switchyard binary (default: `switchyard` next to this one).
        #[arg(long)]
        switchyard: Option<PathBuf>,
        /// Concurrent client loops.
        #[arg(long, default_value_t = 16)]
        workers: usize,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        swap_every: Duration,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        sample_every: Duration,
        /// The policy's `[guardrails] span` (e.g. `1m`; default: the gateway's 15 min).
        #[arg(long)]
        guardrail_span: Option<String>,
    },
    /// Floods of slow connections, reading the gateway's RSS and fds before, at the peak and
    /// after each; fails when a probe request failed.
    Flood {
        /// The switchyard binary (default: `switchyard` next to this one).
        #[arg(long)]
        switchyard: Option<PathBuf>,
        #[arg(long, default_value_t = 20_000)]
        connections: usize,
        #[arg(long, default_value_t = 2)]
        floods: usize,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        hold: Duration,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// Which allocator the gateway binary was built with, for the report.
        #[arg(long, default_value = "as built")]
        label: String,
    },
    /// The pingora floor on one thread: a bare `ProxyHttp` that proxies to UPSTREAM, or with
    /// `--answer` pingora's HTTP/1 session writing a fixed answer itself; serves until killed.
    Floor {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, conflicts_with = "answer", required_unless_present = "answer")]
        upstream: Option<SocketAddr>,
        #[arg(long)]
        answer: bool,
    },
    /// One load run against ADDR (host:port), printed as JSON.
    Load {
        addr: String,
        /// Open loop at this many requests per second (default: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        /// Connections (closed loop: the concurrency).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Request an SSE stream of this many events.
        #[arg(long)]
        stream: Option<u32>,
        /// Prompt bytes in the request body.
        #[arg(long, default_value_t = 16)]
        prompt_bytes: usize,
        #[arg(long, default_value = "/v1/chat/completions")]
        path: String,
        /// Closed loop: spread the connections' first requests over this long.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        ramp: Duration,
    },
}

fn main() -> ExitCode {
    finish(run(Cli::parse().command))
}

fn run(command: Cmd) -> Result<()> {
    match command {
        Cmd::Suite(args) => scenarios::main(args_to_opts(args, false)),
        Cmd::Smoke(args) => scenarios::main(args_to_opts(args, true)),
        Cmd::Render { out_dir, markdown } => report::render(&out_dir, &markdown),
        Cmd::Soak {
            minutes,
            switchyard,
            workers,
            swap_every,
            sample_every,
            guardrail_span,
        } => {
            let switchyard = gateway_binary(switchyard)?;
            if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
                bail!("--minutes {minutes}: must be in (0, 1440]");
            }
            soak::main(soak::SoakOptions {
                switchyard,
                duration: Duration::from_secs_f64(minutes * 60.0),
                workers: workers.max(1),
                swap_every,
                sample_every,
                guardrail_span,
            })
        }
        Cmd::Flood {
            switchyard,
            connections,
            floods,
            hold,
            settle,
            label,
        } => {
            let switchyard = gateway_binary(switchyard)?;
            if !(1..=100_000).contains(&connections) || !(1..=10).contains(&floods) {
                bail!("--connections must be 1..=100000 and --floods 1..=10");
            }
            flood::main(flood::FloodOptions {
                switchyard,
                connections,
                floods,
                hold,
                settle,
                label,
            })
        }
        Cmd::Floor {
            listen, upstream, ..
        } => floor::main(listen, upstream),
        Cmd::Load {
            addr,
            rate,
            connections,
            duration,
            stream,
            prompt_bytes,
            path,
            ramp,
        } => {
            let Some(addr) = resolve(&addr) else {
                bail!("cannot resolve {addr}");
            };
            let body = match stream {
                Some(events) => scenarios::stream_body(events),
                None => scenarios::chat_body(prompt_bytes),
            };
            let mut spec = load::LoadSpec::new(addr, Bytes::from(body));
            spec.path = path;
            spec.stream = stream.is_some();
            spec.ramp = ramp;
            spec.duration = duration;
            spec.mode = match rate {
                Some(rate) => load::Mode::Open { rate, connections },
                None => load::Mode::Closed {
                    concurrency: connections,
                },
            };
            let rt = scenarios::runtime();
            let mut report = rt.block_on(load::run(spec)).report(&addr.to_string());
            report.offered_rps = rate;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("reports serialise")
            );
            Ok(())
        }
    }
}

fn resolve(addr: &str) -> Option<SocketAddr> {
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    addr.to_socket_addrs().ok()?.next()
}

fn args_to_opts(a: SuiteArgs, smoke: bool) -> report::Options {
    report::Options {
        smoke,
        switchyard: a.switchyard,
        nginx: a.nginx,
        pin: !a.no_pin,
        out_dir: a.out_dir,
        markdown: a.markdown,
        only: a.only,
    }
}

fn finish(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The gateway binary a standalone run starts: the one given, or `switchyard` beside this one.
fn gateway_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p),
        None => std::env::current_exe()
            .map(|p| p.with_file_name("switchyard"))
            .map_err(|e| e.to_string()),
    }
}
