//! The bridge through a real HTTP/2 connection (plain and TLS), over a fake of
//! the services' HTTP handling that records what it was asked.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::engine::http::{self, ServerLimits};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use super::proto::answers_read_client::AnswersReadClient;
use super::proto::answers_write_client::AnswersWriteClient;
use super::proto::Event;
use super::*;

/// One request the fake was asked.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    content_type: Option<HeaderValue>,
    auth: Option<HeaderValue>,
    peer: Option<PeerAddr>,
    body: Bytes,
}

/// Answers like the services would for a store holding `k` = `v\0` at version 1 that wants
/// `Bearer t`, and remembers every request.
#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

fn with_token(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert("analytics-token", HeaderValue::from_static("0:1:2"));
    resp
}

impl HttpHandling for Fake {
    fn answer(&self, req: HttpRequest) -> impl Future<Output = Response<Body>> + Send {
        let seen = self.seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("infallible").to_bytes();
            let auth = parts.headers.get(AUTHORIZATION).cloned();
            seen.lock().expect("not poisoned").push(Seen {
                method: parts.method.clone(),
                uri: parts.uri.to_string(),
                content_type: parts.headers.get(CONTENT_TYPE).cloned(),
                auth: auth.clone(),
                peer: parts.extensions.get::<PeerAddr>().copied(),
                body: body.clone(),
            });
            if auth.as_ref().is_none_or(|a| a != "Bearer t") {
                return http::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            }
            match (parts.method, parts.uri.path()) {
                (Method::POST, "/answers") => {
                    let sent: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                    if sent["key"] == "k" {
                        return http::error(StatusCode::CONFLICT, "answer k exists");
                    }
                    let answer = serde_json::json!({"key": sent["key"], "value": sent["value"], "version": 1});
                    with_token(http::json(StatusCode::CREATED, answer.to_string()))
                }
                (Method::PUT, "/answers/k") => {
                    let sent: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                    let answer = serde_json::json!({"key": "k", "value": sent["value"], "version": 2});
                    with_token(http::json(StatusCode::OK, answer.to_string()))
                }
                (Method::DELETE, "/answers/k") => with_token(http::no_content()),
                (Method::GET, "/answers/k") => {
                    http::json(StatusCode::OK, r#"{"key":"k","value":"v\u0000","version":1}"#)
                }
                (Method::GET, "/answers/k/history") => {
                    let mut resp = http::json(
                        StatusCode::OK,
                        r#"[{"event":"create","data":{"key":"k","value":"v\u0000"},"version":1,"at":5}]"#,
                    );
                    let next = HeaderValue::from_static(r#"</answers/k/history?from=2&limit=1>; rel="next""#);
                    resp.headers_mut().insert(hyper::header::LINK, next);
                    resp
                }
                (Method::GET, "/answers/busy") => http::unavailable("read models unavailable; retry later", 5),
                _ => http::error(StatusCode::NOT_FOUND, "no answer for this key"),
            }
        }
    }
}

/// Both services over `fake` on a port of 127.0.0.1, served as the engine would serve a
/// [`Listener`]; returns the address, the shutdown token and the serve task.
async fn start(
    fake: Fake,
    transport: Transport,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let (write, read) = (Bridge(fake.clone()), Bridge(fake));
    let route = move |server: &mut tonic::transport::Server| {
        server.add_service(AnswersWriteServer::new(write)).add_service(AnswersReadServer::new(read))
    };
    let listener = listener("test", "127.0.0.1:0".parse().expect("addr"), route, transport);
    let bound = TcpListener::bind(listener.addr).await.expect("bind");
    let addr = bound.local_addr().expect("bound");
    let token = CancellationToken::new();
    let task = tokio::spawn((listener.serve)(bound, token.clone()));
    (addr, token, task)
}

fn plain() -> Transport {
    Transport::new(&ServerLimits::default(), Duration::from_secs(2))
}

fn authorized<T>(message: T) -> Call<T> {
    let mut call = Call::new(message);
    call.metadata_mut().insert("authorization", "Bearer t".parse().expect("ascii"));
    call
}

async fn calls_round_trip(channel: Channel, fake: &Fake) {
    let mut write = AnswersWriteClient::new(channel.clone());
    let mut read = AnswersReadClient::new(channel);

    let value = "a\0b \"quoted\" \\ é 🦀";
    let create = CreateRequest { key: "new/key".into(), value: value.into(), id: Some("retry-1".into()) };
    let created = write.create(authorized(create)).await.expect("created");
    assert_eq!(created.metadata().get(bridge::ANALYTICS_TOKEN).expect("token"), "0:1:2");
    assert_eq!(created.into_inner(), Answer { key: "new/key".into(), value: value.into(), version: 1 });

    let exists = CreateRequest { key: "k".into(), value: "v".into(), id: None };
    let refused = write.create(authorized(exists)).await.expect_err("exists");
    assert_eq!((refused.code(), refused.message()), (Code::AlreadyExists, "answer k exists"));

    let unauthenticated = write.create(CreateRequest::default()).await.expect_err("no token");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);

