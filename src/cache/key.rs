//! The cache key: which earlier answer may stand in for this request.
//!
//! Two requests share a key only when the same model (the arm and its backends' upstream model
//! names) would be asked the same thing (every body member that can change the answer) through
//! the same endpoint, by the same tenant when the route scopes by API key. The body is read
//! into [`KeyedBody`], whose named members are taken apart in [`KeyedBody::key_material`]
//! without `..`: adding a member to the struct without deciding whether it belongs in the key
//! does not compile.
//!
//! Members the struct does not name (a backend's own extensions, future OpenAI fields) are part
//! of the key: an unknown member may change the answer, and a needless miss is cheap while a
//! wrong hit is not. A route can list such members as ignorable (`ignore_fields`).
//!
//! The key hashes canonical JSON (object members sorted by name, no whitespace, integral
//! numbers written as integers, so `0` and `0.0` agree) with xxh3-128.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};

use serde::Deserialize;
use serde_json::Value;
use xxhash_rust::xxh3::Xxh3;

use crate::routing::{ApiKeyHash, Endpoint};

/// Top-level members [`KeyedBody`] names: they decide the answer (or are deliberately left out,
/// like `user` and `stream_options`), so a route cannot list them in `ignore_fields`.
pub const NAMED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "input",
    "suffix",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "best_of",
    "echo",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "encoding_format",
    "dimensions",
    "stream",
    "stream_options",
    "user",
];

/// A 128-bit cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u128);

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

/// Whose entries a request may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    Global,
    Tenant(ApiKeyHash),
}

/// What would answer the request: the route, the arm chosen, and the model name each of the
/// arm's backends is asked for. A canary and its champion, or a model before and after a
/// rollback, therefore never share entries.
#[derive(Debug, Clone, Copy)]
pub struct Answerer<'a> {
    pub route: &'a str,
    pub arm: &'a str,
    /// The upstream model names, in the arm's backend order.
    pub upstream_models: &'a [&'a str],
}

/// A request body as the cache reads it. Every member OpenAI defines for the routed endpoints
/// is named; anything else lands in `other`.
#[derive(Debug, Deserialize)]
pub struct KeyedBody {
    model: Option<Value>,
    messages: Option<Value>,
    prompt: Option<Value>,
    input: Option<Value>,
    suffix: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    response_format: Option<Value>,
    temperature: Option<Value>,
    top_p: Option<Value>,
    top_k: Option<Value>,
    min_p: Option<Value>,
    seed: Option<Value>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    stop: Option<Value>,
    n: Option<Value>,
    best_of: Option<Value>,
    echo: Option<Value>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    presence_penalty: Option<Value>,
    frequency_penalty: Option<Value>,
    repetition_penalty: Option<Value>,
    logit_bias: Option<Value>,
    encoding_format: Option<Value>,
    dimensions: Option<Value>,
    stream: Option<Value>,
    stream_options: Option<Value>,
    #[expect(
        dead_code,
        reason = "named only so it stays out of `other`: the key leaves it out on purpose"
    )]
    user: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// What eligibility needs to know about sampling, read from the same parse.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sampling {
    pub temperature: Option<f64>,
    /// A `seed` member with a non-null value.
    pub seeded: bool,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

