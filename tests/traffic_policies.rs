//! Issue-level behaviour of the traffic policies through the real gateway: sticky percentage
//! rollout, QA arm override, blue-green flips, and statistical splits.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Sends one request per key (8 at a time) and returns each key's arm.
async fn arms_of(url: &str, keys: &[String]) -> Vec<String> {
    let c = client();
    let mut out = vec![String::new(); keys.len()];
    let chunks: Vec<Vec<(usize, String)>> = keys
        .iter()
        .cloned()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(keys.len().div_ceil(8))
        .map(<[_]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let (c, url) = (c.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for (i, key) in chunk {
                let r = post_as(&c, &url, &key, &chat("m", "x")).await;
                assert_eq!(r.status, 200);
                got.push((i, r.header("x-switchyard-arm").to_owned()));
            }
            got
        }));
    }
    for t in tasks {
        for (i, arm) in t.await.unwrap() {
            out[i] = arm;
        }
    }
    out
}

fn ramp_policy(server: &str, a: &str, b: &str, canary: f64) -> String {
    server.to_owned()
        + &backend("a", a, "")
        + &backend("b", b, "")
        + &route(
            "r",
            &["m"],
            "header:x-user-id",
            &[
                ("champion", &["a"], 100.0 - canary),
                ("canary", &["b"], canary),
            ],
        )
}

