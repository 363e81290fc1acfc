//! `switchyard sim` over real sockets: every endpoint plain and streaming,
//! usage and prefix-cache figures, event timing, errors, and each fault flag.
//! Time bounds here are loose: they catch hangs and "no delay at all", the
//! precise figures live in the unit tests of the pure model.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use switchyard::sim::{SimArgs, SimServer, RECEIVED_CAPACITY, SIM_NAME_HEADER};
use tokio::time::{timeout, Instant};

/// Generous: only there so a hang fails the test instead of stalling CI.
const HANG: Duration = Duration::from_secs(20);

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn start(args: SimArgs) -> SimServer {
    SimServer::start(args).await.expect("sim starts")
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

async fn send(method: Method, url: String, body: Bytes) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    timeout(HANG, async {
        let response = client()
            .request(request)
            .await
            .expect("request is answered");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body arrives whole").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
    .expect("no hang")
}

async fn post(sim: &SimServer, path: &str, body: &Value) -> Reply {
    send(
        Method::POST,
        sim.url() + path,
        Bytes::from(body.to_string()),
    )
    .await
}

async fn get(sim: &SimServer, path: &str) -> Reply {
    send(Method::GET, sim.url() + path, Bytes::new()).await
}

/// A streamed answer: each SSE event's payload (after `data: `) with the time
/// its bytes arrived, and how the body ended.
struct Streamed {
    status: StatusCode,
    headers: HeaderMap,
    events: Vec<(Instant, String)>,
    /// `Err` when the connection broke before the body's end.
    ended: Result<(), String>,
}

impl Streamed {
    fn payloads(&self) -> Vec<&str> {
        self.events.iter().map(|(_, e)| e.as_str()).collect()
    }

    /// The JSON events, without `[DONE]`.
    fn chunks(&self) -> Vec<Value> {
        self.payloads()
            .into_iter()
            .filter(|p| *p != "[DONE]")
            .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("bad event {p}: {e}")))
            .collect()
    }
}

