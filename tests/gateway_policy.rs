//! Policy snapshots through the running gateway: swaps by file and API, rejection, rollback,
//! admin auth, and swaps under steady traffic.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn two_arm_policy(server: &str, a: &str, b: &str, arm: &str) -> String {
    let target = if arm == "blue" { "a" } else { "b" };
    server.to_owned()
        + &backend("a", a, "")
        + &backend("b", b, "")
        + &route("r", &["m"], "none", &[(arm, &[target], 100.0)])
}

async fn admin(
    c: &HttpClient,
    gw: &switchyard::server::RunningGateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    request(
        c,
        method,
        &format!("{}{path}", gw.admin_url()),
        &headers,
        body.to_owned(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_swap_the_policy_and_invalid_files_are_ignored() {
    let a = sim("a", &["m"], |_| {}).await;
    let b = sim("b", &["m"], |_| {}).await;
    let server = server_section("");
    let dir = tempfile::tempdir().unwrap();
    let (gw, path) =
        start_gateway_watching(&two_arm_policy(&server, &a.url(), &b.url(), "blue"), &dir);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    assert_eq!(
        post_json(&c, &url, &chat("m", "x"))
            .await
            .header("x-switchyard-arm"),
        "blue"
    );

    std::fs::write(&path, two_arm_policy(&server, &a.url(), &b.url(), "green")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = post_json(&c, &url, &chat("m", "x")).await;
        if r.header("x-switchyard-arm") == "green" {
            assert_eq!(r.header("x-switchyard-backend"), "b");
            assert_eq!(r.header("x-switchyard-policy-version"), "2");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the file change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::write(&path, "this is [not toml").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = post_json(&c, &url, &chat("m", "x")).await;
    assert_eq!(
        (r.status, r.header("x-switchyard-arm")),
        (200, "green"),
        "an invalid file never replaces the running policy"
    );
    let history = admin(&c, &gw, "GET", "/admin/config/history", None, "")
        .await
        .json();
    let versions: Vec<_> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![(2, "file".to_owned()), (1, "startup".to_owned())]
    );
    let metrics = admin(&c, &gw, "GET", "/metrics", None, "").await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("switchyard_policy_rejected_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_push_rejection_rollback_and_auth() {
    let a = sim("a", &["m"], |_| {}).await;
    let b = sim("b", &["m"], |_| {}).await;
    let server = server_section("");
    let blue = two_arm_policy(&server, &a.url(), &b.url(), "blue");
    let green = two_arm_policy(&server, &a.url(), &b.url(), "green");
    let gw = start_gateway(&blue);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());

    // Auth: no token, wrong token.
    let r = admin(&c, &gw, "PUT", "/admin/config", None, &green).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    let r = admin(&c, &gw, "PUT", "/admin/config", Some("wrong"), &green).await;
    assert_eq!(r.status, 401);
    let r = admin(&c, &gw, "POST", "/admin/rollback", None, "").await;
    assert_eq!(r.status, 401);

    // Push.
    let r = admin(
        &c,
        &gw,
        "PUT",
        "/admin/config?reason=go%20green",
        Some(TOKEN),
        &green,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["version"], 2);
    assert_eq!(
        post_json(&c, &url, &chat("m", "x"))
            .await
            .header("x-switchyard-arm"),
        "green"
    );
    let r = admin(&c, &gw, "PUT", "/admin/config", Some(TOKEN), &green).await;
    assert_eq!(
        (
            r.json()["version"].as_u64(),
            r.json()["unchanged"].as_bool()
        ),
        (Some(2), Some(true))
    );

    // Rejection lists every error and keeps the running policy.
    let bad = green
        .replace("weight = 100", "weight = 90")
        .replace("backends = [\"b\"]", "backends = [\"nope\"]");
    let r = admin(&c, &gw, "PUT", "/admin/config", Some(TOKEN), &bad).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_policy"));
    let paths: Vec<String> = r.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        vec!["routes[0].arms[0].backends[0]", "routes[0].arms"]
    );
    let changed_listen = green.replace(&gw.proxy_addr.to_string(), "127.0.0.1:1");
    let r = admin(
        &c,
        &gw,
        "PUT",
        "/admin/config",
        Some(TOKEN),
        &changed_listen,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("server.listen"));
    assert_eq!(
        post_json(&c, &url, &chat("m", "x"))
            .await
            .header("x-switchyard-arm"),
        "green"
    );

    // GET shows the running policy.
    let r = admin(&c, &gw, "GET", "/admin/config", None, "").await;
    assert_eq!(r.json()["version"], 2);
    assert_eq!(r.json()["reason"], "go green");
    assert_eq!(r.json()["policy"], green);

    // Rollback to the previous version, then to an explicit one.
    let r = admin(&c, &gw, "POST", "/admin/rollback", Some(TOKEN), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], 3);
    assert_eq!(
        post_json(&c, &url, &chat("m", "x"))
            .await
            .header("x-switchyard-arm"),
        "blue"
    );
    let r = admin(&c, &gw, "POST", "/admin/rollback?to=2", Some(TOKEN), "").await;
    assert_eq!(r.json()["version"], 4);
    assert_eq!(
        post_json(&c, &url, &chat("m", "x"))
            .await
            .header("x-switchyard-arm"),
        "green"
    );
    let r = admin(&c, &gw, "POST", "/admin/rollback?to=99", Some(TOKEN), "").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "unknown_version")
    );

    let history = admin(&c, &gw, "GET", "/admin/config/history", None, "")
        .await
        .json();
    let sources: Vec<&str> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec!["rollback", "rollback", "api", "startup"]);
    assert_eq!(history["versions"][0]["live"], true);

    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            admin(&c, &gw, "GET", path, None, "").await.status,
            200,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_api_is_refused_without_a_configured_token() {
    let a = sim("a", &["m"], |_| {}).await;
    let policy = server_section("").replace("admin_token_env = \"SWITCHYARD_TEST_TOKEN\"\n", "")
        + &backend("a", &a.url(), "")
        + &route("r", &["m"], "none", &[("x", &["a"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let r = admin(&c, &gw, "PUT", "/admin/config", Some(TOKEN), &policy).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "admin_disabled"));
    assert_eq!(
        admin(&c, &gw, "GET", "/admin/config", None, "")
            .await
            .status,
        200
    );
}

/// 100 swaps while clients stream and post: no request fails, and each response's arm is the
/// one of the version it names, a version live at some point during that request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_swaps_under_steady_traffic_fail_nothing() {
    let a = sim("a", &["m"], |s| s.tpot_ms = 2).await;
    let b = sim("b", &["m"], |s| s.tpot_ms = 2).await;
    let server = server_section("");
    let policies = [
        two_arm_policy(&server, &a.url(), &b.url(), "blue"),
        two_arm_policy(&server, &a.url(), &b.url(), "green"),
    ];
    let gw = Arc::new(start_gateway(&policies[0]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for streaming in [false, true, false, true] {
        let (gw, stop) = (gw.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let url = format!("{}/v1/chat/completions", gw.url());
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let body = json!({"model": "m", "stream": streaming, "max_tokens": 8, "messages": [{"role": "user", "content": "go"}]});
                let (status, arm, version, ok) = if streaming {
                    let s = post_stream(&c, &url, &body).await;
                    let ok = s.events().last().map(String::as_str) == Some("[DONE]") && !s.text().contains("\"error\"");
                    (s.status, s.header("x-switchyard-arm").to_owned(), s.header("x-switchyard-policy-version").to_owned(), ok)
                } else {
                    let r = post_json(&c, &url, &body).await;
                    (r.status, r.header("x-switchyard-arm").to_owned(), r.header("x-switchyard-policy-version").to_owned(), r.json()["choices"].is_array())
                };
                seen.push((started, Instant::now(), status, arm, version.parse::<u64>().unwrap_or(0), ok));
            }
            seen
        }));
    }
    let c = client();
    let mut activations = vec![(1u64, Instant::now(), Instant::now())];
    for i in 0..100 {
        let policy = &policies[(i + 1) % 2];
        let before = Instant::now();
        let r = request(
            &c,
            "PUT",
            &format!("{}/admin/config", gw.admin_url()),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            policy.clone(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        activations.push((
            r.json()["version"].as_u64().unwrap(),
            before,
            Instant::now(),
        ));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in clients {
        for (started, ended, status, arm, version, ok) in task.await.unwrap() {
            total += 1;
            assert_eq!(status, 200);
            assert!(ok, "a request failed during the swaps");
            let expected = if version % 2 == 1 { "blue" } else { "green" };
            assert_eq!(arm, expected, "version {version} served by the wrong arm");
            // Version v went live inside its PUT (between `before` and `after`), and the next
            // version replaced it inside the next PUT; the request loaded v in between.
            let i = activations
                .iter()
                .position(|(v, _, _)| *v == version)
                .expect("a version that was pushed");
            assert!(
                activations[i].1 <= ended,
                "version {version} used before it was pushed"
            );
            if let Some(next) = activations.get(i + 1) {
                assert!(
                    next.2 >= started,
                    "version {version} used after it was replaced"
                );
            }
        }
    }
    assert!(total > 200, "too little traffic during the swaps: {total}");
}
