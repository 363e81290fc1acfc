//! Requests per second the sim answers on one core: small non-streaming chat
//! completions (16 output tokens, no delays), 8 concurrent keep-alive
//! clients, sim and clients in one process on separate single-threaded
//! runtimes (one thread each).
//!
//! Run: `CARGO_TARGET_DIR=/work/main/target cargo bench -j 2 --bench sim_throughput`
//!
//! Measured on the 2-core dev machine (release bench profile, other builds
//! possibly running): `sim/chat_completion_c8 thrpt: [46.5k 48.7k 50.2k]
//! requests/s`, i.e. ~20 µs per request with the sim on one thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use switchyard::sim::{SimArgs, SimServer};

const CONCURRENCY: u64 = 8;

const BODY: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"Say hello to the benchmark."}]}"#;

fn single_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime builds")
}

/// Starts a sim on its own thread and runtime; the returned sender stops it.
fn spawn_sim() -> (String, std::sync::mpsc::Sender<()>) {
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        single_thread_runtime().block_on(async move {
            let sim = SimServer::start(SimArgs::default())
                .await
                .expect("sim starts");
            url_tx.send(sim.url()).expect("bench is waiting");
            // Park the runtime on a blocking-free wait so the sim keeps serving.
            tokio::task::spawn_blocking(move || stop_rx.recv())
                .await
                .ok();
            drop(sim);
        });
    });
    (url_rx.recv().expect("sim reports its url"), stop_tx)
}

fn sim_throughput(c: &mut Criterion) {
    let (url, stop) = spawn_sim();
    let uri: hyper::Uri = format!("{url}/v1/chat/completions").parse().unwrap();
    let client_runtime = single_thread_runtime();
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY as usize)
        .build_http();
    let client = Arc::new(client);

    let mut group = c.benchmark_group("sim");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    group.bench_function("chat_completion_c8", |b| {
        b.iter_custom(|iters| {
            client_runtime.block_on(async {
                let started = Instant::now();
                let workers: Vec<_> = (0..CONCURRENCY)
                    .map(|worker| {
                        let client = Arc::clone(&client);
                        let uri = uri.clone();
                        // Spread `iters` requests over the workers.
                        let share = iters / CONCURRENCY + u64::from(worker < iters % CONCURRENCY);
                        tokio::spawn(async move {
                            for _ in 0..share {
                                let request = hyper::Request::post(uri.clone())
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                                    .unwrap();
                                let response = client.request(request).await.expect("sim answers");
                                assert!(response.status().is_success());
                                response.into_body().collect().await.expect("body arrives");
                            }
                        })
                    })
                    .collect();
                for worker in workers {
                    worker.await.expect("worker finishes");
                }
                started.elapsed()
            })
        });
    });
    group.finish();
    let _ = stop.send(());
}

criterion_group!(benches, sim_throughput);
criterion_main!(benches);
