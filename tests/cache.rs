//! The response cache through the real gateway and sims (and a real `redis-server` for L2):
//! what is served from cache, what never is, and how it stays correct across TTLs, evictions,
//! policy swaps, tenants, replicas and a Redis that dies.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;

use common::redis::RedisServer;
use common::*;
use serde_json::json;
use switchyard::server::RunningGateway;
use switchyard::sim::{SimArgs, SimServer};

/// One backend `a` serving model `m` on route `chat`, cached with `cache` (lines of
/// `[routes.cache]`), plus `extra` top-level sections.
fn policy(url: &str, backend_extra: &str, cache: &str, extra: &str) -> String {
    server_section("")
        + extra
        + "\n"
        + &backend("a", url, backend_extra)
        + &route("chat", &["m"], "none", &[("main", &["a"], 100.0)])
        + "  [routes.cache]\n"
        + cache
        + "\n"
}

async fn cached_gateway(
    tweak: impl FnOnce(&mut SimArgs),
    cache: &str,
) -> (SimServer, RunningGateway) {
    let s = sim("a", &["m"], tweak).await;
    let gw = start_gateway(&policy(&s.url(), "", cache, ""));
    (s, gw)
}

fn greedy(content: &str) -> serde_json::Value {
    json!({"model": "m", "temperature": 0, "max_tokens": 6,
           "messages": [{"role": "user", "content": content}]})
}

fn chat_url(gw: &RunningGateway) -> String {
    format!("{}/v1/chat/completions", gw.url())
}

async fn post_with(
    c: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(c, "POST", url, &all, body.to_string()).await
}

/// Applies the running policy with `from` replaced by `to`, as an admin push would.
fn swap(gw: &RunningGateway, from: &str, to: &str) {
    let source = gw.store.current().source.clone();
    assert!(source.contains(from), "the policy has {from:?}");
    gw.store
        .apply(
            &source.replace(from, to),
            switchyard::config::PolicySource::Api,
            "test swap",
        )
        .expect("valid swap");
}

