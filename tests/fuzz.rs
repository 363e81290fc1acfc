//! Fuzzing on stable with `proptest`: the policy parser and validator, request body →
//! `RequestFacts` (pure and through the real gateway), and the SSE scanner.
//!
//! Case counts are small so the whole file runs in seconds inside `cargo test` (the short run
//! in CI). For a longer run set `PROPTEST_CASES`, which every harness here honours:
//! `PROPTEST_CASES=20000 cargo test --release --locked --test fuzz`. A failure found this way
//! is fixed in the code and kept as a plain regression test beside it.

mod common;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use switchyard::config::parse_policy;
use switchyard::error::GatewayError;
use switchyard::routing::prefix::BlockShape;
use switchyard::routing::{Endpoint, FactsError, RequestFacts};
use switchyard::upstream::sse::{SseScanner, MAX_EVENT_BYTES};

/// `cases` unless `PROPTEST_CASES` asks for another count; no regression files are written
/// (found cases become named tests instead).
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---- (a) policy parser and validator ----

const EXAMPLES: [&str; 8] = [
    include_str!("../routes/blue-green.example.toml"),
    include_str!("../routes/budgets.example.toml"),
    include_str!("../routes/cache.example.toml"),
    include_str!("../routes/canary.example.toml"),
    include_str!("../routes/cost.example.toml"),
    include_str!("../routes/demo.toml"),
    include_str!("../routes/guardrails.example.toml"),
    include_str!("../routes/prefix.example.toml"),
];

/// Every error names where it is: a TOML position or a field path, and a message.
fn check_errors(
    text: &str,
    errors: &[switchyard::config::FieldError],
) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty(), "an Err with no errors for\n{text}");
    for e in errors {
        prop_assert!(
            !e.path.is_empty() && !e.message.is_empty(),
            "error without a path or message: {e:?}\n{text}"
        );
        prop_assert!(!e.path.contains('\n'), "{e:?}");
        let is_toml = e.path == "toml" || e.path.starts_with("toml (byte ");
        let is_field = e
            .path
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '[');
        prop_assert!(is_toml || is_field, "not a field path: {e:?}\n{text}");
    }
    Ok(())
}

