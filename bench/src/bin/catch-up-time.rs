//! Times the materializer's Redis catch-up at start (issue 22): what a start
//! copies to Redis, and how long it takes, first without a settled mark
//! (every row changed within one Redis TTL: what every start copied before
//! the marks), then after a clean stop, then after a materializer killed
//! holding `--held` rows it wrote to PostgreSQL but never copied.
//!
//! It creates a schema and a Redis key prefix of its own on the shared
//! PostgreSQL and Redis, loads `--rows` widgets straight into the widgets
//! read model (`INSERT … SELECT generate_series`, then `VACUUM ANALYZE`),
//! and runs the widgets workload's own sink ([`ReadModelSink::catch_up`])
//! three times; the schema and the keys are dropped at the end, whatever
//! happened.
//!
//! ```text
//! cargo run --release -p bench --bin catch-up-time -- --rows 1000000
//! ```

use std::time::Instant;

use clap::Parser;
use common::engine::pg::{self, migrations};
use common::engine::store::cache::VersionedCache;
use common::test_util::{clear_redis_prefix, drop_schema, isolated, unique_suffix};
use materializer::engine::sink::ReadModelSink;
use widgets::materializer::Widgets;
use widgets::read_model::WidgetRow;

/// Loads a widgets read model and times the materializer's catch-up at three starts.
#[derive(Parser)]
struct Args {
    /// Rows in the read model (all changed within the Redis TTL).
    #[arg(long, value_name = "N", default_value = "1000000")]
    rows: i64,
    /// Rows the killed materializer wrote to PostgreSQL and never copied to Redis.
    #[arg(long, value_name = "N", default_value = "1000")]
    held: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (_, redis, pg) = isolated(&format!("catchup_{}", unique_suffix()));
    let result = run(&args, &redis, &pg).await;
    clear_redis_prefix(&redis).await;
    drop_schema(&pg).await;
    println!("dropped schema {} and the keys under {}", pg.schema, redis.key_prefix);
    result
}

async fn run(
    args: &Args,
    redis: &common::engine::config::RedisConfig,
    pg: &common::engine::config::PgConfig,
) -> anyhow::Result<()> {
    let pool = pg::pool(pg)?;
    pg::migrate(&pool, pg, &[widgets::migrations::READ_MODELS, migrations::READ_PROGRESS]).await?;
    let started = Instant::now();
    {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        tx.execute(
            "INSERT INTO widgets (serial, live, name, ports, at_ms, body, input_offset, updated_at)
             SELECT 'w' || n, 1, 'widget ' || n, 'P', 0,
                    '{\"serial\":\"w' || n || '\",\"name\":\"widget ' || n || '\",\"ports\":\"P\",\"associations\":[]}', 1,
                    now() - interval '1 minute'
             FROM generate_series(1::bigint, $1::bigint) AS n",
            &[&args.rows],
        )
        .await?;
        tx.commit().await?;
        client.batch_execute("VACUUM ANALYZE widgets").await?;
    }
    println!("loaded {} rows in {:.1} s", args.rows, started.elapsed().as_secs_f64());
    let cache = VersionedCache::<WidgetRow>::connect(redis).await?;
    let sink = || ReadModelSink::new(Widgets, pool.clone(), cache.clone(), redis.ttl);
    // A catch-up stops at a Redis or PostgreSQL failure (the copier tries again a second later): so
    // here too, until the sink's own settled mark moved past the moment it started (it does once done).
    let time = |what: String, s: ReadModelSink<Widgets>| {
        let cache = cache.clone();
        async move {
            let (started, started_ms) = (Instant::now(), common::now_ms());
            let mut retries = 0;
            loop {
                s.catch_up().await;
                let marks = cache.store().settled_marks("widgets").await.unwrap_or_default();
                if marks.iter().any(|(_, at)| *at >= started_ms) {
                    break;
                }
                retries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            let took = started.elapsed();
            println!(
                "{what}: copied {} rows in {:.2} s ({:.0} rows/s; {retries} retries after a failed page)",
                s.caught_up_rows(),
                took.as_secs_f64(),
                s.caught_up_rows() as f64 / took.as_secs_f64()
            );
            s
        }
    };

    let first = time("first start, no settled mark (every start before)".into(), sink()).await;
    drop(first); // a clean stop: its mark is written

    let second = time("start after a clean stop".into(), sink()).await;
    // Killed holding rows: written to PostgreSQL after its last mark, never copied to Redis.
    pool.get()
        .await?
        .execute(
            "UPDATE widgets SET input_offset = input_offset + 1, updated_at = now() WHERE serial IN
             (SELECT 'w' || n FROM generate_series(1::bigint, $1::bigint) AS n)",
            &[&args.held],
        )
        .await?;
    drop(second);

    let third = time(format!("start after a kill holding {} rows", args.held), sink()).await;
    anyhow::ensure!(third.caught_up_rows() as i64 >= args.held, "the held rows were copied");
    Ok(())
}
