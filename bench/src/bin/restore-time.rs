//! Times the claim of a large widgets partition: the restore a processor runs
//! after a kill before it decides again (issue 22's recovery goal).
//!
//! It creates a schema of its own on the shared PostgreSQL, migrates the
//! processor's tables, loads `--widgets` rows straight into
//! `processor_widgets` (one `INSERT … SELECT generate_series`, then `VACUUM
//! ANALYZE`, as a table checkpointed long ago), then claims the partition
//! `--claims` times with the engine's own [`StateStore::claim`] (the store's
//! half of `claim_partition`: epoch, ids, the workload's restore, outbox) and
//! prints each claim's time and rows a second. The schema is dropped at the
//! end, whatever happened.
//!
//! ```text
//! cargo run --release -p bench --bin restore-time -- --widgets 1000000
//! ```
//!
//! Widget `n` is serial `w<n>`, name `widget <n>`, ports `P`, `R`, `Q`, `PR`,
//! `PQ`, `RQ`, `PRQ`, `PP`, `QQR` in turn (as the widgets bench loads them);
//! half of them associated on their first slot (`n` with `n + 9`, the same
//! ports, for `n mod 36 < 9`), the rest free.

use std::time::{Duration, Instant};

use clap::Parser;
use common::engine::config::PgConfig;
use common::engine::pg::{self, Migration};
use deadpool_postgres::Pool;
use processor::engine::state_store::{StateStore, Store};
use widgets::processor::Widgets;
use widgets::state::IdPolicy;

/// Loads a widgets partition into an isolated schema and times its claims.
#[derive(Parser)]
struct Args {
    /// Widgets in the partition.
    #[arg(long, value_name = "N", default_value = "1000000")]
    widgets: i64,
    /// Claims timed, one after another (the first reads a cold cache of the table's pages).
    #[arg(long, value_name = "N", default_value = "3")]
    claims: u32,
    /// PostgreSQL connection URL.
    #[arg(long, env = "PG_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_url: String,
}

const TOPIC: &str = "widgets.commands";
const RETENTION_MS: i64 = 7 * 24 * 3_600_000;
/// Rows per loading statement (each in a transaction without a statement timeout).
const LOAD_BATCH: i64 = 1_000_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pg = PgConfig {
        url: args.pg_url.clone(),
        schema: format!("restore_time_{}", common::random_suffix()),
        pool_size: 2.try_into().expect("non-zero"),
        // The processor's default `--pg-timeout`: the claim runs under it, as in production.
        timeout: Duration::from_secs(5),
    };
    let pool = pg::pool(&pg)?;
    let result = run(&args, &pg, &pool).await;
    common::test_util::drop_schema(&pg).await;
    println!("dropped schema {}", pg.schema);
    result
}

async fn run(args: &Args, pg: &PgConfig, pool: &Pool) -> anyhow::Result<()> {
    let migrations: Vec<Migration> =
        pg::migrations::ALL.iter().copied().chain([widgets::migrations::PROCESSOR_WIDGETS]).collect();
    pg::migrate(pool, pg, &migrations).await?;

    let started = Instant::now();
    let mut client = pool.get().await?;
    let mut from = 0;
    while from < args.widgets {
        let to = (from + LOAD_BATCH).min(args.widgets) - 1;
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        tx.execute(
            "INSERT INTO processor_widgets (topic, partition, serial, name, ports, slot0, slot1, slot2)
             SELECT $1, 0, 'w' || n, 'widget ' || n, (ARRAY['P','R','Q','PR','PQ','RQ','PRQ','PP','QQR'])[n % 9 + 1],
                    CASE WHEN n % 36 < 9 AND n + 9 < $4 THEN 'w' || (n + 9)
                         WHEN n % 36 >= 9 AND n % 36 < 18 THEN 'w' || (n - 9) ELSE '' END,
                    '', '' FROM generate_series($2::bigint, $3::bigint) AS n",
            &[&TOPIC, &from, &to, &args.widgets],
        )
        .await?;
        tx.commit().await?;
        from = to + 1;
    }
    client.batch_execute("VACUUM ANALYZE processor_widgets").await?;
    let size: String =
        client.query_one("SELECT pg_size_pretty(pg_total_relation_size('processor_widgets'))", &[]).await?.get(0);
    drop(client);
    println!("loaded {} widgets in {:.1} s ({size} with the key)", args.widgets, started.elapsed().as_secs_f64());

    let store = StateStore::new(pool.clone(), TOPIC.into());
    let workload = Widgets::new(IdPolicy::new(RETENTION_MS));
    for i in 1..=args.claims {
        let (started, cpu) = (Instant::now(), cpu_ms());
        let claimed = store.claim(&workload, 0, RETENTION_MS).await?;
        let (took, cpu) = (started.elapsed(), cpu_ms() - cpu);
        let restored = claimed.state.graph().len();
        anyhow::ensure!(restored as i64 == args.widgets, "restored {restored} widgets of {}", args.widgets);
        println!(
            "claim {i}: epoch {}, {restored} widgets in {} ms ({cpu} ms of this process's CPU), {:.0} rows/s, VmHWM {} KiB",
            claimed.epoch,
            took.as_millis(),
            restored as f64 / took.as_secs_f64(),
            bench::memory_kb(std::process::id()).0
        );
    }
    // The same binary copy drained without decoding: what PostgreSQL and the wire take alone.
    let mut client = pool.get().await?;
    let (started, cpu) = (Instant::now(), cpu_ms());
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    let sql = format!(
        "COPY (SELECT serial, name, ports, slot0, slot1, slot2 FROM processor_widgets
               WHERE topic = '{TOPIC}' AND partition = 0) TO STDOUT (FORMAT binary)"
    );
    let copy = tx.copy_out(sql.as_str()).await?;
    let mut copy = std::pin::pin!(copy);
    let mut bytes = 0;
    while let Some(piece) = futures::TryStreamExt::try_next(&mut copy).await? {
        bytes += piece.len();
    }
    tx.commit().await?;
    println!(
        "the copy alone (drained, not decoded): {} ms ({} ms of this process's CPU), {:.1} MB",
        started.elapsed().as_millis(),
        cpu_ms() - cpu,
        bytes as f64 / 1e6
    );
    Ok(())
}

/// This process's CPU time so far (user and system, `/proc/self/stat`, in clock ticks of 10 ms), 0 where there is none.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, f)| f.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) * 10
}
