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
