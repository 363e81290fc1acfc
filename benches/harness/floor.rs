//! The pingora floor: the least a request costs on pingora, to set switchyard's figures
//! against. Two modes, one worker thread, no policy, no logging:
//!
//! - `--upstream ADDR`: a bare `ProxyHttp` proxying every request to ADDR over pingora's
//!   keep-alive pool, the body replayed as pingora does by itself (what `upstream_peer` alone
//!   gives): pingora's own proxy path;
//! - `--answer`: pingora's HTTP/1 server session reads every request's head and body and writes
//!   a fixed JSON answer, the way switchyard answers a cache hit: the least an answer costs on
//!   the sessions switchyard is built on.
//!
//! Not part of the product: `switchyard-bench floor` serves until killed.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::upstreams::peer::HttpPeer;

/// A chat completion of the size the zero-work sim answers with.
const ANSWER: &[u8] = br#"{"id":"chatcmpl-floor","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"tok tok tok tok tok tok tok tok"},"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;

/// `--upstream`: pingora's own proxy path.
struct Proxy {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// `--answer`: one request per call, on the session pingora's connection loop hands over,
/// as switchyard's `Gateway` does.
struct Answer;

#[async_trait]
impl HttpServerApp for Answer {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        while session.read_request_body().await.ok()?.is_some() {}
        let mut head = ResponseHeader::build_no_case(200, Some(2)).ok()?;
        head.insert_header(http::header::CONTENT_TYPE, "application/json")
            .ok()?;
        head.insert_header(http::header::CONTENT_LENGTH, ANSWER.len())
            .ok()?;
        session.write_response_header(Box::new(head)).await.ok()?;
        session
            .write_response_body(Bytes::from_static(ANSWER), true)
            .await
            .ok()?;
        let settings = HttpPersistentSettings::for_session(&session);
        let reused = session.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(reused, settings))
    }
}

/// Serves on `listen` until the process is killed: proxying to `upstream`, or answering by
/// itself when it is `None`.
pub fn main(listen: SocketAddr, upstream: Option<SocketAddr>) -> ! {
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    match upstream {
        Some(upstream) => {
            let mut proxy =
                pingora::proxy::http_proxy_service(&server.configuration, Proxy { upstream });
            proxy.add_tcp(&listen.to_string());
            server.add_service(proxy);
        }
        None => {
            let mut answer = Service::new("floor".to_owned(), Answer);
            answer.add_tcp(&listen.to_string());
            server.add_service(answer);
        }
    }
    server.run_forever()
}
