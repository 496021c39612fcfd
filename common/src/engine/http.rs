//! The HTTP plumbing every service shares: a hyper 1 accept loop with limits
//! and graceful shutdown, response helpers, and the operational routes
//! (`/health`, `/ready`, `/metrics`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every response body: a whole one ([`full`]) or a stream of chunks ([`streaming`]).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A body sent at once.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A body sent chunk by chunk as `chunks` yields them (Server-Sent Events);
/// it ends when the stream does.
pub fn streaming(chunks: impl futures::Stream<Item = Bytes> + Send + 'static) -> Body {
    use futures::StreamExt;
    StreamBody::new(chunks.map(|chunk| Ok(hyper::body::Frame::data(chunk)))).boxed_unsync()
}

/// Limits and transport options applied to every connection.
#[derive(Clone)]
pub struct ServerLimits {
    /// Time a client has to send a complete request head (slow-client defence).
    pub header_read_timeout: Duration,
    /// Largest request head (request line plus headers) in bytes.
    pub max_header_bytes: usize,
    /// Serve TLS instead of plain HTTP.
    pub tls: Option<TlsAcceptor>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { header_read_timeout: Duration::from_secs(5), max_header_bytes: 16 * 1024, tls: None }
    }
}

impl ServerLimits {
    /// Default limits, with TLS if the edge configuration names a certificate and key.
    ///
    /// # Errors
    /// When the certificate or key cannot be loaded.
    pub fn from_edge(edge: &crate::engine::config::EdgeConfig) -> anyhow::Result<Self> {
        let tls = match (&edge.tls_cert, &edge.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        Ok(ServerLimits { tls, ..ServerLimits::default() })
    }
}

/// The client's address, put into every request's extensions by [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Serves `handler` on `listener` until `token` is cancelled, then stops
/// accepting and waits (at most `drain`) for in-flight requests to finish.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    token: CancellationToken,
    drain: Duration,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (handler, token, limits) = (handler.clone(), token.clone(), limits.clone());
        connections.spawn(async move {
            match &limits.tls {
                None => serve_connection(stream, peer, handler, &limits, token).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => serve_connection(tls, peer, handler, &limits, token).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(drain, connections.wait()).await.is_err() {
        tracing::warn!("connections still open after the drain period; closing them");
    }
}

async fn serve_connection<IO, H, F>(
    io: IO,
    peer: SocketAddr,
    handler: H,
    limits: &ServerLimits,
    token: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A TLS acceptor from PEM files (certificate chain and private key).
///
/// # Errors
/// When a file cannot be read or holds no usable certificate or key.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("opening {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key = match PrivateKeyDer::from_pem_file(key) {
        Ok(found) => found,
        Err(pem::Error::NoItemsFound) => anyhow::bail!("no private key in {}", key.display()),
        Err(pem::Error::Io(e)) => return Err(e).with_context(|| format!("opening {}", key.display())),
        Err(e) => return Err(e).with_context(|| format!("reading the private key from {}", key.display())),
    };
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds a listener, with a readable error.
///
/// # Errors
/// When the address is taken or not allowed.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

/// A `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A JSON answer (the body already serialized).
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A one-line plain-text error: the reason, then a newline.
pub fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response<Body> {
    text(status, format!("{reason}\n"))
}

/// 503 with `Retry-After` (seconds): overload or a dependency down, never a silent drop.
pub fn unavailable(reason: impl std::fmt::Display, retry_after_secs: u32) -> Response<Body> {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// 405 with the `Allow` header.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("method not allowed; use {allow}"));
    r.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    r
}

pub fn no_content() -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// A readiness check: true when every dependency of the service answers.
pub type ReadyCheck = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The operational routes shared by all services.
#[derive(Clone)]
pub struct OpsRoutes {
    pub service: &'static str,
    pub metrics: PrometheusHandle,
    pub ready: ReadyCheck,
}

impl OpsRoutes {
    /// Answers `/health`, `/ready` and `/metrics`; `None` for any other path.
    pub async fn handle(&self, method: &Method, path: &str) -> Option<Response<Body>> {
        let route = match path {
            "/health" | "/ready" | "/metrics" => path,
            _ => return None,
        };
        if method != Method::GET && method != Method::HEAD {
            return Some(method_not_allowed("GET"));
        }
        Some(match route {
            "/health" => text(StatusCode::OK, "ok\n"),
            "/ready" => match (self.ready)().await {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(reason) => unavailable(format!("not ready: {reason}"), 1),
            },
            _ => {
                let mut r = text(StatusCode::OK, self.metrics.render());
                r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                r
            }
        })
    }
}

/// Records the standard request metrics (`route` is a fixed label, never the raw path).
///
/// The counter and histogram of each labels' set are looked up by name and
/// labels once per thread, then kept: the registry's lookup, its label
/// strings and the status's text were a visible part of a cached answer's
/// CPU (docs/benchmarks-notes.md). Keyed by the labels' addresses: two equal
/// labels at two addresses only take two entries for the same handles.
pub fn record_request(service: &'static str, route: &'static str, status: StatusCode, started: Instant) {
    type Handles = std::collections::HashMap<(usize, usize, u16), (metrics::Counter, metrics::Histogram)>;
    thread_local! {
        static HANDLES: std::cell::RefCell<Handles> = std::cell::RefCell::new(Handles::new());
    }
    let key = (service.as_ptr() as usize, route.as_ptr() as usize, status.as_u16());
    HANDLES.with_borrow_mut(|handles| {
        let (requests, duration) = handles.entry(key).or_insert_with(|| {
            let status = status.as_u16().to_string();
            (
                metrics::counter!("analytics_http_requests_total", "service" => service, "route" => route, "status" => status),
                metrics::histogram!("analytics_http_request_duration_seconds", "service" => service, "route" => route),
            )
        });
        requests.increment(1);
        duration.record(started.elapsed().as_secs_f64());
    });
}

/// Serves only the operational routes (the processor and materializer have no other HTTP API).
pub async fn serve_ops(listener: TcpListener, ops: OpsRoutes, token: CancellationToken) {
    let handler = move |req: Request<Incoming>| {
        let ops = ops.clone();
        async move {
            let started = Instant::now();
            let resp = match ops.handle(req.method(), req.uri().path()).await {
                Some(r) => r,
                None => error(StatusCode::NOT_FOUND, "not found; this service serves /health, /ready and /metrics"),
            };
            record_request(ops.service, "ops", resp.status(), started);
            resp
        }
    };
    serve(listener, handler, ServerLimits::default(), token, Duration::from_secs(1)).await;
}

/// What a listener's serve function returns: runs until its token is cancelled.
pub type Serving = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A listener a workload serves beside the service's HTTP one (its gRPC API,
/// say). The engine binds `addr` at start-up (failing the start if it cannot),
/// runs `serve` on it, cancels the token at shutdown and waits for it to end.
pub struct Listener {
    /// Names it in logs.
    pub name: &'static str,
    pub addr: std::net::SocketAddr,
    pub serve: Box<dyn FnOnce(TcpListener, CancellationToken) -> Serving + Send>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("name", &self.name).field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// What a workload's listener shares with its service's HTTP edge: the
/// transport limits (TLS, the slow-client limit) and the shutdown drain.
#[derive(Clone)]
pub struct ListenerLimits {
    pub limits: ServerLimits,
    pub drain: Duration,
}

impl ListenerLimits {
    /// The limits of a service's HTTP edge (`edge`) and its shutdown drain.
    ///
    /// # Errors
    /// As [`ServerLimits::from_edge`] (the TLS certificate cannot be read).
    pub fn from_edge(edge: &crate::engine::config::EdgeConfig, drain: Duration) -> anyhow::Result<Self> {
        Ok(ListenerLimits { limits: ServerLimits::from_edge(edge)?, drain })
    }
}

/// Binds every listener, then serves each on its own task until `token` is
/// cancelled; the returned handles end when they stopped.
///
/// # Errors
/// When an address cannot be bound: the service does not start half-served.
pub async fn spawn_listeners(
    listeners: Vec<Listener>,
    token: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut bound = Vec::with_capacity(listeners.len());
    for l in listeners {
        let socket =
            TcpListener::bind(l.addr).await.map_err(|e| anyhow::anyhow!("binding {} on {}: {e}", l.name, l.addr))?;
        bound.push((l, socket));
    }
    Ok(bound
        .into_iter()
        .map(|(l, socket)| {
            let (name, token) = (l.name, token.clone());
            tracing::info!(listener = name, addr = %l.addr, "listening");
            tokio::spawn(async move {
                if let Err(e) = (l.serve)(socket, token).await {
                    tracing::error!(listener = name, error = %e, "listener stopped");
                }
            })
        })
        .collect())
}
