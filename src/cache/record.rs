//! Record and replay: what an entry holds, how an answer is recorded on its way to the client,
//! and the checks that keep anything but a complete success out of the cache.
//!
//! A plain answer is kept byte for byte with its content type. A stream is kept event by event
//! (each event with its blank-line terminator) through `data: [DONE]`, and replayed with the
//! same boundaries, one chunk per event.
//!
//! `stream_options` is not part of the key, so a hit may want the usage chunk or not:
//! - the recording has it and the client did not ask: the usage event is left out of the replay;
//! - the client asked and the recording lacks it: the entry cannot serve the request, which goes
//!   upstream as a miss; its answer (with usage) replaces the entry and then serves both kinds.
//!   Usage is never made up.

use std::sync::OnceLock;

use bytes::Bytes;
use memchr::memmem;

/// An answer as the cache keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAnswer {
    /// The route, arm and backend that produced it (per-route deletion, hit headers).
    pub route: String,
    pub arm: String,
    pub backend: String,
    /// Wall-clock milliseconds since the Unix epoch when it was stored: `age` and the TTL count
    /// from here, the same on every replica sharing it through Redis.
    pub stored_at_ms: u64,
    pub ttl_ms: u64,
    /// What the upstream answer cost; a hit saves this much.
    pub cost_usd: f64,
    pub body: AnswerBody,
    /// The part of a hit's head that depends only on this entry, built by its first hit.
    pub hit_head: HitHead,
}

/// Header lines derived from an entry, in wire form, kept beside it so that only the first of
/// its hits builds and checks them; each later hit copies the bytes. Not stored in Redis and not
/// part of an entry's identity: two entries holding the same answer are equal whether or not
/// either has served a hit.
#[derive(Debug, Default, Clone)]
pub struct HitHead(OnceLock<Bytes>);

impl HitHead {
    /// The lines, built by `build` the first time.
    pub fn get_or_build<E>(&self, build: impl FnOnce() -> Result<Bytes, E>) -> Result<&Bytes, E> {
        if let Some(lines) = self.0.get() {
            return Ok(lines);
        }
        let lines = build()?;
        // Two first hits at once both build; either will do.
        Ok(self.0.get_or_init(|| lines))
    }
}

impl PartialEq for HitHead {
    fn eq(&self, _: &HitHead) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AnswerBody {
    Plain {
        content_type: String,
        bytes: Bytes,
    },
    Stream {
        /// Every event with its terminator, the last one `data: [DONE]`.
        events: Vec<Bytes>,
        /// The index of the usage chunk (`"choices": []` and a `usage` object), if any.
        usage_event: Option<usize>,
    },
}

/// Fixed overhead counted per entry on top of its bytes, so many tiny entries still weigh: the
/// entry and moka's node, and the hit head's lines (the names in them are counted below).
const ENTRY_OVERHEAD: usize = 1024;

impl CachedAnswer {
    /// What the entry weighs against `[cache] max_bytes`.
    pub fn weight(&self) -> usize {
        let body = match &self.body {
            AnswerBody::Plain {
                content_type,
                bytes,
            } => 2 * content_type.len() + bytes.len(),
            AnswerBody::Stream { events, .. } => events.iter().map(|e| e.len() + 16).sum(),
        };
        ENTRY_OVERHEAD + 2 * (self.route.len() + self.arm.len() + self.backend.len()) + body
    }

    /// Milliseconds the entry has left at `now_ms` (0 when expired).
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        (self.stored_at_ms + self.ttl_ms).saturating_sub(now_ms)
    }

    /// Whole seconds since it was stored (the `age` header).
    pub fn age_s(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// Whether the entry can answer a client that does (or does not) want the usage chunk.
    pub fn serves(&self, include_usage: bool) -> bool {
        match &self.body {
            AnswerBody::Plain { .. } => true,
            AnswerBody::Stream { usage_event, .. } => !include_usage || usage_event.is_some(),
        }
    }

    /// The events a stream replay writes, in order.
    pub fn replay_events(&self, include_usage: bool) -> impl Iterator<Item = &Bytes> {
        let (events, skip) = match &self.body {
            AnswerBody::Stream {
                events,
                usage_event,
            } => (events.as_slice(), usage_event.filter(|_| !include_usage)),
            AnswerBody::Plain { .. } => (&[][..], None),
        };
        events
            .iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != skip)
            .map(|(_, e)| e)
    }
}