async fn admin_json(c: &HttpClient, gw: &RunningGateway) -> serde_json::Value {
    request(
        c,
        "GET",
        &format!("{}/admin/cache", gw.admin_url()),
        &[],
        "",
    )
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_deterministic_request_is_answered_from_cache_byte_for_byte() {
    let (s, gw) = cached_gateway(|_| {}, "").await;
    let c = client();
    let first = post_json(&c, &chat_url(&gw), &greedy("hello")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-switchyard-cache"), "miss");
    assert_eq!(s.requests_served(), 1);

    // Member order and whitespace do not matter.
    let reordered = r#"{ "messages": [{"content": "hello", "role": "user"}], "max_tokens": 6,
                         "model": "m", "temperature": 0.0 }"#;
    let second = request(
        &c,
        "POST",
        &chat_url(&gw),
        &[("content-type", "application/json")],
        reordered,
    )
    .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-switchyard-cache"), "hit");
    assert_eq!(s.requests_served(), 1, "a hit never reaches the backend");
    assert_eq!(second.body, first.body, "the same bytes");
    assert_eq!(second.header("content-type"), first.header("content-type"));
    assert!(second.header("age").parse::<u64>().is_ok(), "age on a hit");
    assert_eq!(second.header("x-switchyard-route"), "chat");
    assert_eq!(second.header("x-switchyard-arm"), "main");
    assert_eq!(second.header("x-switchyard-backend"), "a");
    assert_eq!(second.header("x-switchyard-policy-version"), "1");
    assert_eq!(second.header("x-switchyard-cost-usd"), "0");

    // The entry keeps the headers that depend on it alone; what the policy says is read at
    // each hit: a swap that gives the backend a tier shows on the next hit of the same entry.
    swap(&gw, "name = \"a\"\n", "name = \"a\"\ntier = \"small\"\n");
    let third = post_json(&c, &chat_url(&gw), &greedy("hello")).await;
    assert_eq!(third.header("x-switchyard-cache"), "hit");
    assert_eq!(s.requests_served(), 1);
    assert_eq!(third.body, first.body);
    assert_eq!(third.header("x-switchyard-policy-version"), "2");
    assert_eq!(third.header("x-switchyard-tier"), "small");
    assert_eq!(third.header("x-switchyard-backend"), "a");
    assert_eq!(third.header("x-switchyard-cache-layer"), "l1");
    assert_eq!(third.header("content-length"), first.body.len().to_string());

    let report = admin_json(&c, &gw).await;
    let route = &report["routes"][0];
    assert_eq!(route["route"], "chat");
    assert_eq!(
        (route["hits"]["l1"].as_u64(), route["misses"].as_u64()),
        (Some(2), Some(1))
    );
    assert!((route["hit_ratio"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(report["entries"], 1);
    let metrics = request(&c, "GET", &format!("{}/metrics", gw.admin_url()), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(
            "switchyard_cache_lookups_total{route=\"chat\",result=\"hit\",layer=\"l1\"} 2"
        ),
        "{text}"
    );
}

/// A hit is written straight onto the connection, which stays the gateway's to reuse: a request
/// pipelined behind a hit is answered next, in order, on the same connection, and a hit for a
/// client that asked to close is the connection's last answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_keeps_a_pipelined_request_and_honours_connection_close() {
    let (s, gw) = cached_gateway(|_| {}, "").await;
    let c = client();
    let first = post_json(&c, &chat_url(&gw), &greedy("pipelined")).await;
    assert_eq!(first.header("x-switchyard-cache"), "miss");

    let raw = |body: &serde_json::Value, extra: &str| {
        let body = body.to_string();
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let both = raw(&greedy("pipelined"), "") + &raw(&greedy("behind it"), "");
    let close = raw(&greedy("pipelined"), "connection: close\r\n");
    let addr = gw.url().trim_start_matches("http://").to_owned();
    let (answers, closed) = tokio::task::spawn_blocking(move || {
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Both requests in one write: the second arrives with the first's body.
        sock.write_all(both.as_bytes()).unwrap();
        let mut pending = Vec::new();
        let hit = read_answer(&mut sock, &mut pending);
        let behind = read_answer(&mut sock, &mut pending);
        sock.write_all(close.as_bytes()).unwrap();
        let last = read_answer(&mut sock, &mut pending);
        let closed = matches!(sock.read(&mut [0u8; 64]), Ok(0)) && pending.is_empty();
        ([hit, behind, last], closed)
    })
    .await
    .unwrap();
    let [hit, behind, last] = answers;
    assert_answer(&hit, "hit", "keep-alive");
    assert_eq!(hit.1, first.body);
    assert_answer(&behind, "miss", "keep-alive");
    assert_ne!(behind.1, first.body, "the pipelined request's own answer");
    assert_answer(&last, "hit", "close");
    assert_eq!(last.1, first.body);
    assert!(
        closed,
        "the connection closes after the answer to `connection: close`"
    );
    assert_eq!(
        s.requests_served(),
        2,
        "only the two misses reached the backend"
    );
}

/// A hit's request is read straight from the connection only when its head is plain; every
/// other request on a caching route goes through pingora's session and is served as before:
/// a body sent after its head, a chunked body, a query, an error answer on a kept connection,
/// HTTP/1.0, a head over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_plain_are_served_as_before() {
    let (s, gw) = cached_gateway(|_| {}, "").await;
    let c = client();
    let body = greedy("not plain").to_string();
    let first = post_json(&c, &chat_url(&gw), &greedy("not plain")).await;
    assert_eq!(first.header("x-switchyard-cache"), "miss");

    let head = |target: &str, version: &str, extra: &str, length: usize| {
        format!(
            "POST {target} {version}\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {length}\r\n{extra}\r\n"
        )
    };
    let plain_head = head("/v1/chat/completions", "HTTP/1.1", "", body.len());
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let query = head("/v1/chat/completions?trace=1", "HTTP/1.1", "", body.len()) + &body;
    let unknown = greedy("x").to_string().replace("\"m\"", "\"nope\"");
    let unknown = head("/v1/chat/completions", "HTTP/1.1", "", unknown.len()) + &unknown;
    let old = head("/v1/chat/completions", "HTTP/1.0", "", body.len()) + &body;
    let many = (0..101)
        .map(|i| format!("x-f{i}: v\r\n"))
        .collect::<String>();
    let many = head("/v1/chat/completions", "HTTP/1.1", &many, body.len()) + &body;
    let addr = gw.url().trim_start_matches("http://").to_owned();
    let (answers, closed) = tokio::task::spawn_blocking(move || {
        let connect = || {
            let sock = std::net::TcpStream::connect(&addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            sock
        };
        let mut sock = connect();
        let mut pending = Vec::new();
        let mut answers = Vec::new();
        // The head alone, and the body a moment later.
        sock.write_all(plain_head.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        sock.write_all(body.as_bytes()).unwrap();
        answers.push(read_answer(&mut sock, &mut pending));
        for request in [&chunked, &query, &unknown, &old] {
            sock.write_all(request.as_bytes()).unwrap();
            answers.push(read_answer(&mut sock, &mut pending));
        }
        let closed = matches!(sock.read(&mut [0u8; 64]), Ok(0)) && pending.is_empty();
        // A 431 closes its connection: on one of its own.
        let mut sock = connect();
        sock.write_all(many.as_bytes()).unwrap();
        answers.push(read_answer(&mut sock, &mut Vec::new()));
        (answers, closed)
    })
    .await
    .unwrap();
    let [late, chunked, query, unknown, old, many] = &answers[..] else {
        panic!("six answers")
    };
    for (what, answer) in [("late body", late), ("chunked", chunked), ("query", query)] {
        assert_answer(answer, "hit", "keep-alive");
        assert_eq!(answer.1, first.body, "{what}");
    }
    assert!(unknown.0.starts_with("http/1.1 404"), "{}", unknown.0);
    assert!(
        String::from_utf8_lossy(&unknown.1).contains("model_not_found"),
        "{:?}",
        unknown.1
    );
    assert_answer(old, "hit", "close");
    assert!(closed, "an HTTP/1.0 request without keep-alive closes");
    assert!(many.0.starts_with("http/1.1 431"), "{}", many.0);
    assert_eq!(
        s.requests_served(),
        1,
        "only the first request reached the backend"
    );
}

/// `answer` (from [`read_answer`]) is a 200 whose `x-switchyard-cache` is `cache` and whose
/// `connection` is `connection`.
fn assert_answer(answer: &(String, Bytes), cache: &str, connection: &str) {
    let head = &answer.0;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("\r\nx-switchyard-cache: {cache}\r\n")),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nconnection: {connection}\r\n")),
        "{head}"
    );
}

/// Reads one `content-length` answer from `sock` (bytes past it stay in `pending`): its head
/// in lowercase, and its body.
fn read_answer(sock: &mut std::net::TcpStream, pending: &mut Vec<u8>) -> (String, Bytes) {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).to_lowercase();
            let length: usize = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap_or_else(|| panic!("no content-length: {head}"))
                .parse()
                .unwrap();
            if pending.len() >= end + 4 + length {
                let body = Bytes::copy_from_slice(&pending[end + 4..end + 4 + length]);
                pending.drain(..end + 4 + length);
                return (head, body);
            }
        }
        let n = sock.read(&mut buf).expect("an answer within 10 s");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(pending));
        pending.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_replay_with_the_same_events_and_usage_only_when_asked() {
    let (s, gw) = cached_gateway(|_| {}, "").await;
    let c = client();
    let mut body = greedy("count");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let first = post_stream(&c, &chat_url(&gw), &body).await;
    assert_eq!(first.header("x-switchyard-cache"), "miss");
    let events = first.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events.iter().any(|e| e.contains("\"usage\":{")),
        "{events:?}"
    );

    let again = post_stream(&c, &chat_url(&gw), &body).await;
    assert_eq!(again.header("x-switchyard-cache"), "hit");
    assert_eq!(again.header("content-type"), "text/event-stream");
    assert_eq!(again.events(), events, "the same events");
    assert_eq!(s.requests_served(), 1);

    // The same request without include_usage: the usage chunk is left out.
    body["stream_options"] = json!({"include_usage": false});
    let plain = post_stream(&c, &chat_url(&gw), &body).await;
    assert_eq!(plain.header("x-switchyard-cache"), "hit");
    let without: Vec<String> = events
        .iter()
        .filter(|e| !e.contains("\"choices\":[]"))
        .cloned()
        .collect();
    assert_eq!(plain.events(), without);
    assert_eq!(s.requests_served(), 1);

    // Stream and non-stream answers are separate entries.
    let whole = post_json(&c, &chat_url(&gw), &greedy("count")).await;
    assert_eq!(whole.header("x-switchyard-cache"), "miss");
    assert_eq!(s.requests_served(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_without_usage_does_not_serve_a_client_that_wants_it() {
    let (s, gw) = cached_gateway(|_| {}, "").await;
    let c = client();
    let mut body = greedy("usage?");
    body["stream"] = json!(true);
    let _ = post_stream(&c, &chat_url(&gw), &body).await;
    body["stream_options"] = json!({"include_usage": true});
    let with_usage = post_stream(&c, &chat_url(&gw), &body).await;
    assert_eq!(with_usage.header("x-switchyard-cache"), "miss");
    assert!(with_usage
        .events()
        .iter()
        .any(|e| e.contains("\"usage\":{")));
    // Its recording replaced the entry and now serves both kinds.
    let hit = post_stream(&c, &chat_url(&gw), &body).await;
    assert_eq!(hit.header("x-switchyard-cache"), "hit");
    assert_eq!(hit.events(), with_usage.events());
    assert_eq!(s.requests_served(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_cached_and_sampled_requests_are_not_by_default() {
    let (s, gw) = cached_gateway(|_| {}, "").await;
    let c = client();
    let url = format!("{}/v1/embeddings", gw.url());
    let body = json!({"model": "m", "input": "embed me"});
    let a = post_json(&c, &url, &body).await;
    let b = post_json(&c, &url, &body).await;
    assert_eq!(
        (
            a.header("x-switchyard-cache"),
            b.header("x-switchyard-cache")
        ),
        ("miss", "hit")
    );
    assert_eq!(a.body, b.body);
    assert_eq!(s.requests_served(), 1);

    let mut sampled = greedy("hi");
    sampled["temperature"] = json!(0.8);
    for _ in 0..2 {
        let r = post_json(&c, &chat_url(&gw), &sampled).await;
        assert_eq!(r.header("x-switchyard-cache"), "bypass");
    }
    assert_eq!(s.requests_served(), 3);
    // A seed makes it deterministic.
    sampled["seed"] = json!(42);
    let _ = post_json(&c, &chat_url(&gw), &sampled).await;
    let r = post_json(&c, &chat_url(&gw), &sampled).await;
    assert_eq!(r.header("x-switchyard-cache"), "hit");
    assert_eq!(s.requests_served(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_and_no_store_are_honoured() {
    let (s, gw) = cached_gateway(|_| {}, "").await;
    let c = client();
    let url = chat_url(&gw);
    let no_store = [("cache-control", "no-store")];
    let r = post_with(&c, &url, &no_store, &greedy("x")).await;
    assert_eq!(r.header("x-switchyard-cache"), "bypass");
    let r = post_json(&c, &url, &greedy("x")).await;
    assert_eq!(
        r.header("x-switchyard-cache"),
        "miss",
        "no-store stored nothing"
    );
    assert_eq!(s.requests_served(), 2);
    // no-cache goes upstream even though an entry exists, and stores its answer.
    let r = post_with(&c, &url, &[("cache-control", "no-cache")], &greedy("x")).await;
    assert_eq!(r.header("x-switchyard-cache"), "miss");
    assert_eq!(s.requests_served(), 3);
    let r = post_with(&c, &url, &[("cache-control", "no-cache")], &greedy("y")).await;
    assert_eq!(r.status, 200);
    let r = post_json(&c, &url, &greedy("y")).await;
    assert_eq!(
        r.header("x-switchyard-cache"),
        "hit",
        "no-cache still stores"
    );
    assert_eq!(s.requests_served(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_never_cached() {
    let (s, gw) = cached_gateway(
        |a| {
            a.error_rate = 1.0;
            a.error_status = 500;
        },
        "",
    )
    .await;
    let c = client();
    for _ in 0..2 {
        let r = post_json(&c, &chat_url(&gw), &greedy("fail")).await;
        assert_eq!(r.status, 500);
    }
    assert_eq!(s.requests_served(), 2);
}

async fn stream_twice(tweak: impl FnOnce(&mut SimArgs), cache: &str) -> (u64, Vec<String>) {
    let (s, gw) = cached_gateway(tweak, cache).await;
    let c = client();
    let mut body = greedy("a longer answer please");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(12);
    let mut caches = Vec::new();
    for _ in 0..2 {
        let r = post_stream(&c, &chat_url(&gw), &body).await;
        caches.push(r.header("x-switchyard-cache").to_owned());
    }
    (s.requests_served(), caches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_are_never_cached() {
    // The backend drops the connection mid-stream.
    let (served, caches) = stream_twice(|a| a.drop_after_events = Some(3), "").await;
    assert_eq!(served, 2, "{caches:?}");
    assert_eq!(caches, ["miss", "miss"]);
    // A vLLM error event on a 200 stream.
    let (served, caches) = stream_twice(|a| a.stream_error_after = Some(3), "").await;
    assert_eq!(served, 2, "{caches:?}");
    assert_eq!(caches, ["miss", "miss"]);
    // Larger than the entry bound: relayed whole, not stored.
    let (served, caches) = stream_twice(|_| {}, "max_entry_bytes = 200").await;
    assert_eq!(served, 2, "{caches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_with_their_ttl() {
    let (s, gw) = cached_gateway(|_| {}, "ttl_s = 60").await;
    let c = client();
    let url = chat_url(&gw);
    let short = [("x-switchyard-cache-ttl", "1")];
    let _ = post_with(&c, &url, &short, &greedy("brief")).await;
    let r = post_json(&c, &url, &greedy("brief")).await;
    assert_eq!(r.header("x-switchyard-cache"), "hit");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = post_json(&c, &url, &greedy("brief")).await;
    assert_eq!(r.header("x-switchyard-cache"), "miss", "expired after 1 s");
    assert_eq!(s.requests_served(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_evicts() {
    let s = sim("a", &["m"], |a| a.embedding_dim = 256).await;
    let gw = start_gateway(&policy(&s.url(), "", "", "[cache]\nmax_bytes = 65536\n"));
    let c = client();
    let url = format!("{}/v1/embeddings", gw.url());
    for i in 0..60 {
        let r = post_json(
            &c,
            &url,
            &json!({"model": "m", "input": format!("text {i}")}),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let report = admin_json(&c, &gw).await;
    let bytes = report["bytes"].as_u64().unwrap();
    assert!(bytes <= 65536, "{report}");
    assert!(report["evictions"].as_u64().unwrap() > 0, "{report}");
    assert!(report["entries"].as_u64().unwrap() < 60, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_swap_to_another_model_stops_hits_from_the_old_one() {
    let s = sim("a", &["m", "m-v2"], |_| {}).await;
    let gw = start_gateway(&policy(&s.url(), "model = \"m\"", "", ""));
    let c = client();
    let url = chat_url(&gw);
    let _ = post_json(&c, &url, &greedy("q")).await;
    assert_eq!(
        post_json(&c, &url, &greedy("q"))
            .await
            .header("x-switchyard-cache"),
        "hit"
    );
    swap(&gw, "model = \"m\"", "model = \"m-v2\"");
    let r = post_json(&c, &url, &greedy("q")).await;
    assert_eq!(
        r.header("x-switchyard-cache"),
        "miss",
        "the old model's answer is not served"
    );
    assert_eq!(s.requests_served(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_scope_isolates_tenants() {
    let (s, gw) = cached_gateway(|_| {}, "scope = \"api-key\"").await;
    let c = client();
    let url = chat_url(&gw);
    let a = [("authorization", "Bearer sk-tenant-a")];
    let b = [("authorization", "Bearer sk-tenant-b")];
    let cache_of = |r: Reply| r.header("x-switchyard-cache").to_owned();
    assert_eq!(
        cache_of(post_with(&c, &url, &a, &greedy("t")).await),
        "miss"
    );
    assert_eq!(
        cache_of(post_with(&c, &url, &b, &greedy("t")).await),
        "miss"
    );
    assert_eq!(cache_of(post_with(&c, &url, &a, &greedy("t")).await), "hit");
    assert_eq!(
        cache_of(post_json(&c, &url, &greedy("t")).await),
        "bypass",
        "no credential, no cache"
    );
    assert_eq!(s.requests_served(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_clears_one_route_or_all() {
    let (s, gw) = cached_gateway(|_| {}, "").await;
    let c = client();
    let url = chat_url(&gw);
    let _ = post_json(&c, &url, &greedy("d")).await;
    let base = format!("{}/admin/cache", gw.admin_url());
    let denied = request(&c, "DELETE", &base, &[], "").await;
    assert_eq!(denied.status, 401);
    let auth = format!("Bearer {TOKEN}");
    let auth = [("authorization", auth.as_str())];
    let other = request(&c, "DELETE", &format!("{base}?route=other"), &auth, "").await;
    assert_eq!(other.json()["removed"], 0);
    let r = post_json(&c, &url, &greedy("d")).await;
    assert_eq!(r.header("x-switchyard-cache"), "hit");
    let cleared = request(&c, "DELETE", &format!("{base}?route=chat"), &auth, "").await;
    assert_eq!(cleared.json()["removed"], 1);
    let r = post_json(&c, &url, &greedy("d")).await;
    assert_eq!(r.header("x-switchyard-cache"), "miss");
    assert_eq!(s.requests_served(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_misses_send_one_request_upstream() {
    let (s, gw) = cached_gateway(|a| a.stall_ms = 400, "").await;
    let c = client();
    let url = chat_url(&gw);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { post_json(&c, &url, &greedy("together")).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert_eq!(
        s.requests_served(),
        1,
        "one upstream request for 50 identical misses"
    );
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "everyone got the same answer"
    );
    let report = admin_json(&c, &gw).await;
    assert_eq!(report["routes"][0]["flight_joins"], 49, "{report}");
}

/// Polls until `f` holds, for at most 10 s.
async fn eventually(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_entries_through_redis_and_survive_its_death() {
    let mut redis = RedisServer::start();
    let s = sim("a", &["m"], |_| {}).await;
    let redis_section = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let one = start_gateway(&policy(&s.url(), "", "", &redis_section));
    let two = start_gateway(&policy(&s.url(), "", "", &redis_section));
    let c = client();
    let r = post_json(&c, &chat_url(&one), &greedy("shared")).await;
    assert_eq!(r.header("x-switchyard-cache"), "miss");
    eventually(
        || redis.command(&["DBSIZE"]).trim() == "1",
        "the entry reaches Redis",
    )
    .await;
    let hit = post_json(&c, &chat_url(&two), &greedy("shared")).await;
    assert_eq!(hit.header("x-switchyard-cache"), "hit");
    assert_eq!(hit.header("x-switchyard-cache-layer"), "l2");
    assert_eq!(hit.body, r.body);
    assert_eq!(s.requests_served(), 1);

    // Redis dies: every request is still answered.
    redis.kill();
    for i in 0..10 {
        let r = post_json(&c, &chat_url(&two), &greedy(&format!("while down {i}"))).await;
        assert_eq!(r.status, 200, "request {i} while Redis is down");
    }
    let report = admin_json(&c, &two).await;
    assert!(report["l2"]["errors"].as_u64().unwrap() > 0, "{report}");

    // It comes back (empty): L2 works again without restarting the gateways.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    loop {
        i += 1;
        let body = greedy(&format!("after recovery {i}"));
        let _ = post_json(&c, &chat_url(&one), &body).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = post_json(&c, &chat_url(&two), &body).await;
        assert_eq!(r.status, 200);
        if r.header("x-switchyard-cache-layer") == "l2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "L2 did not come back within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
