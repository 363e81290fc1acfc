//! The per-request decisions and the policy swap, without sockets: what the
//! gateway spends on a request before any byte goes upstream.
//!
//! - `facts/*`: body → `RequestFacts` (small chat body, 64 KiB prompt), each also with the
//!   prompt's prefix blocks hashed (`*_prefix_hashed`, what `balance = "prefix"` adds);
//! - `decide/*`: route match + arm choice + backend order on the demo policy
//!   (sticky by header, a random draw, and a random draw with every backend passively ejected,
//!   `random_draw_all_ejected`, the health branch of candidate ordering), and on `routes/prefix.example.toml` with a warm
//!   prefix index (`prefix_balanced_warm`);
//! - `tier/*`: the tier decision on `routes/cost.example.toml` (three tier rules, an API-key
//!   plan): the starting tier alone, and route + arm + tier + candidate order with it;
//! - `policy/*`: TOML → validated `Policy`, and a full validate + swap
//!   through `PolicyStore::apply`;
//! - `budget/admit`: budget and rate-limit admission of one request on
//!   `routes/budgets.example.toml` without its `[redis]` (three budgets and a rate limit: two
//!   SHA-256 of the scope values, four counters read from the local cache, the verdict, the
//!   request counted).
//! - `guardrails/*`: recording one request's figures into its guardrail window.
//!
//! Run: `cargo bench --bench decisions`. The load harness (`switchyard-bench`)
//! measures the whole request; these isolate the pure parts of it.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::HeaderMap;
use switchyard::config::{parse_policy, PolicySource, PolicyStore};
use switchyard::metrics::Metrics;
use switchyard::routing::tier::start_tier;
use switchyard::routing::{decide, Draws, Endpoint, PrefixBalance, RequestFacts, BUCKETS};

const DEMO: &str = include_str!("../routes/demo.toml");
const COST: &str = include_str!("../routes/cost.example.toml");
const PREFIX: &str = include_str!("../routes/prefix.example.toml");

fn chat_body(prompt_bytes: usize) -> Vec<u8> {
    let prompt = "lorem ipsum ".repeat(prompt_bytes / 12 + 1);
    serde_json::json!({
        "model": "llama-70b",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": &prompt[..prompt_bytes]},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "stream": true,
        "user": "u-42",
    })
    .to_string()
    .into_bytes()
}

fn facts(c: &mut Criterion) {
    let mut g = c.benchmark_group("facts");
    for (name, size) in [("parse_chat_small", 32), ("parse_chat_64k", 64 << 10)] {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| RequestFacts::parse(Endpoint::ChatCompletions, std::hint::black_box(&body)))
        });
        // The same parse with the prompt's prefix blocks hashed (routes with balance = "prefix",
        // default shape: 16-token blocks, at most 512 of them).
        let shape = PrefixBalance::default().shape;
        g.bench_function(format!("{name}_prefix_hashed"), |b| {
            b.iter(|| {
                RequestFacts::parse_with_prefix(
                    Endpoint::ChatCompletions,
                    std::hint::black_box(&body),
                    |_| Some(shape),
                )
            })
        });
    }
    g.finish();
}

fn decisions(c: &mut Criterion) {
    let store = PolicyStore::new(DEMO, Arc::new(Metrics::default())).expect("demo policy is valid");
    let snapshot = store.current();
    let facts = RequestFacts::parse(Endpoint::ChatCompletions, &chat_body(32)).expect("parses");
    let mut sticky = HeaderMap::new();
    sticky.insert("x-user-id", "user-1234".parse().expect("header value"));
    let anonymous = HeaderMap::new();
    let now = std::time::Instant::now();
    let draws = |d: u32| Draws {
        arm_bucket: d,
        shadow_bucket: d,
        rotation: d as usize,
        explore: d,
        pick: d as usize,
    };
    let mut g = c.benchmark_group("decide");
    let mut draw = 0u32;
    g.bench_function("sticky_header", |b| {
        b.iter(|| {
            draw = (draw + 7919) % BUCKETS;
            decide(&snapshot, &facts, &sticky, draws(draw), |b| {
                snapshot.backend_view(b, now, &facts)
            })
        })
    });
    g.bench_function("random_draw", |b| {
        b.iter(|| {
            draw = (draw + 7919) % BUCKETS;
            decide(&snapshot, &facts, &anonymous, draws(draw), |b| {
                snapshot.backend_view(b, now, &facts)
            })
        })
    });
    // Every backend ejected (each is alone in its arm, so the max-ejected share lets it back
    // in): the ejection branch of candidate ordering on every request.
    for load in &snapshot.loads {
        for _ in 0..snapshot.policy.outlier.consecutive_failures {
            load.health.on_failure(
                switchyard::routing::fallback::AttemptFailure::Connect,
                &snapshot.policy.outlier,
                now,
            );
        }
    }
    g.bench_function("random_draw_all_ejected", |b| {
        b.iter(|| {
            draw = (draw + 7919) % BUCKETS;
            decide(&snapshot, &facts, &anonymous, draws(draw), |b| {
                snapshot.backend_view(b, now, &facts)
            })
        })
    });
    g.finish();
}

