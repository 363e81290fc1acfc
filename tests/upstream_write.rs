//! The upstream write path (head and body in one send, pingora's pool underneath) against small
//! raw-TCP backends, where each test controls exactly what the backend does with a connection:
//! framing of large bodies on a reused connection, a pooled connection the backend closed, a
//! backend answering before it read the body, chunked answers, and answers cut short.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{backend, client, request, route, server_section, start_gateway, Reply};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest a request head may be before the backend gives up on it.
const MAX_HEAD: usize = 64 * 1024;
/// Bound on any single test step, to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(30);

/// One request as a raw backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which accepted connection (0-based) it came on.
    conn: usize,
    /// Its position on that connection (0-based).
    nth: usize,
    head: String,
    body: Vec<u8>,
}

/// Reads one request head; `None` when the peer closed the connection before a head began.
/// Bytes read past the head are returned with it.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        assert!(buf.len() < MAX_HEAD, "request head too long");
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().expect("a numeric content-length"))
        })
        .expect("the gateway always sends content-length")
}

/// Reads the rest of a body of `len` bytes, `pre` of which were read with the head.
async fn read_body(stream: &mut TcpStream, mut pre: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(
        pre.len() <= len,
        "bytes after the body: the request was framed wrong ({} > {len})",
        pre.len()
    );
    let start = pre.len();
    pre.resize(len, 0);
    stream
        .read_exact(&mut pre[start..])
        .await
        .expect("the whole body arrives");
    pre
}

/// A JSON answer with a content-length.
fn json_answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a backend does with a connection after the request it just read.
enum Then {
    /// Answer and keep the connection for the next request.
    Answer(Vec<u8>),
    /// Answer, then close the connection.
    AnswerAndClose(Vec<u8>),
    /// Close without answering.
    Close,
    /// Write these bytes and then hold the connection open, saying nothing more.
    Stall(Vec<u8>),
}

