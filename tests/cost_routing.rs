//! Cost-aware routing through the real gateway and sims: tiers chosen by the request, overflow
//! to the next tier, fallback on every trigger before the first byte (and never after), the
//! retry budget, `Retry-After` cooldowns, and exact cost figures.

mod common;

use std::time::{Duration, Instant};

use common::*;
use switchyard::sim::SimServer;

const TIERS: &str = "tiers = [\"economy\", \"standard\", \"premium\"]\n";

fn priced(tier: &str, input: f64, output: f64, extra: &str) -> String {
    format!(
        "tier = \"{tier}\"\nprice = {{ input_per_mtok = {input}, output_per_mtok = {output} }}\n{extra}"
    )
}

/// Economy, standard and premium backends in one arm, with `route_extra` on the route.
fn three_tier_policy(
    economy: &str,
    standard: &str,
    premium: &str,
    economy_extra: &str,
    route_extra: &str,
) -> String {
    TIERS.to_owned()
        + &server_section("")
        + &backend(
            "eco",
            economy,
            &priced("economy", 0.05, 0.08, economy_extra),
        )
        + &backend("std", standard, &priced("standard", 0.30, 0.40, ""))
        + &backend("pre", premium, &priced("premium", 0.60, 0.80, ""))
        + &route(
            "chat",
            &["m"],
            "none",
            &[("main", &["pre", "std", "eco"], 100.0)],
        )
        + route_extra
}

async fn three_sims(tweak_economy: impl FnOnce(&mut switchyard::sim::SimArgs)) -> [SimServer; 3] {
    [
        sim("eco", &["m"], tweak_economy).await,
        sim("std", &["m"], |_| {}).await,
        sim("pre", &["m"], |_| {}).await,
    ]
}

async fn metrics_text(c: &HttpClient, gw: &switchyard::server::RunningGateway) -> String {
    let r = request(c, "GET", &format!("{}/metrics", gw.admin_url()), &[], "").await;
    String::from_utf8_lossy(&r.body).into_owned()
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {line_prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_prompts_go_to_economy_long_ones_to_premium() {
    let [eco, std_, pre] = three_sims(|_| {}).await;
    let rules = "  [[routes.tier_rules]]\n  prompt_tokens_at_least = 2000\n  tier = \"premium\"\n  [[routes.tier_rules]]\n  tools = true\n  tier = \"standard\"\n";
    let gw = start_gateway(&three_tier_policy(
        &eco.url(),
        &std_.url(),
        &pre.url(),
        "",
        rules,
    ));
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    for _ in 0..5 {
        let r = post_json(&c, &url, &chat("m", "a short question")).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            (
                r.header("x-switchyard-tier"),
                r.header("x-switchyard-backend")
            ),
            ("economy", "eco"),
            "the arm lists premium first, but a short prompt starts at the cheapest tier"
        );
    }
    let long = "word ".repeat(2000); // 10 000 bytes ≈ 2 500 tokens
    let r = post_json(&c, &url, &chat("m", &long)).await;
    assert_eq!(
        (
            r.header("x-switchyard-tier"),
            r.header("x-switchyard-backend")
        ),
        ("premium", "pre")
    );
    let tools = serde_json::json!({"model": "m", "max_tokens": 4,
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "weather"}}]});
    let r = post_json(&c, &url, &tools).await;
    assert_eq!(r.header("x-switchyard-tier"), "standard");
    assert_eq!(
        (
            eco.requests_served(),
            std_.requests_served(),
            pre.requests_served()
        ),
        (5, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_economy_tier_overflows_to_standard() {
    let [eco, std_, pre] = three_sims(|a| a.tpot_ms = 40).await;
    let gw = start_gateway(&three_tier_policy(
        &eco.url(),
        &std_.url(),
        &pre.url(),
        "max_inflight = 1",
        "",
    ));
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    // One long stream holds economy's only slot.
    let holder = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move {
            let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 40,
                "messages": [{"role": "user", "content": "hold"}]});
            post_stream(&c, &url, &body).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while eco.requests_served() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        let r = post_json(&c, &url, &chat("m", "hi")).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            (
                r.header("x-switchyard-tier"),
                r.header("x-switchyard-backend")
            ),
            ("standard", "std"),
            "economy is at max_inflight: the next tier up serves"
        );
    }
    let held = holder.await.unwrap();
    assert_eq!(held.header("x-switchyard-tier"), "economy");
    assert!(held.text().ends_with("data: [DONE]\n\n"));
    // With the slot free again the cheap tier serves.
    let r = post_json(&c, &url, &chat("m", "hi")).await;
    assert_eq!(r.header("x-switchyard-tier"), "economy");
}

