//! Budgets and rate limits through the real gateway, real sims and a real `redis-server`:
//! 429 `insufficient_quota` once a key is over its budget, `downgrade` to the cheap tier,
//! requests- and tokens-per-minute limits with `Retry-After`, one budget enforced by two
//! gateways sharing a Redis, and Redis killed mid-run without a failed request.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::RedisServer;
use common::*;
use switchyard::server::RunningGateway;

/// A dollar per token either way: every request costs several dollars, so a budget of one
/// dollar is spent by the first request.
const DEAR: &str = "price = { input_per_mtok = 1000000.0, output_per_mtok = 1000000.0 }\n";

const KEY_A: &str = "sk-team-a-secret";
const KEY_B: &str = "sk-team-b-secret";

/// sha256 of `key` as the gateway shows it.
fn hashed(key: &str) -> String {
    switchyard::routing::ApiKeyHash::of(key.as_bytes()).to_string()
}

async fn post_with_key(c: &HttpClient, gw: &RunningGateway, key: &str) -> Reply {
    let auth = format!("Bearer {key}");
    request(
        c,
        "POST",
        &format!("{}/v1/chat/completions", gw.url()),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        chat("m", "hello there").to_string(),
    )
    .await
}

async fn admin_get(c: &HttpClient, gw: &RunningGateway, path: &str) -> Reply {
    request(c, "GET", &format!("{}{path}", gw.admin_url()), &[], "").await
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {line_prefix} in\n{text}"))
}

async fn metrics_text(c: &HttpClient, gw: &RunningGateway) -> String {
    String::from_utf8_lossy(&admin_get(c, gw, "/metrics").await.body).into_owned()
}

/// One priced backend `b` and a route `chat` serving model `m`, plus `extra` at the end.
fn one_backend_policy(url: &str, extra: &str) -> String {
    server_section("")
        + &backend("b", url, DEAR)
        + &route("chat", &["m"], "none", &[("main", &["b"], 100.0)])
        + extra
}

