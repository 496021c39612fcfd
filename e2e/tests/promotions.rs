//! The promotions workload end to end on the real stack (broker, Redis,
//! PostgreSQL, the four service binaries): a file loads and answers every
//! id; a second file replaces it (ids only in the first answer 404); a
//! malformed file, or one repeating an id, fails with its first bad line's
//! number and reason while the active generation still answers; readers
//! during a switch never see the old generation after the new one, nor a
//! 404 for an id in both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::test_util::{wait_until, Answer};
use e2e::Stack;
use serde_json::{json, Value};

/// How long a small file may take from its upload to active.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// A file's lines and what `GET /promotions/{id}` answers for each id (lowercase).
struct File {
    csv: String,
    answers: BTreeMap<String, Value>,
}

/// A file of `ids`, each priced from `seed` (prices differ between seeds).
fn file(ids: &[uuid::Uuid], seed: u32) -> File {
    let mut csv = String::new();
    let mut answers = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let cents = (i as u32 * 7 + seed * 1000) % 100_000;
        // Four decimals, the last two rounded away: 12.345 → 12.35.
        let price = format!("{}.{:02}49", cents / 100, cents % 100);
        let date = format!("2018-08-{:02} 05:32:{:02}", i % 28 + 1, seed % 60);
        // Upper case in the file: ids compare case-insensitively.
        csv += &format!("{},{price},{date} +0200 CEST\n", id.to_string().to_uppercase());
        let answer = json!({
            "id": id.to_string(),
            "price": format!("{}.{:02}", cents / 100, cents % 100).parse::<f64>().unwrap(),
            "expiration_date": date,
        });
        answers.insert(id.to_string(), answer);
    }
    File { csv, answers }
}

fn ids(n: usize) -> Vec<uuid::Uuid> {
    (0..n).map(|_| uuid::Uuid::new_v4()).collect()
}

async fn upload(command: SocketAddr, csv: &str) -> Answer {
    let headers = [("Content-Type", "text/csv")];
    common::test_util::request_with_body(command, "POST", "/promotions/files", &headers, csv.as_bytes())
        .await
        .expect("the command answers")
}

async fn get(query: SocketAddr, path: &str) -> Answer {
    common::test_util::request(query, "GET", path, &[]).await.expect("the query answers")
}

fn json_of(a: &Answer) -> Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {a:?}"))
}

/// Uploads a file that must be accepted; its generation.
async fn accepted(command: SocketAddr, csv: &str) -> i64 {
    let a = upload(command, csv).await;
    assert_eq!(a.status, 202, "{a:?}");
    json_of(&a)["generation"].as_i64().expect("a generation number")
}

/// How long after a switch commits every query instance answers from it: the
/// pointer lease and twice the clock-skew bound, at their defaults
/// (`--promotions-read-lease` 1 s, `--promotions-clock-skew` 250 ms).
const VISIBLE: Duration = Duration::from_millis(1500);

/// Waits until generation `n` is in `state`; its status. Panics if it ends in another.
/// `active`: also until it is visible to every reader (it is `active` from the switch's commit on).
async fn wait_state(query: SocketAddr, n: i64, state: &str) -> Value {
    let status = wait_state_only(query, n, state).await;
    if state == "active" {
        tokio::time::sleep(VISIBLE).await;
    }
    status
}

async fn wait_state_only(query: SocketAddr, n: i64, state: &str) -> Value {
    wait_until(&format!("generation {n} {state}"), LOAD_LIMIT, || async move {
        let a = get(query, &format!("/promotions/generations/{n}")).await;
        if a.status == 404 {
            return None;
        }
        assert_eq!(a.status, 200, "{a:?}");
        let status = json_of(&a);
        let now = status["state"].as_str().expect("a state").to_owned();
        if now == state {
            return Some(status);
        }
        let contradicts = match state {
            "failed" => now == "active" || now == "replaced",
            _ => now == "failed",
        };
        assert!(!contradicts, "generation {n} is {now}, never to be {state}: {status}");
        None
    })
    .await
}

/// Every id of `file` answers as the file says.
async fn assert_answers(query: SocketAddr, file: &File) {
    for (id, expected) in &file.answers {
        let a = get(query, &format!("/promotions/{id}")).await;
        assert_eq!((a.status, json_of(&a)), (200, expected.clone()), "{id}");
    }
}

/// The value of the query's metric line that starts with `line` (0 without one).
async fn query_metric(query: SocketAddr, line: &str) -> f64 {
    let metrics = get(query, "/metrics").await.body;
    metrics.lines().find_map(|l| l.strip_prefix(line)?.trim().parse().ok()).unwrap_or(0.0)
}

