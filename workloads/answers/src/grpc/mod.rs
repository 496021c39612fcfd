//! The gRPC API of the answers (`proto/answers.proto`, package `answers.v1`):
//! `AnswersWrite` beside the command service's HTTP edge, `AnswersRead`
//! beside the query service's.
//!
//! ```text
//! gRPC call ──bridge::create…──▶ hyper::Request ──CommandApp/QueryApp::handle──▶ hyper::Response
//!                                                 (token, rate limit, strict body, decision wait)
//!   ◀──bridge::answer…/status_of── JSON body or one-line reason
//! ```
//!
//! Nothing is decided here: each call becomes the HTTP request that means the
//! same ([`bridge`]), answered in process by the service's own HTTP handling,
//! so authentication, rate limiting, validation and waiting for a write's
//! decision are exactly the HTTP API's. The listeners ([`write_listener`],
//! [`read_listener`]) are bound and stopped by the engine ([`transport`]).

pub mod bridge;
pub mod transport;

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use common::engine::http::{Body, Listener, PeerAddr, Serving};
use common::engine::shutdown::CancellationToken;
use http_body_util::BodyExt;
use hyper::Response;
use tokio::net::TcpListener;
use tonic::{Request as Call, Response as Reply, Status};

use bridge::{HttpAnswer, HttpRequest};
use proto::answers_read_server::{AnswersRead, AnswersReadServer};
use proto::answers_write_server::{AnswersWrite, AnswersWriteServer};
use proto::{
    Answer, CreateRequest, DeleteRequest, DeleteResponse, GetRequest, HistoryRequest, HistoryResponse, UpdateRequest,
};
pub use transport::Transport;

/// The code generated from `proto/answers.proto` by `build.rs`: the messages, the server traits
/// and the clients (generic over the transport, e.g. `AnswersWriteClient::new(channel)`).
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("answers.v1");
}

/// Largest gRPC request message accepted: a key (≤ 256 bytes) and a value (≤ 64 KiB) with room to
/// spare, so an over-long value reaches the HTTP handling and gets its 400 (INVALID_ARGUMENT);
/// beyond this, tonic refuses the message itself (OUT_OF_RANGE).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The `AnswersWrite` service on `addr`, answered by the command service's `app`.
pub fn write_listener(addr: SocketAddr, app: command::CommandApp, transport: Transport) -> Listener {
    let service = AnswersWriteServer::new(Bridge(app)).max_decoding_message_size(MAX_REQUEST_BYTES);
    listener("answers-grpc-write", addr, move |server| server.add_service(service), transport)
}

/// The `AnswersRead` service on `addr`, answered by the query service's `app`.
pub fn read_listener(addr: SocketAddr, app: query::QueryApp, transport: Transport) -> Listener {
    let service = AnswersReadServer::new(Bridge(app)).max_decoding_message_size(MAX_REQUEST_BYTES);
    listener("answers-grpc-read", addr, move |server| server.add_service(service), transport)
}

fn listener(
    name: &'static str,
    addr: SocketAddr,
    route: impl FnOnce(&mut tonic::transport::Server) -> tonic::transport::server::Router + Send + 'static,
    transport: Transport,
) -> Listener {
    let serve = move |bound: TcpListener, token: CancellationToken| -> Serving {
        Box::pin(async move {
            if let Ok(local) = bound.local_addr() {
                tracing::info!(addr = %local, tls = transport.tls.is_some(), name, "gRPC listening");
            }
            transport::serve(route(&mut tonic::transport::Server::builder()), bound, transport, token).await
        })
    };
    Listener { name, addr, serve: Box::new(serve) }
}

/// A service's in-process HTTP handling, as the bridge calls it: `CommandApp::handle` and
/// `QueryApp::handle` (and a fake in tests).
pub trait HttpHandling: Send + Sync + 'static {
    /// Answers one request exactly as the HTTP listener would.
    fn answer(&self, req: HttpRequest) -> impl Future<Output = Response<Body>> + Send;
}

impl HttpHandling for command::CommandApp {
    fn answer(&self, req: HttpRequest) -> impl Future<Output = Response<Body>> + Send {
        self.handle(req)
    }
}

impl HttpHandling for query::QueryApp {
    fn answer(&self, req: HttpRequest) -> impl Future<Output = Response<Body>> + Send {
        self.handle(req)
    }
}

/// The gRPC services over a service's HTTP handling.
pub struct Bridge<H>(pub H);

impl<H: HttpHandling> Bridge<H> {
    /// Builds the HTTP request of `call` with `build`, has it answered, and decodes a success with
    /// `decode` (a refusal becomes its [`Status`]).
    async fn call<M, T>(
        &self,
        call: Call<M>,
        build: fn(&M, &tonic::metadata::MetadataMap) -> Result<HttpRequest, Status>,
        decode: fn(&HttpAnswer) -> Result<T, Status>,
    ) -> Result<Reply<T>, Status> {
        let mut req = build(call.get_ref(), call.metadata())?;
        // The rate limit is per client address, as over HTTP.
        if let Some(peer) = call.extensions().get::<PeerAddr>() {
            req.extensions_mut().insert(*peer);
        }
        let (parts, body) = self.0.answer(req).await.into_parts();
        let body: Bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let answer = HttpAnswer { status: parts.status, headers: parts.headers, body };
        if !answer.status.is_success() {
            return Err(bridge::status_of(&answer));
        }
        Ok(bridge::reply(&answer, decode(&answer)?))
    }
}

#[tonic::async_trait]
impl<H: HttpHandling> AnswersWrite for Bridge<H> {
    async fn create(&self, call: Call<CreateRequest>) -> Result<Reply<Answer>, Status> {
        self.call(call, bridge::create, bridge::answer).await
    }

    async fn update(&self, call: Call<UpdateRequest>) -> Result<Reply<Answer>, Status> {
        self.call(call, bridge::update, bridge::answer).await
    }

    async fn delete(&self, call: Call<DeleteRequest>) -> Result<Reply<DeleteResponse>, Status> {
        self.call(call, bridge::delete, bridge::deleted).await
    }
}

#[tonic::async_trait]
impl<H: HttpHandling> AnswersRead for Bridge<H> {
    async fn get(&self, call: Call<GetRequest>) -> Result<Reply<Answer>, Status> {
        self.call(call, bridge::get, bridge::answer).await
    }

    async fn history(&self, call: Call<HistoryRequest>) -> Result<Reply<HistoryResponse>, Status> {
        self.call(call, bridge::history, bridge::history_page).await
    }
}

#[cfg(test)]
mod tests;