/// A value that fits where another was: numbers, strings, booleans, durations, percents,
/// arrays, and junk.
fn replacement() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("101".to_owned()),
        Just("1e400".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"0s\"".to_owned()),
        Just("\"-5ms\"".to_owned()),
        Just("\"150%\"".to_owned()),
        Just("\"http://\"".to_owned()),
        Just("\"nope\"".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("[\"a\", 1]".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "[a-z0-9_.:%/ -]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    ReplaceValue(usize, String),
    Truncate(usize),
    Insert(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        at.prop_map(Mutation::DeleteLine),
        at.prop_map(Mutation::DuplicateLine),
        (at, any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (at, replacement()).prop_map(|(a, v)| Mutation::ReplaceValue(a, v)),
        at.prop_map(Mutation::Truncate),
        (at, "[\\[\\]=\"{}\n#a-z0-9. ]{0,8}").prop_map(|(a, s)| Mutation::Insert(a, s)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for m in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match m {
            Mutation::DeleteLine(i) => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
            Mutation::ReplaceValue(i, v) => {
                // The next line with `key = value` from i on gets a new value.
                if let Some(j) = (0..n)
                    .map(|k| (i + k) % n)
                    .find(|&j| lines[j].contains(" = "))
                {
                    let key = lines[j].split(" = ").next().unwrap_or_default().to_owned();
                    lines[j] = format!("{key} = {v}");
                }
            }
            Mutation::Truncate(i) => {
                let joined = lines.join("\n");
                let mut cut = i % (joined.len() + 1);
                while !joined.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = joined[..cut].lines().map(str::to_owned).collect();
            }
            Mutation::Insert(i, s) => {
                let line = &mut lines[i % n];
                let mut at = i % (line.len() + 1);
                while !line.is_char_boundary(at) {
                    at -= 1;
                }
                line.insert_str(at, s);
            }
        }
    }
    lines.join("\n")
}

#[test]
fn policy_parser_never_panics_on_arbitrary_text() {
    let mut runner = TestRunner::new(config(256));
    let text = prop_oneof![
        any::<String>(),
        "[\\[\\]=\"{}\n#a-z0-9._ ]{0,200}",
        // TOML-ish lines about the policy's own tables.
        proptest::collection::vec(
            prop_oneof![
                Just("[server]".to_owned()),
                Just("[[backends]]".to_owned()),
                Just("[[routes]]".to_owned()),
                Just("[[routes.arms]]".to_owned()),
                Just("[routes.shadow]".to_owned()),
                Just("[[routes.guardrails]]".to_owned()),
                Just("[routes.rollout]".to_owned()),
                Just("[cache]".to_owned()),
                Just("[guardrails]".to_owned()),
                ("[a-z_]{1,14}", replacement()).prop_map(|(k, v)| format!("{k} = {v}")),
            ],
            0..24
        )
        .prop_map(|lines| lines.join("\n")),
    ];
    runner
        .run(&text, |text| {
            if let Err(errors) = parse_policy(&text) {
                check_errors(&text, &errors)?;
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn policy_validator_gives_field_paths_for_mutated_examples() {
    let mut runner = TestRunner::new(config(384));
    let case = (
        0..EXAMPLES.len(),
        proptest::collection::vec(mutation(), 1..4),
    );
    runner
        .run(&case, |(example, mutations)| {
            let text = mutate(EXAMPLES[example], &mutations);
            match parse_policy(&text) {
                Ok(policy) => {
                    // What validates also survives a second look: the same text, the same
                    // policy shape.
                    let again = parse_policy(&text).expect("validates twice");
                    prop_assert_eq!(policy.routes.len(), again.routes.len());
                }
                Err(errors) => check_errors(&text, &errors)?,
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_bad_value_is_reported_at_its_field_path() {
    // Not random, but the property the harness checks in the large, pinned to one case.
    let text = EXAMPLES[3].replacen("weight = 90 ", "weight = 101 ", 1);
    assert_ne!(text, EXAMPLES[3], "the canary example has a weight of 90");
    let errors = parse_policy(&text).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.path.starts_with("routes[0].arms[") && e.path.ends_with("].weight")),
        "{errors:#?}"
    );
}

// ---- (b) request body → RequestFacts ----

const ENDPOINTS: [Endpoint; 3] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        // The members RequestFacts reads, so their wrong types are tried too.
                        proptest::sample::select(vec![
                            "model",
                            "stream",
                            "stream_options",
                            "include_usage",
                            "max_tokens",
                            "max_completion_tokens",
                            "temperature",
                            "user",
                            "messages",
                            "role",
                            "content",
                            "text",
                            "prompt",
                            "input",
                            "tools",
                            "functions",
                            "response_format",
                            "type",
                        ])
                        .prop_map(str::to_owned),
                        any::<String>(),
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn shape() -> Option<BlockShape> {
    Some(BlockShape {
        block_tokens: 4,
        max_blocks: 8,
    })
}

/// The gateway's answer for a facts error: a 400 in the OpenAI shape with the right code.
fn check_facts_error(e: FactsError) -> Result<(), TestCaseError> {
    let code = match &e {
        FactsError::Malformed(_) => "invalid_json",
        FactsError::MissingModel => "missing_model",
    };
    let g = GatewayError::from(e);
    prop_assert_eq!(g.status(), 400);
    prop_assert_eq!(g.code(), code);
    let body: Value = serde_json::from_slice(&g.body()).expect("error bodies are JSON");
    prop_assert_eq!(&body["error"]["code"], code);
    prop_assert_eq!(&body["error"]["type"], "invalid_request_error");
    prop_assert!(body["error"]["message"].is_string());
    Ok(())
}

#[test]
fn facts_never_panic_on_arbitrary_bytes() {
    let mut runner = TestRunner::new(config(512));
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        // JSON-looking noise reaches deeper into the parser than uniform bytes do.
        "[{}\\[\\]\",:0-9a-z \\\\]{0,256}".prop_map(String::into_bytes),
    ];
    runner
        .run(&(bytes, 0..ENDPOINTS.len()), |(bytes, e)| {
            for with_prefix in [false, true] {
                let parsed = RequestFacts::parse_with_prefix(ENDPOINTS[e], &bytes, |_| {
                    with_prefix.then(shape).flatten()
                });
                match parsed {
                    Ok(f) => {
                        prop_assert!(!f.model.is_empty());
                        prop_assert!(f.prefix_blocks.len() <= 8);
                    }
                    Err(err) => check_facts_error(err)?,
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn facts_of_arbitrary_json_values_are_facts_or_the_right_error() {
    let mut runner = TestRunner::new(config(512));
    runner
        .run(&(json_value(), 0..ENDPOINTS.len()), |(value, e)| {
            let body = serde_json::to_vec(&value).expect("values serialise");
            let parsed = RequestFacts::parse_with_prefix(ENDPOINTS[e], &body, |_| shape());
            match (&value, parsed) {
                (Value::Object(_), Ok(f)) => {
                    prop_assert_eq!(Some(f.model.as_str()), value["model"].as_str());
                    prop_assert_eq!(f.stream, value["stream"] == Value::Bool(true));
                    prop_assert!(f.prefix_blocks.len() <= 8);
                }
                (Value::Object(map), Err(FactsError::MissingModel)) => {
                    prop_assert!(
                        !map.contains_key("model") || map["model"].is_null() || map["model"] == "",
                        "MissingModel with a model: {value}"
                    );
                }
                (Value::Object(_), Err(err @ FactsError::Malformed(_))) => check_facts_error(err)?,
                (_, Ok(f)) => prop_assert!(false, "facts from a non-object {value}: {f:?}"),
                (_, Err(err)) => {
                    prop_assert!(matches!(err, FactsError::Malformed(_)), "{err:?}");
                    check_facts_error(err)?;
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn well_formed_requests_give_their_facts() {
    let mut runner = TestRunner::new(config(256));
    let case = (
        "[a-zA-Z0-9._-]{1,24}",
        proptest::collection::vec(any::<String>(), 0..6),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
    );
    runner
        .run(&case, |(model, contents, stream, max_tokens)| {
            let messages: Vec<Value> = contents
                .iter()
                .map(|c| serde_json::json!({"role": "user", "content": c}))
                .collect();
            let body = serde_json::json!({"model": model, "messages": messages,
                "stream": stream, "max_tokens": max_tokens, "extra": {"kept": [1, 2]}});
            let f = RequestFacts::parse_with_prefix(
                Endpoint::ChatCompletions,
                body.to_string().as_bytes(),
                |_| shape(),
            )
            .expect("a well-formed request parses");
            prop_assert_eq!(&f.model, &model);
            prop_assert_eq!(f.stream, stream);
            prop_assert_eq!(f.max_tokens, max_tokens);
            prop_assert_eq!(f.message_count, contents.len());
            let estimate: u64 = contents.iter().map(|c| (c.len() as u64).div_ceil(4)).sum();
            prop_assert_eq!(f.prompt_tokens_estimate, estimate);
            prop_assert!(f.prefix_blocks.len() <= 8);
            Ok(())
        })
        .unwrap();
}

/// Through the real gateway: arbitrary bodies, some over the body limit, get the right
/// refusal in the OpenAI shape, never a 5xx, and the gateway keeps serving.
#[test]
fn gateway_answers_arbitrary_bodies_with_the_right_error() {
    const LIMIT: usize = 2048;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = common::sim("v1", &["m"], |_| {}).await;
        let policy = common::server_section(&format!("max_body_bytes = {LIMIT}"))
            + &common::backend("v1", &sim.url(), "")
            + &common::route("chat", &["m"], "none", &[("champion", &["v1"], 100.0)]);
        let gw = common::start_gateway(&policy);
        let url = format!("{}/v1/chat/completions", gw.url());
        let client = common::client();
        let bodies = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..LIMIT + 512),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            // Valid requests padded past the limit, and just under it.
            (LIMIT - 64..LIMIT + 64).prop_map(|n| {
                let mut body = br#"{"model":"m","messages":[{"role":"user","content":""#.to_vec();
                body.resize(n.saturating_sub(3).max(body.len()), b'a');
                body.extend_from_slice(b"\"}]}");
                body
            }),
        ];
        let mut runner = TestRunner::new(config(48));
        let mut cases = Vec::new();
        for _ in 0..runner.config().cases {
            cases.push(bodies.new_tree(&mut runner).expect("a case").current());
        }
        for body in cases {
            let len = body.len();
            let reply = common::request(
                &client,
                "POST",
                &url,
                &[("content-type", "application/json")],
                body.clone(),
            )
            .await;
            assert!(
                reply.status < 500,
                "{len} bytes → {}: {:?}",
                reply.status,
                reply.body
            );
            if len > LIMIT {
                assert_eq!(reply.status, 413, "{len} bytes over a {LIMIT}-byte limit");
                assert_eq!(reply.error_code(), "request_too_large");
                continue;
            }
            match RequestFacts::parse(Endpoint::ChatCompletions, &body) {
                Err(FactsError::Malformed(_)) => {
                    assert_eq!(
                        (reply.status, reply.error_code()),
                        (400, "invalid_json".into())
                    )
                }
                Err(FactsError::MissingModel) => {
                    assert_eq!(
                        (reply.status, reply.error_code()),
                        (400, "missing_model".into())
                    )
                }
                Ok(f) if f.model != "m" => {
                    assert_eq!(
                        (reply.status, reply.error_code()),
                        (404, "model_not_found".into())
                    )
                }
                // The sim judges the rest of a request for its model, as vLLM would.
                Ok(_) => {
                    if reply.status != 200 {
                        let v: Value = serde_json::from_slice(&reply.body).expect("JSON error");
                        assert!(v["error"]["message"].is_string(), "{v}");
                    }
                }
            }
        }
        // Still serving.
        let ok = common::post_json(&client, &url, &common::chat("m", "still there?")).await;
        assert_eq!(ok.status, 200);
    });
}

// ---- (c) the SSE scanner ----

/// Everything a scanner reports.
fn reading(s: &SseScanner) -> impl PartialEq + std::fmt::Debug {
    (
        s.events,
        s.oversized_events,
        s.saw_done,
        s.saw_error,
        s.usage,
        s.text.clone(),
        s.content_events,
        s.data_events,
        s.content_filtered,
    )
}

/// Pieces of SSE text, meaningful and not, so streams hit every branch.
fn sse_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"[DONE]".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b": keep-alive".to_vec()),
        Just(b"event: x\n".to_vec()),
        Just(br#"{"error":{"message":"boom"}}"#.to_vec()),
        Just(br#"{"choices":[{"delta":{"content":"hi"}}]}"#.to_vec()),
        Just(br#"{"choices":[{"text":"t","finish_reason":"content_filter"}]}"#.to_vec()),
        Just(br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#.to_vec()),
        Just(br#"{"usage":"#.to_vec()),
        proptest::collection::vec(any::<u8>(), 0..16),
    ]
}

fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(sse_piece(), 0..40).prop_map(|p| p.concat())
}

/// Cuts `bytes` at the given points (taken modulo its length, sorted).
fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

#[test]
fn sse_reading_does_not_depend_on_the_chunking() {
    let mut runner = TestRunner::new(config(512));
    let case = (
        sse_stream(),
        proptest::collection::vec(any::<usize>(), 0..12),
        any::<bool>(),
    );
    runner
        .run(&case, |(stream, cuts, capturing)| {
            let new = || {
                if capturing {
                    SseScanner::capturing()
                } else {
                    SseScanner::default()
                }
            };
            let mut whole = new();
            whole.feed(&stream);
            let mut pieces = new();
            for chunk in chunked(&stream, &cuts) {
                pieces.feed(&chunk);
                prop_assert!(pieces.buffered() <= MAX_EVENT_BYTES + 1);
            }
            prop_assert_eq!(reading(&whole), reading(&pieces));
            let mut bytewise = new();
            for b in &stream {
                bytewise.feed(std::slice::from_ref(b));
            }
            prop_assert_eq!(reading(&whole), reading(&bytewise));
            Ok(())
        })
        .unwrap();
}

#[test]
fn sse_oversized_events_are_skipped_whatever_the_chunking() {
    // Each case moves megabytes: few cases, but each around the bound.
    let mut runner = TestRunner::new(config(24));
    let case = (
        sse_stream(),
        MAX_EVENT_BYTES - 4..MAX_EVENT_BYTES + 4,
        sse_stream(),
        proptest::collection::vec(any::<usize>(), 0..8),
    );
    runner
        .run(&case, |(before, filler, after, cuts)| {
            let mut stream = before;
            stream.extend_from_slice(b"\n\ndata: ");
            stream.resize(stream.len() + filler, b'x');
            stream.extend_from_slice(b"\n\n");
            stream.extend_from_slice(&after);
            let mut whole = SseScanner::default();
            whole.feed(&stream);
            let mut pieces = SseScanner::default();
            for chunk in chunked(&stream, &cuts) {
                pieces.feed(&chunk);
                prop_assert!(pieces.buffered() <= MAX_EVENT_BYTES + 1);
            }
            prop_assert_eq!(reading(&whole), reading(&pieces));
            Ok(())
        })
        .unwrap();
}
