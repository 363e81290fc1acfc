//! The proxy over real sockets: real sims, the real gateway (pingora listeners), a real client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_chat_is_proxied_with_routing_headers_and_model_rewrite() {
    let sim = sim("s1", &["llama-internal"], |_| {}).await;
    let policy = server_section("")
        + &backend("b1", &sim.url(), "model = \"llama-internal\"")
        + &route("chat", &["llama"], "none", &[("champion", &["b1"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let r = post_json(
        &c,
        &format!("{}/v1/chat/completions", gw.url()),
        &chat("llama", "hello world"),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-switchyard-route"), "chat");
    assert_eq!(r.header("x-switchyard-arm"), "champion");
    assert_eq!(r.header("x-switchyard-backend"), "b1");
    assert_eq!(r.header("x-sim-name"), "s1");
    let body = r.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["completion_tokens"], 4);
    let seen = sim.received();
    let sent: serde_json::Value = serde_json::from_slice(&seen.last().unwrap().body).unwrap();
    assert_eq!(
        sent["model"], "llama-internal",
        "the backend sees the rewritten model name"
    );
    assert_eq!(sent["messages"][0]["content"], "hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_embeddings_and_models() {
    let sim = sim("s1", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend("b1", &sim.url(), "")
        + &route("r", &["m", "m-alias"], "none", &[("a", &["b1"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let r = post_json(
        &c,
        &format!("{}/v1/completions", gw.url()),
        &json!({"model": "m", "prompt": "once upon", "max_tokens": 3}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "text_completion");
    let r = post_json(
        &c,
        &format!("{}/v1/embeddings", gw.url()),
        &json!({"model": "m", "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let r = request(&c, "GET", &format!("{}/v1/models", gw.url()), &[], "").await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["m", "m-alias"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_events_pass_through_as_they_are_produced() {
    let direct_sim = sim("s1", &["m"], |a| {
        a.ttft_ms = 150;
        a.tpot_ms = 50;
    })
    .await;
    let policy = server_section("")
        + &backend("b1", &direct_sim.url(), "")
        + &route("r", &["m"], "none", &[("a", &["b1"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let body = json!({"model": "m", "stream": true, "max_tokens": 12, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "count"}]});
    // Warm both connection pools so neither measurement pays a connect.
    post_stream(
        &c,
        &format!("{}/v1/chat/completions", direct_sim.url()),
        &body,
    )
    .await;
    post_stream(&c, &format!("{}/v1/chat/completions", gw.url()), &body).await;

    let direct = post_stream(
        &c,
        &format!("{}/v1/chat/completions", direct_sim.url()),
        &body,
    )
    .await;
    let proxied = post_stream(&c, &format!("{}/v1/chat/completions", gw.url()), &body).await;
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.header("x-switchyard-arm"), "a");
    assert!(proxied
        .header("content-type")
        .starts_with("text/event-stream"));
    let events = proxied.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        events.len(),
        direct.events().len(),
        "every event passes through"
    );
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 12);

    // The first event reaches the client while the backend is still generating: a gateway
    // that buffered the stream would deliver it with the last one, 11 tokens (550 ms) later.
    // The bound is loose on purpose: on a loaded 2-core machine a wake-up can take 100+ ms,
    // and what the gateway adds to the first event is measured in `make bench`.
    let last_token = proxied.frames.last().map(|(t, _)| *t).unwrap();
    let first = proxied.frames[0].0;
    assert!(
        last_token - first >= Duration::from_millis(300),
        "first event only {:?} before the last: the stream was held back",
        last_token - first
    );
    let ttfe = |s: &Streamed| s.frames[0].0 - s.sent_at;
    let added = ttfe(&proxied).saturating_sub(ttfe(&direct));
    assert!(
        added < Duration::from_secs(1),
        "first event {added:?} later through the gateway"
    );
    // One frame per token, ~50 ms apart: nothing is batched.
    let token_frames: Vec<Instant> = proxied
        .frames
        .iter()
        .filter(|(_, b)| b.windows(8).any(|w| w == b"\"delta\":"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        token_frames.len() >= 11,
        "frames arrived batched: {} frames",
        token_frames.len()
    );
    let mut gaps: Vec<Duration> = token_frames.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(35) && median <= Duration::from_millis(90),
        "median gap {median:?}, gaps {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_above_pingoras_retry_buffer_arrive_byte_for_byte() {
    let sim = sim("s1", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend("b1", &sim.url(), "")
        + &route("r", &["m"], "none", &[("a", &["b1"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    for size in [
        63 * 1024,
        65 * 1024,
        1024 * 1024,
        4 * 1024 * 1024,
        8 * 1024 * 1024 - 200,
    ] {
        let filler: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let body = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": filler}]}).to_string();
        let body = body.as_bytes()[..].to_vec();
        let r = request(
            &c,
            "POST",
            &format!("{}/v1/chat/completions", gw.url()),
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "size {size}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let got = sim.received().last().unwrap().body.clone();
        assert_eq!(got.len(), body.len(), "size {size}");
        assert!(
            got[..] == body[..],
            "size {size}: the backend received different bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_use_the_openai_shape() {
    let sim = sim("s1", &["m"], |_| {}).await;
    let policy = server_section("max_body_bytes = 1024")
        + &backend("b1", &sim.url(), "")
        + &route(
            "r",
            &["m", "secret-model-name"],
            "none",
            &[("a", &["b1"], 100.0)],
        );
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let json_ct = [("content-type", "application/json")];

    let r = request(&c, "POST", &url, &json_ct, "{\"model\": ").await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_json"));
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    let r = request(&c, "POST", &url, &json_ct, r#"{"messages": []}"#).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "missing_model"));

    let r = post_json(&c, &url, &chat("gpt-nope", "hi")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "model_not_found")
    );
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("gpt-nope") && !text.contains("secret-model-name"),
        "{text}"
    );

    let r = request(
        &c,
        "POST",
        &format!("{}/v1/nothing", gw.url()),
        &json_ct,
        "{}",
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_url"));

    let r = request(&c, "GET", &url, &[], "").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );

    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(2000)}]})
        .to_string();
    let r = request(&c, "POST", &url, &json_ct, big).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "request_too_large")
    );

    // A chunked body (no Content-Length) is cut off at the limit too.
    let stream = futures::stream::iter((0..8).map(|_| {
        Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            b' ';
            512
        ])))
    }));
    let chunked = http::Request::post(&url)
        .body(http_body_util::StreamBody::new(stream))
        .unwrap();
    let raw: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = raw.request(chunked).await.unwrap();
    assert_eq!(resp.status(), 413);

    // The gateway still serves normally afterwards.
    let r = post_json(&c, &url, &chat("m", "still fine")).await;
    assert_eq!(r.status, 200);
    let metrics = request(&c, "GET", &format!("{}/metrics", gw.admin_url()), &[], "").await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("switchyard_rejected_requests_total{code=\"model_not_found\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backends_fail_over_then_answer_503() {
    let sim = sim("live", &["m"], |_| {}).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let policy = server_section("")
        + &backend("dead", &dead, "connect_timeout_ms = 500")
        + &backend("live", &sim.url(), "")
        + &backend("dead2", &format!("http://127.0.0.1:{}", free_port()), "")
        + &route("r", &["m"], "none", &[("a", &["dead", "live"], 100.0)])
        + &route(
            "down",
            &["down"],
            "none",
            &[("a", &["dead", "dead2"], 100.0)],
        );
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    for _ in 0..6 {
        let r = post_json(&c, &url, &chat("m", "hi")).await;
        assert_eq!(
            r.status, 200,
            "a connect failure moves on to the arm's next backend"
        );
        assert_eq!(r.header("x-switchyard-backend"), "live");
    }
    let r = post_json(&c, &url, &chat("down", "hi")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "backends_unavailable")
    );
    assert_eq!(r.json()["error"]["type"], "server_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeouts_and_errors() {
    let slow = sim("slow", &["slow"], |a| a.stall_ms = 2_000).await;
    let broken = sim("broken", &["broken"], |a| a.error_rate = 1.0).await;
    let policy = server_section("")
        + &backend("slow", &slow.url(), "first_byte_timeout_ms = 300")
        + &backend("broken", &broken.url(), "")
        + &route("slow", &["slow"], "none", &[("a", &["slow"], 100.0)])
        + &route("broken", &["broken"], "none", &[("a", &["broken"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let started = Instant::now();
    let r = post_json(&c, &url, &chat("slow", "hi")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "upstream_timeout")
    );
    assert!(started.elapsed() < Duration::from_millis(1_500));
    // A backend's own error answer is relayed as is, with the routing headers.
    let r = post_json(&c, &url, &chat("broken", "hi")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-switchyard-backend"), "broken");
    // A request is counted when it ends, which is just after the client has the
    // answer: wait (bounded) for the count rather than race it.
    let wanted = [
        "switchyard_request_errors_total{route=\"broken\",arm=\"a\"} 1",
        "switchyard_request_errors_total{route=\"slow\",arm=\"a\"} 1",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = request(&c, "GET", &format!("{}/metrics", gw.admin_url()), &[], "").await;
        let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
        if wanted.iter().all(|w| metrics.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "{wanted:?} not in\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_mid_stream_end_with_an_error_event() {
    let dropping = sim("drop", &["drop"], |a| {
        a.drop_after_events = Some(3);
        a.tpot_ms = 5;
    })
    .await;
    let erroring = sim("err", &["err"], |a| a.stream_error_after = Some(2)).await;
    let policy = server_section("")
        + &backend("drop", &dropping.url(), "")
        + &backend("err", &erroring.url(), "")
        + &route("drop", &["drop"], "none", &[("a", &["drop"], 100.0)])
        + &route("err", &["err"], "none", &[("a", &["err"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let body = |m: &str| json!({"model": m, "stream": true, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});

    let s = post_stream(&c, &url, &body("drop")).await;
    assert_eq!(s.status, 200);
    let events = s.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let err: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "upstream_error");

    let s = post_stream(&c, &url, &body("err")).await;
    assert_eq!(s.status, 200);
    assert!(s.events().iter().any(|e| e.contains("\"error\"")));

    let metrics = request(&c, "GET", &format!("{}/metrics", gw.admin_url()), &[], "").await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    for route in ["drop", "err"] {
        assert!(
            metrics.contains(&format!(
                "switchyard_request_errors_total{{route=\"{route}\",arm=\"a\"}} 1"
            )),
            "a stream that failed after the 200 counts as an error: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_total_timeouts_end_streams_with_an_error_event() {
    let slow = sim("slow", &["m"], |a| a.tpot_ms = 400).await;
    let steady = sim("steady", &["m"], |a| a.tpot_ms = 50).await;
    let policy = server_section("")
        + &backend("slow", &slow.url(), "idle_timeout_ms = 150")
        + &backend(
            "steady",
            &steady.url(),
            "total_timeout_ms = 300\nmodel = \"m\"",
        )
        + &route("idle", &["m"], "none", &[("a", &["slow"], 100.0)])
        + &route("total", &["total"], "none", &[("a", &["steady"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let body = |m: &str| json!({"model": m, "stream": true, "max_tokens": 20, "messages": [{"role": "user", "content": "x"}]});
    for (model, wanted) in [("m", "went silent"), ("total", "total_timeout_ms")] {
        let started = Instant::now();
        let s = post_stream(&c, &url, &body(model)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{model}: the timeout did not fire"
        );
        let events = s.events();
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{model}: {events:?}"
        );
        let err: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(err["error"]["code"], "upstream_timeout", "{model}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(wanted),
            "{model}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_max_inflight_is_skipped_then_503() {
    let slow = sim("slow", &["m"], |a| a.stall_ms = 600).await;
    let policy = server_section("")
        + &backend("slow", &slow.url(), "max_inflight = 1")
        + &route("r", &["m"], "none", &[("a", &["slow"], 100.0)]);
    let gw = start_gateway(&policy);
    let url = format!("{}/v1/chat/completions", gw.url());
    let first = tokio::spawn({
        let url = url.clone();
        async move { post_json(&client(), &url, &chat("m", "one")).await.status }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = post_json(&client(), &url, &chat("m", "two")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "backends_saturated")
    );
    assert_eq!(first.await.unwrap(), 200);
    let r = post_json(&client(), &url, &chat("m", "three")).await;
    assert_eq!(
        r.status, 200,
        "the slot is free again once the first request ended"
    );
}

/// `Expect: 100-continue` gets its interim answer at once, so clients that wait for it (curl
/// waits a second) do not stall; a body declared too large gets 413 without being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = sim("s1", &["m"], |_| {}).await;
    let policy = server_section("max_body_bytes = 100000")
        + &backend("b1", &sim.url(), "")
        + &route("r", &["m"], "none", &[("a", &["b1"], 100.0)]);
    let gw = start_gateway(&policy);
    let body = chat("m", "hello").to_string();
    let mut s = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf))
        .await
        .expect("100 Continue within 500 ms")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(body.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("\"usage\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    let mut s = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}
