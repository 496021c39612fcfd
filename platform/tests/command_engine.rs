//! The engine with a second, test-only workload whose input is the body,
//! registered beside analytics in one line, against the real broker and
//! PostgreSQL: its own route, topic, success status, body-size refusal in its
//! own words, and partition-count agreement for its topic.

use std::time::Duration;

use command::engine::{BodyUse, Engine, Input, Intake, Reject, RejectStatus};
use command::Registered;
use command::{CommandApp, Config};
use common::engine::kafka::TopicSpec;
use common::test_util::{isolated, unique_suffix};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const NOW: i64 = 1_900_000_000_000;
const PARTITIONS: u32 = 2;

fn fixed_clock() -> i64 {
    NOW
}

/// Per-key sums, as a plain-text body `<key> <value>`.
struct Sums {
    topic: String,
}

#[derive(Debug, thiserror::Error)]
enum BadSum {
    #[error("content type must be text/plain")]
    ContentType,
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    #[error("body must be `<key> <value>` with a positive integer value")]
    Shape,
}

impl Reject for BadSum {
    fn label(&self) -> &'static str {
        match self {
            BadSum::ContentType => "bad_content_type",
            BadSum::TooLarge(_) => "body_too_large",
            BadSum::Shape => "bad_body",
        }
    }

    fn status(&self) -> RejectStatus {
        RejectStatus::BadRequest
    }
}

impl Intake for Sums {
    const NAME: &'static str = "sums";
    const ROUTE: &'static str = "/sum";
    const ACCEPTED: StatusCode = StatusCode::OK;
    const BODY: BodyUse<BadSum> = BodyUse::Read { too_large: BadSum::TooLarge };

    type Event = (String, u64);
    type Reject = BadSum;

    fn topic(&self) -> TopicSpec {
        TopicSpec { name: self.topic.clone(), partitions: PARTITIONS, configs: vec![] }
    }

    fn parse(&self, input: &Input<'_>, _now_ms: i64) -> Result<(String, u64), BadSum> {
        if input.content_type != Some("text/plain") {
            return Err(BadSum::ContentType);
        }
        let text = std::str::from_utf8(input.body).map_err(|_| BadSum::Shape)?;
        let (key, value) = text.split_once(' ').ok_or(BadSum::Shape)?;
        let value = value.parse().ok().filter(|v| *v > 0).ok_or(BadSum::Shape)?;
        Ok((key.to_owned(), value))
    }

    fn key<'e>(&self, event: &'e (String, u64)) -> std::borrow::Cow<'e, [u8]> {
        event.0.as_bytes().into()
    }

    fn encode(&self, event: &(String, u64)) -> Vec<u8> {
        event.1.to_string().into_bytes()
    }
}

