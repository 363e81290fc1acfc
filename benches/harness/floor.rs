//! The pingora floor: the least any proxy built on pingora's `ProxyHttp` costs, to set
//! switchyard's figures against. Two modes, one worker thread, no policy, no logging:
//!
//! - `--upstream ADDR`: every request is proxied to ADDR over pingora's keep-alive pool, the
//!   body replayed as pingora does by itself (what `upstream_peer` alone gives);
//! - `--answer`: every request body is read and a fixed JSON answer written from the hook,
//!   the way switchyard answers a cache hit.
//!
//! Not part of the product: `switchyard-bench floor` serves until killed.

use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

/// A chat completion of the size the zero-work sim answers with.
const ANSWER: &[u8] = br#"{"id":"chatcmpl-floor","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"tok tok tok tok tok tok tok tok"},"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;

struct Floor {
    upstream: Option<SocketAddr>,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        if self.upstream.is_some() {
            return Ok(false);
        }
        while session.read_request_body().await?.is_some() {}
        let mut head = ResponseHeader::build_no_case(200, Some(2))?;
        head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        head.insert_header(http::header::CONTENT_LENGTH, ANSWER.len())?;
        session.write_response_header(Box::new(head), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(ANSWER)), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let addr = self.upstream.expect("answer mode never asks for a peer");
        Ok(Box::new(HttpPeer::new(addr, false, String::new())))
    }
}

/// Serves on `listen` until the process is killed.
pub fn main(listen: SocketAddr, upstream: Option<SocketAddr>) -> ! {
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Floor { upstream });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever()
}
