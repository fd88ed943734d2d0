//! One HTTP/2 connection to one provider host, shared by every send: each send a stream on it,
//! the connection opened again when it closes. APNs asks providers for exactly this (and serves
//! nothing else); Google's FCM endpoint serves it too.
//!
//! Built on the `h2` crate, not on hyper's client: hyper's HTTP/2 client spawns a task per
//! request to drive its body and answer, and in the push benchmark that task machinery was
//! about 10 µs of CPU per push, as much as everything else the client does (perf,
//! bench/results/notify.md run 9). A push is one small body written at once and a short
//! answer: nothing in it needs a task of its own.
//!
//! Certificates are checked against the system's CA store (ca-certificates in the image;
//! `SSL_CERT_FILE` or `SSL_CERT_DIR` point elsewhere), which is also how a test has the client
//! trust a local CA. A plain `http://` base speaks h2c (prior knowledge).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use tower_service::Service;

/// A send with no answer after this long is retried (with the same collapse id).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Providers close connections idle for long; a ping this often keeps ours open, and one
/// unanswered for [`PING_TIMEOUT`] closes a connection that died without a word.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Sends one connection carries at once (APNs allows 1,000 streams); the rest wait their turn
/// before [`REQUEST_TIMEOUT`] starts. Left to h2, they would wait in its queue of streams not
/// yet opened, on the timeout's clock: a notify pool of 64 batches of 400 queues 25,600, and
/// at a provider answering 1,000 a second the last would time out and be sent again.
const MAX_STREAMS: usize = 1000;

/// The connector every host shares: rustls over TCP without Nagle, h2 by ALPN, checking
/// certificates against the system's store (read once, here).
pub fn connector() -> Result<HttpsConnector<HttpConnector>, String> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    // Many small frames in flight: Nagle would hold each behind the previous one's ACK.
    tcp.set_nodelay(true);
    // Sends wait behind a connect in progress; an unreachable host fails them all at once.
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("the system's CA certificates: {e}"))?
        .https_or_http()
        .enable_http2()
        .wrap_connector(tcp))
}

/// What a provider answered.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Read only when the status is not a success: a success's body says nothing we keep.
    pub body: Bytes,
}

pub struct Host {
    base: String,
    connector: HttpsConnector<HttpConnector>,
    /// The open connection; `None` before the first send and after it closed.
    open: Mutex<Option<Open>>,
    /// Held while connecting, so a burst of sends opens one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// A permit per send on the connection ([`MAX_STREAMS`]).
    streams: tokio::sync::Semaphore,
    /// [`REQUEST_TIMEOUT`] (a test's is shorter).
    request_timeout: Duration,
}

#[derive(Clone)]
struct Open {
    sender: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when the connection ends (GOAWAY, reset, failed ping).
    closed: Arc<AtomicBool>,
}

