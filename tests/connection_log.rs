//! A flood of broken client connections against a spawned `switchyard serve` leaves a bounded
//! number of lines in its log: the first few per-connection errors, then a count.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
/// What the gateway writes for a client connection that broke before its head was read.
const BROKEN: &str = "client connection failed before its request head was read";
/// Broken connections in the flood.
const FLOOD: usize = 2_000;

/// The spawned gateway, killed when the test ends however it ends.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(addr: SocketAddr, serve: &mut Serve, log: &std::path::Path) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = serve.0.try_wait() {
            panic!(
                "switchyard serve exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the gateway did not listen on {addr} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number in a "N similar connection errors suppressed" line.
fn suppressed_in(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("WARN switchyard::connections: ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn a_flood_of_broken_connections_writes_a_few_lines_and_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The backend is never reached: no request head is ever complete.
    let policy = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{}\"\nthreads = 1\n",
        free_port()
    ) + &backend("b", "http://127.0.0.1:9", "")
        + &route("r", &["m"], "none", &[("a", &["b"], 100.0)]);
    let config = dir.path().join("policy.toml");
    std::fs::write(&config, policy).unwrap();
    let log = dir.path().join("serve.log");
    let mut serve = Serve(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("switchyard serve starts"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr, &mut serve, &log);

    // Each client sends half a request head and goes away: one WARN per connection ("client
    // connection failed before its request head was read: Downstream ConnectionClosed ...").
    let flood_started = Instant::now();
    for _ in 0..FLOOD {
        let mut s = TcpStream::connect(addr).expect("a flood client connects");
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-")
            .unwrap();
    }
    let flood_took = flood_started.elapsed();

    // The summary is written once a whole interval has passed since the first suppressed line.
    let deadline = Instant::now() + Duration::from_secs(40);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let counted: u64 = text.lines().filter_map(suppressed_in).sum();
        let written = text.lines().filter(|l| l.contains(BROKEN)).count() as u64;
        if written + counted >= FLOOD as u64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "{written} lines written and {counted} counted of {FLOOD} broken connections after 40 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Still serving: a complete request gets an answer (its status does not matter here).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 "), "answered: {answer:?}");

    let written = text.lines().filter(|l| l.contains(BROKEN)).count();
    let summaries = text.lines().filter(|l| suppressed_in(l).is_some()).count();
    // Five lines per 10 s interval the flood lasted, one interval more for the edges.
    let intervals = flood_took.as_secs() as usize / 10 + 2;
    assert!(
        written <= 5 * intervals,
        "{written} connection-error lines for a {flood_took:?} flood:\n{text}"
    );
    assert!(written >= 1, "the first errors are still written:\n{text}");
    assert!(
        (1..=intervals + 1).contains(&summaries),
        "{summaries} summary lines:\n{text}"
    );
    assert!(
        text.lines().count() < 60,
        "the whole log stays short: {} lines",
        text.lines().count()
    );
}