/// Why an answer was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Not a 200.
    Status,
    /// The answer was larger than the route's `max_entry_bytes`.
    TooLarge,
    /// The relay failed, or the stream did not end with `[DONE]` after a complete event.
    Incomplete,
    /// The answer carried an error (a vLLM error event, or an `error` member).
    ErrorBody,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Status => "status",
            NotStored::TooLarge => "too_large",
            NotStored::Incomplete => "incomplete",
            NotStored::ErrorBody => "error_body",
        }
    }
}

/// Collects an answer as the relay passes it on, up to a byte bound; past the bound it keeps
/// nothing more (the answer will not be stored) and costs nothing.
#[derive(Debug)]
pub struct Recorder {
    is_sse: bool,
    max_bytes: usize,
    bytes: Vec<u8>,
    overflow: bool,
}

impl Recorder {
    pub fn new(is_sse: bool, max_bytes: usize) -> Recorder {
        Recorder {
            is_sse,
            max_bytes,
            bytes: Vec::new(),
            overflow: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.overflow {
            return;
        }
        if self.bytes.len() + chunk.len() > self.max_bytes {
            self.overflow = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend_from_slice(chunk);
        }
    }

    /// The body to store, once the relay ended. `status` is the upstream status, `complete`
    /// whether the relay reached the end of the answer without a failure.
    pub fn finish(
        self,
        status: u16,
        complete: bool,
        content_type: &str,
    ) -> Result<AnswerBody, NotStored> {
        if status != 200 {
            return Err(NotStored::Status);
        }
        if self.overflow {
            return Err(NotStored::TooLarge);
        }
        if !complete {
            return Err(NotStored::Incomplete);
        }
        let bytes = Bytes::from(self.bytes);
        if self.is_sse {
            split_stream(bytes)
        } else if has_error_member(&bytes) {
            Err(NotStored::ErrorBody)
        } else {
            Ok(AnswerBody::Plain {
                content_type: content_type.to_owned(),
                bytes,
            })
        }
    }
}

fn has_error_member(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        error: Option<serde::de::IgnoredAny>,
    }
    memmem::find(body, b"\"error\"").is_some()
        && serde_json::from_slice::<Probe>(body).is_ok_and(|p| p.error.is_some())
}

/// Splits a whole recorded stream into events and checks it is a complete success.
fn split_stream(bytes: Bytes) -> Result<AnswerBody, NotStored> {
    let mut events = Vec::new();
    let mut usage_event = None;
    let mut start = 0;
    let mut done = false;
    while let Some(pos) = memmem::find(&bytes[start..], b"\n\n") {
        let end = start + pos + 2;
        let event = bytes.slice(start..end);
        if done {
            // Anything after `[DONE]` is not an answer we understand.
            return Err(NotStored::Incomplete);
        }
        match classify(&event) {
            EventKind::Done => done = true,
            EventKind::Error => return Err(NotStored::ErrorBody),
            EventKind::Usage => usage_event = Some(events.len()),
            EventKind::Other => {}
        }
        events.push(event);
        start = end;
    }
    if !done || start != bytes.len() {
        return Err(NotStored::Incomplete);
    }
    Ok(AnswerBody::Stream {
        events,
        usage_event,
    })
}

enum EventKind {
    Done,
    Error,
    Usage,
    Other,
}

