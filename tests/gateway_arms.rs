//! Weighted and sticky arms through the real gateway.

mod common;

use std::collections::HashMap;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_and_least_in_flight_spread() {
    let a = sim("a", &["m"], |_| {}).await;
    let b = sim("b", &["m"], |_| {}).await;
    let c2 = sim("c", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend("a", &a.url(), "")
        + &backend("b", &b.url(), "")
        + &backend("c", &c2.url(), "")
        + &route(
            "r",
            &["m"],
            "none",
            &[("champion", &["a"], 70.0), ("canary", &["b", "c"], 30.0)],
        );
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let n = 1500;
    let mut arms: HashMap<String, u32> = HashMap::new();
    let mut backends: HashMap<String, u32> = HashMap::new();
    for i in 0..n {
        let r = post_json(&c, &url, &chat("m", &format!("q{i}"))).await;
        assert_eq!(r.status, 200);
        *arms
            .entry(r.header("x-switchyard-arm").to_owned())
            .or_default() += 1;
        *backends
            .entry(r.header("x-switchyard-backend").to_owned())
            .or_default() += 1;
    }
    let canary = f64::from(arms["canary"]);
    let sigma = (f64::from(n) * 0.3 * 0.7).sqrt();
    assert!(
        (canary - 450.0).abs() <= 3.0 * sigma,
        "canary got {canary} of {n}: {arms:?}"
    );
    // Sequential requests leave both canary backends idle, so ties rotate between them.
    let (b, c) = (f64::from(backends["b"]), f64::from(backends["c"]));
    assert!(
        (b - c).abs() / canary < 0.2,
        "canary backends unevenly used: {backends:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_keep_their_arm() {
    let a = sim("a", &["m"], |_| {}).await;
    let b = sim("b", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend("a", &a.url(), "")
        + &backend("b", &b.url(), "")
        + &route(
            "hdr",
            &["m"],
            "header:x-user-id",
            &[("champion", &["a"], 50.0), ("canary", &["b"], 50.0)],
        )
        + &route(
            "usr",
            &["u"],
            "body:user",
            &[("champion", &["a"], 50.0), ("canary", &["b"], 50.0)],
        );
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let mut seen_arms = HashMap::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let mut arms = Vec::new();
        for i in 0..5 {
            let r = post_as(&c, &url, &key, &chat("m", &format!("req {i}"))).await;
            arms.push(r.header("x-switchyard-arm").to_owned());
            let mut body = chat("u", "x");
            body["user"] = serde_json::json!(key);
            let r = post_json(&c, &url, &body).await;
            arms.push(r.header("x-switchyard-arm").to_owned());
        }
        let hdr: Vec<_> = arms.iter().step_by(2).collect();
        let usr: Vec<_> = arms.iter().skip(1).step_by(2).collect();
        assert!(
            hdr.windows(2).all(|w| w[0] == w[1]),
            "{key} moved between arms: {hdr:?}"
        );
        assert!(
            usr.windows(2).all(|w| w[0] == w[1]),
            "{key} moved between arms: {usr:?}"
        );
        *seen_arms.entry(hdr[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(
        seen_arms.len(),
        2,
        "40 users at 50/50 all landed in one arm: {seen_arms:?}"
    );
}
