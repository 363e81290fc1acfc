//! What the exchange must not pass on or keep going: headers a client may not set for a backend,
//! credentials toward an untrusted shadow, and generation for a client that left.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_headers_the_backend_must_not_trust_are_stripped() {
    let primary = sim("primary", &["m", "m2"], |_| {}).await;
    let untrusted = sim("shadow", &["m"], |_| {}).await;
    let trusted = sim("trusted", &["t"], |_| {}).await;
    let policy = server_section("")
        + &backend("primary", &primary.url(), "")
        + &backend("untrusted", &untrusted.url(), "model = \"m\"")
        + &backend("trusted", &trusted.url(), "model = \"t\"\ntrusted = true")
        + &route("r", &["m"], "none", &[("main", &["primary"], 100.0)])
        + "  [routes.shadow]\n  backend = \"untrusted\"\n  percent = 100\n"
        + &route("r2", &["m2"], "none", &[("main", &["primary"], 100.0)])
        + "  [routes.shadow]\n  backend = \"trusted\"\n  percent = 100\n";
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let headers = [
        ("content-type", "application/json"),
        ("connection", "keep-alive, x-drop-me"),
        ("x-drop-me", "hop"),
        ("x-switchyard-shadow", "1"),
        ("x-switchyard-backend", "forged"),
        ("x-switchyard-arm", "forged"),
        ("authorization", "Bearer sk-secret"),
        ("cookie", "session=abc"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-team", "research"),
    ];
    for model in ["m", "m2"] {
        let r = request(&c, "POST", &url, &headers, chat(model, "hi").to_string()).await;
        assert_eq!(r.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while (untrusted.received().is_empty() || trusted.received().is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at_primary = primary.received();
    assert_eq!(at_primary.len(), 2);
    for req in &at_primary {
        let h = &req.headers;
        assert!(
            h.get("x-drop-me").is_none(),
            "a header named in Connection is hop-by-hop"
        );
        assert!(
            !h.keys().any(|k| k.as_str().starts_with("x-switchyard-")),
            "a client's x-switchyard-* never reaches the primary: {h:?}"
        );
        assert_eq!(
            h["authorization"], "Bearer sk-secret",
            "the primary gets the credential"
        );
        assert_eq!(h["x-team"], "research");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    }
    let copy = &untrusted.received()[0].headers;
    assert_eq!(copy["x-switchyard-shadow"], "1", "the gateway's own mark");
    assert!(copy.get("x-switchyard-backend").is_none());
    assert!(
        copy.get("authorization").is_none() && copy.get("cookie").is_none(),
        "an untrusted shadow never sees credentials: {copy:?}"
    );
    let copy = &trusted.received()[0].headers;
    assert_eq!(
        copy["authorization"], "Bearer sk-secret",
        "a trusted one does"
    );
}

fn running(metrics_url: &str) -> f64 {
    let addr = metrics_url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("vllm:num_requests_running"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client that gives up on a long non-streaming answer stops the backend's work at once:
/// the sim's `vllm:num_requests_running` drops back while the answer would still be generating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_plain_request_stops_the_backend() {
    let s = sim("s", &["m"], |a| {
        a.tpot_ms = 20;
        a.max_output_tokens = 1000;
    })
    .await;
    let policy = server_section("")
        + &backend("s", &s.url(), "")
        + &route("r", &["m"], "none", &[("main", &["s"], 100.0)]);
    let gw = start_gateway(&policy);
    let sim_url = s.url();
    let proxy = gw.proxy_addr;
    tokio::task::spawn_blocking(move || {
        let body = serde_json::json!({"model": "m", "max_tokens": 400,
            "messages": [{"role": "user", "content": "a long answer please"}]})
        .to_string();
        let mut c = TcpStream::connect(proxy).unwrap();
        write!(
            c,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // 400 tokens at 20 ms: the answer takes 8 s. Wait until the backend works on it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(&sim_url) < 1.0 {
            assert!(Instant::now() < deadline, "the sim never started the request");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(c);
        let left = Instant::now();
        while running(&sim_url) > 0.0 {
            assert!(
                left.elapsed() < Duration::from_secs(2),
                "the backend kept generating for a client that left"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
}