/// Each fallback trigger moves the request from a failing economy backend to standard, and the
/// metrics count the fallback by its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_on_every_trigger_before_the_first_byte() {
    let std_ = sim("std", &["m"], |_| {}).await;
    let pre = sim("pre", &["m"], |_| {}).await;
    let failing_5xx = sim("eco", &["m"], |a| a.error_rate = 1.0).await;
    let stalling = sim("eco", &["m"], |a| a.stall_ms = 3_000).await;
    let slow_ttft = sim("eco", &["m"], |a| a.ttft_ms = 3_000).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cases: [(&str, String, &str, bool); 4] = [
        ("5xx", failing_5xx.url(), "", false),
        (
            "first_byte_timeout",
            stalling.url(),
            "first_byte_timeout_ms = 300",
            false,
        ),
        ("ttft_timeout", slow_ttft.url(), "", true),
        ("connect", dead, "connect_timeout_ms = 300", false),
    ];
    for (reason, eco_url, eco_extra, stream) in cases {
        let gw = start_gateway(&three_tier_policy(
            &eco_url,
            &std_.url(),
            &pre.url(),
            eco_extra,
            "  [routes.retry]\n  ttft_timeout_ms = 300\n",
        ));
        let c = client();
        let url = format!("{}/v1/chat/completions", gw.url());
        let started = Instant::now();
        let (status, tier) = if stream {
            let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 3,
                "messages": [{"role": "user", "content": "hi"}]});
            let s = post_stream(&c, &url, &body).await;
            assert!(
                s.text().ends_with("data: [DONE]\n\n"),
                "{reason}: {}",
                s.text()
            );
            (s.status, s.header("x-switchyard-tier").to_owned())
        } else {
            let r = post_json(&c, &url, &chat("m", "hi")).await;
            (r.status, r.header("x-switchyard-tier").to_owned())
        };
        assert_eq!((status, tier.as_str()), (200, "standard"), "{reason}");
        assert!(
            started.elapsed() < Duration::from_millis(2_500),
            "{reason}: the fallback did not wait for the slow backend"
        );
        let m = metrics_text(&c, &gw).await;
        assert_eq!(
            metric(
                &m,
                &format!("switchyard_fallbacks_total{{route=\"chat\",reason=\"{reason}\"}} ")
            ),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(failing_5xx.requests_served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_cools_the_backend_down_for_its_retry_after() {
    let [eco, std_, pre] = three_sims(|a| {
        a.error_rate = 1.0;
        a.error_status = 429;
        a.retry_after_s = 2;
    })
    .await;
    let gw = start_gateway(&three_tier_policy(
        &eco.url(),
        &std_.url(),
        &pre.url(),
        "",
        "",
    ));
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let r = post_json(&c, &url, &chat("m", "hi")).await;
    assert_eq!((r.status, r.header("x-switchyard-tier")), (200, "standard"));
    assert_eq!(eco.requests_served(), 1);
    // Within its Retry-After the backend is not tried at all.
    for _ in 0..5 {
        let r = post_json(&c, &url, &chat("m", "hi")).await;
        assert_eq!(r.header("x-switchyard-tier"), "standard");
    }
    assert_eq!(
        eco.requests_served(),
        1,
        "a cooling backend gets no requests"
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    post_json(&c, &url, &chat("m", "hi")).await;
    assert_eq!(
        eco.requests_served(),
        2,
        "after its Retry-After it is tried again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_after_the_first_byte() {
    let [eco, std_, pre] = three_sims(|a| a.drop_after_events = Some(2)).await;
    let gw = start_gateway(&three_tier_policy(
        &eco.url(),
        &std_.url(),
        &pre.url(),
        "",
        "",
    ));
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});
    let s = post_stream(&c, &url, &body).await;
    assert_eq!(s.status, 200);
    let events = s.events();
    assert!(
        events.iter().any(|e| e.contains("\"error\"")),
        "the client is told the stream failed: {events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        (
            eco.requests_served(),
            std_.requests_served(),
            pre.requests_served()
        ),
        (1, 0, 0),
        "exactly one upstream attempt once bytes reached the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_attempts_when_every_backend_fails() {
    let sims = [
        sim("a", &["m"], |a| a.error_rate = 1.0).await,
        sim("b", &["m"], |a| a.error_rate = 1.0).await,
        sim("c", &["m"], |a| a.error_rate = 1.0).await,
    ];
    let policy = server_section("")
        + &backend("a", &sims[0].url(), "")
        + &backend("b", &sims[1].url(), "")
        + &backend("c", &sims[2].url(), "")
        + &route("r", &["m"], "none", &[("main", &["a", "b", "c"], 100.0)])
        + "  [routes.retry]\n  budget_percent = 0\n  budget_min_per_second = 1\n";
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let started = Instant::now();
    for _ in 0..40 {
        let r = post_json(&c, &url, &chat("m", "hi")).await;
        assert_eq!(r.status, 500, "the backend's own error is relayed");
        assert!(!r.header("x-switchyard-backend").is_empty());
    }
    let upstream: u64 = sims.iter().map(|s| s.requests_served()).sum();
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the test assumes one budget window"
    );
    // 1 retry a second over a 10 s window: 10 retries, where 3 attempts each would be 120.
    // The first 5 requests take 2 retries each; the other 35 find the budget spent.
    assert_eq!(
        upstream, 50,
        "40 first attempts plus the budget's 10 retries"
    );
    let m = metrics_text(&c, &gw).await;
    assert_eq!(
        metric(&m, "switchyard_retry_budget_exhausted_total{route=\"r\"} "),
        35.0
    );
}

/// Cost = usage × the serving backend's price, for plain and streamed answers, with cached
/// prompt tokens at the cached price; the header, the metrics and the usage agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_is_exact_for_plain_and_streaming_answers() {
    let s = sim("s", &["m"], |a| {
        a.kv_block_tokens = 16;
        a.kv_cache_blocks = 1024;
    })
    .await;
    let policy = server_section("")
        + &backend(
            "s",
            &s.url(),
            "price = { input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.3 }",
        )
        + &route("r", &["m"], "none", &[("main", &["s"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let prompt = "the same long system prompt ".repeat(40);
    let price = |u: &serde_json::Value| {
        let prompt = u["prompt_tokens"].as_f64().unwrap();
        let cached = u["prompt_tokens_details"]["cached_tokens"]
            .as_f64()
            .unwrap_or(0.0);
        let out = u["completion_tokens"].as_f64().unwrap();
        ((prompt - cached) * 3.0 + cached * 0.3 + out * 15.0) / 1e6
    };
    let mut expected_total = 0.0;
    let mut saw_cached = false;
    for _ in 0..2 {
        let body = serde_json::json!({"model": "m", "max_tokens": 8,
            "messages": [{"role": "user", "content": prompt}]});
        let r = post_json(&c, &url, &body).await;
        let usage = r.json()["usage"].clone();
        saw_cached |= usage["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(0);
        let header: f64 = r.header("x-switchyard-cost-usd").parse().unwrap();
        assert!(
            (header - price(&usage)).abs() < 1e-9,
            "header {header} for usage {usage}"
        );
        expected_total += price(&usage);
    }
    assert!(saw_cached, "the repeated prompt hit the sim's prefix cache");
    // A stream's cost comes from its usage chunk; it has no cost header (its head went out
    // before the usage was known).
    let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 6,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "a streamed question"}]});
    let streamed = post_stream(&c, &url, &body).await;
    assert_eq!(streamed.header("x-switchyard-cost-usd"), "");
    let usage_event = streamed
        .events()
        .into_iter()
        .find(|e| e.contains("\"usage\""))
        .expect("a usage chunk");
    let usage: serde_json::Value = serde_json::from_str(&usage_event).unwrap();
    expected_total += price(&usage["usage"]);
    // The request is recorded just after its last byte: give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = metrics_text(&c, &gw).await;
    let total = metric(
        &m,
        "switchyard_cost_usd_total{route=\"r\",arm=\"main\",backend=\"s\",tier=\"\"} ",
    );
    assert!(
        (total - expected_total).abs() < 1e-8,
        "metrics {total} vs {expected_total}"
    );
    assert!(m.contains("gen_ai_client_token_usage_sum{route=\"r\",arm=\"main\",backend=\"s\",tier=\"\",gen_ai_token_type=\"output\"} 22\n"), "{m}");
}

/// A route's fallback routes serve when its own candidates cannot, with the model rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_routes_serve_with_their_model() {
    let big = sim("big", &["big-internal"], |a| a.error_rate = 1.0).await;
    let small = sim("small", &["small"], |_| {}).await;
    let policy = server_section("")
        + &backend("big", &big.url(), "model = \"big-internal\"")
        + &backend("small", &small.url(), "")
        + &route("big", &["big"], "none", &[("main", &["big"], 100.0)]).replace(
            "sticky = \"none\"\n",
            "sticky = \"none\"\nfallback_routes = [\"small\"]\n",
        )
        + &route("small", &["small"], "none", &[("main", &["small"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let r = post_json(
        &c,
        &format!("{}/v1/chat/completions", gw.url()),
        &chat("big", "hi"),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (
            r.header("x-switchyard-route"),
            r.header("x-switchyard-backend")
        ),
        ("big", "small")
    );
    assert_eq!(
        r.json()["model"],
        "small",
        "the fallback route's model was sent"
    );
    assert_eq!((big.requests_served(), small.requests_served()), (1, 1));
}
