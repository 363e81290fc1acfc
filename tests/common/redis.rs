//! A real `redis-server` for tests, behind an RAII guard.
//!
//! Tests that need Redis start one with [`RedisServer::start`]; it listens on a free port of
//! 127.0.0.1 with persistence off and its working directory in a temp dir, so nothing outlives
//! the test. `kill()` and `restart()` (same port) let a test take Redis away mid-run and bring it
//! back. When `redis-server` is not installed the test fails with the install command: a test that
//! needs Redis never skips silently (`make test` installs it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh `redis-server` gets to answer PING before the start counts as failed.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A `redis-server` process owned by a test; killed on drop.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    ///
    /// The port comes from [`super::free_port`]; should something else bind it first, the
    /// server exits at once and the start is retried on another port.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("a temp dir for redis-server");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = super::free_port();
            match spawn(port, &dir) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        dir,
                        child: Some(child),
                    }
                }
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start after 5 ports: {last_error}");
    }

    /// `redis://127.0.0.1:PORT`, for a policy's `[redis] url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to clients, as a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)); the data is gone,
    /// as after a crash without persistence. Retries for a while, since the old socket may
    /// linger or another process may hold the port briefly.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match spawn(self.port, &self.dir) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "redis-server restart on {} failed, retrying: {e}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("redis-server did not restart on {}: {e}", self.port),
            }
        }
    }

    /// Whether the server answers PING right now.
    pub fn is_up(&self) -> bool {
        ping(self.port)
    }

    /// Runs one command through a plain RESP exchange and returns the raw reply text; enough
    /// for a test to look at what the gateway stored (e.g. `KEYS *`) without the client under test.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(out.as_bytes()).expect("send to redis");
        read_reply(&mut stream)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, dir: &tempfile::TempDir) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .args(["--loglevel", "warning"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server ({e}); tests that need Redis do not skip. \
                 Install it: `make test` does, or `sudo apt-get install -y redis-server`"
            )
        });
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if ping(port) {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server exited with {status} (port {port} taken?)"
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no PONG on port {port} within {READY_WITHIN:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Reads one RESP reply (simple, error, integer, bulk or a flat array of bulks) as text;
/// arrays come back one element per line.
fn read_reply(stream: &mut TcpStream) -> String {
    let line = read_line(stream);
    match line.as_bytes().first() {
        Some(b'+') | Some(b'-') | Some(b':') => line[1..].to_owned(),
        Some(b'$') => read_bulk(stream, &line),
        Some(b'*') => {
            let n: i64 = line[1..].parse().expect("array length");
            (0..n.max(0))
                .map(|_| {
                    let head = read_line(stream);
                    read_bulk(stream, &head)
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => panic!("unexpected redis reply {line:?}"),
    }
}

fn read_bulk(stream: &mut TcpStream, head: &str) -> String {
    let len: i64 = head[1..].parse().expect("bulk length");
    if len < 0 {
        return String::new();
    }
    let mut buf = vec![0u8; len as usize + 2];
    stream.read_exact(&mut buf).expect("bulk body");
    buf.truncate(len as usize);
    String::from_utf8_lossy(&buf).into_owned()
}

fn read_line(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).expect("redis reply line");
        out.push(byte[0]);
    }
    out.truncate(out.len() - 2);
    String::from_utf8_lossy(&out).into_owned()
}
