//! Shadow mirroring through the real gateway: isolation of the primary, bounded in-flight
//! copies, and agreement figures against sims made to agree and to disagree.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn shadow_table(backend: &str, percent: f64, extra: &str) -> String {
    format!("  [routes.shadow]\n  backend = \"{backend}\"\n  percent = {percent}\n{extra}\n")
}

async fn shadow_report(
    c: &HttpClient,
    gw: &switchyard::server::RunningGateway,
) -> HashMap<String, serde_json::Value> {
    let r = request(
        c,
        "GET",
        &format!("{}/admin/shadow", gw.admin_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    r.json()["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["route"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

/// Waits until every mirrored request of `route` has been compared (shadows finish on their own time).
async fn settled(
    c: &HttpClient,
    gw: &switchyard::server::RunningGateway,
    route: &str,
    mirrored: u64,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = shadow_report(c, gw)
            .await
            .remove(route)
            .expect("route reported");
        if report["mirrored"] == mirrored && report["compared"] == mirrored {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "shadow figures did not settle: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreement_figures_on_agreeing_and_disagreeing_shadows() {
    let primary = sim("primary", &["m"], |s| s.seed = 7).await;
    let twin = sim("twin", &["m-next"], |s| s.seed = 7).await;
    let other = sim("other", &["m"], |s| s.seed = 8).await;
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    let policy = server_section("")
        + &backend(
            "primary",
            &primary.url(),
            "price = { input_per_mtok = 1.0, output_per_mtok = 2.0 }",
        )
        + &backend(
            "twin",
            &twin.url(),
            "price = { input_per_mtok = 0.5, output_per_mtok = 1.0 }",
        )
        + &backend("other", &other.url(), "")
        + &route(
            "agree",
            &["m"],
            "none",
            &[("champion", &["primary"], 100.0)],
        )
        + &shadow_table(
            "twin",
            100.0,
            &format!(
                "  model = \"m-next\"\n  sample_file = \"{}\"\n  sample_percent = 100",
                pairs.display()
            ),
        )
        + &route(
            "disagree",
            &["d"],
            "none",
            &[("champion", &["primary"], 100.0)],
        )
        + &shadow_table("other", 100.0, "  model = \"m\"");
    let policy = policy.replace(
        "[[backends]]\nname = \"primary\"\nurl",
        "[[backends]]\nname = \"primary\"\nmodel = \"m\"\nurl",
    );
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    for i in 0..10 {
        for model in ["m", "d"] {
            let body = json!({"model": model, "max_tokens": 12, "stream": i % 2 == 1,
                              "stream_options": {"include_usage": true},
                              "messages": [{"role": "user", "content": format!("question number {i}")}]});
            if i % 2 == 1 {
                let s = post_stream(&c, &url, &body).await;
                assert_eq!(s.events().last().map(String::as_str), Some("[DONE]"));
            } else {
                assert_eq!(post_json(&c, &url, &body).await.status, 200);
            }
        }
    }
    let agree = settled(&c, &gw, "agree", 10).await;
    assert_eq!(agree["shadow_errors"], 0, "{agree:#}");
    assert_eq!(agree["agreement"]["status"], 1.0);
    assert_eq!(
        agree["agreement"]["exact_text"], 1.0,
        "same seed, same text: {agree:#}"
    );
    assert_eq!(agree["similarity"]["mean"], 1.0);
    assert_eq!(agree["length_delta_mean"], 0.0);
    assert_eq!(agree["shadow"]["backend"], "twin");
    // Same tokens, shadow at half the price.
    let cost = &agree["cost_usd"];
    assert!(cost["primary"].as_f64().unwrap() > 0.0);
    assert!(
        (cost["shadow"].as_f64().unwrap() * 2.0 - cost["primary"].as_f64().unwrap()).abs() < 1e-9,
        "{cost}"
    );
    for side in ["primary", "shadow"] {
        assert_eq!(agree["latency_ms"][side]["count"], 10);
        assert_eq!(agree["ttft_ms"][side]["count"], 10);
    }

    let disagree = settled(&c, &gw, "disagree", 10).await;
    assert_eq!(disagree["agreement"]["status"], 1.0);
    assert_eq!(
        disagree["agreement"]["exact_text"], 0.0,
        "another seed, other text: {disagree:#}"
    );
    assert!(
        disagree["similarity"]["mean"].as_f64().unwrap() < 0.9,
        "{disagree:#}"
    );

    // Every pair was written to the sample file with both outputs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while shadow_report(&c, &gw).await["agree"]["sampled"] != 10 {
        assert!(Instant::now() < deadline, "pairs not written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&pairs)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for l in &lines {
        assert_eq!(
            (&l["primary"]["backend"], &l["shadow"]["backend"]),
            (&json!("primary"), &json!("twin"))
        );
        assert!(l["primary"]["text"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(l["primary"]["text"], l["shadow"]["text"]);
        assert_eq!(l["exact_match"], true);
    }

    // The copies were marked and rewritten for the shadow's model name.
    let seen = twin.received();
    assert_eq!(seen.len(), 10);
    for r in &seen {
        assert_eq!(r.headers.get("x-switchyard-shadow").unwrap(), "1");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["model"], "m-next");
    }
    let metrics = request(&c, "GET", &format!("{}/metrics", gw.admin_url()), &[], "").await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("switchyard_shadow_requests_total{route=\"agree\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_shadow_exact_match_total{route=\"agree\"} 10"),
        "{metrics}"
    );
}

/// A slow, dead, failing or saturated shadow leaves the primary's latency and success alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_is_isolated_from_bad_shadows() {
    let primary = sim("primary", &["m"], |s| s.ttft_ms = 20).await;
    let slow = sim("slow", &["m"], |s| s.stall_ms = 2_000).await;
    let failing = sim("failing", &["m"], |s| s.error_rate = 1.0).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut policy = server_section("")
        + &backend("primary", &primary.url(), "")
        + &backend("slow", &slow.url(), "")
        + &backend("failing", &failing.url(), "")
        + &backend("dead", &dead, "")
        + &route(
            "baseline",
            &["baseline"],
            "none",
            &[("a", &["primary"], 100.0)],
        );
    for (name, shadow, extra) in [
        ("slow", "slow", "  max_inflight = 64\n  model = \"m\""),
        ("dead", "dead", ""),
        ("failing", "failing", "  model = \"m\""),
        ("saturated", "slow", "  max_inflight = 2\n  model = \"m\""),
    ] {
        policy += &route(name, &[name], "none", &[("a", &["primary"], 100.0)]);
        policy += &shadow_table(shadow, 100.0, extra);
    }
    let policy = policy.replace(
        "name = \"primary\"\nurl",
        "name = \"primary\"\nmodel = \"m\"\nurl",
    );
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let mut p50 = HashMap::new();
    for model in ["baseline", "slow", "dead", "failing", "saturated"] {
        let mut latencies = Vec::new();
        for i in 0..20 {
            let started = Instant::now();
            let stream = i % 2 == 1;
            let body = json!({"model": model, "max_tokens": 4, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
            if stream {
                let s = post_stream(&c, &url, &body).await;
                assert_eq!(
                    (s.status, s.events().last().map(String::as_str)),
                    (200, Some("[DONE]")),
                    "{model}"
                );
            } else {
                let r = post_json(&c, &url, &body).await;
                assert_eq!(r.status, 200, "{model}");
                assert_eq!(r.header("x-switchyard-backend"), "primary");
            }
            latencies.push(started.elapsed());
        }
        latencies.sort();
        assert!(
            latencies[19] < Duration::from_millis(500),
            "{model}: slowest primary took {:?}",
            latencies[19]
        );
        p50.insert(model, latencies[10]);
    }
    for model in ["slow", "dead", "failing", "saturated"] {
        assert!(
            p50[model] < p50["baseline"] + Duration::from_millis(25),
            "{model}: primary p50 {:?} vs {:?} without shadow",
            p50[model],
            p50["baseline"]
        );
    }
    let report = shadow_report(&c, &gw).await;
    assert_eq!(
        report["saturated"]["mirrored"], 2,
        "{:#}",
        report["saturated"]
    );
    assert_eq!(
        report["saturated"]["dropped"], 18,
        "copies beyond max_inflight are dropped and counted"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = shadow_report(&c, &gw).await;
        if report["dead"]["shadow_errors"] == 20 && report["failing"]["shadow_errors"] == 20 {
            assert_eq!(report["failing"]["agreement"]["status"], 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shadow errors not counted: {:#?}",
            (&report["dead"], &report["failing"])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_routes_mirror_the_same_users_and_streams_can_be_excluded() {
    let primary = sim("primary", &["m"], |_| {}).await;
    let shadow = sim("shadow", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend("primary", &primary.url(), "")
        + &backend("shadow", &shadow.url(), "")
        + &route(
            "sticky",
            &["m"],
            "header:x-user-id",
            &[("a", &["primary"], 100.0)],
        )
        + &shadow_table("shadow", 50.0, "  mirror_streaming = false");
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let mut mirrored_users = 0;
    for user in 0..30 {
        let key = format!("user-{user}");
        let before = shadow.requests_served();
        for _ in 0..3 {
            let r = post_as(&c, &url, &key, &chat("m", "x")).await;
            assert_eq!(r.status, 200);
        }
        // Copies are sent right after the primary request, so they have arrived by now or soon.
        // None yet is waited on too, for a moment: a user's late copies must not be counted as
        // the next user's.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(2);
        let settled = started + Duration::from_millis(300);
        let mut copies = shadow.requests_served() - before;
        while (copies % 3 != 0 || (copies == 0 && Instant::now() < settled))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
            copies = shadow.requests_served() - before;
        }
        assert!(
            copies == 0 || copies == 3,
            "{key} mirrored {copies} of 3 times"
        );
        mirrored_users += usize::from(copies == 3);
    }
    assert!(
        (5..=25).contains(&mirrored_users),
        "50 % of 30 users, got {mirrored_users}"
    );
    let before = shadow.requests_served();
    for user in 0..10 {
        let body = json!({"model": "m", "stream": true, "max_tokens": 2, "user": format!("user-{user}"), "messages": [{"role": "user", "content": "x"}]});
        let s = post_stream(&c, &url, &body).await;
        assert_eq!(s.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        shadow.requests_served(),
        before,
        "streaming requests are not mirrored with mirror_streaming = false"
    );
}
