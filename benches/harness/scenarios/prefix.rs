//! Scenario 9: prefix-cache affinity. Many multi-turn conversations in groups that share a long
//! system prompt, sent through switchyard to four sims with a per-token prefill cost and a
//! bounded KV cache, once per balance strategy (`round_robin`, `least_inflight`, `prefix`), each
//! on fresh sims so no strategy inherits another's warm caches.
//!
//! Conversations arrive open loop (one every `conv_gap`, whatever the answers do); within a
//! conversation each turn is sent a think time after the previous answer, its prompt the whole
//! history so far. TTFT is from send to the first SSE event. The hit rate is the sims' own
//! `vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`; the reference is what one
//! backend with an unbounded cache would hit on the same turns (every block seen before is a hit),
//! computed with the gateway's and the sim's shared prefix hashing.

use std::collections::HashSet;

use http_body_util::BodyExt;
use switchyard::routing::prefix::{block_hashes, model_seed, BlockShape, BYTES_PER_TOKEN};

use super::*;

/// The workload of one run.
struct Workload {
    groups: usize,
    convs_per_group: usize,
    turns: usize,
    system_tokens: usize,
    user_tokens: usize,
    assistant_tokens: usize,
    conv_gap: Duration,
    think: Duration,
    prefill_us_per_token: u64,
    kv_cache_blocks: u64,
}

impl Workload {
    fn new(smoke: bool) -> Self {
        if smoke {
            Workload {
                groups: 2,
                convs_per_group: 2,
                turns: 2,
                system_tokens: 256,
                user_tokens: 32,
                assistant_tokens: 16,
                conv_gap: Duration::from_millis(20),
                think: Duration::from_millis(5),
                prefill_us_per_token: 20,
                kv_cache_blocks: 64,
            }
        } else {
            Workload {
                groups: 8,
                convs_per_group: 6,
                turns: 4,
                system_tokens: 1024,
                user_tokens: 64,
                assistant_tokens: 32,
                conv_gap: Duration::from_millis(40),
                think: Duration::from_millis(20),
                prefill_us_per_token: 200,
                kv_cache_blocks: 256,
            }
        }
    }

    fn conversations(&self) -> usize {
        self.groups * self.convs_per_group
    }

    /// Text of about `tokens` tokens, distinct per `tag`.
    fn text(tag: &str, tokens: usize) -> String {
        let mut t = String::with_capacity(tokens * BYTES_PER_TOKEN + 32);
        let mut i = 0;
        while t.len() < tokens * BYTES_PER_TOKEN {
            t.push_str(&format!("{tag} line {i}. "));
            i += 1;
        }
        t.truncate(tokens * BYTES_PER_TOKEN);
        t
    }

    /// The messages of conversation `c`'s turn `turn`: the group's system prompt, the earlier
    /// turns (with a fixed assistant reply: the sim caches prompts, not answers), the new question.
    fn messages(&self, c: usize, turn: usize) -> Vec<(String, String)> {
        let group = c % self.groups;
        let mut m = vec![(
            "system".to_owned(),
            Self::text(&format!("group {group} policy"), self.system_tokens),
        )];
        for t in 0..=turn {
            m.push((
                "user".to_owned(),
                Self::text(&format!("conv {c} question {t}"), self.user_tokens),
            ));
            if t < turn {
                m.push((
                    "assistant".to_owned(),
                    Self::text(&format!("conv {c} answer {t}"), self.assistant_tokens),
                ));
            }
        }
        m
    }

    fn body(&self, c: usize, turn: usize) -> Bytes {
        let messages: Vec<serde_json::Value> = self
            .messages(c, turn)
            .into_iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        Bytes::from(
            serde_json::json!({
                "model": MODEL,
                "messages": messages,
                "max_tokens": 8,
                "stream": true,
            })
            .to_string(),
        )
    }

