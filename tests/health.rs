//! Backend health through the real gateway and real sims: a backend killed under load stops
//! getting traffic with no failed client request and comes back by itself; passive ejection
//! after consecutive 5xx; the max-ejected share; `/admin/backends` and `/metrics` show it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use switchyard::server::RunningGateway;
use switchyard::sim::{SimArgs, SimServer};

async fn admin_get(c: &HttpClient, gw: &RunningGateway, path: &str) -> Reply {
    request(c, "GET", &format!("{}{path}", gw.admin_url()), &[], "").await
}

async fn metrics_text(c: &HttpClient, gw: &RunningGateway) -> String {
    String::from_utf8_lossy(&admin_get(c, gw, "/metrics").await.body).into_owned()
}

/// The sum of every sample whose line starts with `prefix` (0 when there is none).
fn sum_of(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Attempts the gateway made on `backend`, whatever their result.
async fn attempts_on(c: &HttpClient, gw: &RunningGateway, backend: &str) -> f64 {
    let text = metrics_text(c, gw).await;
    sum_of(
        &text,
        &format!("switchyard_upstream_attempts_total{{backend=\"{backend}\","),
    )
}

/// `/admin/backends`' health object of `backend`.
async fn health_of(c: &HttpClient, gw: &RunningGateway, backend: &str) -> serde_json::Value {
    let report = admin_get(c, gw, "/admin/backends").await.json();
    report["backends"]
        .as_array()
        .expect("a backends list")
        .iter()
        .find(|b| b["name"] == backend)
        .unwrap_or_else(|| panic!("no backend {backend} in {report}"))["health"]
        .clone()
}

/// Polls until `backend`'s health state is `state` (bounded: health moves on seconds).
async fn wait_for_state(
    c: &HttpClient,
    gw: &RunningGateway,
    backend: &str,
    state: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = health_of(c, gw, backend).await;
        if health["state"] == state {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "{backend} never became {state}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Client requests sent in a loop by a few workers until stopped, counting answers and
/// failures (anything but 200) and which sim served.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    served_by_a: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let served_by_a = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (stop, ok, failed, by_a, url) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    served_by_a.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::Relaxed) {
                        let r = post_json(&c, &url, &chat("m", "are you there")).await;
                        if r.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if r.header("x-sim-name") == "a" {
                                by_a.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            eprintln!("failed: {} {:?}", r.status, r.body);
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        // A steady pace, not a flood: the test is about where requests go.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            served_by_a,
            workers,
        }
    }

    /// Waits (bounded) until `a` has answered 5 more requests: it is back in rotation.
    async fn until_a_serves_again(&self) {
        let served_before = self.served_by_a.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.served_by_a.load(Ordering::Relaxed) < served_before + 5 {
            assert!(Instant::now() < deadline, "a was never readmitted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.expect("load worker");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Sim "a" started again on `addr`, where the killed one listened.
async fn restart_a(addr: std::net::SocketAddr) -> SimServer {
    SimServer::start(SimArgs {
        listen: addr,
        name: Some("a".into()),
        models: vec!["m".into()],
        ..SimArgs::default()
    })
    .await
    .expect("a restarts on its port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_is_taken_out_without_failures_and_readmitted() {
    let a = sim("a", &["m"], |_| {}).await;
    let b = sim("b", &["m"], |_| {}).await;
    let a_addr = a.addr();
    let check = "[backends.health_check]\npath = \"/health\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n";
    let policy = server_section("")
        + &backend("a", &a.url(), check)
        + &backend("b", &b.url(), check)
        + &route("chat", &["m"], "none", &[("main", &["a", "b"], 100.0)])
        + "[outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 1000\nmax_ejection_ms = 4000\n";
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());

    let load = Load::start(url.clone(), 4);
    // Both serve while healthy.
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.served_by_a.load(Ordering::Relaxed) < 5 || load.ok.load(Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "a never served under load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Killed: the process is gone, connections reset, its port refuses.
    drop(a);
    let killed_at = Instant::now();
    let health = wait_for_state(&c, &gw, "a", "unhealthy").await;
    let took = killed_at.elapsed();
    assert!(
        health["reason"]
            .as_str()
            .unwrap_or("")
            .contains("health checks failed"),
        "{health}"
    );
    // fall × interval is 400 ms; bounded loosely for a loaded machine.
    assert!(took < Duration::from_secs(10), "took {took:?} to notice");
    // Out of rotation: no attempt reaches it any more while the load goes on.
    let before = attempts_on(&c, &gw, "a").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = attempts_on(&c, &gw, "a").await;
    assert_eq!(before, after, "attempts still go to the dead backend");
    let text = metrics_text(&c, &gw).await;
    assert!(
        text.contains("switchyard_backend_health{backend=\"a\",state=\"unhealthy\"} 1"),
        "{text}"
    );
    assert!(text.contains("switchyard_backend_health{backend=\"b\",state=\"healthy\"} 1"));

    // Back on the same port: probes pass, it is readmitted and serves again.
    let a = restart_a(a_addr).await;
    wait_for_state(&c, &gw, "a", "healthy").await;
    load.until_a_serves_again().await;
    let (ok, failed) = load.stop().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} client requests failed",
        ok + failed
    );
    assert!(ok > 50, "too little load to show anything: {ok}");
    drop((a, b, gw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_a_backend_but_never_all_of_an_arm() {
    let failing = |args: &mut SimArgs| {
        args.error_rate = 1.0;
        args.error_status = 500;
    };
    let a = sim("a", &["m", "m2"], failing).await;
    let b = sim("b", &["m", "m2"], failing).await;
    let good = sim("good", &["m"], |_| {}).await;
    // Route `chat` mixes a failing and a good backend; route `bad` has only failing ones.
    let policy = server_section("")
        + &backend("a", &a.url(), "")
        + &backend("b", &b.url(), "")
        + &backend("good", &good.url(), "")
        + &route("chat", &["m"], "none", &[("main", &["a", "good"], 100.0)])
        + &route("bad", &["m2"], "none", &[("main", &["a", "b"], 100.0)])
        + "[outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 60000\nmax_ejected_percent = 50\n";
    let gw = start_gateway(&policy);
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());

    // Every request is served: a's 500s are retried on `good` until a is ejected.
    for i in 0..12 {
        let r = post_json(&c, &url, &chat("m", &format!("q{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        assert_eq!(r.header("x-sim-name"), "good");
    }
    let health = wait_for_state(&c, &gw, "a", "ejected").await;
    assert_eq!(health["ejections"], 1, "{health}");
    assert!(
        health["ejected_for_ms"].as_u64().unwrap() > 10_000,
        "{health}"
    );
    assert!(
        health["reason"].as_str().unwrap().contains("5xx"),
        "{health}"
    );
    let text = metrics_text(&c, &gw).await;
    for line in [
        "switchyard_backend_health{backend=\"a\",state=\"ejected\"} 1",
        "switchyard_backend_health{backend=\"a\",state=\"healthy\"} 0",
        "switchyard_backend_ejections_total{backend=\"a\"} 1",
        "switchyard_backend_ejections_total{backend=\"good\"} 0",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // Ejected: no more attempts on it from the mixed route.
    let before = attempts_on(&c, &gw, "a").await;
    assert!(
        before >= 3.0,
        "the ejecting failures were counted: {before}"
    );
    for i in 0..10 {
        let r = post_json(&c, &url, &chat("m", &format!("r{i}"))).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(attempts_on(&c, &gw, "a").await, before);

    // Route `bad`: a is ejected, b fails until it is ejected too. With both out the share
    // (50 % of two is one) lets the one whose ejection ends sooner back in: requests still
    // reach a backend (and get its 500) instead of `backends_unavailable`.
    for i in 0..12 {
        let r = post_json(&c, &url, &chat("m2", &format!("s{i}"))).await;
        assert_eq!(r.status, 500, "request {i}: {:?}", r.body);
        assert_ne!(r.error_code(), "backends_unavailable");
    }
    wait_for_state(&c, &gw, "b", "ejected").await;
    let before = attempts_on(&c, &gw, "a").await;
    let r = post_json(&c, &url, &chat("m2", "after both")).await;
    assert_eq!(r.status, 500, "{:?}", r.body);
    assert_ne!(r.error_code(), "backends_unavailable");
    assert!(
        attempts_on(&c, &gw, "a").await > before,
        "a, ejected first, is the one let back in"
    );
    drop((a, b, good, gw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_may_take_a_whole_arm_out() {
    let a = sim("a", &["m"], |_| {}).await;
    let policy = server_section("")
        + &backend(
            "a",
            &a.url(),
            "[backends.health_check]\npath = \"/no-such-path\"\ninterval_ms = 100\ntimeout_ms = 100\nfall = 1\n",
        )
        + &route("chat", &["m"], "none", &[("main", &["a"], 100.0)]);
    let gw = start_gateway(&policy);
    let c = client();
    let health = wait_for_state(&c, &gw, "a", "unhealthy").await;
    assert!(
        health["last_probe_error"]
            .as_str()
            .unwrap_or("")
            .contains("404"),
        "{health}"
    );
    let url = format!("{}/v1/chat/completions", gw.url());
    let r = post_json(&c, &url, &chat("m", "anyone?")).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "backends_unavailable");
    drop((a, gw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_checks_failed_attempts_eject_a_killed_backend_and_time_readmits_it() {
    let a = sim("a", &["m"], |_| {}).await;
    let b = sim("b", &["m"], |_| {}).await;
    let a_addr = a.addr();
    let policy = server_section("")
        + &backend("a", &a.url(), "")
        + &backend("b", &b.url(), "")
        + &route("chat", &["m"], "none", &[("main", &["a", "b"], 100.0)])
        + "[outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 1000\nmax_ejection_ms = 2000\n";
    let gw = start_gateway(&policy);
    let c = client();
    let load = Load::start(format!("{}/v1/chat/completions", gw.url()), 4);
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.served_by_a.load(Ordering::Relaxed) < 5 {
        assert!(Instant::now() < deadline, "a never served under load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(a);
    let health = wait_for_state(&c, &gw, "a", "ejected").await;
    assert!(
        health["reason"].as_str().unwrap_or("").contains("connect")
            || health["reason"].as_str().unwrap_or("").contains("5xx"),
        "{health}"
    );
    // Each time the ejection ends, a few attempts fail (hidden by retries) and it is ejected
    // again, for longer: the count of ejections grows while it stays dead.
    let deadline = Instant::now() + Duration::from_secs(20);
    while health_of(&c, &gw, "a").await["ejections"]
        .as_u64()
        .unwrap_or(0)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "a dead backend was not ejected again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = restart_a(a_addr).await;
    // Back: once its ejection runs out it serves again, with nothing probing it.
    load.until_a_serves_again().await;
    assert_eq!(health_of(&c, &gw, "a").await["state"], "healthy");
    let (ok, failed) = load.stop().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} client requests failed",
        ok + failed
    );
    drop((a, b, gw));
}