fn classify(event: &[u8]) -> EventKind {
    #[derive(serde::Deserialize)]
    struct Chunk {
        error: Option<serde::de::IgnoredAny>,
        usage: Option<serde_json::Map<String, serde_json::Value>>,
        choices: Option<Vec<serde::de::IgnoredAny>>,
    }
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            return EventKind::Done;
        }
        let mentions_error = memmem::find(data, b"\"error\"").is_some();
        if !mentions_error && memmem::find(data, b"\"usage\"").is_none() {
            continue;
        }
        match serde_json::from_slice::<Chunk>(data) {
            Ok(c) if c.error.is_some() => return EventKind::Error,
            Ok(c) if c.usage.is_some() && c.choices.as_ref().is_some_and(Vec::is_empty) => {
                return EventKind::Usage
            }
            Ok(_) => {}
            // An unreadable event that mentions an error is taken for one.
            Err(_) if mentions_error => return EventKind::Error,
            Err(_) => {}
        }
    }
    EventKind::Other
}

/// Entries as Redis holds them: a small versioned binary layout (lengths are u32, big-endian),
/// zstd-compressed when that makes the entry at least a tenth smaller.
///
/// Answers compress well (a stream repeats the same JSON frame around every token): a 64-event
/// stream shrinks about tenfold, for tens of microseconds on the background fill and a few on
/// an L2 hit, which already waits a Redis round trip (`benches/findings.md`, cache section).
pub mod wire {
    use super::{AnswerBody, CachedAnswer, HitHead};
    use bytes::Bytes;

    const MAGIC: &[u8; 4] = b"SYC1";
    /// A compressed entry: this, the plain layout's length (u32), then the zstd frame.
    const MAGIC_ZSTD: &[u8; 4] = b"SYZ1";
    /// Smaller entries are stored plain: compressing them saves little and costs a call.
    const COMPRESS_FROM: usize = 1024;
    /// zstd's fast levels: the fill runs once per stored answer, off the request path.
    const LEVEL: i32 = 3;
    /// No entry is larger (the cache's entry bound is far below): a corrupt length in Redis
    /// cannot make a hit allocate more.
    const MAX_PLAIN: usize = 256 << 20;

    pub fn encode(a: &CachedAnswer) -> Vec<u8> {
        let plain = encode_plain(a);
        if plain.len() < COMPRESS_FROM {
            return plain;
        }
        match zstd::bulk::compress(&plain, LEVEL) {
            Ok(z) if z.len() + 8 <= plain.len() - plain.len() / 10 => {
                let mut out = Vec::with_capacity(z.len() + 8);
                out.extend_from_slice(MAGIC_ZSTD);
                out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
                out.extend_from_slice(&z);
                out
            }
            _ => plain,
        }
    }

    pub fn decode(data: &[u8]) -> Option<CachedAnswer> {
        let Some(rest) = data.strip_prefix(MAGIC_ZSTD) else {
            return decode_plain(data);
        };
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        if len > MAX_PLAIN {
            return None;
        }
        let plain = zstd::bulk::decompress(&rest[4..], len).ok()?;
        (plain.len() == len).then_some(())?;
        decode_plain(&plain)
    }

    fn encode_plain(a: &CachedAnswer) -> Vec<u8> {
        let mut out = Vec::with_capacity(a.weight());
        out.extend_from_slice(MAGIC);
        for s in [&a.route, &a.arm, &a.backend] {
            put_bytes(&mut out, s.as_bytes());
        }
        out.extend_from_slice(&a.stored_at_ms.to_be_bytes());
        out.extend_from_slice(&a.ttl_ms.to_be_bytes());
        out.extend_from_slice(&a.cost_usd.to_be_bytes());
        match &a.body {
            AnswerBody::Plain {
                content_type,
                bytes,
            } => {
                out.push(0);
                put_bytes(&mut out, content_type.as_bytes());
                put_bytes(&mut out, bytes);
            }
            AnswerBody::Stream {
                events,
                usage_event,
            } => {
                out.push(1);
                let usage = usage_event.map_or(u32::MAX, |i| i as u32);
                out.extend_from_slice(&usage.to_be_bytes());
                out.extend_from_slice(&(events.len() as u32).to_be_bytes());
                for e in events {
                    put_bytes(&mut out, e);
                }
            }
        }
        out
    }

