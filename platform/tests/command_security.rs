//! Security features, on by configuration, through a real TLS listener:
//! bearer-token authentication on POST, per-client rate limiting, HTTPS.

use std::sync::Arc;
use std::time::Duration;

use common::test_util::{isolated, unique_suffix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const NOW: i64 = 1_900_000_000_000;

fn fixed_clock() -> i64 {
    NOW
}

/// One request over TLS; returns the status code and the raw response.
async fn https(connector: &TlsConnector, addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    (text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), text)
}

fn post(auth: Option<&str>, user: &str) -> String {
    let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!("POST /analytics?timestamp={NOW}&user={user}&click HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn https_with_bearer_token_and_per_client_rate_limit() {
    let dir = std::env::temp_dir().join(format!("analytics-tls-{}", unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();

    let suffix = unique_suffix();
    let (kafka, _, _) = isolated(&suffix);
    let mut args: Vec<String> = [
        "command",
        "--kafka-brokers",
        &kafka.brokers,
        "--events-topic",
        &kafka.events_topic,
        "--increments-events-topic",
        &kafka.increments_events_topic,
        "--pg-schema",
        "test_command",
        "--api-token",
        "s3cret",
        "--rate-limit-per-sec",
        "1",
        "--rate-limit-burst",
        "4",
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]
    .map(String::from)
    .into();
    // Every other workload's topics of this test's own, and its listeners on ports of their own.
    args.extend(platform::isolation::command_args(&suffix));
    let (cfg, workloads) = platform::parse::command(args);
    let app = command::build(&cfg, &workloads, common::engine::telemetry::prometheus(), fixed_clock).await.unwrap();
    let limits = common::engine::http::ServerLimits::from_edge(&cfg.edge).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = common::engine::shutdown::CancellationToken::new();
    let server = tokio::spawn(command::run(app, listener, limits, token.clone(), Duration::from_secs(2)));

    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = ClientConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client));

    let (status, text) = https(&connector, addr, &post(None, "a")).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("www-authenticate: Bearer") || text.contains("WWW-Authenticate: Bearer"), "{text}");
    let (status, _) = https(&connector, addr, &post(Some("wrong"), "a")).await;
    assert_eq!(status, 401);
    let (status, text) = https(&connector, addr, &post(Some("s3cret"), "a")).await;
    assert_eq!(status, 204, "{text}");
    // Burst of 4 per client, refilled at 1/s: a quick run of requests soon meets 429.
    let started = std::time::Instant::now();
    let mut passed = 3; // the three requests above each took a token
    let refused = loop {
        let (status, text) = https(&connector, addr, &post(Some("s3cret"), "b")).await;
        match status {
            204 => passed += 1,
            429 => break text,
            other => panic!("unexpected {other}: {text}"),
        }
        assert!(passed < 20, "never rate limited");
    };
    assert!(passed <= 4 + started.elapsed().as_secs() as usize + 1, "{passed} requests passed");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let (status, _) = common::test_util::http(addr, "GET", "/health").await.unwrap_or((0, String::new()));
    assert_eq!(status, 0);

    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
    common::test_util::delete_topics(&kafka).await;
    common::test_util::delete_topic_names(&kafka.brokers, &platform::isolation::topics(&suffix)).await;
}
