//! A local HTTP server for the fake providers: HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on
//! one listener, or both over TLS (`serve_with`, ALPN), each request handed to an async function.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc};

use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

/// A request with its body read.
pub struct Received {
    pub method: hyper::Method,
    /// HTTP/1.1 or HTTP/2, as the client negotiated it.
    pub version: hyper::Version,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

pub type Reply = Response<Full<Bytes>>;

pub fn reply(status: u16, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .expect("valid response")
}

/// Serves until the returned handle is aborted (dropping the runtime does it too).
pub async fn serve<F, Fut>(handler: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    serve_with(handler, None, STREAM_LIMIT).await
}

/// The HTTP/2 streams a connection may have open at once unless a server says otherwise
/// (what APNs allows a provider connection).
pub const STREAM_LIMIT: u32 = 1000;

/// As `serve`, over TLS with the given configuration when there is one, and with
/// `stream_limit` as HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS.
pub async fn serve_with<F, Fut>(
    handler: F,
    tls: Option<Arc<rustls::ServerConfig>>,
    stream_limit: u32,
) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let addr = listener.local_addr().expect("local addr");
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let received = Received {
                            method: parts.method,
                            version: parts.version,
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers,
                            body,
                        };
                        Ok::<_, Infallible>(handler(received).await)
                    }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http2().max_concurrent_streams(stream_limit);
                match tls {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return; // a failed handshake: the client sees it
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    (addr, task)
}
