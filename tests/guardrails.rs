//! Guardrails and progressive rollout through the real gateway and sims, with time scaled
//! down: 200 ms slices, windows of seconds, an evaluation every 200 ms.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use switchyard::config::PolicySource;
use switchyard::server::RunningGateway;

const GUARDRAILS: &str = "[guardrails]\nslice = \"200ms\"\nspan = \"60s\"\ninterval = \"200ms\"\n";

fn stream_chat(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": true, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hello there"}]})
}

/// What a load run saw.
#[derive(Default)]
struct Load {
    sent: AtomicU64,
    /// Answers that were not a complete success: non-200, an error event, no `[DONE]`.
    failed: AtomicU64,
    canary: AtomicU64,
}

/// Sends requests from `workers` loops until `done()` holds (checked every 100 ms) or
/// `limit` passes; worker `i` sends `bodies[i % bodies.len()]` (plain or streamed by its
/// `stream` field). Returns what was seen and whether `done()` held.
async fn drive(
    gw: &RunningGateway,
    bodies: &[serde_json::Value],
    workers: usize,
    limit: Duration,
    done: impl Fn() -> bool,
) -> (Arc<Load>, bool) {
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{}/v1/chat/completions", gw.url());
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            let body = bodies[i % bodies.len()].clone();
            let stream = body["stream"].as_bool() == Some(true);
            let (load, stop, url) = (load.clone(), stop.clone(), url.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let (ok, arm) = if stream {
                        let s = post_stream(&c, &url, &body).await;
                        let text = s.text();
                        (
                            s.status == 200
                                && text.contains("data: [DONE]")
                                && !text.contains("\"error\""),
                            s.header("x-switchyard-arm").to_owned(),
                        )
                    } else {
                        let r = post_json(&c, &url, &body).await;
                        (r.status == 200, r.header("x-switchyard-arm").to_owned())
                    };
                    load.sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        load.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if arm == "canary" {
                        load.canary.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + limit;
    let mut held = false;
    while Instant::now() < deadline {
        if done() {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load worker");
    }
    (load, held)
}

fn sourced(gw: &RunningGateway, source: PolicySource) -> Vec<switchyard::config::HistoryEntry> {
    gw.store
        .history()
        .into_iter()
        .filter(|e| e.source == source)
        .collect()
}

fn canary_weight(gw: &RunningGateway) -> u32 {
    let s = gw.store.current();
    let route = &s.policy.routes[0];
    route.arms.arms()[route.arms.position("canary").unwrap()].weight_bp
}

async fn admin_get(gw: &RunningGateway, path: &str) -> Reply {
    request(
        &client(),
        "GET",
        &format!("{}{path}", gw.admin_url()),
        &[],
        "",
    )
    .await
}

async fn admin_post(gw: &RunningGateway, path: &str) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    request(
        &client(),
        "POST",
        &format!("{}{path}", gw.admin_url()),
        &[("authorization", auth.as_str())],
        "",
    )
    .await
}

fn two_arm_policy(champion: &str, canary: &str, canary_weight: f64, extra: &str) -> String {
    server_section("")
        + GUARDRAILS
        + &backend("v1", champion, "")
        + &backend("v2", canary, "")
        + &route(
            "chat",
            &["m"],
            "none",
            &[
                ("champion", &["v1"], 100.0 - canary_weight),
                ("canary", &["v2"], canary_weight),
            ],
        )
        + extra
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_canary_is_rolled_back_without_failing_a_request() {
    let v1 = sim("v1", &["m"], |a| a.ttft_ms = 25).await;
    let v2 = sim("v2", &["m"], |a| a.ttft_ms = 100).await;
    let rules = r#"
  [[routes.guardrails]]
  name = "ttft"
  metric = "ttft"
  quantile = "p95"
  window = "3s"
  max_ratio = 2.0
  min_requests = 10
  consecutive = 2
  action = "rollback"
"#;
    let gw = start_gateway(&two_arm_policy(&v1.url(), &v2.url(), 30.0, rules));
    let started = Instant::now();
    let (load, rolled_back) = drive(&gw, &[stream_chat("m")], 4, Duration::from_secs(40), || {
        !sourced(&gw, PolicySource::Guardrail).is_empty()
    })
    .await;
    assert!(rolled_back, "no guardrail rollback within 40 s");
    // The window is 3 s and two failing evaluations are needed: well within 15 s even on a
    // loaded machine (a loose bound, to catch a rule that never fires in time).
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        0,
        "a request failed across the rollback"
    );
    assert!(load.canary.load(Ordering::Relaxed) >= 10);
    let entry = &sourced(&gw, PolicySource::Guardrail)[0];
    assert!(
        entry.reason.starts_with("guardrail ttft: canary ttft p95 ")
            && entry.reason.contains(" > 2 × champion ")
            && entry.reason.contains("over 3 s")
            && entry
                .reason
                .ends_with("; canary 30% → 0%, champion 70% → 100%"),
        "{}",
        entry.reason
    );
    assert!(entry.diff.contains("+  weight = 0\n"), "{}", entry.diff);
    assert_eq!(canary_weight(&gw), 0);
    // Everyone is back on the champion.
    let c = client();
    for _ in 0..20 {
        let s = post_stream(
            &c,
            &format!("{}/v1/chat/completions", gw.url()),
            &stream_chat("m"),
        )
        .await;
        assert_eq!(s.header("x-switchyard-arm"), "champion");
    }
    let history = admin_get(&gw, "/admin/config/history").await.json();
    assert_eq!(history["versions"][0]["source"], "guardrail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_advances_through_every_step_to_completion() {
    let v1 = sim("v1", &["m"], |a| a.ttft_ms = 10).await;
    let v2 = sim("v2", &["m"], |a| a.ttft_ms = 10).await;
    let rules = r#"
  [[routes.guardrails]]
  name = "ttft"
  metric = "ttft"
  quantile = "p95"
  window = "2s"
  max_ratio = 4.0
  min_requests = 5
  action = "rollback"
  [routes.rollout]
  arm = "canary"
  steps = [10, 50, 100]
  bake = "1s"
"#;
    let gw = start_gateway(&two_arm_policy(&v1.url(), &v2.url(), 0.0, rules));
    let (load, completed) = drive(&gw, &[stream_chat("m")], 4, Duration::from_secs(60), || {
        canary_weight(&gw) == 10_000
    })
    .await;
    assert!(
        completed,
        "rollout did not complete; at {}",
        canary_weight(&gw)
    );
    assert_eq!(load.failed.load(Ordering::Relaxed), 0);
    let steps: Vec<String> = sourced(&gw, PolicySource::Rollout)
        .iter()
        .map(|e| e.reason.clone())
        .collect();
    assert_eq!(steps.len(), 3, "{steps:#?}");
    assert_eq!(steps[0], "rollout canary started: 0% → 10%");
    assert!(
        steps[1].starts_with("rollout canary 10% → 50% after "),
        "{}",
        steps[1]
    );
    assert!(
        steps[2].starts_with("rollout canary 50% → 100% (complete) after "),
        "{}",
        steps[2]
    );
    assert!(steps[2].contains("canary ttft p95"), "{}", steps[2]);
    assert!(sourced(&gw, PolicySource::Guardrail).is_empty());
    // The evaluator marks it complete on its next pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = admin_get(&gw, "/admin/guardrails").await.json();
        if g["rollouts"][0]["phase"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "{g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_with_too_little_traffic_is_neither_rolled_back_nor_advanced() {
    let v1 = sim("v1", &["m"], |a| a.ttft_ms = 5).await;
    let v2 = sim("v2", &["m"], |a| a.ttft_ms = 60).await;
    let rules = r#"
  [[routes.guardrails]]
  name = "ttft"
  metric = "ttft"
  quantile = "p95"
  window = "5s"
  max_ratio = 1.2
  min_requests = 50
  action = "rollback"
  [routes.rollout]
  arm = "canary"
  steps = [1, 50, 100]
  bake = "500ms"
"#;
    let gw = start_gateway(&two_arm_policy(&v1.url(), &v2.url(), 1.0, rules));
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    for _ in 0..40 {
        assert_eq!(post_stream(&c, &url, &stream_chat("m")).await.status, 200);
    }
    // Well past the bake time and many evaluations.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(gw.store.current().version, 1, "{:#?}", gw.store.history());
    assert_eq!(canary_weight(&gw), 100);
    let g = admin_get(&gw, "/admin/guardrails").await.json();
    let rule = &g["rules"][0];
    assert_eq!(rule["verdict"], "inconclusive", "{g}");
    assert!(
        rule["detail"]
            .as_str()
            .unwrap()
            .contains("< min_requests 50"),
        "{g}"
    );
    assert_eq!(g["rollouts"][0]["phase"], "running");
    assert_eq!(g["rollouts"][0]["note"], "waiting: ttft inconclusive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_error_events_are_caught_by_the_error_rate_rule() {
    let v1 = sim("v1", &["m"], |_| {}).await;
    let v2 = sim("v2", &["m"], |a| a.stream_error_after = Some(2)).await;
    let rules = r#"
  [[routes.guardrails]]
  name = "errors"
  metric = "error_rate"
  window = "3s"
  max = "10%"
  min_requests = 10
  action = "rollback"
"#;
    let gw = start_gateway(&two_arm_policy(&v1.url(), &v2.url(), 30.0, rules));
    let (load, rolled_back) = drive(&gw, &[stream_chat("m")], 4, Duration::from_secs(40), || {
        !sourced(&gw, PolicySource::Guardrail).is_empty()
    })
    .await;
    assert!(rolled_back, "not rolled back");
    // Every failed answer was a canary stream with an error event on HTTP 200.
    assert!(load.failed.load(Ordering::Relaxed) >= 10);
    assert!(load.failed.load(Ordering::Relaxed) <= load.canary.load(Ordering::Relaxed));
    let reason = &sourced(&gw, PolicySource::Guardrail)[0].reason;
    assert!(
        reason.starts_with("guardrail errors: canary error_rate 100% > 10% over 3 s, "),
        "{reason}"
    );
    let metrics = admin_get(&gw, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"switchyard_request_outcomes_total{route="chat",arm="canary",backend="v2",outcome="stream_error"}"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_patterns_are_caught_by_the_refusal_rate_rule() {
    let v1 = sim("v1", &["m"], |_| {}).await;
    let v2 = sim("v2", &["m"], |a| {
        a.refusal = Some("I'm sorry, but I can't help with that. ".to_owned())
    })
    .await;
    let rules = r#"
  refusal_patterns = ["can't help with"]
  [[routes.guardrails]]
  name = "refusals"
  metric = "refusal_rate"
  window = "3s"
  max = "20%"
  min_requests = 10
  action = "rollback"
"#;
    // `refusal_patterns` belongs to the route table: put it before the arms.
    let policy = two_arm_policy(&v1.url(), &v2.url(), 30.0, "").replacen(
        "sticky = \"none\"\n",
        &format!("sticky = \"none\"\n{}\n", rules.lines().nth(1).unwrap()),
        1,
    ) + &rules.lines().skip(2).collect::<Vec<_>>().join("\n");
    let gw = start_gateway(&policy);
    let body = chat("m", "tell me");
    let (load, rolled_back) = drive(&gw, &[body], 4, Duration::from_secs(40), || {
        !sourced(&gw, PolicySource::Guardrail).is_empty()
    })
    .await;
    assert!(rolled_back, "not rolled back");
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        0,
        "refusals are answers, not failures"
    );
    let reason = &sourced(&gw, PolicySource::Guardrail)[0].reason;
    assert!(
        reason.starts_with("guardrail refusals: canary refusal_rate 100% > 20% over 3 s"),
        "{reason}"
    );
    let g = admin_get(&gw, "/admin/guardrails").await.json();
    let champion = g["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["arm"] == "champion")
        .unwrap();
    assert_eq!(champion["refusals"], 0, "{g}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_filtered_answers_are_caught_by_the_content_filter_rate_rule() {
    let v1 = sim("v1", &["m"], |_| {}).await;
    // Half the canary's answers, plain and streamed, end with `finish_reason: "content_filter"`.
    let v2 = sim("v2", &["m"], |a| a.content_filter_rate = 0.5).await;
    let rules = r#"
  [[routes.guardrails]]
  name = "filtered"
  metric = "content_filter_rate"
  window = "3s"
  max = "20%"
  min_requests = 10
  consecutive = 2
  action = "rollback"
"#;
    let gw = start_gateway(&two_arm_policy(&v1.url(), &v2.url(), 30.0, rules));
    let bodies = [stream_chat("m"), chat("m", "tell me")];
    let (load, rolled_back) = drive(&gw, &bodies, 4, Duration::from_secs(40), || {
        !sourced(&gw, PolicySource::Guardrail).is_empty()
    })
    .await;
    assert!(rolled_back, "not rolled back");
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        0,
        "a filtered answer is an answer, not a failure"
    );
    assert!(load.canary.load(Ordering::Relaxed) >= 10);
    let entry = &sourced(&gw, PolicySource::Guardrail)[0];
    assert!(
        entry
            .reason
            .starts_with("guardrail filtered: canary content_filter_rate ")
            && entry.reason.contains("% > 20% over 3 s, ")
            && entry
                .reason
                .ends_with("; canary 30% → 0%, champion 70% → 100%"),
        "{}",
        entry.reason
    );
    assert_eq!(canary_weight(&gw), 0);
    let history = admin_get(&gw, "/admin/config/history").await.json();
    assert_eq!(history["versions"][0]["source"], "guardrail");
    assert_eq!(history["versions"][0]["reason"], entry.reason.as_str());
    // The champion's answers were never filtered, and its rule state never failed.
    let g = admin_get(&gw, "/admin/guardrails").await.json();
    let series = g["series"].as_array().unwrap();
    let arm_figure = |arm: &str, field: &str| -> u64 {
        series
            .iter()
            .filter(|s| s["arm"] == arm)
            .map(|s| {
                s[field]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{field} in {s}"))
            })
            .sum()
    };
    assert_eq!(arm_figure("champion", "content_filtered"), 0, "{g}");
    assert!(arm_figure("champion", "requests") > 0, "{g}");
    assert!(arm_figure("canary", "content_filtered") >= 1, "{g}");
    // Plain and streamed requests keep being served by the champion.
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    for body in &bodies {
        let reply = post_json(&c, &url, body).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-switchyard-arm"), "champion");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_arms_degrading_trip_the_absolute_rule_not_the_relative_one() {
    let v1 = sim("v1", &["m"], |a| a.ttft_ms = 120).await;
    let v2 = sim("v2", &["m"], |a| a.ttft_ms = 120).await;
    let rules = r#"
  [[routes.guardrails]]
  name = "relative"
  metric = "ttft"
  quantile = "p95"
  window = "3s"
  max_ratio = 1.5
  min_requests = 5
  action = "rollback"
  [[routes.guardrails]]
  name = "absolute"
  metric = "ttft"
  quantile = "p95"
  window = "3s"
  max = "50ms"
  min_requests = 5
  action = "alert"
"#;
    let gw = start_gateway(&two_arm_policy(&v1.url(), &v2.url(), 50.0, rules));
    let alerted = || {
        gw.store
            .metrics()
            .render()
            .contains(r#"switchyard_guardrail_events_total{route="chat",rule="absolute",arm="canary",kind="alert"}"#)
    };
    // The split is random: on a slow machine the champion may have too few requests in the
    // window for the relative rule to judge at the moment the absolute one alerts. Traffic goes
    // on until the relative rule has judged (its verdict is polled beside the load).
    let relative = Arc::new(parking_lot::Mutex::new(serde_json::Value::Null));
    let poller = {
        let (relative, url) = (
            relative.clone(),
            format!("{}/admin/guardrails", gw.admin_url()),
        );
        tokio::spawn(async move {
            let c = client();
            loop {
                let g = request(&c, "GET", &url, &[], "").await.json();
                if let Some(rule) = g["rules"]
                    .as_array()
                    .and_then(|rules| rules.iter().find(|r| r["rule"] == "relative"))
                {
                    *relative.lock() = rule["verdict"].clone();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let judged = || {
        relative
            .lock()
            .as_str()
            .is_some_and(|v| v != "inconclusive")
    };
    let (load, held) = drive(&gw, &[stream_chat("m")], 6, Duration::from_secs(40), || {
        alerted() && judged()
    })
    .await;
    poller.abort();
    assert!(
        held,
        "the absolute rule never alerted, or the relative one never judged"
    );
    assert_eq!(load.failed.load(Ordering::Relaxed), 0);
    assert!(
        sourced(&gw, PolicySource::Guardrail).is_empty(),
        "the relative rule rolled back"
    );
    let g = admin_get(&gw, "/admin/guardrails").await.json();
    let verdict = |name: &str| {
        g["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == name)
            .map(|r| r["verdict"].clone())
            .unwrap()
    };
    assert_eq!(verdict("absolute"), "fail", "{g}");
    assert_eq!(*relative.lock(), "pass", "{g}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_pause_resume_promote_abort_through_the_api() {
    let v1 = sim("v1", &["m"], |_| {}).await;
    let v2 = sim("v2", &["m"], |_| {}).await;
    let rules = r#"
  [[routes.guardrails]]
  name = "errors"
  metric = "error_rate"
  window = "5s"
  max = "5%"
  action = "rollback"
  [routes.rollout]
  arm = "canary"
  steps = [10, 50, 100]
  bake = "1h"
"#;
    let gw = start_gateway(&two_arm_policy(&v1.url(), &v2.url(), 0.0, rules));
    // The rollout starts at its first step on the first evaluation.
    let deadline = Instant::now() + Duration::from_secs(10);
    while canary_weight(&gw) != 1000 {
        assert!(Instant::now() < deadline, "rollout did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unauthorised = request(
        &client(),
        "POST",
        &format!("{}/admin/rollout/chat/pause", gw.admin_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(unauthorised.status, 401);
    let r = admin_post(&gw, "/admin/rollout/chat/pause").await;
    assert_eq!(
        (r.status, r.json()["phase"].clone()),
        (200, "paused".into())
    );
    let r = admin_post(&gw, "/admin/rollout/chat/pause").await;
    assert_eq!(
        (r.status, r.error_code()),
        (409, "rollout_phase".to_owned())
    );
    let r = admin_post(&gw, "/admin/rollout/chat/resume").await;
    assert_eq!(r.json()["phase"], "running");
    let r = admin_post(&gw, "/admin/rollout/chat/promote").await;
    assert_eq!(r.json()["phase"], "completed", "{:?}", r.body);
    assert_eq!(canary_weight(&gw), 10_000);
    let entry = gw.store.history().pop().unwrap();
    assert_eq!(entry.source, PolicySource::Rollout);
    assert_eq!(
        entry.reason,
        "rollout canary promoted by an operator: 10% → 100%"
    );
    let r = admin_post(&gw, "/admin/rollout/chat/abort").await;
    assert_eq!(r.json()["phase"], "aborted");
    assert_eq!(canary_weight(&gw), 0);
    let entry = gw.store.history().pop().unwrap();
    assert_eq!(
        entry.reason,
        "rollout canary aborted by an operator; canary 100% → 0%, champion 0% → 100%"
    );
    let r = admin_post(&gw, "/admin/rollout/nope/pause").await;
    assert_eq!((r.status, r.error_code()), (404, "no_rollout".to_owned()));
    let r = admin_post(&gw, "/admin/rollout/chat/explode").await;
    assert_eq!(r.status, 404);
    // Requests keep flowing to the champion.
    let reply = post_json(
        &client(),
        &format!("{}/v1/chat/completions", gw.url()),
        &chat("m", "hi"),
    )
    .await;
    assert_eq!(reply.header("x-switchyard-arm"), "champion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_awkward_route_and_arm_names() {
    let v1 = sim("v1", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend("v1", &v1.url(), "")
        + "[[routes]]\nname = \"chat \\\"q\\\\ x\"\nmodels = [\"m\"]\n  [[routes.arms]]\n  name = \"arm\\\"1\"\n  backends = [\"v1\"]\n  weight = 100\n";
    let gw = start_gateway(&policy);
    let c = client();
    for _ in 0..3 {
        let s = post_stream(
            &c,
            &format!("{}/v1/chat/completions", gw.url()),
            &stream_chat("m"),
        )
        .await;
        assert_eq!(s.status, 200);
    }
    let text = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("/metrics parses as the Prometheus text format");
    let ttft: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "gen_ai_server_time_to_first_token_seconds")
        .collect();
    assert!(!ttft.is_empty(), "{text}");
    let sample = ttft[0];
    // prometheus-parse 0.2 hands label values back as written, escapes included: undo them to
    // compare with the names in the policy.
    let unescape = |v: Option<&str>| {
        let v = v.unwrap_or_default();
        let mut out = String::new();
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        }
        out
    };
    assert_eq!(
        unescape(sample.labels.get("route")),
        "chat \"q\\ x",
        "{text}"
    );
    assert_eq!(unescape(sample.labels.get("arm")), "arm\"1");
    assert_eq!(sample.labels.get("backend"), Some("v1"));
    match &sample.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().map(|b| b.count), Some(3.0), "{buckets:?}")
        }
        other => panic!("not a histogram: {other:?}"),
    }
}
