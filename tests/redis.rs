//! The Redis test harness itself: a real server that starts, answers, dies and comes back.

mod common;

use common::redis::RedisServer;

#[test]
fn redis_server_starts_dies_and_restarts_on_the_same_port() {
    let mut redis = RedisServer::start();
    assert!(redis.is_up(), "a started server answers PING");
    assert_eq!(redis.command(&["SET", "k", "v"]), "OK");
    assert_eq!(redis.command(&["GET", "k"]), "v");
    let port = redis.port();

    redis.kill();
    assert!(!redis.is_up(), "a killed server does not answer");

    redis.restart();
    assert_eq!(redis.port(), port, "restart keeps the port clients know");
    assert!(redis.is_up(), "a restarted server answers PING");
    assert_eq!(
        redis.command(&["GET", "k"]),
        "",
        "no persistence: a restart starts empty"
    );
}

#[test]
fn dropping_the_guard_stops_the_server() {
    let redis = RedisServer::start();
    let port = redis.port();
    drop(redis);
    let probe = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(probe.is_err(), "nothing listens on {port} after drop");
}

use std::time::{Duration, Instant};

use switchyard::redis::{RedisSettings, RedisState, RedisUnavailable, SharedRedis};

fn settings(redis: &RedisServer) -> RedisSettings {
    RedisSettings {
        url: redis.url(),
        command_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(200),
        key_prefix: "test".to_owned(),
    }
}

async fn wait_for_state(client: &SharedRedis, want: RedisState) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.state() != want {
        assert!(
            Instant::now() < deadline,
            "redis state stayed {:?}, expected {want:?}",
            client.state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_configuration_answers_not_configured() {
    let client = SharedRedis::new();
    let r: Result<String, _> = client.query(&redis::cmd("PING")).await;
    assert_eq!(r, Err(RedisUnavailable::NotConfigured));
    assert_eq!(client.state(), RedisState::NotConfigured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_degrades_fast_when_redis_dies_and_recovers_by_itself() {
    let mut server = RedisServer::start();
    let client = SharedRedis::new();
    client.configure(Some(&settings(&server)));

    let n: f64 = client
        .query(redis::cmd("INCRBYFLOAT").arg("spend").arg(1.5))
        .await
        .expect("redis answers");
    assert_eq!(n, 1.5);
    assert_eq!(server.command(&["GET", "spend"]), "1.5");
    assert_eq!(client.state(), RedisState::Up);

    server.kill();
    for _ in 0..5 {
        let started = Instant::now();
        let r: Result<String, _> = client.query(&redis::cmd("PING")).await;
        assert!(r.is_err(), "a dead redis gives no answer: {r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a dead redis is reported quickly, took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(client.state(), RedisState::Degraded);
    let (timeouts, connection, _) = client.error_counts();
    assert!(timeouts + connection >= 5, "errors are counted");
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.restart();
    // The probe (once a second) notices without any caller.
    wait_for_state(&client, RedisState::Up).await;
    let pong: String = client
        .query(&redis::cmd("PING"))
        .await
        .expect("answers again");
    assert_eq!(pong, "PONG");
    assert!(
        client.degraded_seconds() >= 0.3,
        "degraded time is counted: {}",
        client.degraded_seconds()
    );
    let mut metrics = String::new();
    client.render(&mut metrics);
    assert!(metrics.contains("switchyard_redis_up 1"), "{metrics}");
    assert!(
        metrics.contains("switchyard_redis_configured 1"),
        "{metrics}"
    );
    let degraded: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_redis_degraded_seconds_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("degraded seconds in {metrics}"));
    assert!(degraded >= 0.3, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_url_reconnects_to_the_new_redis() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    let client = SharedRedis::new();
    client.configure(Some(&settings(&first)));
    let _: () = client
        .query(redis::cmd("SET").arg("where").arg("first"))
        .await
        .unwrap();
    client.configure(Some(&settings(&second)));
    let _: () = client
        .query(redis::cmd("SET").arg("where").arg("second"))
        .await
        .unwrap();
    assert_eq!(first.command(&["GET", "where"]), "first");
    assert_eq!(second.command(&["GET", "where"]), "second");
    client.configure(None);
    let r: Result<String, _> = client.query(&redis::cmd("PING")).await;
    assert_eq!(r, Err(RedisUnavailable::NotConfigured));
}