    /// The prompt as the sim renders it (`role\ntext\n` per message).
    fn rendered(&self, c: usize, turn: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (role, content) in self.messages(c, turn) {
            out.extend_from_slice(role.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(content.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// The hit rate (in prompt tokens) of one backend that kept every block it ever saw.
    fn ideal_hit_rate(&self) -> f64 {
        let shape = BlockShape {
            block_tokens: SIM_BLOCK_TOKENS,
            max_blocks: usize::MAX,
        };
        let seed = model_seed(MODEL);
        let mut seen = HashSet::new();
        let (mut hits, mut queried) = (0u64, 0u64);
        for turn in 0..self.turns {
            for c in 0..self.conversations() {
                let prompt = self.rendered(c, turn);
                let blocks = block_hashes(seed, &prompt, shape);
                let hit = blocks.iter().take_while(|b| seen.contains(*b)).count();
                hits += (hit * SIM_BLOCK_TOKENS as usize) as u64;
                queried += prompt.len().div_ceil(BYTES_PER_TOKEN) as u64;
                seen.extend(blocks);
            }
        }
        hits as f64 / queried.max(1) as f64
    }
}

/// Why the direct and nginx columns are empty: the strategies compared are switchyard's.
const NOT_A_PROXY: &str = "not available: the strategies compared are switchyard's own";

/// The sims' block size (their default, vLLM's too).
const SIM_BLOCK_TOKENS: u32 = 16;

const STRATEGIES: [&str; 3] = ["round_robin", "least_inflight", "prefix"];

/// What one strategy's run measured.
struct Outcome {
    ttft_ms: Vec<f64>,
    errors: u64,
    seconds: f64,
    hit_rate: Option<f64>,
}

/// Sends one streamed turn and returns its TTFT (to the first SSE event) once the answer ended.
async fn turn(addr: SocketAddr, body: Bytes) -> std::result::Result<Duration, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    let sent = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    let mut ttft = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if ttft.is_none() && data.windows(6).any(|w| w == b"data: ") {
                ttft = Some(sent.elapsed());
            }
        }
    }
    ttft.ok_or_else(|| "no event".to_owned())
}

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Runs every conversation against `addr`: conversation `c` starts at `c × conv_gap`.
async fn drive(w: &Workload, addr: SocketAddr) -> (Vec<f64>, u64, f64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..w.conversations() {
        let bodies: Vec<Bytes> = (0..w.turns).map(|t| w.body(c, t)).collect();
        let (gap, think) = (w.conv_gap * c as u32, w.think);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(gap).await;
            let mut out = Vec::new();
            for body in bodies {
                out.push(turn(addr, body).await);
                tokio::time::sleep(think).await;
            }
            out
        }));
    }
    let (mut ttfts, mut errors) = (Vec::new(), 0);
    for task in tasks {
        for result in task.await.unwrap_or_default() {
            match result {
                Ok(t) => ttfts.push(t.as_secs_f64() * 1e3),
                Err(_) => errors += 1,
            }
        }
    }
    (ttfts, errors, started.elapsed().as_secs_f64())
}

/// `(hits, queries)` in tokens from a sim's `/metrics`.
fn sim_cache(sim: &Sim) -> Option<(f64, f64)> {
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
    let value = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    Some((
        value("vllm:prefix_cache_hits_total"),
        value("vllm:prefix_cache_queries_total"),
    ))
}

fn policy(sims: &[Sim], listen: SocketAddr, admin: SocketAddr, balance: &str) -> String {
    let mut s = format!(
        "# generated by switchyard-bench\n[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nthreads = 1\n"
    );
    for sim in sims {
        s += &format!(
            "\n[[backends]]\nname = \"{}\"\nurl = \"http://{}\"\n",
            sim.name, sim.addr
        );
    }
    let names: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.name)).collect();
    s += &format!(
        "\n[[routes]]\nname = \"chat\"\nmodels = [\"{MODEL}\"]\nbalance = \"{balance}\"\n\n  [[routes.arms]]\n  name = \"all\"\n  backends = [{}]\n  weight = 100\n",
        names.join(", ")
    );
    s
}