fn tier(c: &mut Criterion) {
    let store =
        PolicyStore::new(COST, Arc::new(Metrics::default())).expect("cost example is valid");
    let snapshot = store.current();
    let body = String::from_utf8(chat_body(32))
        .expect("utf-8")
        .replace("llama-70b", "llama");
    let facts = RequestFacts::parse(Endpoint::ChatCompletions, body.as_bytes()).expect("parses");
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        "Bearer sk-bench-key".parse().expect("header value"),
    );
    let route = &snapshot.policy.routes[0];
    let now = std::time::Instant::now();
    let mut g = c.benchmark_group("tier");
    g.bench_function("start_tier", |b| {
        b.iter(|| {
            start_tier(
                &route.tiering,
                &snapshot.policy.tiers,
                std::hint::black_box(&facts),
                &headers,
                None,
            )
        })
    });
    let mut draw = 0u32;
    g.bench_function("decide_with_tiers", |b| {
        b.iter(|| {
            draw = (draw + 7919) % BUCKETS;
            let draws = Draws {
                arm_bucket: draw,
                shadow_bucket: draw,
                rotation: draw as usize,
                explore: draw,
                pick: draw as usize,
            };
            decide(&snapshot, &facts, &headers, draws, |b| {
                snapshot.backend_view(b, now, &facts)
            })
        })
    });
    g.finish();
}

