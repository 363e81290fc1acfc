//! The sim's HTTP side: listener, routing, and acting out the model's plan
//! in time (sleeps, SSE frames, injected faults).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::args::SimArgs;
use super::error::{error_kind, SimError, StreamDropped, MAX_BODY_BYTES};
use super::faults::Faults;
use super::kv_cache::{block_hashes, PrefixCache};
use super::metrics::{CacheFigures, InFlight, Metrics};
use super::model::BYTES_PER_TOKEN;
use super::model::{count_tokens, output_tokens, LatencyModel, Plan};
use super::openai::{
    self, AnswerMeta, EmbeddingRequest, Endpoint, ErrorBody, ErrorEnvelope, FinishReason,
    Generation, Usage,
};
use super::stream::{Event, Script};
use super::text::{completion_text, embedding, TokenStream};
use super::tokenize::{
    detokenize, token_ids, DetokenizeRequest, Rendered, TokenizeRequest, Tokenized,
};

/// Header naming the sim that answered, on every response.
pub const SIM_NAME_HEADER: HeaderName = HeaderName::from_static("x-sim-name");

/// How many requests [`SimServer::received`] remembers.
pub const RECEIVED_CAPACITY: usize = 64;

type SimBody = UnsyncBoxBody<Bytes, StreamDropped>;

/// A request as the sim received it, for tests that check what a gateway
/// forwarded. The body is exactly the bytes that arrived (de-chunked).
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running sim. Dropping it stops the listener and closes every
/// connection at once; [`SimServer::shutdown`] lets in-flight answers finish.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    state: Arc<SimState>,
    stop: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Binds `args.listen` (port 0 picks a free port) and serves on the
    /// current tokio runtime; returns once the socket listens.
    pub async fn start(args: SimArgs) -> io::Result<SimServer> {
        let listener = TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(&args, addr)?);
        let (stop, stopped) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&state), stopped));
        Ok(SimServer {
            addr,
            state,
            stop,
            accept_task: Some(accept_task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, the base URL to put in a gateway's backend list.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The last [`RECEIVED_CAPACITY`] requests, oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.state.received.lock().iter().cloned().collect()
    }

    /// Requests received so far, any path and outcome.
    pub fn requests_served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets in-flight requests and streams finish, closes
    /// idle keep-alive connections, and returns when all are gone.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet; aborting it aborts them.
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
    }
}

/// Runs the `switchyard sim` command: its own runtime with `--threads`
/// workers, until Ctrl-C.
pub fn run(args: SimArgs) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = SimServer::start(args).await?;
        tracing::info!(
            addr = %server.addr(),
            name = ?server.state.name,
            models = ?server.state.models,
            "sim listening"
        );
        tokio::signal::ctrl_c().await?;
        tracing::info!("sim stopping on Ctrl-C");
        drop(server);
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener, state: Arc<SimState>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&state), stop.clone()));
                }
                Err(error) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "sim accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    state: Arc<SimState>,
    mut stop: watch::Receiver<bool>,
) {
    // Without it, Nagle holds back small SSE frames and spoils the token timing.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "sim could not set TCP_NODELAY");
    }
    let service = service_fn(move |request| Arc::clone(&state).serve(request));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "sim connection ended with an error");
            }
            return;
        }
        _ = stop.changed() => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

/// Everything shared by one sim's connections.
#[derive(Debug)]
struct SimState {
    models: Vec<String>,
    name: HeaderValue,
    seed: u64,
    refusal: Option<Arc<str>>,
    max_output_tokens: u32,
    embedding_dim: u32,
    kv_block_tokens: u32,
    max_concurrency: Option<usize>,
    retry_after: HeaderValue,
    latency: LatencyModel,
    faults: Faults,
    prefix_cache: Mutex<PrefixCache>,
    metrics: Arc<Metrics>,
    received: Mutex<VecDeque<ReceivedRequest>>,
    served: AtomicU64,
    answer_ids: AtomicU64,
}

