//! Prefix-cache affinity through the real gateway and four sims with a per-token prefill cost
//! and a small KV cache: conversations stay where their prefix is cached, a hot shared prompt
//! is spread once its backend passes the load bound, and a dead backend stops attracting the
//! prefixes it once served.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchyard::sim::SimServer;
use tokio::io::AsyncReadExt;

const MODEL: &str = "m";

async fn four_sims(ttft_ms: u64) -> Vec<SimServer> {
    let mut sims = Vec::new();
    for name in ["s0", "s1", "s2", "s3"] {
        sims.push(
            sim(name, &[MODEL], |a| {
                a.ttft_ms = ttft_ms;
                a.prefill_us_per_token = 50;
                a.kv_block_tokens = 16;
                a.kv_cache_blocks = 256;
            })
            .await,
        );
    }
    sims
}

/// A gateway balancing the four sims by prefix, without exploration (so every choice is the
/// scored one), with the debugging header on.
fn gateway(sims: &[SimServer], prefix_extra: &str) -> switchyard::server::RunningGateway {
    let mut policy = server_section("debug_headers = true\nscrape_interval_ms = 50");
    for (i, s) in sims.iter().enumerate() {
        policy += &backend(&format!("s{i}"), &s.url(), "first_byte_timeout_ms = 5000");
    }
    // `balance` belongs to the route, so it goes before the arms' tables.
    policy += &route(
        "chat",
        &[MODEL],
        "none",
        &[("all", &["s0", "s1", "s2", "s3"], 100.0)],
    )
    .replacen(
        "sticky = \"none\"\n",
        "sticky = \"none\"\nbalance = \"prefix\"\n",
        1,
    );
    policy += &format!("[routes.prefix]\nexplore_percent = 0\n{prefix_extra}\n");
    start_gateway(&policy)
}

/// A system prompt of about `tokens` tokens, distinct per `seed`.
fn system_prompt(seed: u32, tokens: usize) -> String {
    let mut text = format!("You are assistant number {seed}. ");
    while text.len() < tokens * 4 {
        text.push_str(&format!("Rule {seed}-{}: answer briefly. ", text.len()));
    }
    text
}

fn conversation(system: &str, turns: &[(&str, &str)], next: &str) -> Value {
    let mut messages = vec![json!({"role": "system", "content": system})];
    for (user, assistant) in turns {
        messages.push(json!({"role": "user", "content": user}));
        messages.push(json!({"role": "assistant", "content": assistant}));
    }
    messages.push(json!({"role": "user", "content": next}));
    json!({"model": MODEL, "messages": messages, "max_tokens": 8})
}