/// The answer is recorded (cost added) when the request's logging runs, just after the client
/// got it: send until the limit shows, within `max` requests.
async fn send_until_refused(c: &HttpClient, gw: &RunningGateway, key: &str, max: usize) -> Reply {
    for _ in 0..max {
        let r = post_with_key(c, gw, key).await;
        if r.status != 200 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{max} requests with {key} were all served");
}

/// Per-minute windows are aligned to the UTC minute: start a per-minute test early in one.
async fn away_from_a_minute_boundary() {
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if second >= 45 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_budget_gets_429_insufficient_quota() {
    let s = sim("b", &["m"], |_| {}).await;
    let policy = one_backend_policy(
        &s.url(),
        "[[budgets]]\nname = \"per-key-daily\"\nscope = \"api-key\"\nwindow = \"day\"\nlimit_usd = 1.0\n",
    );
    let gw = start_gateway(&policy);
    let c = client();

    let first = post_with_key(&c, &gw, KEY_A).await;
    assert_eq!(first.status, 200, "under budget: served");
    let refused = send_until_refused(&c, &gw, KEY_A, 5).await;
    assert_eq!(refused.status, 429);
    let body = refused.json();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    let retry: u64 = refused
        .header("retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        (1..=86_400).contains(&retry),
        "retry after the day ends: {retry}"
    );
    // Stays refused; another key and a request without a key are not affected.
    assert_eq!(post_with_key(&c, &gw, KEY_A).await.status, 429);
    assert_eq!(post_with_key(&c, &gw, KEY_B).await.status, 200);
    let url = format!("{}/v1/chat/completions", gw.url());
    assert_eq!(post_json(&c, &url, &chat("m", "hi")).await.status, 200);

    let spend = admin_get(&c, &gw, "/admin/spend").await;
    let text = String::from_utf8_lossy(&spend.body).into_owned();
    assert!(!text.contains(KEY_A), "no key in clear: {text}");
    let doc = spend.json();
    let counters = doc["budgets"][0]["spend"].as_array().unwrap().clone();
    let a = counters
        .iter()
        .find(|c| c["scope_value"] == hashed(KEY_A))
        .unwrap_or_else(|| panic!("key A's hashed counter in {doc}"));
    assert!(a["value"].as_f64().unwrap() >= 1.0, "{a}");
    assert_eq!(a["source"], "local", "no Redis configured");
    assert_eq!(doc["redis"], "not_configured");
    assert!(
        doc["by_route_tier"][0]["spent_usd"].as_f64().unwrap() > 2.0,
        "{doc}"
    );
    let metrics = metrics_text(&c, &gw).await;
    assert!(
        metric(
            &metrics,
            "switchyard_budget_refusals_total{limit=\"per-key-daily\",kind=\"budget\"} "
        ) >= 2.0
    );

    // The same page from the command line.
    let admin = gw.admin_url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("spend")
            .env("SWITCHYARD_ADMIN", admin)
            .output()
            .expect("switchyard spend runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&hashed(KEY_A)), "{text}");
    assert!(text.contains("\"per-key-daily\""), "{text}");
    assert!(!text.contains(KEY_A), "no key in clear: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_moves_a_spent_key_to_the_cheap_tier() {
    let eco = sim("eco", &["m"], |_| {}).await;
    let pre = sim("pre", &["m"], |_| {}).await;
    let policy = "tiers = [\"economy\", \"premium\"]\n".to_owned()
        + &server_section("")
        + &backend(
            "eco",
            &eco.url(),
            "tier = \"economy\"\nprice = { input_per_mtok = 0.05, output_per_mtok = 0.08 }\n",
        )
        + &backend("pre", &pre.url(), &format!("tier = \"premium\"\n{DEAR}"))
        + &route("chat", &["m"], "none", &[("main", &["pre", "eco"], 100.0)]).replace(
            "sticky = \"none\"\n",
            "sticky = \"none\"\ndefault_tier = \"premium\"\n",
        )
        + "[[budgets]]\nname = \"premium-allowance\"\nscope = \"api-key\"\nwindow = \"hour\"\nlimit_usd = 1.0\naction = \"downgrade\"\n";
    let gw = start_gateway(&policy);
    let c = client();

    let first = post_with_key(&c, &gw, KEY_A).await;
    assert_eq!(
        (
            first.status,
            first.header("x-switchyard-backend"),
            first.header("x-switchyard-tier")
        ),
        (200, "pre", "premium"),
        "under budget the rules' tier serves"
    );
    let mut downgraded = None;
    for _ in 0..5 {
        let r = post_with_key(&c, &gw, KEY_A).await;
        assert_eq!(r.status, 200, "a downgrade never refuses");
        if r.header("x-switchyard-backend") == "eco" {
            downgraded = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = downgraded.expect("a spent key moves to the cheap tier");
    assert_eq!(r.header("x-switchyard-tier"), "economy");
    for _ in 0..3 {
        let r = post_with_key(&c, &gw, KEY_A).await;
        assert_eq!(
            (r.status, r.header("x-switchyard-backend")),
            (200, "eco"),
            "stays on the cheap tier"
        );
    }
    let other = post_with_key(&c, &gw, KEY_B).await;
    assert_eq!(other.header("x-switchyard-backend"), "pre");
    let metrics = metrics_text(&c, &gw).await;
    assert!(
        metric(
            &metrics,
            "switchyard_budget_downgrades_total{budget=\"premium-allowance\"} "
        ) >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_tokens_per_minute_answer_429_with_retry_after() {
    let s = sim("b", &["m"], |_| {}).await;
    let policy = one_backend_policy(
        &s.url(),
        "[[rate_limits]]\nname = \"rpm\"\nscope = \"header:x-team-id\"\nrequests_per_minute = 3\n\
         [[rate_limits]]\nname = \"tpm\"\nscope = \"api-key\"\ntokens_per_minute = 5\n",
    );
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    away_from_a_minute_boundary().await;

    let as_team = |team: &'static str| {
        let c = c.clone();
        let url = url.clone();
        async move {
            request(
                &c,
                "POST",
                &url,
                &[("content-type", "application/json"), ("x-team-id", team)],
                chat("m", "hi").to_string(),
            )
            .await
        }
    };
    for i in 0..3 {
        assert_eq!(as_team("red").await.status, 200, "request {i} within 3/min");
    }
    let r = as_team("red").await;
    assert_eq!(r.status, 429, "the fourth request in the minute");
    assert_eq!(r.error_code(), "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "requests");
    let retry: u64 = r.header("retry-after").parse().expect("Retry-After");
    assert!((1..=60).contains(&retry), "until the minute ends: {retry}");
    assert_eq!(
        as_team("blue").await.status,
        200,
        "another team has its own count"
    );

    // Tokens: the first answer uses more than 5 tokens; the next request is refused.
    assert_eq!(post_with_key(&c, &gw, KEY_A).await.status, 200);
    let r = send_until_refused(&c, &gw, KEY_A, 5).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (429, "rate_limit_exceeded")
    );
    assert_eq!(r.json()["error"]["type"], "tokens");
    assert!(!r.header("retry-after").is_empty());
}

/// Two gateways in this process, each built from its own policy store — its own counters, its
/// own Redis client and runtime, its own listeners: they share nothing but the Redis server.
/// Key A spends its budget through the first; the second then refuses it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_one_redis_enforce_one_budget() {
    let redis = RedisServer::start();
    let s = sim("b", &["m"], |_| {}).await;
    let extra = format!(
        "[redis]\nurl = \"{}\"\n[[budgets]]\nname = \"shared-daily\"\nscope = \"api-key\"\nwindow = \"day\"\nlimit_usd = 1.0\n",
        redis.url()
    );
    let gw1 = start_gateway(&one_backend_policy(&s.url(), &extra));
    let gw2 = start_gateway(&one_backend_policy(&s.url(), &extra));
    let c = client();

    assert_eq!(post_with_key(&c, &gw1, KEY_A).await.status, 200);
    // The spend reaches Redis off the request path (every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    let keys = loop {
        let keys = redis.command(&["KEYS", "*"]);
        if !keys.is_empty() {
            break keys;
        }
        assert!(Instant::now() < deadline, "spend never reached redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!keys.contains(KEY_A), "no key in clear in redis: {keys}");
    assert!(keys.contains(&hashed(KEY_A)), "the hashed key: {keys}");
    assert!(
        keys.starts_with("switchyard:spend:shared-daily:usd:"),
        "{keys}"
    );
    let total: f64 = redis
        .command(&["GET", keys.lines().next().unwrap()])
        .parse()
        .unwrap();
    assert!(total > 1.0, "the first request's cost: {total}");

    // The second gateway never saw key A: it reads the shared total and refuses.
    let r = post_with_key(&c, &gw2, KEY_A).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (429, "insufficient_quota"),
        "one budget across both gateways"
    );
    assert_eq!(post_with_key(&c, &gw1, KEY_A).await.status, 429);
    assert_eq!(post_with_key(&c, &gw2, KEY_B).await.status, 200);
    let spend = admin_get(&c, &gw2, "/admin/spend").await.json();
    assert_eq!(spend["redis"], "up");
    let a = spend["budgets"][0]["spend"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["scope_value"] == hashed(KEY_A))
        .cloned()
        .expect("key A on the second gateway");
    assert_eq!(a["source"], "redis");
    assert!(a["value"].as_f64().unwrap() > 1.0, "{a}");
}

/// Redis dies while requests flow: none fails, spend keeps counting locally, `/metrics` shows
/// the degraded state and errors; when Redis returns the gateway finds it by itself and the
/// counting resumes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_no_request_fails_and_counting_resumes() {
    let mut redis = RedisServer::start();
    let s = sim("b", &["m"], |_| {}).await;
    let extra = format!(
        "[redis]\nurl = \"{}\"\ncommand_timeout_ms = 100\n[[budgets]]\nname = \"big\"\nscope = \"api-key\"\nwindow = \"month\"\nlimit_usd = 1000000000.0\n",
        redis.url()
    );
    let gw = start_gateway(&one_backend_policy(&s.url(), &extra));
    let c = client();
    let spent = |doc: &serde_json::Value| {
        doc["budgets"][0]["spend"][0]["value"]
            .as_f64()
            .unwrap_or(0.0)
    };

    let mut failed = 0;
    for _ in 0..10 {
        failed += usize::from(post_with_key(&c, &gw, KEY_A).await.status != 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = spent(&admin_get(&c, &gw, "/admin/spend").await.json());
    assert!(before > 0.0);

    redis.kill();
    let started = Instant::now();
    for _ in 0..20 {
        let r = post_with_key(&c, &gw, KEY_A).await;
        failed += usize::from(r.status != 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "Redis down does not stall requests"
    );
    let during = admin_get(&c, &gw, "/admin/spend").await.json();
    assert_eq!(during["redis"], "degraded");
    assert!(
        spent(&during) > before,
        "spend counted locally while Redis is down: {before} → {during}"
    );
    let metrics = metrics_text(&c, &gw).await;
    assert_eq!(metric(&metrics, "switchyard_redis_up "), 0.0);
    let errors: f64 = ["timeout", "connection", "command"]
        .iter()
        .map(|k| {
            metric(
                &metrics,
                &format!("switchyard_redis_errors_total{{kind=\"{k}\"}} "),
            )
        })
        .sum();
    assert!(errors > 0.0, "errors counted");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&metrics_text(&c, &gw).await, "switchyard_redis_up ") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the gateway never saw Redis return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        failed += usize::from(post_with_key(&c, &gw, KEY_A).await.status != 200);
    }
    assert_eq!(failed, 0, "no request failed while Redis died and returned");
    // The restarted Redis is empty: what was counted during the outage and since reaches it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = redis.command(&["KEYS", "switchyard:spend:*"]);
        if let Some(key) = keys.lines().next() {
            let total: f64 = redis.command(&["GET", key]).parse().unwrap();
            if total > 0.0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "counting never resumed in Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = metrics_text(&c, &gw).await;
    assert!(
        metric(&metrics, "switchyard_redis_degraded_seconds_total ") > 0.5,
        "{metrics}"
    );
}
