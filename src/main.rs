#![deny(unsafe_code)]
//! The `switchyard` command: run the gateway, check a policy, run a simulated model server, and
//! drive a running gateway's admin API.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pingora::server::RunArgs;
use switchyard::client;
use switchyard::config::parse_policy;
use switchyard::telemetry::log_limit::{self, ConnectionErrorLog};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An LLM inference edge gateway on pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct AdminTarget {
    /// Base URL of the gateway's admin listener.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN",
        default_value = "http://127.0.0.1:9090"
    )]
    admin: String,
    /// Environment variable that holds the admin bearer token.
    #[arg(long, default_value = "SWITCHYARD_ADMIN_TOKEN")]
    token_env: String,
}

impl AdminTarget {
    fn token(&self) -> Option<String> {
        std::env::var(&self.token_env)
            .ok()
            .filter(|t| !t.is_empty())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a policy file; the file is watched and reloaded when it changes.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// How often to check the policy file for changes, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        watch_interval_ms: u64,
    },
    /// Validate a policy file: print every error (exit 1) or a summary (exit 0).
    Check { file: PathBuf },
    /// Show the running policy's version and where it came from.
    Status {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Push a policy file to a running gateway (validated there, then swapped in atomically).
    Push {
        file: PathBuf,
        /// Why: recorded in the policy history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Roll back to the previous policy version, or to VERSION.
    Rollback {
        version: Option<u64>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List the kept policy versions, newest first.
    History {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show shadow mirroring per route: mirrored, dropped, errors, agreement, similarity,
    /// latency and TTFT of shadow vs primary, cost.
    Shadow {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show spend against every budget and rate limit (current windows, keys hashed) and spend
    /// by route and tier.
    Spend {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// The response cache: `show` (entries, bytes, hit ratio per route, Redis state) or
    /// `clear` (every in-process entry, or one route's with --route).
    Cache {
        #[command(subcommand)]
        verb: CacheVerb,
    },
    /// Show the guardrails: window figures per route/arm/backend, rule verdicts, rollouts.
    Guardrails {
        /// Window of the figures, e.g. 60s or 15m.
        #[arg(long)]
        window: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Drive a route's progressive rollout: pause, resume, promote (to 100 %) or abort.
    Rollout {
        route: String,
        #[arg(value_parser = ["pause", "resume", "promote", "abort"])]
        verb: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Run a simulated OpenAI-compatible model server (latency model, prefix KV cache, fault
    /// injection) for demos, tests and benches.
    Sim(switchyard::sim::SimArgs),
}

#[derive(Subcommand)]
enum CacheVerb {
    /// Entries, bytes, hits/misses/bypasses and hit ratio per route, L2 (Redis) state.
    Show {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Drop the in-process entries (all, or one route's); Redis entries expire by their TTL.
    Clear {
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// jemalloc instead of glibc's malloc: after a flood of thousands of connections glibc kept
/// the freed per-connection memory (hundreds of MiB, growing with each flood), jemalloc's
/// background threads give it back to the system within seconds. Figures in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // pingora writes an ERROR line per broken client connection: a flood of them is limited
    // to a few lines and a count per interval (see `telemetry::log_limit`).
    let connection_errors =
        ConnectionErrorLog::new(log_limit::DEFAULT_BURST, log_limit::DEFAULT_INTERVAL);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Plain text when piped, so scripts can read `addr=...` from the log.
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(connection_errors.filter()),
        )
        .init();
    if let Err(e) = connection_errors.spawn_summaries(log_limit::DEFAULT_INTERVAL) {
        tracing::warn!(error = %e, "cannot start the connection-error summary thread");
    }
    match Cli::parse().command {
        Command::Serve {
            config,
            watch_interval_ms,
        } => serve(config, watch_interval_ms),
        Command::Check { file } => check(&file),
        Command::Status { target } => status(&target),
        Command::Push {
            file,
            reason,
            target,
        } => match std::fs::read(&file) {
            Ok(body) => {
                let path = match reason {
                    Some(r) => format!(
                        "/admin/config?reason={}",
                        url::form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
                    ),
                    None => "/admin/config".to_owned(),
                };
                admin(&target, "PUT", &path, Some(&body), true)
            }
            Err(e) => fail(&format!("cannot read {}: {e}", file.display())),
        },
        Command::Rollback { version, target } => {
            let path = match version {
                Some(v) => format!("/admin/rollback?to={v}"),
                None => "/admin/rollback".to_owned(),
            };
            admin(&target, "POST", &path, None, true)
        }
        Command::History { target } => admin(&target, "GET", "/admin/config/history", None, false),
        Command::Shadow { target } => admin(&target, "GET", "/admin/shadow", None, false),
        Command::Spend { target } => admin(&target, "GET", "/admin/spend", None, false),
        Command::Cache {
            verb: CacheVerb::Show { target },
        } => admin(&target, "GET", "/admin/cache", None, false),
        Command::Cache {
            verb: CacheVerb::Clear { route, target },
        } => {
            let path = match route {
                Some(r) => format!(
                    "/admin/cache?route={}",
                    url::form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
                ),
                None => "/admin/cache".to_owned(),
            };
            admin(&target, "DELETE", &path, None, true)
        }
        Command::Guardrails { window, target } => {
            let path = match window {
                Some(w) => format!(
                    "/admin/guardrails?window={}",
                    url::form_urlencoded::byte_serialize(w.as_bytes()).collect::<String>()
                ),
                None => "/admin/guardrails".to_owned(),
            };
            admin(&target, "GET", &path, None, false)
        }
        Command::Rollout {
            route,
            verb,
            target,
        } => {
            let route: String = url::form_urlencoded::byte_serialize(route.as_bytes()).collect();
            admin(
                &target,
                "POST",
                &format!("/admin/rollout/{route}/{verb}"),
                None,
                true,
            )
        }
        Command::Sim(args) => match switchyard::sim::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("sim: {e}")),
        },
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("switchyard: {message}");
    ExitCode::FAILURE
}

fn serve(config: PathBuf, watch_interval_ms: u64) -> ExitCode {
    let text = match std::fs::read_to_string(&config) {
        Ok(t) => t,
        Err(e) => return fail(&format!("cannot read {}: {e}", config.display())),
    };
    let store = match switchyard::server::new_store(&text) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: {e}", config.display());
            }
            return fail("the policy is invalid; nothing was started");
        }
    };
    let settings = store.current().policy.server.clone();
    tracing::info!(listen = %settings.listen, admin = %settings.admin_listen, policy = %config.display(), "switchyard starting");
    let server = switchyard::server::build(
        store,
        Some(config),
        std::time::Duration::from_millis(watch_interval_ms.max(50)),
    );
    server.run(RunArgs::default());
    ExitCode::SUCCESS
}

fn check(file: &PathBuf) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(&format!("cannot read {}: {e}", file.display())),
    };
    match parse_policy(&text) {
        Err(errors) => {
            for e in &errors {
                println!("{}: {e}", file.display());
            }
            println!("{} error(s); the policy is invalid", errors.len());
            ExitCode::FAILURE
        }
        Ok(policy) => {
            println!(
                "{}: ok — {} backend(s), {} route(s); proxy {}, admin {}",
                file.display(),
                policy.backends.len(),
                policy.routes.len(),
                policy.server.listen,
                policy.server.admin_listen
            );
            for route in &policy.routes {
                println!(
                    "  route {} (models: {}; sticky: {}{}{})",
                    route.name,
                    route.models.join(", "),
                    route.sticky,
                    route
                        .active_set
                        .as_ref()
                        .map(|s| format!("; active set: {s}"))
                        .unwrap_or_default(),
                    if route.allow_arm_override {
                        "; arm override allowed"
                    } else {
                        ""
                    }
                );
                for arm in route.arms.arms() {
                    let backends: Vec<&str> = arm
                        .backends
                        .iter()
                        .map(|&b| policy.backends[b].name.as_str())
                        .collect();
                    println!(
                        "    arm {:<12} {:>6.2}%  → {}{}",
                        arm.name,
                        f64::from(arm.weight_bp) / 100.0,
                        backends.join(", "),
                        if arm.active { "" } else { "  (standby)" }
                    );
                }
                if let Some(shadow) = &route.shadow {
                    println!(
                        "    shadow {:>13.2}%  → {} (max_inflight {}, timeout {} ms{})",
                        f64::from(shadow.percent_bp) / 100.0,
                        policy.backends[shadow.backend].name,
                        shadow.max_inflight,
                        shadow.timeout.as_millis(),
                        if shadow.mirror_streaming {
                            ""
                        } else {
                            ", not streams"
                        }
                    );
                }
                print_cost_plan(&policy, route);
            }
            ExitCode::SUCCESS
        }
    }
}

/// The route's tier plan, retry settings and fallback routes, as `check` shows them.
fn print_cost_plan(policy: &switchyard::config::Policy, route: &switchyard::config::RouteSpec) {
    let tier = |i: usize| policy.tier_name(i).unwrap_or("-").to_owned();
    if !policy.tiers.is_empty() {
        let t = &route.tiering;
        println!(
            "    tiers: start {} by default; try upward{}{}",
            tier(t.default_tier),
            if t.overflow_down {
                ", then downward"
            } else {
                ""
            },
            if t.allow_client_tier {
                "; clients may choose with x-switchyard-tier"
            } else {
                ""
            }
        );
        for (i, rule) in t.rules.iter().enumerate() {
            println!("      rule {}: {} → {}", i + 1, rule.when, tier(rule.tier));
        }
    }
    let r = &route.retry;
    let on: Vec<&str> = r.on.iter().map(|f| f.as_str()).collect();
    println!(
        "    retry on [{}], at most {} attempt(s), budget {}% + {}/s{}",
        on.join(", "),
        r.max_attempts,
        r.budget_percent,
        r.budget_min_per_second,
        r.ttft_timeout
            .map(|t| format!(", TTFT timeout {} ms", t.as_millis()))
            .unwrap_or_default()
    );
    if !route.fallback_routes.is_empty() {
        let names: Vec<&str> = route
            .fallback_routes
            .iter()
            .map(|&i| policy.routes[i].name.as_str())
            .collect();
        println!("    fallback routes: {}", names.join(", "));
    }
}

/// Prints the live version's entry of the history.
fn status(target: &AdminTarget) -> ExitCode {
    match client::call(&target.admin, "GET", "/admin/config/history", None, b"") {
        Ok(reply) if reply.status == 200 => {
            let live = serde_json::from_str::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v["versions"].get(0).cloned());
            match live {
                Some(entry) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&entry).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                None => fail("the admin API answered without a live version"),
            }
        }
        Ok(reply) => fail(&client::pretty(&reply.body)),
        Err(e) => fail(&e),
    }
}

fn admin(
    target: &AdminTarget,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    mutating: bool,
) -> ExitCode {
    let token = target.token();
    if mutating && token.is_none() {
        return fail(&format!(
            "set {} to the admin token first",
            target.token_env
        ));
    }
    match client::call(
        &target.admin,
        method,
        path,
        token.as_deref(),
        body.unwrap_or_default(),
    ) {
        Ok(reply) => {
            println!("{}", client::pretty(&reply.body));
            if (200..300).contains(&reply.status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e),
    }
}