impl KeyedBody {
    /// Reads a request body. Only called for routes with a cache.
    pub fn parse(body: &[u8]) -> Result<KeyedBody, serde_json::Error> {
        serde_json::from_slice(body)
    }

    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature.as_ref().and_then(Value::as_f64),
            seeded: self.seed.as_ref().is_some_and(|s| !s.is_null()),
            stream: is_true(self.stream.as_ref()),
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.get("include_usage"))
                .is_some_and(|v| v.as_bool() == Some(true)),
        }
    }

    /// The members that go into the key, by name.
    fn key_material<'a>(&'a self, ignore: &[String]) -> BTreeMap<&'a str, KeyPart<'a>> {
        let KeyedBody {
            model,
            messages,
            prompt,
            input,
            suffix,
            tools,
            tool_choice,
            parallel_tool_calls,
            functions,
            function_call,
            response_format,
            temperature,
            top_p,
            top_k,
            min_p,
            seed,
            max_tokens,
            max_completion_tokens,
            stop,
            n,
            best_of,
            echo,
            logprobs,
            top_logprobs,
            presence_penalty,
            frequency_penalty,
            repetition_penalty,
            logit_bias,
            encoding_format,
            dimensions,
            stream,
            // Whether a usage chunk is appended changes no token of the answer; replay adds or
            // drops it per request (see `record`).
            stream_options: _,
            // An end-user id for the provider's abuse tracking: it does not change the answer,
            // and keying on it would defeat the cache across users.
            user: _,
            other,
        } = self;
        let named = [
            ("model", model),
            ("messages", messages),
            ("prompt", prompt),
            ("input", input),
            ("suffix", suffix),
            ("tools", tools),
            ("tool_choice", tool_choice),
            ("parallel_tool_calls", parallel_tool_calls),
            ("functions", functions),
            ("function_call", function_call),
            ("response_format", response_format),
            ("temperature", temperature),
            ("top_p", top_p),
            ("top_k", top_k),
            ("min_p", min_p),
            ("seed", seed),
            ("max_tokens", max_tokens),
            ("max_completion_tokens", max_completion_tokens),
            ("stop", stop),
            ("n", n),
            ("best_of", best_of),
            ("echo", echo),
            ("logprobs", logprobs),
            ("top_logprobs", top_logprobs),
            ("presence_penalty", presence_penalty),
            ("frequency_penalty", frequency_penalty),
            ("repetition_penalty", repetition_penalty),
            ("logit_bias", logit_bias),
            ("encoding_format", encoding_format),
            ("dimensions", dimensions),
        ];
        let mut parts: BTreeMap<&str, KeyPart<'_>> = named
            .into_iter()
            .filter_map(|(name, v)| v.as_ref().map(|v| (name, KeyPart::Json(v))))
            .collect();
        // Stream and non-stream answers are stored differently, and an absent `stream` means
        // false: both spellings share the non-stream entry.
        parts.insert("stream", KeyPart::Bool(is_true(stream.as_ref())));
        for (name, value) in other {
            if !ignore.iter().any(|i| i == name) {
                parts.insert(name.as_str(), KeyPart::Json(value));
            }
        }
        parts
    }

    /// The key of this body sent to `endpoint`, answered by `answerer`, within `scope`.
    /// `ignore` lists the route's ignorable members.
    pub fn key(
        &self,
        endpoint: Endpoint,
        answerer: &Answerer<'_>,
        scope: KeyScope,
        ignore: &[String],
    ) -> CacheKey {
        let mut h = HashWriter(Xxh3::new());
        // Bumped whenever the canonical form changes, so old L2 entries are never misread.
        let _ = h.write_all(b"switchyard-cache-key/1\0");
        let _ = write_canonical_material(
            &mut h,
            endpoint,
            answerer,
            scope,
            &self.key_material(ignore),
        );
        CacheKey(h.0.digest128())
    }

    /// The canonical text hashed into the key (tests and debugging).
    pub fn canonical(
        &self,
        endpoint: Endpoint,
        answerer: &Answerer<'_>,
        scope: KeyScope,
        ignore: &[String],
    ) -> String {
        let mut out = Vec::new();
        let _ = write_canonical_material(
            &mut out,
            endpoint,
            answerer,
            scope,
            &self.key_material(ignore),
        );
        String::from_utf8(out).unwrap_or_default()
    }
}

fn is_true(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool).unwrap_or(false)
}

enum KeyPart<'a> {
    Json(&'a Value),
    Bool(bool),
}

fn write_canonical_material(
    w: &mut impl Write,
    endpoint: Endpoint,
    answerer: &Answerer<'_>,
    scope: KeyScope,
    parts: &BTreeMap<&str, KeyPart<'_>>,
) -> io::Result<()> {
    let endpoint = match endpoint {
        Endpoint::ChatCompletions => "chat",
        Endpoint::Completions => "completions",
        Endpoint::Embeddings => "embeddings",
    };
    w.write_all(b"{\"endpoint\":")?;
    write_str(w, endpoint)?;
    w.write_all(b",\"route\":")?;
    write_str(w, answerer.route)?;
    w.write_all(b",\"arm\":")?;
    write_str(w, answerer.arm)?;
    w.write_all(b",\"models\":[")?;
    for (i, m) in answerer.upstream_models.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_str(w, m)?;
    }
    w.write_all(b"],\"scope\":")?;
    match scope {
        KeyScope::Global => w.write_all(b"\"global\"")?,
        KeyScope::Tenant(hash) => write_str(w, &hash.to_string())?,
    }
    w.write_all(b",\"body\":{")?;
    for (i, (name, part)) in parts.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_str(w, name)?;
        w.write_all(b":")?;
        match part {
            KeyPart::Json(v) => write_canonical(w, v)?,
            KeyPart::Bool(b) => w.write_all(if *b { b"true" } else { b"false" })?,
        }
    }
    w.write_all(b"}}")
}

/// Writes `v` as canonical JSON: members sorted by name (whatever order the map keeps), no
/// whitespace, integral numbers as integers.
pub fn write_canonical(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::Null => w.write_all(b"null"),
        Value::Bool(b) => w.write_all(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(w, n),
        Value::String(s) => write_str(w, s),
        Value::Array(items) => {
            w.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                write_canonical(w, item)?;
            }
            w.write_all(b"]")
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            w.write_all(b"{")?;
            for (i, (name, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                write_str(w, name)?;
                w.write_all(b":")?;
                write_canonical(w, value)?;
            }
            w.write_all(b"}")
        }
    }
}