/// Waits until the query's local copy of generation `n` is built (docs/architecture.md, "Local copies").
async fn wait_copy(query: SocketAddr, n: i64) {
    wait_until(&format!("the query's copy of generation {n}"), LOAD_LIMIT, || async move {
        let built = query_metric(query, "analytics_query_bulk_copy_generation{table=\"promotions\"}").await;
        (built as i64 >= n).then_some(())
    })
    .await;
}

/// Answers of `GET /promotions/{id}` the query took from a local copy so far.
async fn copy_answers(query: SocketAddr) -> f64 {
    query_metric(query, "analytics_query_promotion_row_cache_total{result=\"copy\"}").await
}

/// The files in the query's folder of local copies (`<dir>/<pid>/`).
fn copy_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|process| std::fs::read_dir(process.path()).into_iter().flatten().flatten())
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_loads_and_answers_every_id_and_a_second_file_replaces_it() {
    let mut stack = Stack::new();
    let copies = stack.copies_dir();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let missing = uuid::Uuid::new_v4();
    assert_eq!(get(query, &format!("/promotions/{missing}")).await.status, 404, "nothing loaded yet");

    let first_ids = ids(1000);
    let first = file(&first_ids, 1);
    let g1 = accepted(command, &first.csv).await;
    let status = wait_state(query, g1, "active").await;
    assert_eq!(status, json!({"generation": g1, "state": "active", "rows": 1000, "error": null}));
    assert_answers(query, &first).await;
    let upper = first_ids[0].to_string().to_uppercase();
    assert_eq!(get(query, &format!("/promotions/{upper}")).await.status, 200, "ids compare case-insensitively");
    assert_eq!(get(query, &format!("/promotions/{missing}")).await.status, 404);
    assert_eq!(get(query, "/promotions/not-a-uuid").await.status, 400);
    // Once the query's local copy of the generation is built, it answers every id, the same.
    wait_copy(query, g1).await;
    let before = copy_answers(query).await;
    assert_answers(query, &first).await;
    assert_eq!(get(query, &format!("/promotions/{upper}")).await.status, 200, "ids compare case-insensitively");
    assert_eq!(get(query, &format!("/promotions/{missing}")).await.status, 404);
    assert_eq!(copy_answers(query).await - before, 1002.0, "every answer from the copy");
    let table = |g: i64| format!("promotions_g{g}.rows");
    assert_eq!(copy_files(&copies), vec![table(g1)]);

    // The second file: half the ids again (new prices), half new ones.
    let mut second_ids = first_ids[..500].to_vec();
    second_ids.extend(ids(500));
    let second = file(&second_ids, 2);
    let g2 = accepted(command, &second.csv).await;
    assert!(g2 > g1, "generations are numbered in the log's order");
    wait_state(query, g2, "active").await;
    assert_answers(query, &second).await;
    for id in &first_ids[500..] {
        assert_eq!(get(query, &format!("/promotions/{id}")).await.status, 404, "{id} was only in the first file");
    }
    let replaced = wait_state(query, g1, "replaced").await;
    assert_eq!(replaced["rows"], 1000, "a replaced generation keeps its rows");
    wait_copy(query, g2).await;
    let before = copy_answers(query).await;
    assert_answers(query, &second).await;
    for id in &first_ids[500..] {
        assert_eq!(get(query, &format!("/promotions/{id}")).await.status, 404, "{id} was only in the first file");
    }
    assert_eq!(copy_answers(query).await - before, 1500.0, "every answer from the copy");
    // The first generation's copy goes once the pointer no longer names it (after the switch's window).
    wait_until("the first copy removed", LOAD_LIMIT, || {
        let files = copy_files(&copies);
        async move { (files == vec![table(g2)]).then_some(()) }
    })
    .await;

    let list = json_of(&get(query, "/promotions/generations").await);
    let listed: Vec<(i64, &str)> = list
        .as_array()
        .expect("an array")
        .iter()
        .map(|g| (g["generation"].as_i64().unwrap(), g["state"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, vec![(g2, "active"), (g1, "replaced")], "newest first");
    stack.cleanup().await;
}

/// Every record of `topic`: (partition, decoded record), in each partition's order. Written
/// without transactions: every offset is a record, so a silence fails the test.
async fn read_rows_topic(brokers: &str, topic: &str) -> Vec<(i32, promotions::records::FileRecord)> {
    let records = e2e::read_topic(brokers, topic, e2e::Silence::Fails(Duration::from_secs(10))).await;
    let decode = |r: &e2e::TopicRecord| promotions::wire::decode_file_record(&r.payload).expect("a rows record");
    records.iter().map(|r| (r.partition, decode(r))).collect()
}

/// The command's batch records: a file larger than several batches in every partition loads
/// whole and answers every id, and each partition's batches hold exactly the ids that map to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_in_batches_over_every_partition_loads_and_answers_every_id() {
    use promotions::records::FileRecord;
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let partitions = stack.kafka.events_partitions.get() as i32;
    let rows = 3 * promotions::command::BATCH_ROWS * partitions as usize + 77;
    let file = file(&ids(rows), 3);
    let partition_of = |id: &str| common::engine::kafka::partition_for(id.as_bytes(), partitions);
    let mut per_partition = vec![0u64; partitions as usize];
    for id in file.answers.keys() {
        per_partition[partition_of(id) as usize] += 1;
    }
    assert!(per_partition.iter().all(|n| *n > promotions::command::BATCH_ROWS as u64), "{per_partition:?}");

    let g = accepted(command, &file.csv).await;
    let status = wait_state(query, g, "active").await;
    assert_eq!(status["rows"], rows);
    assert_answers(query, &file).await;

    let topic = stack.topic("promotions_rows_topic");
    let mut batched = vec![0u64; partitions as usize];
    for (partition, record) in read_rows_topic(&stack.kafka.brokers, &topic).await {
        match record {
            FileRecord::Batch(b) if b.generation == g => {
                assert_eq!((b.partition, b.partitions), (partition, partitions as u32));
                for (_, p) in &b.rows {
                    assert_eq!(partition_of(&p.id.to_string()), partition, "{} in partition {partition}", p.id);
                }
                batched[partition as usize] += b.rows.len() as u64;
            }
            FileRecord::End(e) if e.generation == g => {
                assert_eq!(e.rows, batched[partition as usize], "the end follows its partition's batches");
            }
            FileRecord::Row(r) => panic!("a row record ({}): the command writes batches", r.generation),
            _ => {}
        }
    }
    assert_eq!(batched, per_partition, "each partition got exactly its ids");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_file_fails_with_its_line_number_and_the_active_generation_still_answers() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let good = file(&ids(200), 3);
    let g1 = accepted(command, &good.csv).await;
    wait_state(query, g1, "active").await;

    // Line 7 has a bad price: 400 naming it, and the generation fails with it.
    let mut lines: Vec<String> = file(&ids(100), 4).csv.lines().map(str::to_owned).collect();
    lines[6] = format!("{},12,50,2018-08-04 05:32:31 +0200 CEST", uuid::Uuid::new_v4());
    let a = upload(command, &(lines.join("\n") + "\n")).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.body.contains("line 7: expected 3 fields"), "{}", a.body);
    assert_eq!(a.body.trim().lines().count(), 1, "one line: {}", a.body);
    let g2: i64 = a
        .body
        .split("(generation ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the answer names the generation: {}", a.body));
    let failed = wait_state(query, g2, "failed").await;
    assert!(failed["error"].as_str().is_some_and(|e| e.starts_with("line 7: ")), "{failed}");

    // Repeated ids are found by the switch: the generation fails at the first line that repeats one
    // (line 51 repeats line 31; line 52 repeats line 4, an earlier id, but later in the file).
    let dup_ids = ids(50);
    let mut dup = file(&dup_ids, 5).csv;
    dup += &format!("{},1.00,2019-01-01 00:00:00 +0000 UTC\n", dup_ids[30]);
    dup += &format!("{},2.00,2019-01-01 00:00:00 +0000 UTC\n", dup_ids[3].to_string().to_uppercase());
    let g3 = accepted(command, &dup).await;
    let failed = wait_state(query, g3, "failed").await;
    let error = failed["error"].as_str().expect("an error");
    assert_eq!(error, format!("line 51: duplicate id {} (first on line 31)", dup_ids[30]));

    // Neither touched the active generation.
    assert_eq!(wait_state(query, g1, "active").await["rows"], 200);
    assert_answers(query, &good).await;
    assert_eq!(upload(command, "").await.status, 400, "an empty file");
    let wrong = common::test_util::request_with_body(command, "POST", "/promotions/files", &[], good.csv.as_bytes())
        .await
        .expect("the command answers");
    assert_eq!(wrong.status, 400, "not declared as CSV: {wrong:?}");
    assert_answers(query, &good).await;
    stack.cleanup().await;
}

