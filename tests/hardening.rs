//! Listener hardening over raw sockets against the real gateway: the head deadline, the
//! keep-alive timeout, header limits answered 431, and connections closed after a
//! request-framing error. Nothing here may reach a backend.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use switchyard::server::RunningGateway;
use switchyard::sim::SimServer;

/// Both ways the proxy reads a request: through pingora's session alone (no route caches), and
/// first as a plain request (a route caches), which hands everything unusual to pingora's
/// session. The defences below must hold for both.
const READERS: [&str; 2] = ["", "  [routes.cache]\n  ttl_s = 60\n"];

/// A sim and a gateway routing to it; `route_extra` ends the route (one of [`READERS`]).
async fn gateway_with_sim(server_extra: &str, route_extra: &str) -> (SimServer, RunningGateway) {
    let sim = sim("s1", &["llama"], |_| {}).await;
    let policy = server_section(server_extra)
        + &backend("b1", &sim.url(), "")
        + &route("chat", &["llama"], "none", &[("champion", &["b1"], 100.0)])
        + route_extra;
    let gw = start_gateway(&policy);
    (sim, gw)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Reads until the peer closes (or 15 s pass, which fails the test): everything it sent.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&out).into_owned()
            }
            Err(e) => panic!(
                "the gateway did not close the connection: {e}; got so far: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Reads one response with a `Content-Length` body, leaving the connection open.
fn read_one_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("a response");
        assert!(n > 0, "closed before a whole response");
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

/// Sends `bytes` one at a time, `every` apart, until the gateway closes the connection: how many
/// went out, and what it answered before closing (empty for a silent close), or "still open
/// after the whole drip".
fn drip(s: &mut TcpStream, bytes: &[u8], every: Duration) -> (usize, String) {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = [0u8; 1024];
    for (sent, byte) in bytes.iter().enumerate() {
        if s.write_all(&[*byte]).is_err() {
            return (sent, String::new());
        }
        match s.read(&mut buf) {
            Ok(n) => return (sent + 1, String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (sent + 1, String::new()),
            Err(_) => {}
        }
        std::thread::sleep(every);
    }
    (bytes.len(), "still open after the whole drip".to_owned())
}

fn chat_request(extra_headers: &str) -> String {
    let body = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#;
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_dripped_byte_by_byte_is_cut_at_the_deadline() {
    for reader in READERS {
        let (sim, gw) = gateway_with_sim("head_timeout_ms = 1000", reader).await;
        let addr = gw.proxy_addr;
        let (elapsed, sent, reply) = tokio::task::spawn_blocking(move || {
            let mut s = connect(addr);
            let head = chat_request(
                "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
            let started = Instant::now();
            let (sent, reply) = drip(&mut s, &head.as_bytes()[..60], Duration::from_millis(150));
            (started.elapsed(), sent, reply)
        })
        .await
        .unwrap();
        assert!(reply.is_empty(), "expected a silent close, got {reply:?}");
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(6),
            "cut after {elapsed:?} ({sent} bytes sent); the deadline is 1 s"
        );
        assert_eq!(sim.requests_served(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_is_closed() {
    let (_sim, gw) = gateway_with_sim("keepalive_timeout_secs = 1", "").await;
    let addr = gw.proxy_addr;
    let (first, idle_for, rest) = tokio::task::spawn_blocking(move || {
        let mut s = connect(addr);
        s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n")
            .unwrap();
        let first = read_one_response(&mut s);
        let started = Instant::now();
        let rest = read_to_close(&mut s);
        (first, started.elapsed(), rest)
    })
    .await
    .unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(rest.is_empty(), "nothing more was asked: {rest:?}");
    assert!(
        idle_for >= Duration::from_millis(800) && idle_for < Duration::from_secs(8),
        "closed after {idle_for:?} idle; the timeout is 1 s"
    );
}

/// On a kept-alive connection the idle wait and the next head share one deadline: a head that
/// starts late and then drips is cut when the keep-alive timeout ends, with no head timeout
/// starting over at its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_dripped_late_on_a_kept_alive_connection_is_cut_at_the_keepalive_timeout() {
    for reader in READERS {
        let (sim, gw) =
            gateway_with_sim("head_timeout_ms = 5000\nkeepalive_timeout_secs = 1", reader).await;
        let addr = gw.proxy_addr;
        let (first, since_answer, reply) = tokio::task::spawn_blocking(move || {
            let mut s = connect(addr);
            s.write_all(chat_request("").as_bytes()).unwrap();
            let first = read_one_response(&mut s);
            let answered = Instant::now();
            std::thread::sleep(Duration::from_millis(600));
            let (_, reply) = drip(
                &mut s,
                &chat_request("").as_bytes()[..40],
                Duration::from_millis(250),
            );
            (first, answered.elapsed(), reply)
        })
        .await
        .unwrap();
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(reply.is_empty(), "expected a silent close, got {reply:?}");
        assert!(
            since_answer >= Duration::from_millis(900) && since_answer < Duration::from_secs(4),
            "closed {since_answer:?} after the answer; the keep-alive timeout is 1 s"
        );
        assert_eq!(sim.requests_served(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_connection_in_use_is_served_past_the_deadlines() {
    let (sim, gw) = gateway_with_sim("head_timeout_ms = 500\nkeepalive_timeout_secs = 2", "").await;
    let addr = gw.proxy_addr;
    let replies = tokio::task::spawn_blocking(move || {
        let mut s = connect(addr);
        let mut replies = Vec::new();
        for _ in 0..3 {
            s.write_all(chat_request("").as_bytes()).unwrap();
            replies.push(read_one_response(&mut s));
            // Longer than the head deadline, shorter than the idle timeout.
            std::thread::sleep(Duration::from_millis(900));
        }
        replies
    })
    .await
    .unwrap();
    for r in &replies {
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert_eq!(sim.requests_served(), 3);
}

/// A body that stalls halfway is answered 408 once `body_timeout_ms` has passed, and the
/// connection is closed (what was left unread cannot be told from the next request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_at_the_body_timeout() {
    for reader in READERS {
        let (sim, gw) = gateway_with_sim("body_timeout_ms = 500", reader).await;
        let addr = gw.proxy_addr;
        let (elapsed, reply) = tokio::task::spawn_blocking(move || {
            let mut s = connect(addr);
            let full = chat_request("");
            // The head and the first 10 bytes of the body, then nothing.
            let cut = full.find("\r\n\r\n").unwrap() + 4 + 10;
            s.write_all(&full.as_bytes()[..cut]).unwrap();
            let started = Instant::now();
            let reply = read_to_close(&mut s);
            (started.elapsed(), reply)
        })
        .await
        .unwrap();
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(reply.contains("\"code\":\"body_timeout\""), "{reply}");
        assert!(
            elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
            "answered after {elapsed:?}; the body timeout is 500 ms"
        );
        assert_eq!(sim.requests_served(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431_and_reach_no_backend() {
    for reader in READERS {
        let (sim, gw) = gateway_with_sim("max_headers = 20\nmax_header_bytes = 8192", reader).await;
        let addr = gw.proxy_addr;
        let fields = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
        let big = |kib: usize| format!("X-Big: {}\r\n", "a".repeat(kib * 1024));
        // 25 fields: few enough to be read as a plain request, too many for the policy.
        let cases = [
            ("25 headers", fields(25)),
            ("60 headers", fields(60)),
            ("a 9 KiB header", big(9)),
            ("a 100 KiB header", big(100)),
        ];
        for (what, extra) in cases {
            let body =
                one_refusal_then_closed(addr, chat_request(&extra), "HTTP/1.1 431", what).await;
            assert_eq!(
                body["error"]["code"], "request_header_fields_too_large",
                "{what}: {body}"
            );
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
        assert_eq!(sim.requests_served(), 0);
        // Within the limits the same gateway serves.
        let ok = tokio::task::spawn_blocking(move || {
            let mut s = connect(addr);
            s.write_all(chat_request("X-A: b\r\n").as_bytes()).unwrap();
            read_one_response(&mut s)
        })
        .await
        .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framing_error_closes_the_connection() {
    for reader in READERS {
        let (sim, gw) = gateway_with_sim("", reader).await;
        let addr = gw.proxy_addr;
        let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases = [
            (
                "chunk size overflow",
                format!("{head}FFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"),
            ),
            ("bare-LF chunk lines", format!("{head}3\nabc\n0\n\n")),
            (
                "chunk longer than its size",
                format!("{head}2\r\nabcdef\r\n0\r\n\r\n"),
            ),
        ];
        for (what, request) in cases {
            let body = one_refusal_then_closed(addr, request, "HTTP/1.1 400", what).await;
            assert!(body["error"]["code"].is_string(), "{what}: {body}");
        }
        assert_eq!(sim.requests_served(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_head_or_a_tunnel_gets_an_openai_error_and_the_connection_closes() {
    for reader in READERS {
        let (sim, gw) = gateway_with_sim("", reader).await;
        let addr = gw.proxy_addr;
        let cases = [
            (
                "a header line without a colon",
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nno colon here\r\n\r\n"
                    .to_owned(),
                "HTTP/1.1 400",
                "invalid_request_head",
            ),
            (
                "more headers than pingora's parser holds",
                chat_request(
                    &(0..300)
                        .map(|i| format!("X-H{i}: v\r\n"))
                        .collect::<String>(),
                ),
                "HTTP/1.1 400",
                "invalid_request_head",
            ),
            (
                "CONNECT",
                "CONNECT backend.internal:443 HTTP/1.1\r\nHost: backend.internal:443\r\n\r\n"
                    .to_owned(),
                "HTTP/1.1 405",
                "method_not_allowed",
            ),
        ];
        for (what, head, status, code) in cases {
            let body = one_refusal_then_closed(addr, head, status, what).await;
            assert_eq!(body["error"]["code"], code, "{what}: {body}");
            // The message says why, without echoing the request back.
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.contains("Host:"), "{what}: {message}");
        }
        assert_eq!(sim.requests_served(), 0);
    }
}

/// Sends `request`, then a valid request on the same connection, and reads until the gateway
/// closes it: the reply must be one answer alone (the second request is never served) with
/// `status` and an OpenAI error body, which is returned.
async fn one_refusal_then_closed(
    addr: SocketAddr,
    request: String,
    status: &str,
    what: &str,
) -> serde_json::Value {
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = connect(addr);
        s.write_all(request.as_bytes()).unwrap();
        let _ = s.write_all(chat_request("").as_bytes());
        read_to_close(&mut s)
    })
    .await
    .unwrap();
    assert!(reply.starts_with(status), "{what}: {reply}");
    assert_eq!(
        reply.matches("HTTP/1.1 ").count(),
        1,
        "{what}: the request after the refused one must not be served: {reply}"
    );
    serde_json::from_str(&reply[reply.find("\r\n\r\n").unwrap() + 4..])
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {reply}"))
}

/// Connects and sends half a head; the answer if one (a refusal) arrives within `within`
/// (then the peer closed), else the still open socket, which holds a place like a slow client.
fn half_head_client(addr: SocketAddr, within: Duration) -> Result<(Duration, String), TcpStream> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(within)).unwrap();
    let _ = s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                if out.is_empty() {
                    return Err(s);
                }
                break;
            }
            Err(_) => break,
        }
    }
    Ok((
        started.elapsed(),
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_slow_clients_leave_room_and_the_overflow_gets_503_fast() {
    // 3 000 client sockets and as many accepted ones live in this one process.
    let fds = switchyard::listener::raise_fd_limit().expect("descriptor limit readable");
    assert!(
        fds >= 7_000,
        "this test needs ~6 500 descriptors; the hard limit is {fds}"
    );
    const SLOW: usize = 3_000;
    const LIMIT: usize = 3_050;
    let (sim, gw) = gateway_with_sim(
        &format!("max_connections = {LIMIT}\nhead_timeout_ms = 120000"),
        "",
    )
    .await;
    let addr = gw.proxy_addr;
    let admin = gw.admin_addr;
    let outcome = tokio::task::spawn_blocking(move || {
        // Each sends half a head and then nothing: slow clients holding their sockets.
        let mut slow = Vec::with_capacity(SLOW);
        for _ in 0..SLOW {
            let mut s = TcpStream::connect(addr).expect("a slow client connects");
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
                .unwrap();
            slow.push(s);
        }
        // A normal request is served at once, and the admin listener answers.
        let started = Instant::now();
        let mut s = connect(addr);
        s.write_all(chat_request("").as_bytes()).unwrap();
        let normal = read_one_response(&mut s);
        let normal_took = started.elapsed();
        drop(s);
        let started = Instant::now();
        let mut a = connect(admin);
        a.write_all(b"GET /readyz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .unwrap();
        let ready = read_to_close(&mut a);
        let ready_took = started.elapsed();
        // Past the limit: a few more slow clients fill it, then a client is refused.
        let mut refusal = None;
        for _ in 0..(LIMIT - SLOW + 100) {
            match half_head_client(addr, Duration::from_millis(200)) {
                Ok(answer) => {
                    refusal = Some(answer);
                    break;
                }
                Err(held) => slow.push(held),
            }
        }
        drop(slow);
        (normal, normal_took, ready, ready_took, refusal)
    })
    .await
    .unwrap();
    let (normal, normal_took, ready, ready_took, refusal) = outcome;
    assert!(normal.starts_with("HTTP/1.1 200"), "{normal}");
    assert!(normal_took < Duration::from_secs(5), "{normal_took:?}");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready_took < Duration::from_secs(5), "{ready_took:?}");
    let (took, text) = refusal.expect("a client past the limit was refused");
    assert!(took < Duration::from_secs(2), "refused after {took:?}");
    assert!(
        text.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
        "{text}"
    );
    let body: serde_json::Value =
        serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert_eq!(sim.requests_served(), 1);
}