fn config(sums_topic_suffix: &str, extra: &[&str]) -> (Config, Vec<Box<dyn Registered>>) {
    let (kafka, _, _) = isolated(sums_topic_suffix);
    let mut args: Vec<String> =
        ["command", "--kafka-brokers", &kafka.brokers, "--events-topic", &kafka.events_topic].map(String::from).into();
    args.extend(["--increments-events-topic", &kafka.increments_events_topic].map(String::from));
    args.extend(["--pg-schema", "test_command", "--max-body-bytes", "64"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    platform::parse::command(args)
}

/// Analytics and the sums, registered the way `command::build` registers the listed workloads.
async fn app((cfg, workloads): &(Config, Vec<Box<dyn Registered>>), sums_topic: &str) -> CommandApp {
    let migrations = platform::command().migrations();
    let pool = common::engine::pg::connect_migrated(&cfg.pg, &migrations).await.expect("PostgreSQL");
    let analytics = workloads.iter().find(|w| w.name() == "analytics").expect("analytics is listed");
    analytics
        .register(Engine::new(cfg, common::engine::telemetry::prometheus(), fixed_clock).expect("engine"), cfg)
        .expect("analytics")
        .register(Sums { topic: sums_topic.to_owned() })
        .expect("sums")
        .start(pool)
        .await
        .expect("starting the engine")
}

async fn send(app: &CommandApp, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    let resp = app.handle(req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("full body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn sum(content_type: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post("/sum")
        .header(CONTENT_TYPE, content_type)
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request")
}

/// Every record on `topic`: (partition, key, payload).
fn read_topic(brokers: &str, topic: &str) -> Vec<(i32, String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", unique_suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("valid offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 20 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                idle = 0;
                let text = |b: Option<&[u8]>| String::from_utf8(b.expect("present").to_vec()).expect("utf-8");
                out.push((m.partition(), text(m.key()), text(m.payload())));
            }
            _ => idle += 1,
        }
    }
    out
}

#[tokio::test]
async fn a_body_workload_beside_analytics_gets_its_route_topic_status_and_body_rules() {
    let suffix = unique_suffix();
    let sums_topic = format!("test-sums-{suffix}");
    let cfg = config(&suffix, &[]);
    let app = app(&cfg, &sums_topic).await;

    let (status, body) = send(&app, sum("text/plain", "k1 5")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    let (status, _) = send(&app, sum("text/plain", "k2 7")).await;
    assert_eq!(status, StatusCode::OK);
    let analytics = Request::post(format!("/analytics?timestamp={NOW}&user=ann&click")).body(Full::default()).unwrap();
    assert_eq!(send(&app, analytics).await.0, StatusCode::NO_CONTENT, "analytics is served beside it");

    let over = "k ".to_owned() + &"9".repeat(70);
    let mut undeclared = sum("text/plain", &over);
    undeclared.headers_mut().remove(CONTENT_LENGTH);
    let bad: Vec<(Request<Full<Bytes>>, &str)> = vec![
        (sum("application/json", "k1 5"), "content type must be text/plain\n"),
        (sum("text/plain", "k1"), "body must be `<key> <value>` with a positive integer value\n"),
        (sum("text/plain", "k1 0"), "body must be `<key> <value>` with a positive integer value\n"),
        // Over the limit as declared, and as read: the workload's 400, not the edge's 413.
        (sum("text/plain", &over), "body larger than 64 bytes\n"),
        (undeclared, "body larger than 64 bytes\n"),
    ];
    for (req, want) in bad {
        assert_eq!(send(&app, req).await, (StatusCode::BAD_REQUEST, want.to_owned()));
    }
    let get = Request::get("/sum").body(Full::default()).unwrap();
    assert_eq!(send(&app, get).await.0, StatusCode::METHOD_NOT_ALLOWED);
    let missing = Request::post("/nowhere").body(Full::default()).unwrap();
    assert_eq!(
        send(&app, missing).await,
        (StatusCode::NOT_FOUND, "not found; the write routes are POST /analytics; POST /sum\n".to_owned())
    );

    // Only the good ones reached the log, keyed and partitioned by their key.
    let mut records = read_topic(&cfg.0.kafka.brokers, &sums_topic);
    records.sort();
    let expected = |key: &str| common::engine::kafka::partition_for(key.as_bytes(), PARTITIONS as i32);
    let mut want = vec![(expected("k1"), "k1".to_owned(), "5".to_owned()), (expected("k2"), "k2".into(), "7".into())];
    want.sort();
    assert_eq!(records, want);

    // The sums topic's partition count is agreed for the deployment, like the events topic's.
    let pool = common::engine::pg::pool(&cfg.0.pg).expect("pool");
    let client = pool.get().await.expect("PostgreSQL");
    let row = client
        .query_one("SELECT value FROM deployment_settings WHERE name = $1", &[&format!("partitions.{sums_topic}")])
        .await
        .expect("the setting is stored");
    assert_eq!(row.get::<_, String>("value"), PARTITIONS.to_string());
}

#[tokio::test]
async fn the_token_is_checked_before_a_body_is_judged() {
    let suffix = unique_suffix();
    let cfg = config(&suffix, &["--api-token", "s3cret"]);
    let app = app(&cfg, &format!("test-sums-{suffix}")).await;
    let (status, _) = send(&app, sum("text/plain", &"9".repeat(100))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut authorised = sum("text/plain", "k 1");
    authorised.headers_mut().insert(AUTHORIZATION, "Bearer s3cret".parse().unwrap());
    assert_eq!(send(&app, authorised).await.0, StatusCode::OK);
}