/// Raising the canary moves exactly the users of the added buckets, only champion → canary;
/// lowering moves them back; the same weight gives the same users in every version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentage_rollout_moves_as_few_users_as_possible() {
    let a = sim("a", &["m"], |_| {}).await;
    let b = sim("b", &["m"], |_| {}).await;
    let server = server_section("");
    let gw = start_gateway(&ramp_policy(&server, &a.url(), &b.url(), 5.0));
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let canary_set = |arms: &[String]| -> HashSet<usize> {
        arms.iter()
            .enumerate()
            .filter(|(_, a)| *a == "canary")
            .map(|(i, _)| i)
            .collect()
    };
    let mut by_weight: HashMap<u64, HashSet<usize>> = HashMap::new();
    let mut previous: Option<(f64, HashSet<usize>)> = None;
    for weight in [5.0, 10.0, 25.0, 10.0, 5.0] {
        let r = request(
            &c,
            "PUT",
            &format!("{}/admin/config", gw.admin_url()),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            ramp_policy(&server, &a.url(), &b.url(), weight),
        )
        .await;
        assert_eq!(r.status, 200);
        let canary = canary_set(&arms_of(&url, &keys).await);
        let n = keys.len() as f64;
        let p = weight / 100.0;
        let sigma = (n * p * (1.0 - p)).sqrt();
        assert!(
            (canary.len() as f64 - n * p).abs() <= 3.0 * sigma + 0.5,
            "{weight}%: {} canary users",
            canary.len()
        );
        if let Some((prev_weight, prev)) = &previous {
            if weight >= *prev_weight {
                assert!(
                    canary.is_superset(prev),
                    "raising {prev_weight}% → {weight}% moved someone from canary back to champion"
                );
            } else {
                assert!(
                    canary.is_subset(prev),
                    "lowering {prev_weight}% → {weight}% moved someone from champion to canary"
                );
            }
        }
        if let Some(same) = by_weight.get(&(weight as u64)) {
            assert_eq!(
                &canary, same,
                "{weight}% chose different users in a later version"
            );
        }
        by_weight.insert(weight as u64, canary.clone());
        previous = Some((weight, canary));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_within_three_sigma_and_keys_stay_put() {
    let a = sim("a", &["m"], |_| {}).await;
    let b = sim("b", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend("a", &a.url(), "")
        + &backend("b", &b.url(), "")
        + &route(
            "random",
            &["m"],
            "none",
            &[("champion", &["a"], 90.0), ("canary", &["b"], 10.0)],
        )
        + &route(
            "sticky",
            &["s"],
            "header:x-user-id",
            &[("champion", &["a"], 50.0), ("canary", &["b"], 50.0)],
        );
    let gw = start_gateway(&policy);
    let url = format!("{}/v1/chat/completions", gw.url());
    let n = 20_000;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut canary = 0u32;
            for _ in 0..n / 8 {
                let r = post_json(&c, &url, &chat("m", "x")).await;
                assert_eq!(r.status, 200);
                canary += u32::from(r.header("x-switchyard-arm") == "canary");
            }
            canary
        }));
    }
    let mut canary = 0;
    for t in tasks {
        canary += t.await.unwrap();
    }
    let sigma = (f64::from(n) * 0.1 * 0.9).sqrt();
    assert!(
        (f64::from(canary) - 2000.0).abs() <= 3.0 * sigma,
        "canary got {canary} of {n}"
    );

    let c = client();
    for user in 0..20 {
        let key = format!("user-{user}");
        let mut arms = HashSet::new();
        for _ in 0..100 {
            let r = post_as(&c, &url, &key, &chat("s", "x")).await;
            arms.insert(r.header("x-switchyard-arm").to_owned());
        }
        assert_eq!(
            arms.len(),
            1,
            "{key} moved between arms over 100 requests: {arms:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_override_forces_an_arm_only_where_allowed() {
    let a = sim("a", &["m", "c"], |_| {}).await;
    let b = sim("b", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend("a", &a.url(), "")
        + &backend("b", &b.url(), "")
        + "[[routes]]\nname = \"bg\"\nmodels = [\"m\"]\nactive = \"blue\"\nallow_arm_override = true\n\
             [[routes.arms]]\nname = \"blue\"\nset = \"blue\"\nbackends = [\"a\"]\nweight = 100\n\
             [[routes.arms]]\nname = \"green\"\nset = \"green\"\nbackends = [\"b\"]\nweight = 100\n"
        + &route("closed", &["c"], "none", &[("only", &["a"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let ct = ("content-type", "application/json");
    let body = chat("m", "x").to_string();
    let r = request(&c, "POST", &url, &[ct], body.clone()).await;
    assert_eq!(r.header("x-switchyard-arm"), "blue");
    // QA reaches the standby arm before the flip.
    let r = request(
        &c,
        "POST",
        &url,
        &[ct, ("x-switchyard-arm", "green")],
        body.clone(),
    )
    .await;
    assert_eq!(
        (
            r.status,
            r.header("x-switchyard-arm"),
            r.header("x-switchyard-backend")
        ),
        (200, "green", "b")
    );
    let r = request(
        &c,
        "POST",
        &url,
        &[ct, ("x-switchyard-arm", "purple")],
        body,
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "unknown_arm"));
    // Where the route does not allow it, the header is ignored.
    let r = request(
        &c,
        "POST",
        &url,
        &[ct, ("x-switchyard-arm", "nope")],
        chat("c", "x").to_string(),
    )
    .await;
    assert_eq!((r.status, r.header("x-switchyard-arm")), (200, "only"));
}

fn blue_green(server: &str, a: &str, b: &str, active: &str) -> String {
    server.to_owned()
        + &backend("blue-v1", a, "")
        + &backend("green-v2", b, "")
        + &format!(
            "[[routes]]\nname = \"chat\"\nmodels = [\"m\"]\nactive = \"{active}\"\n\
             [[routes.arms]]\nname = \"blue\"\nset = \"blue\"\nbackends = [\"blue-v1\"]\nweight = 100\n\
             [[routes.arms]]\nname = \"green\"\nset = \"green\"\nbackends = [\"green-v2\"]\nweight = 100\n"
        )
}

/// A cut-over is a one-line change and the rollback one call; under steady plain and streaming
/// load nothing fails, and a stream begun on blue finishes on blue after the flip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_flip_and_rollback_under_load() {
    let a = sim("a", &["m"], |s| s.tpot_ms = 2).await;
    let b = sim("b", &["m"], |s| s.tpot_ms = 2).await;
    let server = server_section("");
    let gw = Arc::new(start_gateway(&blue_green(
        &server,
        &a.url(),
        &b.url(),
        "blue",
    )));
    let url = format!("{}/v1/chat/completions", gw.url());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for streaming in [false, true, false, true] {
        let (url, stop) = (url.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"model": "m", "stream": streaming, "max_tokens": 6, "messages": [{"role": "user", "content": "go"}]});
                if streaming {
                    let s = post_stream(&c, &url, &body).await;
                    let ok = s.status == 200 && s.events().last().map(String::as_str) == Some("[DONE]") && !s.text().contains("\"error\"");
                    seen.push((ok, s.header("x-switchyard-arm").to_owned()));
                } else {
                    let r = post_json(&c, &url, &body).await;
                    seen.push((r.status == 200, r.header("x-switchyard-arm").to_owned()));
                }
            }
            seen
        }));
    }
    // A long stream that starts on blue.
    let long = tokio::spawn({
        let url = url.clone();
        async move {
            let body = json!({"model": "m", "stream": true, "max_tokens": 300, "messages": [{"role": "user", "content": "long"}]});
            let s = post_stream(&client(), &url, &body).await;
            (
                s.header("x-switchyard-arm").to_owned(),
                s.events().last().cloned(),
                Instant::now(),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let c = client();
    let put = |policy: String| {
        let c = c.clone();
        let admin = gw.admin_url();
        async move {
            request(
                &c,
                "PUT",
                &format!("{admin}/admin/config"),
                &[("authorization", &format!("Bearer {TOKEN}"))],
                policy,
            )
            .await
        }
    };
    let flipped_at = Instant::now();
    assert_eq!(
        put(blue_green(&server, &a.url(), &b.url(), "green"))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post_json(&c, &url, &chat("m", "x"))
            .await
            .header("x-switchyard-arm"),
        "green"
    );
    let r = request(
        &c,
        "POST",
        &format!("{}/admin/rollback", gw.admin_url()),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        post_json(&c, &url, &chat("m", "x"))
            .await
            .header("x-switchyard-arm"),
        "blue"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);

    let (arm, last, ended) = long.await.unwrap();
    assert_eq!(arm, "blue");
    assert_eq!(
        last.as_deref(),
        Some("[DONE]"),
        "the in-flight stream finished"
    );
    assert!(
        ended > flipped_at,
        "the long stream should outlive the flip"
    );
    let mut arms = HashSet::new();
    let mut total = 0;
    for t in load {
        for (ok, arm) in t.await.unwrap() {
            assert!(ok, "a request failed during the flip");
            arms.insert(arm);
            total += 1;
        }
    }
    assert!(total > 50, "too little load: {total}");
    assert_eq!(arms, HashSet::from(["blue".to_owned(), "green".to_owned()]));
}