/// What one read saw: when it started and ended, and which file's answer it got.
struct Seen {
    started: Instant,
    ended: Instant,
    second: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn readers_during_a_switch_never_see_the_old_generation_after_the_new_one_nor_a_404() {
    let mut stack = Stack::new();
    stack.start_all().await;
    // Two query instances, each with its own lease on the pointer: the promise holds across them.
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let queries = [query, stack.start("query2", e2e::Service::Query).await];
    let shared = ids(1000);
    let (first, second) = (file(&shared, 6), file(&shared, 7));
    let g1 = accepted(command, &first.csv).await;
    wait_state(query, g1, "active").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (first, second) = (Arc::new(first), Arc::new(second));
    let readers: Vec<_> = (0..8)
        .map(|r| {
            let query = queries[r % queries.len()];
            let (stop, first, second, ids) = (stop.clone(), first.clone(), second.clone(), shared.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = r * 97;
                while !stop.load(Ordering::Relaxed) {
                    let id = ids[i % ids.len()].to_string();
                    i += 13;
                    let started = Instant::now();
                    let a = get(query, &format!("/promotions/{id}")).await;
                    assert_eq!(a.status, 200, "an id in both files never answers 404: {a:?}");
                    let body = json_of(&a);
                    let second = if body == first.answers[&id] {
                        false
                    } else {
                        assert_eq!(body, second.answers[&id], "{id}: neither file's answer");
                        true
                    };
                    seen.push(Seen { started, ended: Instant::now(), second });
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let g2 = accepted(command, &second.csv).await;
    // Visible to every reader within the lease and twice the skew bound of the switch's commit.
    wait_state(query, g2, "active").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for r in readers {
        let mine = r.await.expect("a reader");
        // Per reader: never back to the first file once it saw the second.
        let first_new = mine.iter().position(|s| s.second).expect("every reader saw the switch");
        assert!(mine[first_new..].iter().all(|s| s.second), "a reader saw the old generation after the new one");
        seen.extend(mine);
    }
    // Over all readers: no read that started after another read got the new
    // generation answered from the old one.
    let earliest_new_end = seen.iter().filter(|s| s.second).map(|s| s.ended).min().expect("the switch was seen");
    let late_old = seen.iter().filter(|s| !s.second && s.started > earliest_new_end).count();
    assert_eq!(late_old, 0, "reads that began after the new generation was seen still got the old one");
    assert!(seen.iter().any(|s| !s.second), "reads before the switch saw the first file");
    stack.cleanup().await;
}

/// `make load-promotions FILE=…` streams a file to the command (`COMMAND_URL`),
/// prints its generation and the file becomes active; a missing file is a
/// usage error and a malformed one fails the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn make_load_promotions_uploads_a_file_as_a_generation() {
    let mut stack = Stack::new();
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let make = |file: &str| {
        std::process::Command::new("make")
            .args(["-s", "-C", root, "load-promotions", &format!("FILE={file}")])
            .env("COMMAND_URL", format!("http://{command}"))
            .output()
            .expect("make runs")
    };
    let dir = std::env::temp_dir().join(format!("load-promotions-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = file(&ids(100), 3);
    let path = dir.join("promotions.csv");
    std::fs::write(&path, &good.csv).unwrap();
    let out = make(path.to_str().unwrap());
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{printed} {}", String::from_utf8_lossy(&out.stderr));
    let n = serde_json::from_str::<Value>(&printed).expect("the answer")["generation"].as_i64().expect("a generation");
    wait_state(query, n, "active").await;
    assert_answers(query, &good).await;

    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "not,a,promotion\n").unwrap();
    let out = make(bad.to_str().unwrap());
    assert!(!out.status.success(), "a malformed file fails the target");
    assert!(String::from_utf8_lossy(&out.stdout).contains("line 1"), "{out:?}");
    let out = make(dir.join("absent.csv").to_str().unwrap());
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("usage"), "{out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    stack.cleanup().await;
}

/// A folder of its own under the system's temporary one, for a watched directory.
fn watched_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("promotions-watch-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("creating the watched directory");
    dir
}

/// Drops `csv` into `dir` as `name` the way a writer should: written under a
/// hidden name, then renamed into place.
fn drop_file(dir: &std::path::Path, name: &str, csv: &str) {
    let hidden = dir.join(format!(".{name}"));
    std::fs::write(&hidden, csv).expect("writing the file");
    std::fs::rename(&hidden, dir.join(name)).expect("renaming it into place");
}

/// The names in `dir/sub`.
fn names_in(dir: &std::path::Path, sub: &str) -> Vec<String> {
    std::fs::read_dir(dir.join(sub))
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_dropped_in_the_watched_directory_becomes_active_and_a_malformed_one_lands_in_failed() {
    let dir = watched_dir();
    let mut stack = Stack::new();
    stack.env("PROMOTIONS_DIR", dir.to_str().expect("a UTF-8 path"));
    stack.env("PROMOTIONS_DIR_INTERVAL", "200ms");
    stack.start_all().await;
    let query = stack.addr("query");

    let good = file(&ids(300), 8);
    drop_file(&dir, "promotions.csv", &good.csv);
    let done = wait_until("the file loaded into done/", LOAD_LIMIT, || {
        let names = names_in(&dir, "done");
        async move { names.into_iter().find(|n| n.ends_with(".promotions.csv")) }
    })
    .await;
    let g: i64 = done
        .strip_prefix('g')
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("done/ names the generation: {done}"));
    assert_eq!(wait_state(query, g, "active").await["rows"], 300);
    assert_answers(query, &good).await;
    assert!(!dir.join("promotions.csv").exists(), "taken once");

    // The same name again, malformed on line 3: refused, with its reason beside it.
    let mut lines: Vec<String> = file(&ids(10), 9).csv.lines().map(str::to_owned).collect();
    lines[2] = "not-a-uuid,1.00,2018-08-04 05:32:31 +0200 CEST".into();
    drop_file(&dir, "promotions.csv", &(lines.join("\n") + "\n"));
    let error = wait_until("the malformed file in failed/", LOAD_LIMIT, || {
        let names = names_in(&dir, "failed");
        async move { names.into_iter().find(|n| n.ends_with(".promotions.csv.error")) }
    })
    .await;
    let reason = std::fs::read_to_string(dir.join("failed").join(&error)).expect("the reason");
    assert!(reason.starts_with("line 3: ") && reason.ends_with('\n') && reason.lines().count() == 1, "{reason:?}");
    assert!(dir.join("failed").join(error.trim_end_matches(".error")).exists(), "the file beside its reason");
    assert!(names_in(&dir, ".loading").is_empty(), "nothing left claimed");

    // The active generation is untouched.
    assert_eq!(wait_state(query, g, "active").await["rows"], 300);
    assert_answers(query, &good).await;
    stack.cleanup().await;
    std::fs::remove_dir_all(&dir).expect("removing the watched directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_killed_mid_upload_fails_its_generation_within_the_stall_bound() {
    use tokio::io::AsyncWriteExt;
    /// The stall bound of this test (production: minutes).
    const STALL: Duration = Duration::from_secs(3);
    let mut stack = Stack::new();
    stack.env("COMMAND_UPLOAD_IDLE_TIMEOUT", "1s");
    stack.env("PROMOTIONS_UPLOAD_STALL", "3s");
    stack.start_all().await;
    // The instance whose janitor finds the dead upload.
    let survivor = stack.start("command-2", e2e::Service::Command).await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let good = file(&ids(200), 10);
    let g1 = accepted(survivor, &good.csv).await;
    wait_state(query, g1, "active").await;

    // A large file, streamed without end to the command that is about to die.
    let mut conn = tokio::net::TcpStream::connect(command).await.expect("connecting");
    let head = "POST /promotions/files HTTP/1.1\r\nHost: command\r\nContent-Type: text/csv\r\n\
                Content-Length: 100000000000\r\n\r\n";
    conn.write_all(head.as_bytes()).await.expect("sending the head");
    let writer = tokio::spawn(async move {
        loop {
            let batch = file(&ids(500), 11).csv;
            if conn.write_all(batch.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let g2 = wait_until("the upload's generation loading", LOAD_LIMIT, || async move {
        let list = json_of(&get(query, "/promotions/generations").await);
        list.as_array()?
            .iter()
            .find(|g| g["state"] == "loading" && g["generation"].as_i64() > Some(g1))
            .and_then(|g| g["generation"].as_i64())
    })
    .await;
    stack.kill9("command");
    let killed = Instant::now();
    let failed = wait_state(query, g2, "failed").await;
    let error = failed["error"].as_str().expect("a reason");
    assert_eq!(error, "the upload stopped (no record for 3s)", "{failed}");
    // The bound, plus the processor's checkpoint and the materializer: seconds, not the load limit.
    assert!(killed.elapsed() < STALL * 10, "failed {:?} after the kill", killed.elapsed());
    writer.abort();

    assert_eq!(wait_state(query, g1, "active").await["rows"], 200, "the previous generation still active");
    assert_answers(query, &good).await;
    stack.cleanup().await;
}
