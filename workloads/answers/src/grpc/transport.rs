//! Serving a tonic router on an engine-bound listener: plain HTTP/2 or TLS
//! (ALPN `h2`), each connection tagged with its client's address, until the
//! shutdown token, then a bounded drain.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::engine::http::{PeerAddr, ServerLimits};
use common::engine::shutdown::CancellationToken;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, Router};

/// TLS handshakes in progress at once; more clients wait in the accept queue.
const MAX_HANDSHAKES: usize = 256;

/// How the gRPC listeners serve: the transport settings of the service's HTTP
/// edge (its TLS, its slow-client limit) and its shutdown drain.
#[derive(Clone)]
pub struct Transport {
    /// Serve TLS with this certificate (the service's `--tls-cert`/`--tls-key`); `None`: plain
    /// HTTP/2. The acceptor's configuration is reused with ALPN `h2`, which gRPC clients require.
    pub tls: Option<TlsAcceptor>,
    /// Time a client has to complete its TLS handshake.
    pub handshake_timeout: Duration,
    /// How long calls in flight may finish after the shutdown token before they are cut.
    pub drain: Duration,
}

impl Transport {
    /// The transport of the service's HTTP edge (`ServerLimits::from_edge(&cfg.edge)`), with the
    /// service's shutdown drain.
    pub fn new(limits: &ServerLimits, drain: Duration) -> Self {
        Transport { tls: limits.tls.as_ref().map(with_h2), handshake_timeout: limits.header_read_timeout, drain }
    }
}

/// The same certificate, offering HTTP/2 by ALPN: tonic's clients refuse a TLS server that
/// does not negotiate `h2`.
fn with_h2(acceptor: &TlsAcceptor) -> TlsAcceptor {
    let mut config = (**acceptor.config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Serves `router` on `listener` until `token` is cancelled; then stops accepting, lets the calls
/// in flight finish for at most `transport.drain`, and returns.
///
/// # Errors
/// When the HTTP/2 server fails.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    transport: Transport,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let accepted = accepted(listener);
    let stop = token.clone().cancelled_owned();
    let serving = async {
        match transport.tls {
            None => {
                let incoming = accepted.map(|(io, peer)| Ok::<_, std::io::Error>(Conn { io, peer }));
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
            Some(acceptor) => {
                let incoming = handshaken(accepted, acceptor, transport.handshake_timeout).map(Ok::<_, std::io::Error>);
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
        }
    };
    let drained = async {
        token.cancelled().await;
        tokio::time::sleep(transport.drain).await;
    };
    tokio::select! {
        served = serving => served.context("serving gRPC"),
        () = drained => {
            tracing::warn!("gRPC calls still running after the drain period; closing them");
            Ok(())
        }
    }
}

/// The accepted TCP connections, forever (a failed accept backs off instead of spinning).
fn accepted(listener: TcpListener) -> impl Stream<Item = (TcpStream, PeerAddr)> + Send {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some(((stream, PeerAddr(peer)), listener));
                }
                Err(e) => {
                    // Out of file descriptors and the like.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// The connections whose TLS handshake completed in time, handshakes running concurrently; a
/// failed or slow one is dropped (and logged at debug, as on the HTTP listener).
fn handshaken(
    accepted: impl Stream<Item = (TcpStream, PeerAddr)> + Send,
    acceptor: TlsAcceptor,
    limit: Duration,
) -> impl Stream<Item = Conn<tokio_rustls::server::TlsStream<TcpStream>>> + Send {
    accepted
        .map(move |(tcp, peer)| {
            let acceptor = acceptor.clone();
            async move {
                match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => Some(Conn { io, peer }),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, peer = %peer.0, "gRPC TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(peer = %peer.0, "gRPC TLS handshake timed out");
                        None
                    }
                }
            }
        })
        .buffer_unordered(MAX_HANDSHAKES)
        .filter_map(std::future::ready)
}

/// A connection and its client's address, which tonic puts into every call's extensions: the
/// bridge hands it on to the HTTP handling, whose rate limit is per client address.
pub struct Conn<IO> {
    io: IO,
    peer: PeerAddr,
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = PeerAddr;

    fn connect_info(&self) -> PeerAddr {
        self.peer
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
