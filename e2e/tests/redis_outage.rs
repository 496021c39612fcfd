//! A Redis outage under load: PostgreSQL and positions go on, GETs keep
//! advancing (served from PostgreSQL), and once Redis is back it catches up to
//! exactly what PostgreSQL holds. Runs its own Redis server on a free port, so
//! stopping it disturbs nothing else.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use analytics::HourStart;
use e2e::{
    assert_counts_converge, free_port, get_counts, post_all, wait_redis_equals_postgres, workload, Expected, Stack,
};

/// A private redis-server, stopped on drop.
struct PrivateRedis {
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/stack.sh deps)");
        let r = PrivateRedis { child: Some(child) };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private redis-server did not start on :{port}");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_under_load_postgres_goes_on_and_redis_catches_up() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let mut stack = Stack::new();
    stack.redis.url = format!("redis://127.0.0.1:{port}");
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    // A past hour: every event of it is within the horizon and none is in the future.
    let hour = HourStart::of(common::now_ms() - 3 * 3_600_000);
    let now = hour.start_ms();
    let events = workload(3000, 300, &[hour], 11);
    let (before, during) = events.split_at(1000);
    let (during, after) = during.split_at(1000);
    let mut expected = Expected::default();

    before.iter().for_each(|e| expected.add(e));
    post_all(command, before, 8).await;
    assert_counts_converge(query, &expected, Duration::from_secs(60)).await;

    // Redis goes away; events keep coming, and GETs keep advancing from PostgreSQL.
    redis.stop();
    let mut seen = get_counts(query, now).await.expect("query answers without Redis");
    for chunk in during.chunks(250) {
        chunk.iter().for_each(|e| expected.add(e));
        post_all(command, chunk, 8).await;
        let total = seen.clicks + seen.impressions;
        seen = common::test_util::wait_until("GET to advance while Redis is down", Duration::from_secs(30), || async {
            get_counts(query, now).await.filter(|c| c.clicks + c.impressions > total)
        })
        .await;
    }
    assert_counts_converge(query, &expected, Duration::from_secs(60)).await;

    // Redis comes back (empty, as after a restart): it catches up, and new writes reach it too.
    let _redis = PrivateRedis::start(port);
    after.iter().for_each(|e| expected.add(e));
    post_all(command, after, 8).await;
    assert_counts_converge(query, &expected, Duration::from_secs(60)).await;
    let want: Vec<_> = expected.hours().into_iter().map(|(h, c)| (h, Some(c))).collect();
    wait_redis_equals_postgres(&stack, &want, Duration::from_secs(30)).await;
    stack.cleanup().await;
}