struct RawBackend {
    url: String,
    conns: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    /// A backend that reads whole requests and lets `decide` say what to do after each.
    async fn start(decide: impl Fn(&Seen) -> Then + Send + Sync + 'static) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let decide = Arc::new(decide);
        let (c, s) = (conns.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let conn = c.fetch_add(1, Ordering::SeqCst);
                let (seen, decide) = (s.clone(), decide.clone());
                tokio::spawn(async move {
                    for nth in 0.. {
                        let Some((head, pre)) = read_head(&mut stream).await else {
                            return;
                        };
                        let len = content_length(&head);
                        let body = read_body(&mut stream, pre, len).await;
                        let request = Seen {
                            conn,
                            nth,
                            head,
                            body,
                        };
                        let then = decide(&request);
                        seen.lock().push(request);
                        match then {
                            Then::Answer(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Then::AnswerAndClose(bytes) => {
                                let _ = stream.write_all(&bytes).await;
                                return;
                            }
                            Then::Close => return,
                            Then::Stall(bytes) => {
                                let _ = stream.write_all(&bytes).await;
                                // Hold the connection: a gateway that pooled it would write the
                                // next request here, and the test would see it in `seen`.
                                let mut rest = Vec::new();
                                let _ = stream.read_to_end(&mut rest).await;
                                if !rest.is_empty() {
                                    seen.lock().push(Seen {
                                        conn,
                                        nth: nth + 1,
                                        head: String::from_utf8_lossy(&rest).into_owned(),
                                        body: Vec::new(),
                                    });
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawBackend {
            url,
            conns,
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn policy(url: &str, backend_extra: &str) -> String {
    server_section("")
        + &backend("b1", url, backend_extra)
        + &route("r", &["m"], "none", &[("a", &["b1"], 100.0)])
}

/// A chat request of exactly `size` bytes.
fn chat_of_size(size: usize) -> Vec<u8> {
    let empty = json!({"model": "m", "messages": [{"role": "user", "content": ""}]}).to_string();
    assert!(size > empty.len());
    let filler: String = (0..size - empty.len())
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": filler}]})
        .to_string()
        .into_bytes();
    assert_eq!(body.len(), size);
    body
}

async fn send(gw_url: &str, body: Vec<u8>) -> Reply {
    let c = client();
    tokio::time::timeout(
        HANG,
        request(
            &c,
            "POST",
            &format!("{gw_url}/v1/chat/completions"),
            &[("content-type", "application/json")],
            body,
        ),
    )
    .await
    .expect("the gateway answered in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_size_arrive_byte_for_byte_on_one_reused_connection() {
    let raw = RawBackend::start(|_| Then::Answer(json_answer(r#"{"ok":true}"#))).await;
    let gw = start_gateway(&policy(&raw.url, ""));
    let sizes = [
        63 * 1024,
        65 * 1024,
        1024 * 1024,
        8 * 1024 * 1024 - 512,
        200,
    ];
    for size in sizes {
        let body = chat_of_size(size);
        let r = send(&gw.url(), body.clone()).await;
        assert_eq!(r.status, 200, "size {size}: {:?}", r.body);
        let seen = raw.seen();
        let last = seen.last().expect("the backend saw the request");
        assert_eq!(last.body.len(), size, "size {size}: body length");
        assert!(
            last.body == body,
            "size {size}: the backend received different bytes"
        );
        assert!(
            last.head
                .starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "size {size}: request line {:?}",
            last.head.lines().next()
        );
    }
    // Each request was framed exactly (the backend parsed the next one on the same connection).
    assert_eq!(
        raw.conns.load(Ordering::SeqCst),
        1,
        "sequential requests reuse one pooled connection: {:?}",
        raw.seen()
            .iter()
            .map(|s| (s.conn, s.nth))
            .collect::<Vec<_>>()
    );
    assert_eq!(raw.seen().len(), sizes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_is_replaced() {
    // Every connection serves one request and then closes: between requests, the connection
    // the gateway pooled is dead.
    let raw = RawBackend::start(|_| Then::AnswerAndClose(json_answer(r#"{"ok":1}"#))).await;
    let gw = start_gateway(&policy(&raw.url, ""));
    for i in 0..4 {
        let r = send(&gw.url(), chat_of_size(300)).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
    }
    assert_eq!(raw.seen().len(), 4, "each request reached the backend once");
    assert_eq!(raw.conns.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_as_the_request_arrives_is_resent_on_a_fresh_one() {
    // The race a keep-alive timeout causes: the gateway writes on a pooled connection the
    // backend is closing. The backend reads the request and closes without a byte of answer;
    // nothing was processed, so the gateway sends it again on a new connection.
    let raw = RawBackend::start(|seen| {
        if seen.nth == 1 {
            Then::Close
        } else {
            Then::Answer(json_answer(r#"{"ok":2}"#))
        }
    })
    .await;
    let gw = start_gateway(&policy(&raw.url, ""));
    for i in 0..3 {
        let r = send(&gw.url(), chat_of_size(500)).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        assert_eq!(r.json()["ok"], 2);
    }
    let seen: Vec<(usize, usize)> = raw.seen().iter().map(|s| (s.conn, s.nth)).collect();
    // Request 1 on connection 0; request 2 on connection 0 (dropped) then again on connection
    // 1; request 3 on connection 1, whose second request is dropped, then on connection 2.
    assert_eq!(
        seen,
        vec![(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)],
        "requests per connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_before_it_read_the_body_is_relayed() {
    // The backend answers from the head alone (as a server refusing a request does), then
    // drains the body and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let drained = Arc::new(AtomicUsize::new(0));
    let d = drained.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let d = d.clone();
            tokio::spawn(async move {
                let Some((head, pre)) = read_head(&mut stream).await else {
                    return;
                };
                let len = content_length(&head);
                let answer = r#"{"error":{"message":"too long for this model","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
                let early = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                stream.write_all(early.as_bytes()).await.unwrap();
                let body = read_body(&mut stream, pre, len).await;
                d.store(body.len(), Ordering::SeqCst);
            });
        }
    });
    let gw = start_gateway(&policy(&url, ""));
    let size = 1024 * 1024;
    let r = send(&gw.url(), chat_of_size(size)).await;
    assert_eq!(r.status, 400, "the backend's own answer: {:?}", r.body);
    assert_eq!(r.error_code(), "context_length_exceeded");
    // The backend finishes draining on its own schedule, shortly after it answered.
    let waited = tokio::time::timeout(HANG, async {
        while drained.load(Ordering::SeqCst) != size {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "the body was still sent whole: the backend drained {} of {size} bytes",
        drained.load(Ordering::SeqCst)
    );
    // The connection was marked `close`: the next request needs (and gets) a new one.
    let r = send(&gw.url(), chat_of_size(300)).await;
    assert_eq!(r.status, 400);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_answers_are_relayed_whole_and_the_connection_reused() {
    let pieces = [
        r#"{"id":"x","#,
        r#""object":"chat.completion","#,
        r#""ok":true}"#,
    ];
    let mut chunked = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for p in pieces {
        chunked.push_str(&format!("{:x}\r\n{p}\r\n", p.len()));
    }
    chunked.push_str("0\r\n\r\n");
    let raw = RawBackend::start(move |_| Then::Answer(chunked.clone().into_bytes())).await;
    let gw = start_gateway(&policy(&raw.url, ""));
    for i in 0..3 {
        let r = send(&gw.url(), chat_of_size(400)).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            pieces.concat(),
            "request {i}: the whole answer"
        );
    }
    assert_eq!(
        raw.conns.load(Ordering::SeqCst),
        1,
        "a chunked answer read to its end leaves a reusable connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_short_is_never_pooled() {
    // The first answer promises 100 bytes, sends 10 and goes silent with the connection open.
    let raw = RawBackend::start(|seen| {
        if seen.conn == 0 {
            let mut head =
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
                    .to_vec();
            head.extend_from_slice(br#"{"partial""#);
            Then::Stall(head)
        } else {
            Then::Answer(json_answer(r#"{"ok":3}"#))
        }
    })
    .await;
    // Long enough that a loaded machine never trips it on the healthy answers that follow.
    let gw = start_gateway(&policy(&raw.url, "idle_timeout_ms = 1500"));
    let r = send(&gw.url(), chat_of_size(300)).await;
    assert!(
        r.status >= 500,
        "a cut-short answer is an error: {} {:?}",
        r.status,
        r.body
    );
    assert!(
        !r.error_code().is_empty(),
        "OpenAI error shape: {:?}",
        r.body
    );
    for i in 0..2 {
        let r = send(&gw.url(), chat_of_size(300)).await;
        assert_eq!(r.status, 200, "request {i} after the cut: {:?}", r.body);
        assert_eq!(r.json()["ok"], 3);
    }
    let seen: Vec<(usize, usize)> = raw.seen().iter().map(|s| (s.conn, s.nth)).collect();
    assert_eq!(
        seen,
        vec![(0, 0), (1, 0), (1, 1)],
        "nothing more was written on the cut connection; the next ones share a fresh one"
    );
}