    fn decode_plain(data: &[u8]) -> Option<CachedAnswer> {
        let data = Bytes::copy_from_slice(data);
        let mut r = Reader { data, at: 0 };
        if r.take(4)?.as_ref() != MAGIC {
            return None;
        }
        let route = r.string()?;
        let arm = r.string()?;
        let backend = r.string()?;
        let stored_at_ms = u64::from_be_bytes(r.take(8)?.as_ref().try_into().ok()?);
        let ttl_ms = u64::from_be_bytes(r.take(8)?.as_ref().try_into().ok()?);
        let cost_usd = f64::from_be_bytes(r.take(8)?.as_ref().try_into().ok()?);
        let body = match r.take(1)?[0] {
            0 => AnswerBody::Plain {
                content_type: r.string()?,
                bytes: r.bytes()?,
            },
            1 => {
                let usage = r.u32()?;
                let count = r.u32()? as usize;
                // Each event takes at least its 4-byte length: a corrupt count cannot allocate.
                if count > r.data.len() / 4 {
                    return None;
                }
                let mut events = Vec::with_capacity(count);
                for _ in 0..count {
                    events.push(r.bytes()?);
                }
                let usage_event = (usage != u32::MAX).then_some(usage as usize);
                if usage_event.is_some_and(|i| i >= count) {
                    return None;
                }
                AnswerBody::Stream {
                    events,
                    usage_event,
                }
            }
            _ => return None,
        };
        (r.at == r.data.len()).then_some(CachedAnswer {
            route,
            arm,
            backend,
            stored_at_ms,
            ttl_ms,
            cost_usd,
            body,
            hit_head: HitHead::default(),
        })
    }

    fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }

    struct Reader {
        data: Bytes,
        at: usize,
    }

    impl Reader {
        fn take(&mut self, n: usize) -> Option<Bytes> {
            let end = self.at.checked_add(n).filter(|e| *e <= self.data.len())?;
            let out = self.data.slice(self.at..end);
            self.at = end;
            Some(out)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_be_bytes(self.take(4)?.as_ref().try_into().ok()?))
        }
        fn bytes(&mut self) -> Option<Bytes> {
            let n = self.u32()? as usize;
            self.take(n)
        }
        fn string(&mut self) -> Option<String> {
            String::from_utf8(self.bytes()?.to_vec()).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] =
        b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
