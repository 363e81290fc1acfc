//! Assembles the pingora server: the proxy service, the admin service and the policy file
//! watcher, all sharing one [`PolicyStore`].

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::prelude::background_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::backends::{BackendScraper, HealthChecker};
use crate::config::watch::PolicyFileWatcher;
use crate::config::{FieldError, PolicyStore};
use crate::cost::spend::SpendSync;
use crate::guardrails::{GuardrailRuntime, GuardrailTask};
use crate::listener::{HardenedListener, Role};
use crate::metrics::Metrics;
use crate::proxy::Gateway;

/// How often the policy file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the pingora server for `store`'s policy. `policy_file`, when given, is watched.
pub fn build(
    store: Arc<PolicyStore>,
    policy_file: Option<PathBuf>,
    watch_interval: Duration,
) -> Server {
    let settings = store.current().policy.server.clone();
    let conf = ServerConf {
        threads: settings.threads,
        // On SIGTERM the listeners close and in-flight requests get this long to finish
        // (pingora waits the whole period). SIGINT stops at once.
        grace_period_seconds: Some(10),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // Both listeners run behind `HardenedListener`: connection limits, a head deadline and a
    // keep-alive idle timeout that pingora's own connection loop does not have. The proxy's
    // limit is capped by the descriptors the process can have, raised here first.
    let fd_limit = crate::listener::raise_fd_limit().unwrap_or(1_024);
    let fd_cap = crate::listener::proxy_connection_cap(fd_limit, settings.admin_max_connections);
    if fd_cap < settings.max_connections {
        tracing::warn!(
            fd_limit,
            max_connections = settings.max_connections,
            cap = fd_cap,
            "the descriptor limit holds fewer proxy connections than server.max_connections"
        );
    }
    let mut proxy = Service::new(
        "switchyard proxy".to_owned(),
        HardenedListener::new(
            Gateway::new(store.clone()),
            store.clone(),
            Role::Proxy { fd_cap },
        ),
    );
    proxy.add_tcp(&settings.listen.to_string());

    let guardrails = Arc::new(GuardrailRuntime::new(store.clone()));
    let mut admin = Service::new(
        "switchyard admin".to_owned(),
        HardenedListener::new(
            AdminApp::new(store.clone(), guardrails.clone()),
            store.clone(),
            Role::Admin,
        ),
    );
    admin.add_tcp(&settings.admin_listen.to_string());
    admin.threads = Some(1);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service(
        "budget counters sync",
        SpendSync {
            ledger: store.spend().clone(),
            redis: store.redis().clone(),
        },
    ));
    // Always running: it idles while the policy turns scraping off, and a swap may turn it on.
    server.add_service(background_service(
        "backend scraper",
        BackendScraper {
            store: store.clone(),
        },
    ));
    // Always running: it idles while no backend has a health check.
    server.add_service(background_service(
        "backend health checker",
        HealthChecker {
            store: store.clone(),
        },
    ));
    server.add_service(background_service(
        "guardrail evaluator",
        GuardrailTask {
            runtime: guardrails,
        },
    ));
    if let Some(path) = policy_file {
        server.add_service(background_service(
            "policy file watcher",
            PolicyFileWatcher {
                path,
                store,
                interval: watch_interval,
            },
        ));
    }
    server
}

/// Parses the policy and builds the store that backs a server.
pub fn new_store(policy_text: &str) -> Result<Arc<PolicyStore>, Vec<FieldError>> {
    let windows = crate::config::parse_policy(policy_text)?.guardrails.windows;
    Ok(Arc::new(PolicyStore::new(
        policy_text,
        Arc::new(Metrics::with_windows(windows)),
    )?))
}

struct StopSignal(tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        if let Some(rx) = self.0.lock().await.take() {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

/// A gateway running on its own threads inside this process (tests, benches, embedding).
/// Dropping it stops the server and waits for its threads.
pub struct RunningGateway {
    pub store: Arc<PolicyStore>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningGateway {
    /// Starts the gateway for `policy_text` (its listen addresses must be concrete ports) and
    /// returns once both listeners accept connections.
    pub fn start(
        policy_text: &str,
        policy_file: Option<PathBuf>,
        watch_interval: Duration,
    ) -> Result<RunningGateway, String> {
        let store = new_store(policy_text).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        let settings = store.current().policy.server.clone();
        let server = build(store.clone(), policy_file, watch_interval);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("switchyard-server".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(StopSignal(tokio::sync::Mutex::new(Some(rx)))),
                })
            })
            .map_err(|e| e.to_string())?;
        let gateway = RunningGateway {
            store,
            proxy_addr: settings.listen,
            admin_addr: settings.admin_listen,
            stop: Some(tx),
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in [settings.listen, settings.admin_listen] {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                if Instant::now() > deadline {
                    return Err(format!("{addr} did not start listening within 10 s"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(gateway)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