fn write_number(w: &mut impl Write, n: &serde_json::Number) -> io::Result<()> {
    if let Some(u) = n.as_u64() {
        return write!(w, "{u}");
    }
    if let Some(i) = n.as_i64() {
        return write!(w, "{i}");
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    // Below 2^53 every integral float is exactly an integer: `1.0` and `1` are one number.
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        write!(w, "{}", f as i64)
    } else {
        // Rust prints the shortest text that reads back as the same f64.
        write!(w, "{f:?}")
    }
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    serde_json::to_writer(&mut *w, s).map_err(io::Error::other)
}

struct HashWriter(Xxh3);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CHAMPION: Answerer<'static> = Answerer {
        route: "chat",
        arm: "champion",
        upstream_models: &["llama-3.1-70b"],
    };

    fn key_of(body: &str) -> CacheKey {
        key_with(body, &CHAMPION, KeyScope::Global, &[])
    }

    fn key_with(body: &str, who: &Answerer<'_>, scope: KeyScope, ignore: &[String]) -> CacheKey {
        KeyedBody::parse(body.as_bytes()).expect("valid body").key(
            Endpoint::ChatCompletions,
            who,
            scope,
            ignore,
        )
    }

    const BASE: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":8}"#;

    #[test]
    fn member_order_whitespace_and_number_spelling_do_not_matter() {
        let reordered = "{ \"max_tokens\" : 8.0,\n \"temperature\":0.0, \"messages\":[{\"content\":\"hi\",\"role\":\"user\"}], \"model\":\"m\"}";
        assert_eq!(key_of(BASE), key_of(reordered));
        let escaped = r#"{"model":"m","messages":[{"role":"user","content":"h\u0069"}],"temperature":0,"max_tokens":8}"#;
        assert_eq!(key_of(BASE), key_of(escaped));
    }

    #[test]
    fn user_and_stream_options_are_left_out_but_stream_is_not() {
        let with_user = BASE.replacen(
            '{',
            r#"{"user":"u-77","stream_options":{"include_usage":true},"#,
            1,
        );
        assert_eq!(key_of(BASE), key_of(&with_user));
        let explicit_false = BASE.replacen('{', r#"{"stream":false,"#, 1);
        assert_eq!(key_of(BASE), key_of(&explicit_false));
        let streaming = BASE.replacen('{', r#"{"stream":true,"#, 1);
        assert_ne!(key_of(BASE), key_of(&streaming));
    }

    #[test]
    fn every_answer_changing_member_makes_a_new_key() {
        let base = key_of(BASE);
        let changes = [
            (r#""temperature":0"#, r#""temperature":0.1"#),
            (r#""max_tokens":8"#, r#""max_tokens":9"#),
            (r#""content":"hi""#, r#""content":"hi!""#),
            (r#""role":"user""#, r#""role":"system""#),
            (r#""model":"m""#, r#""model":"m2""#),
        ];
        for (from, to) in changes {
            let changed = BASE.replace(from, to);
            assert_ne!(base, key_of(&changed), "{from} → {to} kept the key");
        }
        let added = [
            r#""top_p":0.9"#,
            r#""seed":7"#,
            r#""stop":["\n"]"#,
            r#""n":2"#,
            r#""logprobs":true"#,
            r#""top_logprobs":3"#,
            r#""presence_penalty":0.5"#,
            r#""frequency_penalty":0.5"#,
            r#""logit_bias":{"50256":-100}"#,
            r#""tools":[{"type":"function","function":{"name":"f"}}]"#,
            r#""tool_choice":"required""#,
            r#""response_format":{"type":"json_object"}"#,
            r#""vendor_extension":{"x":1}"#,
        ];
        let mut seen = vec![base];
        for member in added {
            let changed = BASE.replacen('{', &format!("{{{member},"), 1);
            let k = key_of(&changed);
            assert!(!seen.contains(&k), "adding {member} did not make a new key");
            seen.push(k);
        }
    }

    #[test]
    fn canary_and_champion_never_share() {
        let canary = Answerer {
            arm: "canary",
            upstream_models: &["llama-3.1-70b"],
            ..CHAMPION
        };
        let rolled_model = Answerer {
            upstream_models: &["llama-3.2-70b"],
            ..CHAMPION
        };
        let other_route = Answerer {
            route: "chat-2",
            ..CHAMPION
        };
        let base = key_of(BASE);
        for who in [canary, rolled_model, other_route] {
            assert_ne!(base, key_with(BASE, &who, KeyScope::Global, &[]), "{who:?}");
        }
    }

    #[test]
    fn tenant_scope_isolates() {
        let a = KeyScope::Tenant(ApiKeyHash::of(b"sk-a"));
        let b = KeyScope::Tenant(ApiKeyHash::of(b"sk-b"));
        let ka = key_with(BASE, &CHAMPION, a, &[]);
        assert_eq!(ka, key_with(BASE, &CHAMPION, a, &[]));
        assert_ne!(ka, key_with(BASE, &CHAMPION, b, &[]));
        assert_ne!(ka, key_of(BASE));
    }

    #[test]
    fn ignorable_members_are_left_out_only_when_listed() {
        let tagged = BASE.replacen('{', r#"{"request_tag":"abc","#, 1);
        assert_ne!(key_of(BASE), key_of(&tagged));
        let ignore = vec!["request_tag".to_owned()];
        assert_eq!(
            key_with(BASE, &CHAMPION, KeyScope::Global, &ignore),
            key_with(&tagged, &CHAMPION, KeyScope::Global, &ignore)
        );
    }

    #[test]
    fn endpoints_do_not_share() {
        let body = KeyedBody::parse(br#"{"model":"m","input":"hello"}"#).unwrap();
        let k = |e| body.key(e, &CHAMPION, KeyScope::Global, &[]);
        assert_ne!(k(Endpoint::Embeddings), k(Endpoint::Completions));
    }

    #[test]
    fn sampling_is_read_from_the_same_parse() {
        let b = KeyedBody::parse(
            br#"{"model":"m","temperature":0.0,"seed":null,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(
            b.sampling(),
            Sampling {
                temperature: Some(0.0),
                seeded: false,
                stream: true,
                include_usage: true
            }
        );
    }

    #[test]
    fn named_fields_match_the_struct() {
        // Every name the struct destructures is in NAMED_FIELDS and vice versa: a body holding
        // all of them leaves nothing in `other`.
        let all: serde_json::Map<String, Value> = NAMED_FIELDS
            .iter()
            .map(|n| ((*n).to_owned(), Value::from(1)))
            .collect();
        let body = KeyedBody::parse(&serde_json::to_vec(&all).unwrap()).unwrap();
        assert!(body.other.is_empty(), "{:?}", body.other.keys());
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            (-1000i32..1000).prop_map(|i| Value::from(f64::from(i) / 8.0)),
            proptest::collection::vec(any::<char>(), 0..12)
                .prop_map(|c| Value::from(c.into_iter().collect::<String>())),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        proptest::sample::select(vec!["a", "b", "cd", "e", "ef"]),
                        inner
                    ),
                    0..4
                )
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    /// A request: a model, messages, and some sampling and unknown members.
    fn request() -> impl Strategy<Value = Vec<(String, Value)>> {
        (
            json_value(),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("temperature".to_owned()),
                        Just("top_p".to_owned()),
                        Just("seed".to_owned()),
                        Just("stop".to_owned()),
                        Just("tools".to_owned()),
                        Just("x_extra".to_owned()),
                        Just("y_extra".to_owned()),
                    ],
                    json_value(),
                ),
                0..5,
            ),
        )
            .prop_map(|(messages, extra)| {
                let mut members = vec![
                    ("model".to_owned(), Value::from("m")),
                    ("messages".to_owned(), messages),
                ];
                for (k, v) in extra {
                    if !members.iter().any(|(n, _)| *n == k) {
                        members.push((k, v));
                    }
                }
                members
            })
    }

    fn render(members: &[(String, Value)], pretty: bool) -> String {
        // Written by hand so member order is exactly the given one.
        let parts: Vec<String> = members
            .iter()
            .map(|(k, v)| {
                let v = if pretty {
                    serde_json::to_string_pretty(v).unwrap()
                } else {
                    v.to_string()
                };
                format!("{}:{v}", Value::from(k.as_str()))
            })
            .collect();
        if pretty {
            format!("{{\n  {}\n}}", parts.join(",\n  "))
        } else {
            format!("{{{}}}", parts.join(","))
        }
    }

    fn canonical_of(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_canonical(&mut out, v).unwrap();
        out
    }

    proptest! {
        #[test]
        fn order_and_layout_never_change_the_key(members in request(), rotate in 0usize..8) {
            let mut shuffled = members.clone();
            let len = shuffled.len();
            shuffled.rotate_left(rotate % len);
            shuffled.reverse();
            prop_assert_eq!(key_of(&render(&members, false)), key_of(&render(&shuffled, true)));
        }

        #[test]
        fn changing_any_member_changes_the_key(members in request(), which in 0usize..8, to in json_value()) {
            let i = which % members.len();
            prop_assume!(canonical_of(&members[i].1) != canonical_of(&to));
            let mut changed = members.clone();
            changed[i].1 = to;
            prop_assert_ne!(key_of(&render(&members, false)), key_of(&render(&changed, false)));
        }
    }
}