impl SimState {
    fn new(args: &SimArgs, addr: SocketAddr) -> io::Result<Self> {
        let name = args.name.clone().unwrap_or_else(|| addr.to_string());
        let name = HeaderValue::try_from(name).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--name is not a valid header value: {e}"),
            )
        })?;
        if args.models.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at least one --model is needed",
            ));
        }
        Ok(SimState {
            models: args.models.clone(),
            name,
            seed: args.seed,
            refusal: args.refusal.as_deref().map(Arc::from),
            max_output_tokens: args.max_output_tokens,
            embedding_dim: args.embedding_dim,
            kv_block_tokens: args.kv_block_tokens,
            max_concurrency: args.max_concurrency,
            retry_after: HeaderValue::from(args.retry_after_s),
            latency: LatencyModel {
                ttft: args.ttft(),
                prefill_per_token: args.prefill_per_token(),
                tpot: args.tpot(),
            },
            faults: Faults::new(args),
            prefix_cache: Mutex::new(PrefixCache::new(args.kv_cache_blocks, args.kv_block_tokens)),
            metrics: Arc::new(Metrics::default()),
            received: Mutex::new(VecDeque::with_capacity(RECEIVED_CAPACITY)),
            served: AtomicU64::new(0),
            answer_ids: AtomicU64::new(0),
        })
    }

    /// hyper's entry point: every response, errors included, leaves here
    /// with `x-sim-name` and is counted.
    async fn serve(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<SimBody>, Infallible> {
        let mut response = match self.answer(request).await {
            Ok(response) => response,
            Err(error) => self.error_response(&error),
        };
        response
            .headers_mut()
            .insert(SIM_NAME_HEADER, self.name.clone());
        self.metrics.count_response(response.status());
        Ok(response)
    }

    async fn answer(&self, request: Request<Incoming>) -> Result<Response<SimBody>, SimError> {
        let (parts, body) = request.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    SimError::BodyTooLarge
                } else {
                    SimError::BodyRead(error.to_string())
                }
            })?
            .to_bytes();
        let path = parts.uri.path();
        self.record(ReceivedRequest {
            method: parts.method.clone(),
            path: path.to_owned(),
            headers: parts.headers,
            body: body.clone(),
        });
        match (&parts.method, path) {
            (&Method::GET, "/health") => Ok(response(StatusCode::OK, "text/plain", Bytes::new())),
            (&Method::GET, "/metrics") => Ok(self.metrics_response()),
            (&Method::GET, "/v1/models") => Ok(json_response(
                StatusCode::OK,
                openai::model_list(&self.models, unix_now()),
            )),
            (&Method::POST, "/v1/chat/completions") => {
                let request: openai::ChatRequest = parse(&body)?;
                self.generate(Endpoint::Chat, request.into()).await
            }
            (&Method::POST, "/v1/completions") => {
                let request: openai::CompletionRequest = parse(&body)?;
                self.generate(Endpoint::Completion, request.into()).await
            }
            (&Method::POST, "/v1/embeddings") => self.embed(parse(&body)?).await,
            (&Method::POST, "/tokenize") => {
                let (model, prompt) = parse::<TokenizeRequest>(&body)?.into_prompt();
                self.check_model(&model)?;
                let tokens = token_ids(&prompt);
                Ok(json_response(
                    StatusCode::OK,
                    openai::to_json(&Tokenized {
                        count: tokens.len(),
                        max_model_len: MAX_BODY_BYTES / BYTES_PER_TOKEN,
                        tokens,
                        token_strs: None,
                    }),
                ))
            }
            (&Method::POST, "/detokenize") => {
                let request: DetokenizeRequest = parse(&body)?;
                self.check_model(&request.model)?;
                let prompt = detokenize(&request.tokens);
                Ok(json_response(
                    StatusCode::OK,
                    openai::to_json(&serde_json::json!({ "prompt": prompt })),
                ))
            }
            (&Method::POST, "/v1/chat/completions/render") => {
                let generation = Generation::from(parse::<openai::ChatRequest>(&body)?);
                self.check_model(&generation.model)?;
                Ok(json_response(
                    StatusCode::OK,
                    openai::to_json(&Rendered {
                        token_ids: token_ids(&generation.prompt),
                        prompt: String::from_utf8_lossy(&generation.prompt).into_owned(),
                        model: generation.model,
                    }),
                ))
            }
            (
                _,
                "/health"
                | "/metrics"
                | "/v1/models"
                | "/v1/chat/completions"
                | "/v1/completions"
                | "/v1/embeddings"
                | "/tokenize"
                | "/detokenize"
                | "/v1/chat/completions/render",
            ) => Err(SimError::MethodNotAllowed(path.to_owned())),
            _ => Err(SimError::NoRoute(path.to_owned())),
        }
    }

    fn record(&self, request: ReceivedRequest) {
        self.served.fetch_add(1, Ordering::Relaxed);
        let mut received = self.received.lock();
        if received.len() == RECEIVED_CAPACITY {
            received.pop_front();
        }
        received.push_back(request);
    }

    fn check_model(&self, model: &str) -> Result<(), SimError> {
        if self.models.iter().any(|m| m == model) {
            Ok(())
        } else {
            Err(SimError::ModelNotFound(model.to_owned()))
        }
    }

    /// The checks every model request passes before any work: served model,
    /// concurrency limit, injected error. Returns its in-flight guard.
    fn admit(&self, model: &str) -> Result<InFlight, SimError> {
        self.check_model(model)?;
        let in_flight = self
            .metrics
            .admit(self.max_concurrency)
            .ok_or(SimError::Overloaded(self.max_concurrency.unwrap_or(0)))?;
        match self.faults.injected_error() {
            Some(status) => Err(SimError::Injected(status)),
            None => Ok(in_flight),
        }
    }

    async fn generate(
        &self,
        endpoint: Endpoint,
        generation: Generation,
    ) -> Result<Response<SimBody>, SimError> {
        let arrived = Instant::now();
        if generation.max_tokens == Some(0) {
            return Err(SimError::ZeroMaxTokens);
        }
        let in_flight = self.admit(&generation.model)?;
        let prompt_tokens = count_tokens(&generation.prompt);
        let hashes = block_hashes(&generation.model, &generation.prompt, self.kv_block_tokens);
        let cached_tokens = self.prefix_cache.lock().admit(prompt_tokens, &hashes);
        let completion_tokens = output_tokens(generation.max_tokens, self.max_output_tokens);
        let plan = self
            .latency
            .plan(prompt_tokens, cached_tokens, completion_tokens);
        self.metrics.count_tokens(prompt_tokens, completion_tokens);
        let id = self.answer_ids.fetch_add(1, Ordering::Relaxed);
        let meta = AnswerMeta {
            endpoint,
            id: match endpoint {
                Endpoint::Chat => format!("chatcmpl-sim-{id}"),
                Endpoint::Completion => format!("cmpl-sim-{id}"),
            },
            created: unix_now(),
            model: generation.model,
            finish_reason: if self.faults.content_filtered() {
                FinishReason::ContentFilter
            } else {
                FinishReason::Length
            },
        };
        let usage = Usage::new(prompt_tokens, cached_tokens, completion_tokens);
        let start = self.stall(arrived).await;
        if !generation.stream {
            sleep_until(start + plan.total()).await;
            let mut text = completion_text(self.seed, &generation.prompt, completion_tokens);
            if let Some(refusal) = &self.refusal {
                text.insert_str(0, refusal);
            }
            return Ok(json_response(StatusCode::OK, meta.answer(&text, usage)));
        }
        let writer = SseWriter {
            script: Script::new(plan, generation.include_usage, self.faults.stream_fault),
            tokens: TokenStream::new(self.seed, &generation.prompt),
            refusal: self.refusal.clone(),
            plan,
            usage,
            meta,
            start,
            events: 0,
            _in_flight: in_flight,
        };
        let frames = futures::stream::unfold(writer, |mut writer| async move {
            let frame = writer.next_frame().await?;
            Some((frame, writer))
        });
        let mut response = Response::new(UnsyncBoxBody::new(StreamBody::new(frames)));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(response)
    }

    async fn embed(&self, request: EmbeddingRequest) -> Result<Response<SimBody>, SimError> {
        let arrived = Instant::now();
        let _in_flight = self.admit(&request.model)?;
        let inputs = request.input.pieces();
        let prompt_tokens = inputs.iter().map(|input| count_tokens(input)).sum();
        self.metrics.count_tokens(prompt_tokens, 0);
        let plan = self.latency.plan(prompt_tokens, 0, 0);
        let start = self.stall(arrived).await;
        sleep_until(start + plan.total()).await;
        let vectors: Vec<Vec<f32>> = inputs
            .iter()
            .map(|input| embedding(self.seed, input, self.embedding_dim))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            openai::embedding_list(&request.model, &vectors, prompt_tokens),
        ))
    }

    /// Holds the request for `--stall-ms` from its arrival, counted as
    /// waiting; returns when generation starts.
    async fn stall(&self, arrived: Instant) -> Instant {
        let start = arrived + self.faults.stall;
        if !self.faults.stall.is_zero() {
            let _waiting = self.metrics.waiting();
            sleep_until(start).await;
        }
        start
    }

    fn metrics_response(&self) -> Response<SimBody> {
        let cache = {
            let cache = self.prefix_cache.lock();
            CacheFigures {
                usage: cache.usage(),
                queried_tokens: cache.queried_tokens(),
                hit_tokens: cache.hit_tokens(),
            }
        };
        let text = self.metrics.render(&self.models[0], cache);
        response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            Bytes::from(text),
        )
    }

    fn error_response(&self, error: &SimError) -> Response<SimBody> {
        let message = error.to_string();
        let body = openai::to_json(&ErrorEnvelope {
            error: ErrorBody {
                message: &message,
                kind: error.kind(),
                code: error.code(),
            },
        });
        let mut response = json_response(error.status(), body);
        if error.status() == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(RETRY_AFTER, self.retry_after.clone());
        }
        response
    }
}

