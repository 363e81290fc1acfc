//! The load generator: HTTP/1.1 keep-alive connections driven closed-loop (a
//! fixed number of requests in flight) or open-loop (a fixed send rate, with
//! latency charged from each request's intended send time).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::sse::SseSplitter;
use crate::stats::{OpenLoopClock, Recorder};

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `concurrency` connections, each sending its next request as soon as the
    /// previous one completed.
    Closed { concurrency: usize },
    /// `rate` requests per second spread over at most `connections`
    /// connections; a request that finds no free connection waits, and that
    /// wait counts in its latency.
    Open { rate: f64, connections: usize },
}

/// One load run against one address.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub path: String,
    pub body: Bytes,
    /// Parse the response as SSE and time its events.
    pub stream: bool,
    pub mode: Mode,
    /// Measured phase length; the run stops sending after it.
    pub duration: Duration,
    /// Stop after this many measured requests (closed loop), if sooner.
    pub max_requests: Option<u64>,
    /// Unrecorded requests per connection before the measured phase.
    pub warmup: u32,
    /// A gap between SSE events at least this long counts as a stall.
    pub stall: Duration,
    /// Per-request limit; also bounds how long the run may overrun.
    pub request_timeout: Duration,
    /// Closed loop: connection `i` of `n` starts `ramp × i / n` after the
    /// others, so long requests (streams) do not run in lock-step waves.
    pub ramp: Duration,
}

impl LoadSpec {
    /// A closed-loop, non-streaming spec with the harness's defaults.
    pub fn new(addr: SocketAddr, body: Bytes) -> Self {
        Self {
            addr,
            path: "/v1/chat/completions".to_owned(),
            body,
            stream: false,
            mode: Mode::Closed { concurrency: 1 },
            duration: Duration::from_secs(1),
            max_requests: None,
            warmup: 2,
            stall: Duration::from_millis(40),
            request_timeout: Duration::from_secs(10),
            ramp: Duration::ZERO,
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        Request::builder()
            .method(Method::POST)
            .uri(&self.path)
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))
            .expect("a static request shape is valid")
    }
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        // The connection ends when its sender is dropped or the peer closes.
        let _ = conn.await;
    });
    Ok(sender)
}

/// When one successful exchange left and completed.
#[derive(Debug, Clone, Copy)]
struct Timing {
    sent: Instant,
    done: Instant,
}

/// Sends one request and reads the whole response, recording its SSE events
/// and whom it reached; the caller records its latency.
async fn exchange(
    sender: &mut Sender,
    spec: &LoadSpec,
    rec: &mut Recorder,
) -> Result<Timing, &'static str> {
    let sent = Instant::now();
    let resp = sender.send_request(spec.request()).await.map_err(|e| {
        if e.is_canceled() || e.is_incomplete_message() {
            "connection_closed"
        } else {
            "io"
        }
    })?;
    let status = resp.status();
    // The sims name themselves; which one answered shows that swaps and
    // splits took effect, whichever proxy is in front.
    if let Some(b) = resp.headers().get("x-sim-name") {
        let name = String::from_utf8_lossy(b.as_bytes()).into_owned();
        *rec.backends.entry(name).or_default() += 1;
    }
    let mut body = resp.into_body();
    let mut splitter = SseSplitter::new();
    let mut events = Vec::new();
    let mut last_event: Option<Instant> = None;
    let (mut saw_done, mut error_event) = (false, false);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "body_io")?;
        let Some(chunk) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        rec.body_bytes += chunk.len() as u64;
        if !spec.stream {
            continue;
        }
        splitter.push(chunk, &mut events);
        for ev in events.drain(..) {
            rec.events += 1;
            match last_event {
                None => rec.record_ttfe(now - sent),
                Some(prev) => rec.record_gap(now - prev, spec.stall),
            }
            last_event = Some(now);
            saw_done |= ev.is_done();
            error_event |= ev.is_error();
        }
    }
    let done = Instant::now();
    if status != StatusCode::OK {
        return Err(status_kind(status));
    }
    if error_event {
        return Err("stream_error_event");
    }
    if spec.stream && !saw_done {
        return Err("incomplete_stream");
    }
    if splitter.pending() > 0 {
        return Err("truncated_event");
    }
    Ok(Timing { sent, done })
}