impl Host {
    pub fn new(base: &str, connector: HttpsConnector<HttpConnector>) -> Self {
        Host {
            base: base.trim_end_matches('/').to_owned(),
            connector,
            open: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            streams: tokio::sync::Semaphore::new(MAX_STREAMS),
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    /// The base URL, without a trailing slash: requests' URIs start with it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `head` (its URI absolute, under [`Host::base`]) with `body` on a stream of the
    /// connection, and waits for the answer. `Err` is a network error: whether the request
    /// arrived is unknown.
    pub async fn send(&self, head: Request<()>, body: Bytes) -> Result<Answer, String> {
        let _stream = self.streams.acquire().await.map_err(|e| e.to_string())?;
        let exchange = async {
            let sender = self.sender().await?.ready().await;
            let mut sender = sender.map_err(|e| e.to_string())?;
            let (answer, mut stream) = sender
                .send_request(head, false)
                .map_err(|e| e.to_string())?;
            stream.send_data(body, true).map_err(|e| e.to_string())?;
            let (parts, mut received) = answer.await.map_err(|e| e.to_string())?.into_parts();
            // Read to its end even when it is not kept: a stream dropped before its end is
            // reset, and h2 closes a connection as abusive after 1,024 resets of its own (FCM
            // answers 200 with a body; dropping those closed the connection every few
            // thousand sends, and each send on it was retried).
            let mut body = BytesMut::new();
            while let Some(chunk) = received.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = received.flow_control().release_capacity(chunk.len());
                if !parts.status.is_success() {
                    body.extend_from_slice(&chunk);
                }
            }
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body: body.freeze(),
            })
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "no answer within {} s",
                self.request_timeout.as_secs()
            )),
        }
    }

    fn current(&self) -> Option<h2::client::SendRequest<Bytes>> {
        let open = self.open.lock().expect("connection lock");
        open.as_ref()
            .filter(|o| !o.closed.load(Ordering::Acquire))
            .map(|o| o.sender.clone())
    }

    /// A handle on the open connection, connecting first when there is none.
    async fn sender(&self) -> Result<h2::client::SendRequest<Bytes>, String> {
        match self.current() {
            Some(sender) => Ok(sender),
            // Boxed: the TLS and HTTP/2 handshakes' state is kilobytes, and unboxed it would be
            // part of every send's future, which a batch holds a hundred of (moving and zeroing
            // them was a tenth of the worker process's CPU; bench/results/notify.md, run 8).
            None => Box::pin(self.connect()).await,
        }
    }

    async fn connect(&self) -> Result<h2::client::SendRequest<Bytes>, String> {
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        let uri: hyper::Uri = self
            .base
            .parse()
            .map_err(|e| format!("endpoint {}: {e}", self.base))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.base))?;
        let (sender, mut connection) = h2::client::Builder::new()
            // One stream until the server's SETTINGS say how many it allows: h2 assumes no limit
            // until then, and a notify pool's first burst opened 6,400 streams; the local APNs
            // server refused those over its 1,000 and, at 1,024 refusals, closed the connection
            // as abusive (GOAWAY too_many_internal_resets), so every send on it was retried.
            // hyper's 100 would still be too many for a server allowing fewer. The cost is the
            // first burst waiting for the server's SETTINGS, which come first on a connection.
            .initial_max_send_streams(1)
            .enable_push(false)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {}: {e}", self.base))?;
        let closed = Arc::new(AtomicBool::new(false));
        let mut ping_pong = connection.ping_pong().expect("taken once, here");
        let (base, ended) = (self.base.clone(), closed.clone());
        tokio::spawn(async move {
            let keep_alive = async {
                loop {
                    tokio::time::sleep(KEEP_ALIVE).await;
                    match tokio::time::timeout(PING_TIMEOUT, ping_pong.ping(h2::Ping::opaque()))
                        .await
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return e.to_string(),
                        Err(_) => return "no answer to a ping".to_owned(),
                    }
                }
            };
            // Dropping the connection closes it; its streams fail and are retried.
            let why = tokio::select! {
                ended = connection => ended.err().map(|e| e.to_string()),
                failed = keep_alive => Some(failed),
            };
            ended.store(true, Ordering::Release);
            tracing::debug!(endpoint = %base, error = ?why, "HTTP/2 connection closed");
        });
        *self.open.lock().expect("connection lock") = Some(Open {
            sender: sender.clone(),
            closed,
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use hyper::{Method, Response};

    use super::*;

    /// An h2c server answering every request 200 after `delay` (testkit's fake providers
    /// depend on this crate, so a unit test here cannot use them).
    async fn slow_server(delay: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(tcp).await.unwrap();
            while let Some(Ok((_, mut respond))) = connection.accept().await {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let answer = Response::new(());
                    let _ = respond.send_response(answer, true);
                });
            }
        });
        base
    }

    /// Sends waiting for one of the connection's streams are not on their request timeout's
    /// clock: ten sends through two streams to a provider answering in 300 ms take 1.5 s, and
    /// none times out at 1 s (the last two waited 1.2 s for a stream).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_waiting_for_a_stream_is_not_timed_out() {
        let base = slow_server(Duration::from_millis(300)).await;
        let mut host = Host::new(&base, connector().expect("connector"));
        host.streams = tokio::sync::Semaphore::new(2);
        host.request_timeout = Duration::from_secs(1);

        let sends = (0..10).map(|i| {
            let mut head = Request::new(());
            *head.method_mut() = Method::POST;
            *head.uri_mut() = format!("{}/3/device/token{i}", host.base())
                .parse()
                .expect("uri");
            host.send(head, Bytes::from_static(b"{}"))
        });
        let started = std::time::Instant::now();
        let answers = futures::future::join_all(sends).await;
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "two streams at a time: five rounds of 300 ms"
        );
        for answer in answers {
            let answer = answer.expect("every send answered, none timed out");
            assert_eq!(answer.status, StatusCode::OK);
        }
    }
}