fn run_strategy(ctx: &Ctx, w: &Workload, balance: &str) -> std::result::Result<Outcome, String> {
    let extra = [
        "--prefill-us-per-token".to_owned(),
        w.prefill_us_per_token.to_string(),
        "--kv-cache-blocks".to_owned(),
        w.kv_cache_blocks.to_string(),
        "--kv-block-tokens".to_owned(),
        SIM_BLOCK_TOKENS.to_string(),
    ];
    let timing = SimTiming {
        ttft_ms: 2,
        tpot_ms: 1,
    };
    let sims = (0..4)
        .map(|i| Sim::start_with(&ctx.env, &format!("s9-{balance}-{i}"), timing, &extra))
        .collect::<Result<Vec<_>>>()?;
    let (listen, admin) = (local(free_port()), local(free_port()));
    let tag = format!("s9-{balance}");
    let sy = Switchyard::start_text(
        &ctx.env,
        &tag,
        listen,
        admin,
        &policy(&sims, listen, admin, balance),
    )
    .map_err(|e| format!("did not start: {e}"))?;
    // Let the first scrapes land so `prefix` starts with known loads, as in steady state.
    std::thread::sleep(Duration::from_millis(300));
    let (ttft_ms, errors, seconds) = ctx.rt.block_on(drive(w, sy.addr));
    let cache: Option<(f64, f64)> = sims
        .iter()
        .map(sim_cache)
        .try_fold((0.0, 0.0), |acc, c| c.map(|(h, q)| (acc.0 + h, acc.1 + q)));
    drop(sy);
    Ok(Outcome {
        ttft_ms,
        errors,
        seconds,
        hit_rate: cache.and_then(|(h, q)| (q > 0.0).then_some(h / q)),
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    Some(s[i])
}

pub(super) fn prefix_affinity(ctx: &Ctx) -> Result<ScenarioResult> {
    let w = Workload::new(ctx.p.smoke);
    let ideal = w.ideal_hit_rate();
    let mut result = ScenarioResult::new(
        "Prefix-cache affinity: multi-turn conversations sharing system prompts, 4 sims with prefill cost",
    );
    let mut means = BTreeMap::new();
    let mut hits = BTreeMap::new();
    for balance in STRATEGIES {
        let na = |why: &str| [Cell::na(NOT_A_PROXY), Cell::na(NOT_A_PROXY), Cell::na(why)];
        let outcome = match run_strategy(ctx, &w, balance) {
            Ok(o) => o,
            Err(e) => {
                result.rows.push(Row {
                    metric: format!("balance = {balance}"),
                    cells: na(&e),
                    ratio: None,
                    target: None,
                });
                continue;
            }
        };
        let fmt = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.1}"));
        let m = mean(&outcome.ttft_ms);
        if let Some(m) = m {
            means.insert(balance, m);
        }
        if let Some(h) = outcome.hit_rate {
            hits.insert(balance, h);
        }
        let text = format!(
            "TTFT ms mean {} / p50 {} / p99 {}; hit rate {}; {:.1} req/s",
            fmt(m),
            fmt(quantile(&outcome.ttft_ms, 0.5)),
            fmt(quantile(&outcome.ttft_ms, 0.99)),
            outcome
                .hit_rate
                .map_or("?".to_owned(), |h| format!("{:.1} %", h * 100.0)),
            outcome.ttft_ms.len() as f64 / outcome.seconds.max(1e-9),
        );
        let cells = [
            Cell::na(NOT_A_PROXY),
            Cell::na(NOT_A_PROXY),
            if outcome.ttft_ms.is_empty() {
                Cell::na("no request succeeded")
            } else {
                Cell::text(text)
            },
        ];
        result.rows.push(Row {
            metric: format!("balance = {balance}"),
            cells,
            ratio: None,
            target: None,
        });
        if outcome.errors > 0 {
            result
                .notes
                .push(format!("{balance}: {} failed turns", outcome.errors));
        }
        let mut rec = Recorder::default();
        for t in &outcome.ttft_ms {
            // Microseconds, as every other recorded duration.
            let _ = rec.ttfe.record((t * 1e3).max(1.0) as u64);
        }
        rec.ok = outcome.ttft_ms.len() as u64;
        if outcome.errors > 0 {
            rec.errors.insert("turn_failed".into(), outcome.errors);
        }
        rec.elapsed = Duration::from_secs_f64(outcome.seconds);
        let key = format!("switchyard/{balance}");
        store(&mut result, &key, rec.report(&key));
    }
    let speedup = means
        .get("round_robin")
        .zip(means.get("prefix"))
        .map(|(rr, p)| rr / p.max(1e-9));
    result.rows.push(Row {
        metric: "mean TTFT, round_robin ÷ prefix".into(),
        cells: [
            Cell::na(NOT_A_PROXY),
            Cell::na(NOT_A_PROXY),
            speedup.map_or_else(|| Cell::na("no data"), |s| Cell::text(format!("{s:.2}×"))),
        ],
        ratio: None,
        // Reported as the inverse so the harness's "at most" reads "prefix ≤ 1/3 of rr".
        target: Some(Verdict::at_most(
            "prefix mean TTFT ≤ round_robin's ÷ 3",
            speedup.map(|s| 1.0 / s),
            1.0 / 3.0,
        )),
    });
    let gap = hits.get("prefix").map(|h| (ideal - h) / ideal * 100.0);
    result.rows.push(Row {
        metric: "prefix hit rate vs one backend holding every prefix".into(),
        cells: [
            Cell::na(NOT_A_PROXY),
            Cell::na(NOT_A_PROXY),
            hits.get("prefix").map_or_else(
                || Cell::na("no data"),
                |h| {
                    Cell::text(format!(
                        "{:.1} % of ideal {:.1} %",
                        h * 100.0,
                        ideal * 100.0
                    ))
                },
            ),
        ],
        ratio: None,
        target: Some(Verdict::at_most(
            "within 10 % of the ideal hit rate",
            gap,
            10.0,
        )),
    });
    result.notes.push(format!(
        "{} groups × {} conversations × {} turns (system prompt {} tokens, +{} user / {} assistant tokens per turn), a conversation every {:?}, {:?} think time; 4 sims with --prefill-us-per-token {} --kv-cache-blocks {} (blocks of {} tokens), fresh for each strategy; TTFT to the first SSE event; hit rate from the sims' vllm:prefix_cache_* counters",
        w.groups, w.convs_per_group, w.turns, w.system_tokens, w.user_tokens, w.assistant_tokens,
        w.conv_gap, w.think, w.prefill_us_per_token, w.kv_cache_blocks, SIM_BLOCK_TOKENS
    ));
    Ok(result)
}