fn status_kind(s: StatusCode) -> &'static str {
    match s.as_u16() {
        400 => "status_400",
        404 => "status_404",
        413 => "status_413",
        429 => "status_429",
        500 => "status_500",
        502 => "status_502",
        503 => "status_503",
        504 => "status_504",
        401..=499 => "status_4xx",
        _ => "status_other",
    }
}

/// A connection that reconnects after any failure, so one broken socket costs
/// one recorded error, not the rest of the run.
struct Conn {
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl Conn {
    async fn send(&mut self, spec: &LoadSpec, rec: &mut Recorder) -> Result<Timing, &'static str> {
        let outcome = tokio::time::timeout(spec.request_timeout, async {
            // A kept-alive connection the server closed while it was idle is
            // replaced without charge, as any client would: nothing was sent.
            let reusable = match self.sender.as_mut() {
                Some(s) => s.ready().await.is_ok(),
                None => false,
            };
            if !reusable {
                let mut fresh = connect(self.addr).await.map_err(|_| "connect")?;
                fresh.ready().await.map_err(|_| "connect")?;
                self.sender = Some(fresh);
            }
            let sender = self.sender.as_mut().expect("connected above");
            exchange(sender, spec, rec).await
        })
        .await
        .unwrap_or(Err("timeout"));
        if outcome.is_err() {
            self.sender = None;
        }
        outcome
    }
}

