//! The pipeline end to end, through real processes: exact counts, late
//! events, hour edges, crashes, scale-out and a lost Redis.

use std::time::Duration;

use analytics::{HourCounts, HourStart};
use e2e::{assert_counts_converge, get_counts, post_all, test_hours, workload, Expected, Service, Stack};

const CONVERGE: Duration = Duration::from_secs(90);

fn expected_of(events: &[e2e::Event]) -> Expected {
    let mut exp = Expected::default();
    events.iter().for_each(|e| exp.add(e));
    exp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_counts_for_several_hours_with_late_events_and_hour_edges() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let now = common::now_ms();
    let mut hours = test_hours(now);
    hours.push(HourStart::of(now)); // the current hour too: the test queries by the event's own time
    let events = workload(3000, 400, &hours, 1);
    // A few events for the current hour, at "now" (not at its edges: those may be in the future).
    let mut events: Vec<_> = events.into_iter().filter(|e| e.timestamp_ms <= now).collect();
    events.push(e2e::Event { timestamp_ms: now, user: "current".into(), kind: e2e::Kind::Click });
    post_all(stack.addr("command"), &events, 16).await;
    let expected = expected_of(&events);
    assert_counts_converge(stack.addr("query"), &expected, CONVERGE).await;

    // An hour nobody posted to answers zeros.
    let empty = HourStart::of(now - 30 * 3_600_000);
    assert_eq!(get_counts(stack.addr("query"), empty.start_ms()).await, Some(HourCounts::default()));

    // Redis lost: the answers come back from PostgreSQL, and again from Redis after the write-back.
    stack.flush_redis().await;
    assert_counts_converge(stack.addr("query"), &expected, Duration::from_secs(5)).await;
    assert_counts_converge(stack.addr("query"), &expected, Duration::from_secs(5)).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_processor_and_materializer_mid_stream_loses_and_doubles_nothing() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let events = workload(4000, 500, &test_hours(common::now_ms()), 2);
    let command = stack.addr("command");
    let (a, rest) = events.split_at(1200);
    let (b, c) = rest.split_at(1400);

    post_all(command, a, 16).await;
    stack.kill9("processor");
    post_all(command, b, 16).await;
    stack.start("processor", Service::Processor).await;
    // Let it catch up a little, then crash the materializer while aggregates flow.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.kill9("materializer");
    post_all(command, c, 16).await;
    stack.kill9("processor");
    stack.start("processor", Service::Processor).await;
    stack.start("materializer", Service::Materializer).await;

    assert_counts_converge(stack.addr("query"), &expected_of(&events), CONVERGE).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processors_and_two_materializers_count_exactly_while_instances_come_and_go() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let events = workload(4000, 600, &test_hours(common::now_ms()), 3);
    let (a, rest) = events.split_at(1000);
    let (b, c) = rest.split_at(1500);

    post_all(stack.addr("command"), a, 16).await;
    // Scale out while events flow, including a second command instance behind the load.
    stack.start("processor-2", Service::Processor).await;
    stack.start("materializer-2", Service::Materializer).await;
    stack.start("command-2", Service::Command).await;
    let (c1, c2) = (stack.addr("command"), stack.addr("command-2"));
    let (b1, b2) = b.split_at(b.len() / 2);
    tokio::join!(post_all(c1, b1, 8), post_all(c2, b2, 8));
    // Scale in: one of each stops gracefully, the other processor is killed later.
    let (ok, _) = stack.terminate("processor");
    assert!(ok, "processor exits cleanly on SIGTERM");
    let (ok, _) = stack.terminate("materializer-2");
    assert!(ok, "materializer exits cleanly on SIGTERM");
    post_all(c2, c, 16).await;

    assert_counts_converge(stack.addr("query"), &expected_of(&events), CONVERGE).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_outside_the_horizon_are_refused_and_change_nothing() {
    let mut stack = Stack::new();
    stack.env("HORIZON_PAST", "2d");
    stack.start_all().await;
    let now = common::now_ms();
    let command = stack.addr("command");
    let too_old = now - 3 * 86_400_000;
    let (status, body) =
        common::test_util::http(command, "POST", &format!("/analytics?timestamp={too_old}&user=x&click"))
            .await
            .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("older than the accepted horizon"), "{body}");
    let future = now + 3_600_000;
    let (status, _) =
        common::test_util::http(command, "POST", &format!("/analytics?timestamp={future}&user=x&click")).await.unwrap();
    assert_eq!(status, 422);
    // Inside the horizon still works, and the refused events left no trace.
    let ok = e2e::Event { timestamp_ms: now - 86_400_000, user: "late-but-fine".into(), kind: e2e::Kind::Click };
    post_all(command, std::slice::from_ref(&ok), 1).await;
    assert_counts_converge(stack.addr("query"), &expected_of(std::slice::from_ref(&ok)), CONVERGE).await;
    assert_eq!(get_counts(stack.addr("query"), too_old).await, Some(HourCounts::default()));
    let (_, metrics) = common::test_util::http(command, "GET", "/metrics").await.unwrap();
    let rejected = "analytics_command_events_rejected_total{reason=\"too_old\",workload=\"analytics\"} 1";
    assert!(metrics.contains(rejected), "{metrics}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_each_service_within_10_s_under_load_and_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut stack = Stack::new();
    stack.start_all().await;
    let events = workload(6000, 800, &test_hours(common::now_ms()), 5);
    let targets = Arc::new(Mutex::new(vec![stack.addr("command")]));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(e2e::post_under_faults(targets.clone(), events, 8, stop.clone()));

    for service in [Service::Processor, Service::Materializer, Service::Query, Service::Command] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let name = format!("{service:?}").to_lowercase();
        let (ok, took) = stack.terminate(&name);
        assert!(ok, "{name} exits with success on SIGTERM (logs: {})", stack.log_dir().display());
        assert!(took < Duration::from_secs(10), "{name} took {took:?} to stop");
        let addr = stack.start(&name, service).await;
        if service == Service::Command {
            *targets.lock().unwrap() = vec![addr];
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.unwrap();
    assert!(outcome.accepted.len() > 500, "the load went on: {} accepted", outcome.accepted.len());
    // Exactly the answered events are counted: a graceful stop answers every
    // request it started on, and the ones it closed unanswered (not yet read,
    // or still in the listen backlog) were not recorded.
    assert_counts_converge(stack.addr("query"), &expected_of(&outcome.accepted), CONVERGE).await;
    stack.cleanup().await;
}
