//! The live side of the product, end to end with the four binaries:
//! read-your-writes tokens (every POST's token resolves on the next GET,
//! duplicates included; garbage and timeouts answered), the SSE stream,
//! CORS and the read token.

use std::time::{Duration, Instant};

use analytics::HourStart;
use common::test_util::{request, Answer, SseClient};
use e2e::{Service, Stack};

const TOKEN: &str = "analytics-token";

/// The counts of a CSV answer of `GET /analytics`.
fn clicks(answer: &Answer) -> u64 {
    answer
        .body
        .lines()
        .find_map(|l| l.strip_prefix("clicks,"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no clicks in {answer:?}"))
}

async fn post(stack: &Stack, path: &str) -> String {
    let answer = request(stack.addr("command"), "POST", path, &[]).await.expect("the command answers");
    assert_eq!(answer.status, 204, "{answer:?}");
    answer.header(TOKEN).unwrap_or_else(|| panic!("no token on {answer:?}")).to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test]
async fn a_get_after_a_posts_token_sees_the_event_every_time() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    // An open hour well inside the horizon, away from the clock's hour edge.
    let ts = HourStart::of(common::now_ms() - 2 * 3_600_000).start_ms() + 1_000;
    let get = |token: &str| format!("/analytics?timestamp={ts}&after={token}&wait_ms=10000");

    const TRIES: u64 = 1000;
    let mut round_trips = Vec::with_capacity(TRIES as usize);
    for i in 0..TRIES {
        let started = Instant::now();
        let token = post(&stack, &format!("/analytics?timestamp={ts}&user=u{}&click", i % 37)).await;
        let answer = request(query, "GET", &get(&token), &[]).await.expect("the query answers");
        round_trips.push(started.elapsed());
        assert_eq!(answer.status, 200, "try {i}: {answer:?}");
        assert_eq!(clicks(&answer), i + 1, "try {i}: the answer must reflect the event just posted");
    }
    round_trips.sort();
    println!(
        "token round trip (POST → GET after=token reflecting it), {TRIES} tries: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&round_trips, 0.50),
        percentile(&round_trips, 0.99),
        round_trips.last().expect("tries")
    );

    // A duplicate id changes nothing, yet its token resolves.
    let first = post(&stack, &format!("/analytics?timestamp={ts}&user=dup&click&id=once")).await;
    let answer = request(query, "GET", &get(&first), &[]).await.expect("answer");
    assert_eq!((answer.status, clicks(&answer)), (200, TRIES + 1));
    let again = post(&stack, &format!("/analytics?timestamp={ts}&user=dup&click&id=once")).await;
    assert_ne!(first, again, "the retry is a record of its own");
    let answer = request(query, "GET", &get(&again), &[]).await.expect("answer");
    assert_eq!((answer.status, clicks(&answer)), (200, TRIES + 1), "counted once, and the wait still ends");

    // Garbage is the client's fault; a write that is not reflected in time is 503.
    for bad in
        ["after=nonsense", "after=", &format!("after={first}&wait_ms=30001"), &format!("after={first}&wait_ms=x")]
    {
        let answer = request(query, "GET", &format!("/analytics?timestamp={ts}&{bad}"), &[]).await.expect("answer");
        assert_eq!(answer.status, 400, "{bad}: {answer:?}");
    }
    let far = common::engine::progress::ReadToken::parse(&first).expect("a token");
    let far = common::engine::progress::ReadToken { offset: i64::MAX / 2, ..far }.encode();
    let started = Instant::now();
    let answer = request(query, "GET", &format!("/analytics?timestamp={ts}&after={far}&wait_ms=200"), &[])
        .await
        .expect("answer");
    assert_eq!((answer.status, answer.header("retry-after")), (503, Some("1")), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(200), "answered after the wait, not before");
    let _ = command;
    stack.cleanup().await;
}

#[tokio::test]
async fn a_live_stream_sees_a_post_and_reads_honour_cors_and_the_read_token() {
    let mut stack = Stack::new();
    stack.env("CORS_ORIGINS", "https://dash.example");
    stack.env("READ_TOKEN", "r34d");
    stack.start("command", Service::Command).await;
    stack.start("processor", Service::Processor).await;
    stack.start("materializer", Service::Materializer).await;
    let query = stack.start("query", Service::Query).await;
    let auth = [("Authorization", "Bearer r34d")];

    // The read token.
    let now = common::now_ms();
    let path = format!("/analytics?timestamp={now}");
    let refused = request(query, "GET", &path, &[]).await.expect("answer");
    assert_eq!((refused.status, refused.header("www-authenticate")), (401, Some("Bearer")));
    assert_eq!(request(query, "GET", &path, &auth).await.expect("answer").status, 200);
    assert_eq!(request(query, "GET", "/health", &[]).await.expect("answer").status, 200, "ops need no token");

    // CORS: a preflight (no token, as browsers send it), then the read itself.
    let preflight = [("Origin", "https://dash.example"), ("Access-Control-Request-Method", "GET")];
    let answer = request(query, "OPTIONS", "/analytics", &preflight).await.expect("answer");
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some("https://dash.example"));
    assert_eq!(answer.header("access-control-allow-headers"), Some("authorization"));
    let other = [("Origin", "https://evil.example"), ("Access-Control-Request-Method", "GET")];
    assert_eq!(request(query, "OPTIONS", "/analytics", &other).await.expect("answer").status, 403);
    let answer = request(query, "GET", &path, &[auth[0], ("Origin", "https://dash.example")]).await.expect("answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), Some("https://dash.example"));
    let answer = request(query, "GET", &path, &[auth[0], ("Origin", "https://evil.example")]).await.expect("answer");
    assert_eq!((answer.status, answer.header("access-control-allow-origin")), (200, None));

    // The live stream: its first event is the current state, the next one shows the POST.
    assert_eq!(SseClient::open(query, "/analytics/live", &[]).await.expect("connects").status, 401);
    let mut live = SseClient::open(query, "/analytics/live", &auth).await.expect("connects");
    assert_eq!(live.status, 200);
    let first: serde_json::Value =
        serde_json::from_str(&live.next_data().await.expect("reads").expect("a first event")).expect("JSON");
    let clicks_now = |v: &serde_json::Value| (v["hour"]["clicks"].as_u64(), v["today"]["clicks"].as_u64());
    assert_eq!(clicks_now(&first), (Some(0), Some(0)), "{first}");
    assert_eq!(
        (first["today"]["unique_users_exact"].as_bool(), first["today"]["unique_users"].as_u64()),
        (Some(true), Some(0))
    );
    let posted = Instant::now();
    post(&stack, &format!("/analytics?timestamp={}&user=live&click", common::now_ms())).await;
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let data = live.next_data().await.expect("reads").expect("the stream goes on");
            let v: serde_json::Value = serde_json::from_str(&data).expect("JSON");
            if clicks_now(&v) == (Some(1), Some(1)) && v["today"]["unique_users"].as_u64() == Some(1) {
                return v;
            }
        }
    })
    .await
    .expect("the stream shows the click");
    println!("live stream saw the POST after {:?}: {seen}", posted.elapsed());
    stack.cleanup().await;
}