fn answer_text(reply: &Reply) -> String {
    reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn cached_tokens(reply: &Reply) -> u64 {
    reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
}

/// `(matched, blocks)` from `x-switchyard-prefix-match`.
fn prefix_match(reply: &Reply) -> (usize, usize) {
    let value = reply.header("x-switchyard-prefix-match");
    let (m, b) = value
        .split_once('/')
        .unwrap_or_else(|| panic!("no prefix-match header: {:?}", reply.headers));
    (m.parse().unwrap(), b.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_turn_lands_on_the_backend_of_the_first() {
    let sims = four_sims(1).await;
    let gw = gateway(&sims, "");
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let mut first_backends = HashMap::new();
    for conv in 0..8u32 {
        let system = system_prompt(conv, 400);
        let first = post_json(&c, &url, &conversation(&system, &[], "What is a tier?")).await;
        assert_eq!(first.status, 200, "{:?}", first.body);
        let backend = first.header("x-switchyard-backend").to_owned();
        assert_eq!(
            prefix_match(&first).0,
            0,
            "a new conversation matches nothing"
        );
        let reply = answer_text(&first);
        let second = post_json(
            &c,
            &url,
            &conversation(&system, &[("What is a tier?", &reply)], "And an arm?"),
        )
        .await;
        assert_eq!(second.status, 200);
        assert_eq!(
            second.header("x-switchyard-backend"),
            backend,
            "conversation {conv}: the second turn must find the first turn's backend"
        );
        let (matched, blocks) = prefix_match(&second);
        assert!(
            matched >= 20 && matched <= blocks,
            "conversation {conv}: matched {matched} of {blocks} blocks"
        );
        assert!(
            cached_tokens(&second) >= 300,
            "conversation {conv}: the backend's KV cache served the prefix: {}",
            String::from_utf8_lossy(&second.body)
        );
        *first_backends.entry(backend).or_insert(0) += 1;
    }
    assert!(
        first_backends.len() >= 2,
        "new conversations spread over the backends: {first_backends:?}"
    );
    let metrics = request(&c, "GET", &format!("{}/metrics", gw.admin_url()), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("switchyard_prefix_requests_total{route=\"chat\"} 16"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_prefix_matched_requests_total{route=\"chat\"} 8"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_shared_system_prompt_is_spread_once_its_backend_passes_the_bound() {
    // Slow answers so that a burst overlaps.
    let sims = four_sims(400).await;
    let gw = gateway(&sims, "load_bound = 1.5");
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let system = system_prompt(99, 400);
    // One at a time, every user of the shared prompt goes where it is cached.
    let mut home = None;
    for i in 0..3 {
        let r = post_json(&c, &url, &conversation(&system, &[], &format!("q{i}"))).await;
        assert_eq!(r.status, 200);
        let b = r.header("x-switchyard-backend").to_owned();
        assert_eq!(
            home.get_or_insert_with(|| b.clone()),
            &b,
            "sequential users share a backend"
        );
    }
    let home = home.unwrap();
    // A burst: the home backend takes its bounded share, the rest spills over.
    let burst: Vec<_> = (0..16)
        .map(|i| {
            let (c, url, body) = (
                c.clone(),
                url.clone(),
                conversation(&system, &[], &format!("burst {i}")),
            );
            tokio::spawn(async move { post_json(&c, &url, &body).await })
        })
        .collect();
    let mut per_backend: HashMap<String, u32> = HashMap::new();
    for task in burst {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200);
        *per_backend
            .entry(r.header("x-switchyard-backend").to_owned())
            .or_default() += 1;
    }
    assert!(
        per_backend.len() >= 3,
        "the burst spread beyond the home backend: {per_backend:?}"
    );
    assert!(
        per_backend.get(&home).copied().unwrap_or(0) < 16,
        "the home backend did not take everything: {per_backend:?}"
    );
}

async fn retry_pause(_why: std::io::Error) {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Accepts connections on `addr` and never answers (a hung backend); counts the connections
/// that carried a proxied request (a POST), as opposed to the scraper's GETs.
async fn black_hole(addr: std::net::SocketAddr) -> Arc<AtomicU32> {
    // The dead sim's listener closes once its aborted task is dropped: retry briefly.
    let mut tries = 0;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tries < 100 => {
                tries += 1;
                retry_pause(e).await;
            }
            Err(e) => panic!("cannot rebind the dead sim's port {addr}: {e}"),
        }
    };
    let posts = Arc::new(AtomicU32::new(0));
    let counter = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 4];
                if stream.read_exact(&mut first).await.is_ok() && &first == b"POST" {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                // Hold the connection open without answering until the test ends.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    posts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backends_entries_stop_attracting_traffic() {
    let mut sims = four_sims(1).await;
    let gw = gateway(&sims, "");
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.url());
    let system = system_prompt(7, 400);
    let first = post_json(&c, &url, &conversation(&system, &[], "hello")).await;
    assert_eq!(first.status, 200);
    let dead_name = first.header("x-switchyard-backend").to_owned();
    let dead_index: usize = dead_name[1..].parse().unwrap();
    // Affinity holds while it is alive.
    let again = post_json(&c, &url, &conversation(&system, &[], "hello again")).await;
    assert_eq!(again.header("x-switchyard-backend"), dead_name);

    // The backend hangs: its process is gone and something on its port accepts connections
    // but never answers.
    let dead = sims.remove(dead_index);
    let addr = dead.addr();
    drop(dead);
    let posts = black_hole(addr).await;
    // Its scrapes now fail (time out); wait until the gateway says so.
    let backends_url = format!("{}/admin/backends", gw.admin_url());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = request(&c, "GET", &backends_url, &[], "").await.json();
        let state = report["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == dead_name.as_str())
            .map(|b| b["scrape"]["state"].clone());
        if state == Some(json!("failing")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dead backend's scrape never failed: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..6 {
        let r = post_json(
            &c,
            &url,
            &conversation(&system, &[], &format!("after death {i}")),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_ne!(r.header("x-switchyard-backend"), dead_name);
    }
    assert_eq!(
        posts.load(Ordering::SeqCst),
        0,
        "no request was sent to the dead backend"
    );
    // The live backends are scraped and reported with their age.
    let report = request(&c, "GET", &backends_url, &[], "").await.json();
    let live = report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] != dead_name.as_str())
        .unwrap()
        .clone();
    assert_eq!(live["scrape"]["state"], "fresh", "{report}");
    assert!(
        live["scrape"]["age_ms"].as_f64().unwrap() < 1000.0,
        "{report}"
    );
    assert!(
        live["scrape"]["kv_cache_usage"].as_f64().is_some(),
        "{report}"
    );
}
