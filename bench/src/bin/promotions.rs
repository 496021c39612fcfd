//! The promotions bench (issue 21): a generated file of N rows loaded end to
//! end, the services' peak memory, and `GET /promotions/{id}` beside the
//! same run's GET ceiling, at rest and while another load runs.
//!
//! It runs its own isolated stack (`e2e::Stack`: the release binaries, its
//! own topics, PostgreSQL schema and Redis prefix, on the shared broker,
//! PostgreSQL and Redis) and removes everything it created at the end: the
//! stack's topics, schema and keys, and the generated files.
//!
//! 1. The file is generated streaming (never held): random v4 ids, prices
//!    with six decimals, a date-time with offset and zone. A sample of its ids
//!    (`--sample`) and one absent id for every nine of them go to an ids file
//!    that `bench/wrk/promotions-get.lua` picks from (90 % present).
//! 2. Load: `curl -T` streams it to `POST /promotions/files` (as `make
//!    load-promotions` does); the clock runs from the upload's start until
//!    the stack's `bulk_active` names the generation (polled every 20 ms):
//!    the moment readers read it.
//! 3. Peak RSS: `VmHWM` of each service (each started fresh for this run).
//! 4. GET at rest: the bare-hyper GET ceiling (`ceiling --mode get`), then
//!    the promotions GET, both with wrk at `--connections`.
//! 5. GET during a load: the same file uploaded again (a new generation)
//!    and the GET run while it loads; that load's time is reported too.
//!
//! Prints one JSON object (flat keys) as its last line.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::Rng;
use serde_json::{json, Map, Value};

/// Loads a generated promotions file end to end and reads it by id.
#[derive(Debug, Parser)]
struct Args {
    /// Rows of the generated file.
    #[arg(long, default_value = "10000000")]
    rows: u64,
    /// Present ids the GET picks from (a uniform sample of the file).
    #[arg(long, default_value = "200000")]
    sample: u64,
    /// wrk connections of the GET runs.
    #[arg(long, default_value = "64")]
    connections: u32,
    /// Each wrk run's length (wrk's syntax: 30s).
    #[arg(long, default_value = "30s")]
    duration: String,
    /// Partitions of the stack's topics (the deployment's default).
    #[arg(long, default_value = "4")]
    partitions: u32,
    /// Where the files go (deleted at the end) and the wrk scripts are.
    #[arg(long, default_value = "target/bench/promotions")]
    dir: PathBuf,
    /// The folder of the wrk scripts.
    #[arg(long, default_value = "bench/wrk")]
    wrk_dir: PathBuf,
    /// Give up on a load after this many seconds.
    #[arg(long, default_value = "1800")]
    load_timeout_secs: u64,
}

const SERVICES: [&str; 4] = ["command", "processor", "materializer", "query"];

/// Writes the file and the ids file; returns the file's size in bytes.
fn generate(rows: u64, sample: u64, file: &Path, ids: &Path) -> std::io::Result<u64> {
    let mut rng = rand::rng();
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(file)?);
    let mut present = Vec::new();
    let keep = (sample as f64 / rows.max(1) as f64).min(1.0);
    let mut bytes = 0u64;
    for _ in 0..rows {
        let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        let line = format!(
            "{id},{}.{:06},20{:02}-{:02}-{:02} {:02}:{:02}:{:02} +0200 CEST\n",
            rng.random_range(0..1000),
            rng.random_range(0..1_000_000),
            rng.random_range(18..40),
            rng.random_range(1..=12),
            rng.random_range(1..=28),
            rng.random_range(0..24),
            rng.random_range(0..60),
            rng.random_range(0..60),
        );
        bytes += line.len() as u64;
        out.write_all(line.as_bytes())?;
        if rng.random_bool(keep) {
            present.push(id);
        }
    }
    out.flush()?;
    let mut out = BufWriter::new(std::fs::File::create(ids)?);
    for id in &present {
        writeln!(out, "{id}")?;
    }
    for _ in 0..present.len().div_ceil(9) {
        writeln!(out, "{}", uuid::Builder::from_random_bytes(rng.random()).into_uuid())?;
    }
    out.flush()?;
    Ok(bytes)
}