/// Runs `spec` to completion and returns what it measured. Never runs longer
/// than `duration + request_timeout` plus connection warm-up.
pub async fn run(spec: LoadSpec) -> Recorder {
    let spec = Arc::new(spec);
    let connections = match spec.mode {
        Mode::Closed { concurrency } => concurrency,
        Mode::Open { connections, .. } => connections,
    }
    .max(1);

    // Warm every connection up outside the measured phase.
    let mut warm = Vec::with_capacity(connections);
    for _ in 0..connections {
        let spec = Arc::clone(&spec);
        warm.push(tokio::spawn(async move {
            let mut conn = Conn {
                addr: spec.addr,
                sender: None,
            };
            let mut scratch = Recorder::default();
            for _ in 0..spec.warmup {
                let _ = conn.send(&spec, &mut scratch).await;
            }
            conn
        }));
    }
    let mut conns = Vec::with_capacity(connections);
    for w in warm {
        conns.push(w.await.expect("warm-up task does not panic"));
    }

    let start = Instant::now();
    let hard_stop = start + spec.duration + spec.request_timeout;
    let issued = Arc::new(AtomicU64::new(0));
    let mut total = Recorder::default();
    let mut tasks = Vec::with_capacity(connections);
    // Open loop: how many requests the schedule holds, and the task that
    // cuts the run off at the hard stop.
    let mut planned_total = None;
    let mut closer = None;

    match spec.mode {
        Mode::Closed { .. } => {
            let budget = spec.max_requests.unwrap_or(u64::MAX);
            let deadline = start + spec.duration;
            let n = conns.len() as u32;
            for (i, mut conn) in conns.into_iter().enumerate() {
                let (spec, issued) = (Arc::clone(&spec), Arc::clone(&issued));
                let first = start + spec.ramp * i as u32 / n;
                tasks.push(tokio::spawn(async move {
                    let mut rec = Recorder::default();
                    tokio::time::sleep_until(first.into()).await;
                    while Instant::now() < deadline
                        && issued.fetch_add(1, Ordering::Relaxed) < budget
                    {
                        match conn.send(&spec, &mut rec).await {
                            Ok(t) => rec.record_ok(t.done - t.sent, t.done - t.sent),
                            Err(kind) => rec.error(kind),
                        }
                    }
                    rec
                }));
            }
        }
        Mode::Open { rate, .. } => {
            let clock = OpenLoopClock::new(rate);
            let planned = clock.due_by(spec.duration).saturating_sub(1).max(1);
            let permits = Arc::new(Semaphore::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            spawn_pacer(
                clock,
                planned,
                start,
                Arc::clone(&permits),
                Arc::clone(&stop),
            );
            for mut conn in conns {
                let (spec, issued, permits) =
                    (Arc::clone(&spec), Arc::clone(&issued), Arc::clone(&permits));
                tasks.push(tokio::spawn(async move {
                    let mut rec = Recorder::default();
                    loop {
                        let Ok(permit) = permits.acquire().await else {
                            break;
                        };
                        permit.forget();
                        let index = issued.fetch_add(1, Ordering::Relaxed);
                        if index >= planned {
                            break;
                        }
                        match conn.send(&spec, &mut rec).await {
                            Ok(t) => {
                                rec.record_send_lag(clock.corrected_latency(index, t.sent - start));
                                rec.record_ok(
                                    clock.corrected_latency(index, t.done - start),
                                    t.done - t.sent,
                                );
                            }
                            Err(kind) => rec.error(kind),
                        }
                    }
                    rec
                }));
            }
            // Past the hard stop, requests still queued are charged as errors.
            closer = Some(tokio::spawn(async move {
                tokio::time::sleep_until(hard_stop.into()).await;
                stop.store(true, Ordering::Relaxed);
                permits.close();
            }));
            planned_total = Some(planned);
        }
    }

    for t in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout_at((hard_stop + Duration::from_secs(1)).into(), t).await {
            Ok(Ok(rec)) => total.merge(&rec),
            _ => {
                abort.abort();
                total.error("task_overran");
            }
        }
    }
    if let Some(closer) = closer {
        closer.abort();
    }
    if let Some(planned) = planned_total {
        let sent = issued.load(Ordering::Relaxed).min(planned);
        if sent < planned {
            *total.errors.entry("not_sent".to_owned()).or_default() += planned - sent;
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Releases one permit per request at its intended send time, from a plain
/// thread: the tokio timer's 1 ms granularity would bunch sends up.
fn spawn_pacer(
    clock: OpenLoopClock,
    planned: u64,
    start: Instant,
    permits: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
) {
    /// Below this, sleeping costs more than it saves: release in batches.
    const MIN_SLEEP: Duration = Duration::from_micros(200);
    std::thread::spawn(move || {
        let mut released = 0u64;
        while released < planned && !stop.load(Ordering::Relaxed) {
            let due = clock.due_by(start.elapsed()).min(planned);
            if due > released {
                permits.add_permits((due - released) as usize);
                released = due;
            }
            let next = start + clock.intended(released);
            std::thread::sleep(
                next.saturating_duration_since(Instant::now())
                    .max(MIN_SLEEP),
            );
        }
        // Wake every connection task so it sees the plan is done and exits.
        permits.add_permits(1 << 16);
    });
}

/// One request on a fresh connection from a plain thread, for the admin API
/// (policy swaps, readiness): returns the status code and the body.
pub fn blocking_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let auth = bearer.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/toml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:.80}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::combinators::BoxBody;
    use http_body_util::StreamBody;
    use hyper::body::{Frame, Incoming};

    type Body = BoxBody<Bytes, Infallible>;

    /// A tiny origin: `/fast` answers at once, `/stall-once` holds its first
    /// request 200 ms, `/sse` streams five events 10 ms apart with one 150 ms
    /// gap, `/cut` ends a stream without `[DONE]`. Delays are generous: tests
    /// run in parallel on a small machine.
    async fn serve() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let first = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let first = Arc::clone(&first);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let first = Arc::clone(&first);
                        async move { Ok::<_, Infallible>(respond(req.uri().path(), &first).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn respond(path: &str, first: &AtomicUsize) -> hyper::Response<Body> {
        let events = |gaps: Vec<u64>, done: bool| {
            let frames = futures::stream::unfold((gaps, 0usize), move |(gaps, i)| async move {
                if i > gaps.len() {
                    return None;
                }
                let data = if i == gaps.len() {
                    if !done {
                        return None;
                    }
                    "data: [DONE]\n\n".to_owned()
                } else {
                    tokio::time::sleep(Duration::from_millis(gaps[i])).await;
                    format!("data: {{\"i\":{i}}}\n\n")
                };
                Some((Ok(Frame::data(Bytes::from(data))), (gaps, i + 1)))
            });
            BodyExt::boxed(StreamBody::new(frames))
        };
        let body = match path {
            "/sse" => events(vec![5, 10, 10, 150, 10], true),
            "/cut" => events(vec![5, 10], false),
            "/stall-once" => {
                if first.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Full::new(Bytes::from_static(b"{}")).boxed()
            }
            "/fast" => Full::new(Bytes::from_static(b"{}")).boxed(),
            _ => {
                let mut r = hyper::Response::new(Full::new(Bytes::new()).boxed());
                *r.status_mut() = StatusCode::NOT_FOUND;
                return r;
            }
        };
        hyper::Response::new(body)
    }

    fn spec(addr: SocketAddr, path: &str) -> LoadSpec {
        let mut s = LoadSpec::new(addr, Bytes::from_static(b"{}"));
        s.path = path.to_owned();
        s.warmup = 0;
        s
    }

    #[tokio::test]
    async fn closed_loop_counts_requests_and_errors() {
        let addr = serve().await;
        let mut s = spec(addr, "/fast");
        s.mode = Mode::Closed { concurrency: 4 };
        s.max_requests = Some(200);
        s.duration = Duration::from_secs(5);
        let rec = run(s).await;
        assert_eq!(rec.ok, 200);
        assert_eq!(rec.error_count(), 0);
        assert_eq!(rec.latency.len(), 200);

        let mut s = spec(addr, "/missing");
        s.max_requests = Some(3);
        let rec = run(s).await;
        assert_eq!(rec.ok, 0);
        assert_eq!(rec.errors.get("status_404"), Some(&3));
    }

    #[tokio::test]
    async fn sse_timing_and_stalls() {
        let addr = serve().await;
        let mut s = spec(addr, "/sse");
        s.stream = true;
        s.max_requests = Some(2);
        let rec = run(s).await;
        assert_eq!(rec.ok, 2, "{:?}", rec.errors);
        assert_eq!(rec.events, 12, "5 data events and [DONE], twice");
        assert_eq!(rec.ttfe.len(), 2);
        assert_eq!(rec.gap.len(), 10);
        assert_eq!(rec.stalls, 2, "the 150 ms gap stalls each stream once");
        assert!(
            rec.ttfe.min() >= 5_000_000,
            "first event after the 5 ms delay"
        );
    }

    #[tokio::test]
    async fn stream_without_done_is_an_error() {
        let addr = serve().await;
        let mut s = spec(addr, "/cut");
        s.stream = true;
        s.max_requests = Some(1);
        let rec = run(s).await;
        assert_eq!(rec.ok, 0);
        assert_eq!(rec.errors.get("incomplete_stream"), Some(&1));
    }

    #[tokio::test]
    async fn open_loop_charges_the_wait_behind_a_stall() {
        // One connection at 200 req/s: the first request stalls 200 ms, so
        // about 40 requests queue behind it. Their service times stay small;
        // their latencies from the intended send time must not.
        let addr = serve().await;
        let mut s = spec(addr, "/stall-once");
        s.mode = Mode::Open {
            rate: 200.0,
            connections: 1,
        };
        s.duration = Duration::from_millis(600);
        let rec = run(s).await;
        assert_eq!(rec.error_count(), 0, "{:?}", rec.errors);
        assert!(
            (115..=121).contains(&rec.ok),
            "about 120 requests, got {}",
            rec.ok
        );
        let slow_latency = rec.latency.count_between(60_000_000, u64::MAX);
        let slow_service = rec.service.count_between(60_000_000, u64::MAX);
        assert_eq!(
            slow_service, 1,
            "only the stalled request was slow to serve"
        );
        assert!(
            slow_latency >= 20,
            "requests queued behind the stall are charged for it: {slow_latency}"
        );
        assert!(rec.latency.max() >= 195_000_000);
    }
}