async fn stream(sim: &SimServer, path: &str, body: &Value) -> Streamed {
    let request = Request::post(sim.url() + path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    timeout(HANG, async {
        let response = client()
            .request(request)
            .await
            .expect("request is answered");
        let (parts, mut body) = response.into_parts();
        let mut events = Vec::new();
        let mut pending = String::new();
        let ended = loop {
            match body.frame().await {
                None => break Ok(()),
                Some(Err(error)) => break Err(error.to_string()),
                Some(Ok(frame)) => {
                    let arrived = Instant::now();
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    pending.push_str(std::str::from_utf8(&data).expect("SSE is UTF-8"));
                    while let Some(end) = pending.find("\n\n") {
                        let event: String = pending.drain(..end + 2).collect();
                        let payload = event
                            .strip_prefix("data: ")
                            .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
                        events.push((arrived, payload.trim_end().to_owned()));
                    }
                }
            }
        };
        assert!(pending.is_empty(), "a partial event was left: {pending:?}");
        Streamed {
            status: parts.status,
            headers: parts.headers,
            events,
            ended,
        }
    })
    .await
    .expect("no hang")
}

fn chat(content: &str, max_tokens: u32) -> Value {
    json!({"model": "sim-model", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

fn with_stream(mut body: Value, include_usage: bool) -> Value {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": include_usage});
    body
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn models_health_and_sim_name() {
    let sim = start(SimArgs {
        models: vec!["a".into(), "b".into()],
        ..SimArgs::default()
    })
    .await;
    let models = get(&sim, "/v1/models").await;
    assert_eq!(models.status, StatusCode::OK);
    let list = models.json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(
        models.header(SIM_NAME_HEADER.as_str()),
        sim.addr().to_string(),
        "default name is the address"
    );
    assert_eq!(get(&sim, "/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn chat_completion_has_usage_and_deterministic_text() {
    let sim = start(SimArgs::default()).await;
    let first = post(&sim, "/v1/chat/completions", &chat("hello", 5)).await;
    assert_eq!(first.status, StatusCode::OK);
    let answer = first.json();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "sim-model");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(text.len(), 5 * 4, "five 4-byte words: {text:?}");
    // "user\nhello\n" is 11 bytes: 3 tokens of 4 bytes.
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let again = post(&sim, "/v1/chat/completions", &chat("hello", 5))
        .await
        .json();
    assert_eq!(
        again["choices"][0]["message"]["content"],
        text.as_str(),
        "same prompt, same text"
    );
    let other = post(&sim, "/v1/chat/completions", &chat("goodbye", 5))
        .await
        .json();
    assert_ne!(other["choices"][0]["message"]["content"], text.as_str());

    let reseeded = start(SimArgs {
        seed: 42,
        ..SimArgs::default()
    })
    .await;
    let reseeded = post(&reseeded, "/v1/chat/completions", &chat("hello", 5))
        .await
        .json();
    assert_ne!(
        reseeded["choices"][0]["message"]["content"],
        text.as_str(),
        "the seed changes the text"
    );
}

#[tokio::test]
async fn output_length_defaults_to_16_and_is_capped() {
    let sim = start(SimArgs {
        max_output_tokens: 20,
        ..SimArgs::default()
    })
    .await;
    let body = json!({"model": "sim-model", "messages": [{"role": "user", "content": "x"}]});
    let default = post(&sim, "/v1/chat/completions", &body).await.json();
    assert_eq!(default["usage"]["completion_tokens"], 16);
    let capped = post(&sim, "/v1/chat/completions", &chat("x", 1000))
        .await
        .json();
    assert_eq!(capped["usage"]["completion_tokens"], 20);
    let body =
        json!({"model": "sim-model", "messages": [], "max_completion_tokens": 3, "max_tokens": 9});
    let named = post(&sim, "/v1/chat/completions", &body).await.json();
    assert_eq!(
        named["usage"]["completion_tokens"], 3,
        "max_completion_tokens wins"
    );
    let zero = post(&sim, "/v1/chat/completions", &chat("x", 0)).await;
    assert_eq!(zero.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn chat_stream_has_role_finish_usage_and_done() {
    let sim = start(SimArgs::default()).await;
    let plain = post(&sim, "/v1/chat/completions", &chat("stream me", 4))
        .await
        .json();
    let streamed = stream(
        &sim,
        "/v1/chat/completions",
        &with_stream(chat("stream me", 4), true),
    )
    .await;
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(streamed.headers["content-type"], "text/event-stream");
    assert!(streamed.headers.contains_key(SIM_NAME_HEADER));
    assert_eq!(streamed.ended, Ok(()));
    assert_eq!(streamed.payloads().last(), Some(&"[DONE]"));
    let chunks = streamed.chunks();
    assert_eq!(chunks.len(), 5, "4 token chunks and the usage chunk");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], Value::Null);
    let text: String = chunks[..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap(),
        "streamed text = plain text"
    );
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 4);
    // The plain request cached nothing reusable yet ("user\nstream me\n" < 1 block).
    assert_eq!(
        chunks[4]["usage"]["prompt_tokens"],
        plain["usage"]["prompt_tokens"]
    );

    let without_usage = stream(
        &sim,
        "/v1/chat/completions",
        &with_stream(chat("stream me", 4), false),
    )
    .await;
    assert_eq!(
        without_usage.chunks().len(),
        4,
        "no usage chunk unless asked for"
    );
    assert!(without_usage
        .chunks()
        .iter()
        .all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn completions_plain_and_streaming() {
    let sim = start(SimArgs::default()).await;
    let body = json!({"model": "sim-model", "prompt": "Once upon a time", "max_tokens": 3});
    let plain = post(&sim, "/v1/completions", &body).await;
    assert_eq!(plain.status, StatusCode::OK);
    let plain = plain.json();
    assert_eq!(plain["object"], "text_completion");
    assert_eq!(plain["usage"]["prompt_tokens"], 4);
    let text = plain["choices"][0]["text"].as_str().unwrap();

    let streamed = stream(&sim, "/v1/completions", &with_stream(body.clone(), true)).await;
    let chunks = streamed.chunks();
    assert_eq!(chunks.len(), 4);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let streamed_text: String = chunks[..3]
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed_text, text);
    assert_eq!(chunks[3]["choices"], json!([]));
    assert_eq!(chunks[3]["usage"]["total_tokens"], 7);

    let tokens = json!({"model": "sim-model", "prompt": [1, 2, 3, 4, 5], "max_tokens": 1});
    assert_eq!(
        post(&sim, "/v1/completions", &tokens).await.json()["usage"]["prompt_tokens"],
        5
    );
}

#[tokio::test]
async fn embeddings_are_deterministic_vectors_of_the_configured_dimension() {
    let sim = start(SimArgs {
        embedding_dim: 8,
        ..SimArgs::default()
    })
    .await;
    let body = json!({"model": "sim-model", "input": ["first text", "second", "first text"]});
    let reply = post(&sim, "/v1/embeddings", &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let answer = reply.json();
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert!(data
        .iter()
        .all(|d| d["embedding"].as_array().unwrap().len() == 8));
    assert_eq!(
        data[0]["embedding"], data[2]["embedding"],
        "same input, same vector"
    );
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(answer["usage"]["prompt_tokens"], 3 + 2 + 3);
    let single = post(
        &sim,
        "/v1/embeddings",
        &json!({"model": "sim-model", "input": "first text"}),
    )
    .await;
    assert_eq!(single.json()["data"][0]["embedding"], data[0]["embedding"]);
}

#[tokio::test]
async fn repeated_prompt_reports_cached_tokens_and_metrics() {
    let sim = start(SimArgs::default()).await;
    // "user\n" + 400 bytes + "\n" = 406 bytes = 102 tokens; 101 cacheable → 6 blocks of 16.
    let prompt = "abcd".repeat(100);
    let cold = post(&sim, "/v1/chat/completions", &chat(&prompt, 1))
        .await
        .json();
    assert_eq!(cold["usage"]["prompt_tokens"], 102);
    assert_eq!(cold["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let warm = post(&sim, "/v1/chat/completions", &chat(&prompt, 1))
        .await
        .json();
    assert_eq!(warm["usage"]["prompt_tokens_details"]["cached_tokens"], 96);
    let streamed = stream(
        &sim,
        "/v1/chat/completions",
        &with_stream(chat(&prompt, 1), true),
    )
    .await;
    let usage = streamed.chunks().pop().unwrap()["usage"].take();
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 96,
        "streams report it too"
    );

    let metrics = get(&sim, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = std::str::from_utf8(&metrics.body).unwrap();
    assert_eq!(metric(text, "vllm:prefix_cache_queries_total"), 3.0 * 102.0);
    assert_eq!(metric(text, "vllm:prefix_cache_hits_total"), 2.0 * 96.0);
    assert_eq!(metric(text, "vllm:kv_cache_usage_perc"), 6.0 / 4096.0);
    assert_eq!(metric(text, "vllm:num_requests_running"), 0.0);
    assert_eq!(metric(text, "vllm:num_requests_waiting"), 0.0);
    assert!(
        text.contains("switchyard_sim_responses_total{model_name=\"sim-model\",code=\"200\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn stream_events_arrive_tpot_apart() {
    let sim = start(SimArgs {
        ttft_ms: 100,
        tpot_ms: 50,
        ..SimArgs::default()
    })
    .await;
    let sent = Instant::now();
    let streamed = stream(
        &sim,
        "/v1/chat/completions",
        &with_stream(chat("tick", 6), false),
    )
    .await;
    let times: Vec<Instant> = streamed.events.iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 7, "6 tokens and [DONE]");
    assert!(
        times[0] - sent >= Duration::from_millis(90),
        "first token waits for ttft"
    );
    // Load can delay one event and bunch it with the next (a late read sees two), but it
    // cannot make the sim pace its tokens faster: the whole span holds 5 × tpot, and most gaps
    // are about tpot.
    let span = times[5] - times[0];
    assert!(
        span >= Duration::from_millis(200),
        "6 tokens span 5 × 50 ms; they took {span:?}"
    );
    let mut gaps: Vec<Duration> = times[..6].windows(2).map(|p| p[1] - p[0]).collect();
    gaps.sort();
    assert!(
        gaps[2] >= Duration::from_millis(30),
        "token events must arrive separately, ~50 ms apart; gaps were {gaps:?}"
    );
}

#[tokio::test]
async fn non_streaming_answer_waits_the_modelled_time() {
    let sim = start(SimArgs {
        ttft_ms: 100,
        tpot_ms: 50,
        ..SimArgs::default()
    })
    .await;
    let sent = Instant::now();
    let reply = post(&sim, "/v1/chat/completions", &chat("wait", 5)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "ttft + 4 × tpot = 300 ms"
    );
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let sim = start(SimArgs::default()).await;
    let requests = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-nope", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-nope", "prompt": "hi"}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "gpt-nope", "input": "hi"}),
        ),
    ];
    for (path, body) in requests {
        let reply = post(&sim, path, &body).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], "model_not_found");
        assert!(error["message"].as_str().unwrap().contains("gpt-nope"));
        assert!(
            reply.headers.contains_key(SIM_NAME_HEADER),
            "errors carry x-sim-name too"
        );
    }
}

#[tokio::test]
async fn malformed_json_is_400_in_openai_shape() {
    let sim = start(SimArgs::default()).await;
    for body in ["{not json", "{\"model\": \"sim-model\"}"] {
        let reply = send(
            Method::POST,
            sim.url() + "/v1/chat/completions",
            Bytes::from(body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], "invalid_json");
    }
}

#[tokio::test]
async fn unknown_path_and_wrong_method() {
    let sim = start(SimArgs::default()).await;
    let missing = get(&sim, "/v2/nothing").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "not_found");
    assert_eq!(
        get(&sim, "/v1/chat/completions").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn large_bodies_are_accepted_and_recorded_exactly() {
    let sim = start(SimArgs::default()).await;
    for size in [63 << 10, 65 << 10, 1 << 20, 4 << 20, 16 << 20] {
        let body = chat(&"x".repeat(size), 1);
        let reply = post(&sim, "/v1/chat/completions", &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{size} bytes");
        let last = sim.received().pop().expect("recorded");
        assert_eq!(last.method, Method::POST);
        assert_eq!(last.path, "/v1/chat/completions");
        assert_eq!(last.headers["content-type"], "application/json");
        assert!(
            last.body == body.to_string().as_bytes(),
            "{size}-byte prompt recorded byte for byte"
        );
    }
}

#[tokio::test]
async fn received_ring_keeps_the_last_requests() {
    let sim = start(SimArgs::default()).await;
    for i in 0..RECEIVED_CAPACITY + 6 {
        get(&sim, &format!("/health?i={i}")).await;
    }
    let received = sim.received();
    assert_eq!(received.len(), RECEIVED_CAPACITY);
    assert_eq!(sim.requests_served(), (RECEIVED_CAPACITY + 6) as u64);
    assert!(received
        .iter()
        .all(|r| r.path == "/health" && r.body.is_empty()));
}

#[tokio::test]
async fn error_rate_injects_the_configured_status() {
    let sim = start(SimArgs {
        error_rate: 1.0,
        name: Some("flaky".into()),
        ..SimArgs::default()
    })
    .await;
    let reply = post(&sim, "/v1/chat/completions", &chat("hi", 1)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    assert_eq!(reply.header("x-sim-name"), "flaky");
    assert_eq!(
        get(&sim, "/health").await.status,
        StatusCode::OK,
        "only model requests fail"
    );

    let limited = start(SimArgs {
        error_rate: 1.0,
        error_status: 429,
        retry_after_s: 7,
        ..SimArgs::default()
    })
    .await;
    let reply = post(
        &limited,
        "/v1/completions",
        &json!({"model": "sim-model", "prompt": "p"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), "7");
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn partial_error_rate_fails_some_requests_reproducibly() {
    async fn outcomes(seed: u64) -> Vec<StatusCode> {
        let sim = start(SimArgs {
            error_rate: 0.5,
            seed,
            ..SimArgs::default()
        })
        .await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(
                post(&sim, "/v1/chat/completions", &chat("hi", 1))
                    .await
                    .status,
            );
        }
        statuses
    }
    let first = outcomes(3).await;
    let failed = first
        .iter()
        .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    assert!(
        (5..=35).contains(&failed),
        "{failed} of 40 failed at rate 0.5"
    );
    assert_eq!(first, outcomes(3).await, "same seed, same failures");
}

#[tokio::test]
async fn stall_holds_the_answer_and_counts_as_waiting() {
    let sim = start(SimArgs {
        stall_ms: 2000,
        ..SimArgs::default()
    })
    .await;
    let url = sim.url();
    let sent = Instant::now();
    let stalled = tokio::spawn(async move {
        let body = Bytes::from(chat("stall", 1).to_string());
        send(Method::POST, url + "/v1/chat/completions", body)
            .await
            .status
    });
    // The request reaches the sim at some point of the stall (later on a loaded machine):
    // poll within the stall rather than read once after a guess.
    let text = loop {
        let metrics = get(&sim, "/metrics").await;
        let text = String::from_utf8(metrics.body.to_vec()).unwrap();
        if metric(&text, "vllm:num_requests_waiting") == 1.0 {
            break text;
        }
        assert!(
            sent.elapsed() < Duration::from_millis(1800),
            "the stalled request never counted as waiting:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(metric(&text, "vllm:num_requests_running"), 0.0, "{text}");
    assert_eq!(stalled.await.unwrap(), StatusCode::OK);
    assert!(sent.elapsed() >= Duration::from_millis(2000));
}

#[tokio::test]
async fn drop_after_events_breaks_the_connection_mid_stream() {
    let sim = start(SimArgs {
        drop_after_events: Some(2),
        ..SimArgs::default()
    })
    .await;
    let streamed = stream(
        &sim,
        "/v1/chat/completions",
        &with_stream(chat("drop", 8), true),
    )
    .await;
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(streamed.chunks().len(), 2, "{:?}", streamed.payloads());
    assert!(!streamed.payloads().contains(&"[DONE]"));
    assert!(
        streamed.ended.is_err(),
        "the body must end in a transport error, not cleanly"
    );
    let plain = post(&sim, "/v1/chat/completions", &chat("drop", 8)).await;
    assert_eq!(
        plain.status,
        StatusCode::OK,
        "non-streaming answers are unaffected"
    );
}

#[tokio::test]
async fn stream_error_after_sends_a_vllm_style_error_event() {
    let sim = start(SimArgs {
        stream_error_after: Some(1),
        ..SimArgs::default()
    })
    .await;
    let streamed = stream(
        &sim,
        "/v1/completions",
        &with_stream(json!({"model": "sim-model", "prompt": "p"}), true),
    )
    .await;
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(streamed.ended, Ok(()), "the stream itself ends cleanly");
    let payloads = streamed.payloads();
    assert_eq!(payloads.len(), 3, "{payloads:?}");
    assert_eq!(payloads[2], "[DONE]");
    let chunks = streamed.chunks();
    assert!(chunks[0].get("choices").is_some());
    assert_eq!(chunks[1]["error"]["code"], "stream_error");
    assert_eq!(chunks[1]["error"]["type"], "server_error");
}

#[tokio::test]
async fn content_filter_rate_ends_answers_with_content_filter() {
    let all = start(SimArgs {
        content_filter_rate: 1.0,
        ..SimArgs::default()
    })
    .await;
    let plain = post(&all, "/v1/chat/completions", &chat("filtered", 3)).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(
        plain.json()["choices"][0]["finish_reason"],
        "content_filter"
    );
    let streamed = stream(
        &all,
        "/v1/chat/completions",
        &with_stream(chat("filtered", 3), true),
    )
    .await;
    let chunks = streamed.chunks();
    let finishes: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, vec!["content_filter"], "{chunks:?}");
    assert_eq!(streamed.payloads().last(), Some(&"[DONE]"));

    // A share: some answers filtered, the rest ending as usual, reproducibly under one seed.
    async fn finishes_at_half(seed: u64) -> Vec<String> {
        let half = start(SimArgs {
            content_filter_rate: 0.5,
            seed,
            ..SimArgs::default()
        })
        .await;
        let mut reasons = Vec::new();
        for _ in 0..40 {
            let reply = post(
                &half,
                "/v1/completions",
                &json!({"model": "sim-model", "prompt": "p", "max_tokens": 1}),
            )
            .await;
            reasons.push(
                reply.json()["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        reasons
    }
    let reasons = finishes_at_half(5).await;
    let filtered = reasons.iter().filter(|r| *r == "content_filter").count();
    let length = reasons.iter().filter(|r| *r == "length").count();
    assert!((5..=35).contains(&filtered), "{reasons:?}");
    assert_eq!(filtered + length, 40, "{reasons:?}");
    assert_eq!(
        reasons,
        finishes_at_half(5).await,
        "same seed, same answers"
    );
}

#[tokio::test]
async fn max_concurrency_rejects_beyond_the_limit() {
    let sim = start(SimArgs {
        max_concurrency: Some(1),
        tpot_ms: 100,
        ..SimArgs::default()
    })
    .await;
    let url = sim.url();
    let holder = tokio::spawn(async move {
        let body = Bytes::from(chat("hold", 5).to_string());
        send(Method::POST, url + "/v1/chat/completions", body)
            .await
            .status
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rejected = post(&sim, "/v1/chat/completions", &chat("extra", 1)).await;
    assert_eq!(rejected.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rejected.json()["error"]["code"], "rate_limit_exceeded");
    assert!(rejected.headers.contains_key("retry-after"));
    assert_eq!(
        get(&sim, "/metrics").await.status,
        StatusCode::OK,
        "only model requests count"
    );
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    let after = post(&sim, "/v1/chat/completions", &chat("extra", 1)).await;
    assert_eq!(after.status, StatusCode::OK, "the slot is free again");
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_stream_and_drop_stops_listening() {
    let sim = start(SimArgs {
        tpot_ms: 50,
        ..SimArgs::default()
    })
    .await;
    let addr = sim.addr();
    let url = sim.url();
    let request = Request::post(url + "/v1/chat/completions")
        .body(Full::new(Bytes::from(
            with_stream(chat("bye", 6), false).to_string(),
        )))
        .unwrap();
    let response = client().request(request).await.unwrap();
    timeout(HANG, sim.shutdown())
        .await
        .expect("shutdown waits only for the stream");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("stream completes")
        .to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    assert_refused(addr).await;

    let dropped = start(SimArgs::default()).await;
    let addr = dropped.addr();
    drop(dropped);
    assert_refused(addr).await;
}

async fn assert_refused(addr: SocketAddr) {
    timeout(HANG, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the listener closes");
}

#[test]
fn cli_serves_until_killed() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--model",
            "m1",
            "--name",
            "cli",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    // Logs go to stderr; read the first line on a thread so a silent binary fails the test
    // instead of hanging it.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stderr).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the sim logged nothing within 10 s")
        });
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("addr=")?.parse().ok())
        .unwrap_or_else(|| panic!("no addr= in {line:?}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply = runtime.block_on(send(
        Method::GET,
        format!("http://{addr}/v1/models"),
        Bytes::new(),
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-sim-name"), "cli");
    assert_eq!(reply.json()["data"][0]["id"], "m1");
}

#[tokio::test]
async fn the_prefix_cache_evicts_under_pressure() {
    let sim = start(SimArgs {
        kv_cache_blocks: 8,
        ..SimArgs::default()
    })
    .await;
    let cached =
        |reply: Reply| reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"].clone();
    let (a, b) = ("abcd".repeat(100), "wxyz".repeat(100));
    post(&sim, "/v1/chat/completions", &chat(&a, 1)).await;
    assert_eq!(
        cached(post(&sim, "/v1/chat/completions", &chat(&a, 1)).await),
        96
    );
    // B's six blocks push four of A's out of an eight-block cache.
    post(&sim, "/v1/chat/completions", &chat(&b, 1)).await;
    assert_eq!(
        cached(post(&sim, "/v1/chat/completions", &chat(&a, 1)).await),
        32,
        "only A's two most recently used leading blocks survived"
    );
    let text = String::from_utf8(get(&sim, "/metrics").await.body.to_vec()).unwrap();
    assert_eq!(metric(&text, "vllm:kv_cache_usage_perc"), 1.0);
}

#[tokio::test]
async fn tokenization_endpoints_speak_vllms_shapes() {
    let sim = start(SimArgs::default()).await;
    let tokenized = post(
        &sim,
        "/tokenize",
        &json!({"model": "sim-model", "prompt": "hello, world"}),
    )
    .await
    .json();
    assert_eq!(tokenized["count"], 3);
    let tokens = tokenized["tokens"].clone();
    assert_eq!(tokens.as_array().unwrap().len(), 3);
    assert!(tokenized["max_model_len"].as_u64().unwrap() > 0);
    let back = post(
        &sim,
        "/detokenize",
        &json!({"model": "sim-model", "tokens": tokens}),
    )
    .await
    .json();
    assert_eq!(back["prompt"], "hello, world");

    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
    let chat_tokens = post(
        &sim,
        "/tokenize",
        &json!({"model": "sim-model", "messages": messages}),
    )
    .await
    .json();
    let rendered = post(
        &sim,
        "/v1/chat/completions/render",
        &json!({"model": "sim-model", "messages": messages}),
    )
    .await
    .json();
    assert_eq!(rendered["prompt"], "system\nbe brief\nuser\nhi\n");
    assert_eq!(rendered["token_ids"], chat_tokens["tokens"]);
    // The rendered ids are the prompt's tokens: sent as a completion prompt they count the same.
    let usage = post(
        &sim,
        "/v1/completions",
        &json!({"model": "sim-model", "prompt": rendered["token_ids"], "max_tokens": 1}),
    )
    .await
    .json();
    assert_eq!(usage["usage"]["prompt_tokens"], chat_tokens["count"]);

    let unknown = post(&sim, "/tokenize", &json!({"model": "nope", "prompt": "x"})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");
}