/// Starts `curl -T` streaming `file` to the command; its stdout is `<body>\n<status>`.
fn upload(command: std::net::SocketAddr, file: &Path) -> std::io::Result<Child> {
    Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: text/csv", "-T"])
        .arg(file)
        .arg(format!("http://{command}/promotions/files"))
        .stdout(Stdio::piped())
        .spawn()
}

/// The generation a finished upload answered.
fn generation_of(curl: Child) -> anyhow::Result<i64> {
    let out = curl.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    anyhow::ensure!(status == "202", "the upload answered {status}: {body}");
    let answer: Value = serde_json::from_str(body)?;
    answer["generation"].as_i64().ok_or_else(|| anyhow::anyhow!("no generation in {body}"))
}

/// The active generation of the stack's promotions.
async fn active(pg: &tokio_postgres::Client, schema: &str) -> anyhow::Result<Option<i64>> {
    let sql = format!("SELECT generation FROM {schema}.bulk_active WHERE bulk_table = 'promotions'");
    Ok(pg.query_opt(sql.as_str(), &[]).await?.map(|r| r.get(0)))
}

/// Waits until `generation` is active; the instant it was seen.
async fn wait_active(
    pg: &tokio_postgres::Client,
    schema: &str,
    generation: i64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if active(pg, schema).await? == Some(generation) {
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "generation {generation} not active after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One wrk run; its JSON summary (bench/wrk/common.lua).
fn wrk(args: &Args, script: &str, url: &str, script_args: &[&str]) -> anyhow::Result<Map<String, Value>> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{}", args.connections), &format!("-d{}", args.duration), "--timeout", "10s", "-s"])
        .arg(args.wrk_dir.join(script))
        .arg(url);
    if !script_args.is_empty() {
        cmd.arg("--").args(script_args);
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("{}");
    match serde_json::from_str(last) {
        Ok(Value::Object(m)) => Ok(m),
        _ => anyhow::bail!("wrk printed no summary: {text}"),
    }
}

fn put_run(out: &mut Map<String, Value>, prefix: &str, run: &Map<String, Value>) {
    for k in ["rps", "p50_ms", "p99_ms", "p999_ms", "non_2xx", "socket_errors", "requests"] {
        if let Some(v) = run.get(k) {
            out.insert(format!("{prefix}_{k}"), v.clone());
        }
    }
}

/// The sum of the query's metric lines starting with `prefix` (and holding `label`, if given).
fn query_metric(query: std::net::SocketAddr, prefix: &str, label: &str) -> f64 {
    let out = Command::new("curl").args(["-s", &format!("http://{query}/metrics")]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The query's answers with a 5xx so far (a GET's 404s are expected, a 5xx never).
fn server_errors(query: std::net::SocketAddr) -> u64 {
    query_metric(query, "analytics_http_requests_total{", "status=\"5") as u64
}

/// The query's promotion answers so far by where they came from
/// (`analytics_query_promotion_row_cache_total`): (local copy, row cache, PostgreSQL).
fn row_cache(query: std::net::SocketAddr) -> (u64, u64, u64) {
    let count = |result: &str| -> u64 {
        query_metric(query, "analytics_query_promotion_row_cache_total{", &format!("result=\"{result}\"")) as u64
    };
    (count("copy"), count("hit"), count("miss"))
}

/// The share of answers between two [`row_cache`] readings that made no PostgreSQL round trip
/// (a local copy's or the row cache's), and the local copy's share alone.
fn hit_rate(before: (u64, u64, u64), after: (u64, u64, u64)) -> (f64, f64) {
    let (copies, hits, misses) =
        (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1), after.2.saturating_sub(before.2));
    let total = copies + hits + misses;
    if total == 0 {
        return (0.0, 0.0);
    }
    let share = |n: u64| (n as f64 / total as f64 * 1000.0).round() / 1000.0;
    (share(copies + hits), share(copies))
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

async fn measure(args: &Args, stack: &mut e2e::Stack, file: &Path, ids: &Path) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    stack.env("EVENTS_PARTITIONS", &args.partitions.to_string());
    stack.start_all().await;
    let (command, query) = (stack.addr("command"), stack.addr("query"));
    let (pg, conn) = tokio_postgres::connect(&stack.pg.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let schema = stack.pg.schema.clone();
    let limit = Duration::from_secs(args.load_timeout_secs);
    let rows = args.rows as f64;

    eprintln!("[promotions] load 1: {} rows", args.rows);
    let t0 = Instant::now();
    let curl = upload(command, file)?;
    let generation = tokio::task::spawn_blocking(move || generation_of(curl)).await??;
    let uploaded = t0.elapsed();
    let loaded = wait_active(&pg, &schema, generation, limit).await?.duration_since(t0);
    out.insert("promotions_upload_s".into(), json!(secs(uploaded)));
    out.insert("promotions_load_s".into(), json!(secs(loaded)));
    out.insert("promotions_rows_per_sec".into(), json!((rows / loaded.as_secs_f64()).round()));
    for s in SERVICES {
        let (hwm, rss) = bench::memory_kb(stack.pid(s));
        out.insert(format!("promotions_rss_peak_kb_{s}_load"), json!(hwm));
        out.insert(format!("promotions_rss_kb_{s}_after_load"), json!(rss));
    }
    let table_bytes: i64 =
        pg.query_one(&format!("SELECT pg_total_relation_size('{schema}.promotions_g{generation}')"), &[]).await?.get(0);
    let heap_bytes: i64 =
        pg.query_one(&format!("SELECT pg_relation_size('{schema}.promotions_g{generation}')"), &[]).await?.get(0);
    out.insert("promotions_table_bytes".into(), json!(table_bytes));
    out.insert("promotions_heap_bytes".into(), json!(heap_bytes));

    // The query builds its local copy of a generation once a read finds the pointer naming it; until the copy
    // is ready, lookups read PostgreSQL. Its build time is reported, and the GETs below run once it is ready.
    eprintln!("[promotions] waiting for the query's local copy of generation {generation}");
    let active_at = Instant::now();
    let probe = format!("http://{query}/promotions/00000000-0000-0000-0000-000000000000");
    let copy_generation = || query_metric(query, "analytics_query_bulk_copy_generation{", "promotions") as i64;
    while copy_generation() < generation {
        anyhow::ensure!(active_at.elapsed() < limit, "no local copy of generation {generation} after {limit:?}");
        let _ = Command::new("curl").args(["-s", "-o", "/dev/null", &probe]).status();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.insert("promotions_copy_ready_s".into(), json!(secs(active_at.elapsed())));
    out.insert(
        "promotions_copy_build_s".into(),
        json!(query_metric(query, "analytics_query_bulk_copy_build_seconds{", "promotions")),
    );

    eprintln!("[promotions] GET ceiling (bare hyper)");
    let port = e2e::free_port();
    let mut ceiling = Command::new(std::env::current_exe()?.with_file_name("ceiling"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--mode", "get"])
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ceiling_run = wrk(args, "get.lua", &format!("http://127.0.0.1:{port}"), &[]);
    let _ = ceiling.kill();
    let _ = ceiling.wait();
    put_run(&mut out, "promotions_get_ceiling", &ceiling_run?);

    let ids = ids.to_str().expect("a UTF-8 path");
    eprintln!("[promotions] GET /promotions/{{id}} at rest");
    let cache0 = row_cache(query);
    let failed0 = server_errors(query);
    put_run(&mut out, "promotions_get_rest", &wrk(args, "promotions-get.lua", &format!("http://{query}"), &[ids])?);
    let cache1 = row_cache(query);
    let failed1 = server_errors(query);
    anyhow::ensure!(failed1 == failed0, "the query answered {} GETs at rest with a 5xx", failed1 - failed0);
    // The row cache answers from memory only ids asked before: its hit rate depends on `--sample` and the run's length.
    let (hit, copy) = hit_rate(cache0, cache1);
    out.insert("promotions_get_rest_cache_hit_rate".into(), json!(hit));
    out.insert("promotions_get_rest_copy_rate".into(), json!(copy));

    eprintln!("[promotions] load 2 (the same file, a new generation) with GET /promotions/{{id}} beside it");
    let t0 = Instant::now();
    let curl = upload(command, file)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = wrk(args, "promotions-get.lua", &format!("http://{query}"), &[ids])?;
    let (hit, copy) = hit_rate(cache1, row_cache(query));
    out.insert("promotions_get_load_cache_hit_rate".into(), json!(hit));
    out.insert("promotions_get_load_copy_rate".into(), json!(copy));
    let get_done = t0.elapsed();
    let second = tokio::task::spawn_blocking(move || generation_of(curl)).await??;
    let loaded2 = wait_active(&pg, &schema, second, limit).await?.duration_since(t0);
    put_run(&mut out, "promotions_get_load", &during);
    let failed2 = server_errors(query);
    anyhow::ensure!(failed2 == failed1, "the query answered {} GETs during the load with a 5xx", failed2 - failed1);
    // The GET ran inside the load only if the load outlasted it.
    out.insert("promotions_get_load_within_load".into(), json!(u8::from(loaded2 > get_done)));
    out.insert("promotions_load2_s".into(), json!(secs(loaded2)));
    out.insert("promotions_load2_rows_per_sec".into(), json!((rows / loaded2.as_secs_f64()).round()));
    for s in SERVICES {
        out.insert(format!("promotions_rss_peak_kb_{s}"), json!(bench::memory_kb(stack.pid(s)).0));
    }
    // The first generation is dropped only by the switch after the one that replaced it: both are on disk now.
    let tables: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename LIKE 'promotions\\_g%'",
            &[&schema],
        )
        .await?
        .get(0);
    out.insert("promotions_generation_tables_after".into(), json!(tables));
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bench::require_wrk()?;
    // The release binaries next to this one (e2e::Stack looks next to a test executable otherwise).
    if std::env::var_os("ANALYTICS_BIN_DIR").is_none() {
        std::env::set_var("ANALYTICS_BIN_DIR", std::env::current_exe()?.parent().expect("a folder"));
    }
    std::fs::create_dir_all(&args.dir)?;
    let (file, ids) = (args.dir.join("promotions.csv"), args.dir.join("ids.txt"));
    eprintln!("[promotions] generating {} rows into {}", args.rows, file.display());
    let t0 = Instant::now();
    let bytes = generate(args.rows, args.sample, &file, &ids)?;
    let generated = t0.elapsed();

    let mut stack = e2e::Stack::new();
    // Interrupted (SIGINT, or SIGTERM as `timeout` sends), it still removes what it created.
    let stop = common::engine::shutdown::on_signals();
    let result = tokio::select! {
        r = measure(&args, &mut stack, &file, &ids) => r,
        _ = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    stack.cleanup().await;
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&ids);
    let mut out = result?;
    out.insert("promotions_rows".into(), json!(args.rows));
    out.insert("promotions_file_bytes".into(), json!(bytes));
    out.insert("promotions_generate_s".into(), json!(secs(generated)));
    out.insert("promotions_partitions".into(), json!(args.partitions));
    out.insert("promotions_get_connections".into(), json!(args.connections));
    println!("{}", Value::Object(out));
    Ok(())
}