data: [DONE]\n\n";

    fn record(is_sse: bool, chunks: &[&[u8]], max: usize) -> Recorder {
        let mut r = Recorder::new(is_sse, max);
        for c in chunks {
            r.feed(c);
        }
        r
    }

    #[test]
    fn a_complete_stream_is_kept_event_by_event() {
        let body = record(true, &[&STREAM[..10], &STREAM[10..]], 1 << 20)
            .finish(200, true, "text/event-stream")
            .expect("stored");
        let AnswerBody::Stream {
            events,
            usage_event,
        } = &body
        else {
            panic!("{body:?}")
        };
        assert_eq!(events.len(), 3);
        assert_eq!(*usage_event, Some(1));
        assert_eq!(events.concat(), STREAM);
        let answer = CachedAnswer {
            route: "r".into(),
            arm: "a".into(),
            backend: "b".into(),
            stored_at_ms: 1_000,
            ttl_ms: 5_000,
            cost_usd: 0.25,
            body,
            hit_head: HitHead::default(),
        };
        assert_eq!(answer.replay_events(true).count(), 3);
        let without: Vec<&Bytes> = answer.replay_events(false).collect();
        assert_eq!(without.len(), 2);
        assert!(without[1].starts_with(b"data: [DONE]"));
        assert_eq!(wire::decode(&wire::encode(&answer)), Some(answer.clone()));
        assert_eq!(
            (answer.remaining_ms(3_000), answer.age_s(3_500)),
            (3_000, 2)
        );
    }

    #[test]
    fn anything_but_a_complete_success_is_refused() {
        let finish = |sse, chunks: &[&[u8]], status, complete| {
            record(sse, chunks, 1 << 20).finish(status, complete, "x")
        };
        assert_eq!(
            finish(true, &[&STREAM[..STREAM.len() - 16]], 200, true),
            Err(NotStored::Incomplete),
            "no [DONE]"
        );
        assert_eq!(
            finish(true, &[&STREAM[..STREAM.len() - 1]], 200, true),
            Err(NotStored::Incomplete),
            "[DONE] without its terminator"
        );
        let errored: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"h\"}}]}\n\ndata: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            finish(true, &[errored], 200, true),
            Err(NotStored::ErrorBody)
        );
        assert_eq!(
            finish(true, &[STREAM], 200, false),
            Err(NotStored::Incomplete)
        );
        assert_eq!(finish(false, &[b"{}"], 500, true), Err(NotStored::Status));
        assert_eq!(
            finish(false, &[br#"{"error":{"message":"x"}}"#], 200, true),
            Err(NotStored::ErrorBody)
        );
        assert_eq!(
            record(false, &[b"0123456789", b"0123456789"], 15).finish(200, true, "x"),
            Err(NotStored::TooLarge)
        );
        let ok = finish(false, &[br#"{"choices":[{"text":"error"}]}"#], 200, true);
        assert!(matches!(ok, Ok(AnswerBody::Plain { .. })), "{ok:?}");
    }

    #[test]
    fn a_recording_without_usage_cannot_serve_a_usage_request() {
        let body = record(
            true,
            &[b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"],
            1 << 20,
        )
        .finish(200, true, "text/event-stream")
        .unwrap();
        let a = CachedAnswer {
            route: String::new(),
            arm: String::new(),
            backend: String::new(),
            stored_at_ms: 0,
            ttl_ms: 1,
            cost_usd: 0.0,
            body,
            hit_head: HitHead::default(),
        };
        assert!(a.serves(false) && !a.serves(true));
    }

    #[test]
    fn corrupt_wire_data_is_refused() {
        assert_eq!(wire::decode(b"SYC1\0\0"), None);
        assert_eq!(wire::decode(b"nope"), None);
        let mut bad = b"SYC1".to_vec();
        bad.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(wire::decode(&bad), None);
        // Compressed: a length over the bound, a frame that is not zstd, a length that lies.
        let mut huge = b"SYZ1".to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(wire::decode(&huge), None);
        let mut junk = b"SYZ1\0\0\x10\0".to_vec();
        junk.extend_from_slice(b"not a zstd frame");
        assert_eq!(wire::decode(&junk), None);
        let big = wire::encode(&long_stream());
        assert!(big.starts_with(b"SYZ1"));
        let mut short = big.clone();
        short[4..8].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(wire::decode(&short), None);
    }

    /// A streamed answer of 64 token events, framed as vLLM frames them.
    fn long_stream() -> CachedAnswer {
        let mut events: Vec<Bytes> = (0..64)
            .map(|i| {
                Bytes::from(format!(
                    "data: {{\"id\":\"chatcmpl-42\",\"object\":\"chat.completion.chunk\",\"created\":1795846578,\"model\":\"llama-3.1-8b-instruct\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"finish_reason\":null}}]}}\n\n"
                ))
            })
            .collect();
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        CachedAnswer {
            route: "chat".into(),
            arm: "champion".into(),
            backend: "a".into(),
            stored_at_ms: 1,
            ttl_ms: 60_000,
            cost_usd: 0.000_1,
            body: AnswerBody::Stream {
                events,
                usage_event: None,
            },
            hit_head: HitHead::default(),
        }
    }

    #[test]
    fn large_entries_travel_compressed_and_small_ones_plain() {
        let answer = long_stream();
        let encoded = wire::encode(&answer);
        assert!(encoded.starts_with(b"SYZ1"), "compressed");
        assert!(
            encoded.len() * 5 < answer.weight(),
            "{} bytes for a {}-byte answer",
            encoded.len(),
            answer.weight()
        );
        assert_eq!(wire::decode(&encoded), Some(answer));
        let small = CachedAnswer {
            body: AnswerBody::Plain {
                content_type: "application/json".into(),
                bytes: Bytes::from_static(b"{\"ok\":true}"),
            },
            ..long_stream()
        };
        let encoded = wire::encode(&small);
        assert!(encoded.starts_with(b"SYC1"), "plain");
        assert_eq!(wire::decode(&encoded), Some(small));
    }
}
