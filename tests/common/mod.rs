//! Shared test support: free ports, policy text, a gateway + sims harness, an HTTP client.
#![allow(dead_code, reason = "each test binary uses a part of it")]

pub mod redis;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard::server::RunningGateway;
use switchyard::sim::{SimArgs, SimServer};

/// A port for a listener a test is about to start (the gateway's listeners are pingora's, which
/// bind the address they are given, so a test cannot let them pick one and ask).
///
/// Binding port 0 and releasing it races: the kernel may hand the same port to another test's
/// port 0 or to an outgoing connection before the listener binds it. Ports here come from a
/// counter below the kernel's ephemeral range, so no outgoing connection takes one and no two
/// calls in this process get the same one; the counter starts at a place set by the process id
/// (cargo runs test binaries one after the other), and a port is skipped when it is in use.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000, ephemeral_low.max(11_000));
    let span = high - low;
    let start = std::process::id() % span;
    for _ in 0..span {
        let port = (low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {high} on 127.0.0.1");
}

/// A sim with the given model names and tweaks.
pub async fn sim(name: &str, models: &[&str], tweak: impl FnOnce(&mut SimArgs)) -> SimServer {
    let mut args = SimArgs {
        name: Some(name.to_owned()),
        models: models.iter().map(|m| m.to_string()).collect(),
        ..SimArgs::default()
    };
    tweak(&mut args);
    SimServer::start(args).await.expect("sim starts")
}

/// `[server]` with fresh ports; the token variable is `SWITCHYARD_TEST_TOKEN`.
pub fn server_section(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\nadmin_token_env = \"SWITCHYARD_TEST_TOKEN\"\nthreads = 2\n{extra}\n",
        free_port(),
        free_port()
    )
}

/// The admin token: `.cargo/config.toml` puts it in the environment of every process cargo
/// runs, the tests included, so that no test has to set a variable while other threads read
/// the environment.
pub const TOKEN: &str = env!("SWITCHYARD_TEST_TOKEN");

pub fn backend(name: &str, url: &str, extra: &str) -> String {
    format!("[[backends]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

/// A route with `(arm, [backends], weight)` arms.
pub fn route(name: &str, models: &[&str], sticky: &str, arms: &[(&str, &[&str], f64)]) -> String {
    let models: Vec<String> = models.iter().map(|m| format!("\"{m}\"")).collect();
    let mut out = format!(
        "[[routes]]\nname = \"{name}\"\nmodels = [{}]\nsticky = \"{sticky}\"\n",
        models.join(", ")
    );
    for (arm, backends, weight) in arms {
        let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        out.push_str(&format!(
            "  [[routes.arms]]\n  name = \"{arm}\"\n  backends = [{}]\n  weight = {weight}\n",
            backends.join(", ")
        ));
    }
    out
}

pub fn start_gateway(policy: &str) -> RunningGateway {
    RunningGateway::start(policy, None, Duration::from_millis(100)).expect("gateway starts")
}

/// Writes the policy to a file the gateway watches.
pub fn start_gateway_watching(policy: &str, dir: &tempfile::TempDir) -> (RunningGateway, PathBuf) {
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let gw = RunningGateway::start(policy, Some(path.clone()), Duration::from_millis(100))
        .expect("gateway starts");
    (gw, path)
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The OpenAI error code of an error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answer within 30 s")
        .expect("request succeeds at the HTTP level");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .expect("body within 30 s")
        .expect("body reads")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn post_json(client: &HttpClient, url: &str, body: &serde_json::Value) -> Reply {
    request(
        client,
        "POST",
        url,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

/// Posts `body` as the user `user` (the `x-user-id` header sticky routes key on).
pub async fn post_as(
    client: &HttpClient,
    url: &str,
    user: &str,
    body: &serde_json::Value,
) -> Reply {
    request(
        client,
        "POST",
        url,
        &[("content-type", "application/json"), ("x-user-id", user)],
        body.to_string(),
    )
    .await
}

/// A streamed answer: status, headers, and each body frame with the time it arrived.
pub struct Streamed {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub sent_at: Instant,
    pub frames: Vec<(Instant, Bytes)>,
}

impl Streamed {
    pub fn text(&self) -> String {
        self.frames
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// SSE `data:` payloads in order.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn post_stream(client: &HttpClient, url: &str, body: &serde_json::Value) -> Streamed {
    let req = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let sent_at = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answer within 30 s")
        .expect("request succeeds");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    frames.push((Instant::now(), data));
                }
            }
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => panic!("stream stalled for 30 s"),
        }
    }
    Streamed {
        status,
        headers,
        sent_at,
        frames,
    }
}

pub fn chat(model: &str, content: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4})
}