fn policy(c: &mut Criterion) {
    // Two texts that differ, so every apply validates and swaps (an identical
    // text is short-circuited as unchanged).
    let a = DEMO
        .replace("weight = 95", "weight = 90")
        .replace("weight = 5", "weight = 10");
    let b = DEMO.to_owned();
    let mut g = c.benchmark_group("policy");
    g.bench_function("validate_demo", |bench| {
        bench.iter(|| parse_policy(std::hint::black_box(&a)).expect("valid"))
    });
    let store = PolicyStore::new(&b, Arc::new(Metrics::default())).expect("demo policy is valid");
    let mut flip = false;
    g.bench_function("validate_and_swap", |bench| {
        bench.iter_batched(
            || {
                flip = !flip;
                if flip {
                    &a
                } else {
                    &b
                }
            },
            |text| {
                store
                    .apply(text, PolicySource::Api, "bench")
                    .expect("valid swap")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn budget(c: &mut Criterion) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/routes/budgets.example.toml"
    ))
    .expect("the budgets example");
    // Local admission only: the bench has no Redis (and no runtime for its client).
    let start = text.find("[redis]").expect("a [redis] section");
    let end = start + text[start..].find("\n\n").expect("the section ends");
    let text = format!("{}{}", &text[..start], &text[end..]);
    let store = PolicyStore::new(&text, Arc::new(Metrics::default())).expect("valid");
    let snapshot = store.current();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer sk-bench-key".parse().unwrap());
    headers.insert("x-team-id", "team-bench".parse().unwrap());
    let mut g = c.benchmark_group("budget");
    g.throughput(Throughput::Elements(1));
    g.bench_function("admit", |bench| {
        bench.iter(|| {
            let admitted = futures::executor::block_on(store.spend().admit(
                &snapshot,
                0,
                &headers,
                store.redis(),
                std::time::SystemTime::now(),
            ));
            std::hint::black_box(admitted.is_ok())
        })
    });
    g.finish();
}

/// Recording one finished request into its guardrail window: a plain answer, and a stream with
/// 64 inter-token gaps (each gap is one histogram sample). Budget: 2 µs per request.
fn guardrails(c: &mut Criterion) {
    use std::time::Duration;
    use switchyard::guardrails::{OutcomeClass, RequestFigures, Series, WindowConfig};
    let series = Series::new(WindowConfig::default());
    static GAPS: [Duration; 64] = [Duration::from_millis(21); 64];
    let figures = |gaps: &'static [Duration]| RequestFigures {
        outcome: OutcomeClass::Success,
        latency: Duration::from_millis(1_450),
        ttfb: Some(Duration::from_millis(80)),
        ttft: Some(Duration::from_millis(95)),
        inter_token: gaps,
        output_tokens: Some(65),
        cost_usd: Some(0.000_412),
        fallback: false,
        content_filter: false,
        refusal: false,
    };
    let mut g = c.benchmark_group("guardrails");
    let mut now = 0u64;
    g.bench_function("record_plain", |b| {
        let f = figures(&[]);
        b.iter(|| {
            now += 1;
            series.record(now, std::hint::black_box(&f))
        })
    });
    g.bench_function("record_stream_64_gaps", |b| {
        let f = figures(&GAPS);
        b.iter(|| {
            now += 1;
            series.record(now, std::hint::black_box(&f))
        })
    });
    g.finish();
}

/// The candidate order of a prefix-balanced route over four backends, with the prompt's prefix
/// (a 2.4 KiB prompt: 37 blocks of 16 tokens) already sent to one of them: the prefix index
/// lookups and the scoring a request on such a route adds to `decide`.
fn prefix(c: &mut Criterion) {
    let store = PolicyStore::new(PREFIX, Arc::new(Metrics::default())).expect("valid policy");
    let snapshot = store.current();
    let shape = PrefixBalance::default().shape;
    let body = serde_json::json!({
        "model": "llama-8b",
        "messages": [
            {"role": "system", "content": "You answer questions about the docs. ".repeat(64)},
            {"role": "user", "content": "How do tiers work?"},
        ],
        "stream": true,
    })
    .to_string();
    let facts = RequestFacts::parse_with_prefix(Endpoint::ChatCompletions, body.as_bytes(), |_| {
        Some(shape)
    })
    .expect("parses");
    snapshot
        .prefix_index
        .record(snapshot.loads[2].id(), &facts.prefix_blocks);
    let headers = HeaderMap::new();
    let now = std::time::Instant::now();
    let mut g = c.benchmark_group("decide");
    let mut draw = 0u32;
    g.bench_function("prefix_balanced_warm", |b| {
        b.iter(|| {
            draw = (draw + 7919) % BUCKETS;
            let draws = Draws {
                arm_bucket: draw,
                shadow_bucket: draw,
                rotation: draw as usize,
                explore: draw,
                pick: draw as usize,
            };
            decide(&snapshot, &facts, &headers, draws, |b| {
                snapshot.backend_view(b, now, &facts)
            })
        })
    });
    g.finish();
}

/// An L2 cache entry on its way to and from Redis: a 64-event stream (about 12 KiB as relayed),
/// encoded with compression (the background fill) and decoded (an L2 hit).
fn cache_l2(c: &mut Criterion) {
    use bytes::Bytes;
    use switchyard::cache::record::wire;
    use switchyard::cache::{AnswerBody, CachedAnswer};
    let events: Vec<Bytes> = (0..64)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-{i}\",\"object\":\"chat.completion.chunk\",\"created\":1795846578,\"model\":\"llama-3.1-8b-instruct\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{}\"}},\"finish_reason\":null}}]}}\n\n",
                i * 7919 % 1000
            ))
        })
        .collect();
    let answer = CachedAnswer {
        route: "chat".into(),
        arm: "champion".into(),
        backend: "llama8b-a".into(),
        stored_at_ms: 1,
        ttl_ms: 300_000,
        cost_usd: 0.000_2,
        body: AnswerBody::Stream {
            events,
            usage_event: None,
        },
        hit_head: Default::default(),
    };
    let encoded = wire::encode(&answer);
    eprintln!(
        "cache_l2: a {}-byte answer is {} bytes in Redis",
        answer.weight(),
        encoded.len()
    );
    let mut g = c.benchmark_group("cache_l2");
    g.bench_function("encode_stream_64", |b| {
        b.iter(|| wire::encode(std::hint::black_box(&answer)))
    });
    g.bench_function("decode_stream_64", |b| {
        b.iter(|| wire::decode(std::hint::black_box(&encoded)))
    });
    g.finish();
}

criterion_group!(benches, facts, decisions, prefix, tier, policy, budget, guardrails, cache_l2);
criterion_main!(benches);