/// Acts out one streamed answer: waits for each scripted event's due time
/// and turns it into one SSE frame. hyper writes and flushes a frame as soon
/// as the body yields it and the next is not ready, so frames reach the
/// client at their own times.
struct SseWriter {
    script: Script,
    tokens: TokenStream,
    /// Sent as the first token's text instead of a generated word.
    refusal: Option<Arc<str>>,
    plan: Plan,
    usage: Usage,
    meta: AnswerMeta,
    start: Instant,
    events: u32,
    /// Keeps the request counted as running until the stream ends or the
    /// client goes away (hyper drops the body).
    _in_flight: InFlight,
}

impl SseWriter {
    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, StreamDropped>> {
        let (due, event) = self.script.next()?;
        sleep_until(self.start + due).await;
        let data = match event {
            Event::Token(index) => {
                let word = self.tokens.next().unwrap_or_default();
                let token = match &self.refusal {
                    Some(refusal) if index == 0 => refusal,
                    _ => word,
                };
                let last = index + 1 == self.plan.completion_tokens;
                self.meta.token_event(token, index == 0, last)
            }
            Event::Usage => self.meta.usage_event(self.usage),
            Event::Error => openai::sse_event(&ErrorEnvelope {
                error: ErrorBody {
                    message: "injected mid-stream failure (--stream-error-after)",
                    kind: error_kind(StatusCode::INTERNAL_SERVER_ERROR),
                    code: "stream_error",
                },
            }),
            Event::Done => Bytes::from_static(openai::DONE_EVENT),
            Event::Drop => {
                // hyper discards unflushed output when a body fails; yielding
                // once lets it flush the events already written (it flushes
                // whenever the body is pending), so the client sees them first.
                tokio::task::yield_now().await;
                return Some(Err(StreamDropped(self.events)));
            }
        };
        self.events += 1;
        Some(Ok(Frame::data(data)))
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, SimError> {
    Ok(serde_json::from_slice(body)?)
}

/// Sleeps only when the deadline is ahead; the zero-delay configuration
/// then never touches the timer wheel.
async fn sleep_until(deadline: Instant) {
    if deadline > Instant::now() {
        tokio::time::sleep_until(deadline).await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<SimBody> {
    let mut response = Response::new(UnsyncBoxBody::new(
        Full::new(body).map_err(|never: Infallible| match never {}),
    ));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<SimBody> {
    response(status, "application/json", Bytes::from(body))
}