    let updated = write.update(authorized(UpdateRequest { key: "k".into(), value: "w".into(), id: None })).await;
    assert_eq!(updated.expect("updated").into_inner().version, 2);
    let deleted = write.delete(authorized(DeleteRequest { key: "k".into(), id: Some("d".into()) })).await;
    assert_eq!(deleted.expect("deleted").metadata().get(bridge::ANALYTICS_TOKEN).expect("token"), "0:1:2");
    let missing = write.delete(authorized(DeleteRequest { key: "gone".into(), id: None })).await;
    assert_eq!(missing.expect_err("missing").code(), Code::NotFound);

    let got = read.get(authorized(GetRequest { key: "k".into(), after: Some("0:1:2".into()), wait_ms: None })).await;
    assert_eq!(got.expect("read").into_inner().value, "v\0");
    let busy = read.get(authorized(GetRequest { key: "busy".into(), ..Default::default() })).await;
    let busy = busy.expect_err("unavailable");
    assert_eq!(busy.code(), Code::Unavailable);
    assert_eq!(busy.metadata().get("retry-after").expect("retry-after"), "5");

    let page = read.history(authorized(HistoryRequest { key: "k".into(), limit: Some(1), ..Default::default() })).await;
    let page = page.expect("history").into_inner();
    assert_eq!((page.entries[0].event(), page.entries[0].at_ms, page.next_from), (Event::Create, 5, Some(2)));

    let seen = fake.seen();
    let first = &seen[0];
    assert_eq!((first.method.clone(), first.uri.as_str()), (Method::POST, "/answers?id=retry-1"));
    assert_eq!(first.content_type.as_ref().expect("set"), "application/json");
    assert_eq!(first.auth.as_ref().expect("copied"), "Bearer t");
    assert_eq!(first.body, serde_json::to_vec(&serde_json::json!({"key": "new/key", "value": value})).expect("json"));
    assert!(seen.iter().all(|s| s.peer.is_some_and(|p| p.0.ip().is_loopback())), "the client address reaches the edge");
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(
        &uris[4..],
        [
            "/answers/k?id=d",
            "/answers/gone",
            "/answers/k?after=0%3A1%3A2",
            "/answers/busy",
            "/answers/k/history?limit=1"
        ]
    );
}

#[tokio::test]
async fn calls_reach_the_http_handling_and_its_answers_come_back_as_grpc() {
    let fake = Fake::default();
    let (addr, token, task) = start(fake.clone(), plain()).await;
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    calls_round_trip(channel, &fake).await;
    token.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops on the token");
    stopped.expect("no panic").expect("served");
}

#[tokio::test]
async fn calls_work_over_tls_with_the_services_certificate() {
    let dir = std::env::temp_dir().join(format!("answers-grpc-tls-{}-{}", std::process::id(), line!()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write");
    // What the service builds from --tls-cert/--tls-key for its HTTP listener.
    let limits =
        ServerLimits { tls: Some(http::tls_acceptor(&cert_path, &key_path).expect("acceptor")), ..Default::default() };
    let fake = Fake::default();
    let (addr, token, task) = start(fake.clone(), Transport::new(&limits, Duration::from_secs(2))).await;

    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(cert.cert.pem())).domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).expect("uri").tls_config(tls).expect("tls");
    calls_round_trip(endpoint.connect().await.expect("TLS connect"), &fake).await;

    // A plain-text client gets no answer from the TLS port.
    let plain = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await;
    if let Ok(channel) = plain {
        let refused = AnswersReadClient::new(channel).get(GetRequest { key: "k".into(), ..Default::default() }).await;
        assert!(refused.is_err());
    }
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").expect("no panic").expect("served");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn shutdown_waits_for_a_call_in_flight_then_stops() {
    /// Answers after a pause, long enough to cancel the token meanwhile.
    #[derive(Clone)]
    struct Slow;
    impl HttpHandling for Slow {
        async fn answer(&self, _: HttpRequest) -> Response<Body> {
            tokio::time::sleep(Duration::from_millis(300)).await;
            http::json(StatusCode::OK, r#"{"key":"k","value":"v","version":1}"#)
        }
    }
    let route = |server: &mut tonic::transport::Server| server.add_service(AnswersReadServer::new(Bridge(Slow)));
    let listener = listener("slow", "127.0.0.1:0".parse().expect("addr"), route, plain());
    let bound = TcpListener::bind(listener.addr).await.expect("bind");
    let addr = bound.local_addr().expect("bound");
    let token = CancellationToken::new();
    let task = tokio::spawn((listener.serve)(bound, token.clone()));
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    let call = tokio::spawn(async move {
        AnswersReadClient::new(channel).get(GetRequest { key: "k".into(), ..Default::default() }).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    token.cancel();
    let answered = call.await.expect("no panic").expect("the call in flight is answered");
    assert_eq!(answered.into_inner().version, 1);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").expect("no panic").expect("served");
}
