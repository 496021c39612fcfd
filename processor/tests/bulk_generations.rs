//! The engine's bulk generation storage on the local PostgreSQL (service
//! tier): created, copied, reported, sealed, switched and dropped in
//! transactions, and read by id through the active pointer.

use std::time::Duration;

use common::engine::store::bulk::{read_pointer, BulkTable, Duplicate, GenerationRow, PointerLease, ReadLease};
use common::engine::store::{Column, ColumnType, Row, Value};
use processor::engine::state_store::PgTx;
use processor::engine::tables::StateTx;

fn promotions() -> BulkTable {
    BulkTable {
        table: "promotions",
        key: Column::new("id", ColumnType::Uuid),
        values: vec![
            Column::new("cents", ColumnType::BigInt),
            Column::new("expires", ColumnType::Text),
            Column::new("line", ColumnType::BigInt),
        ],
        origin: Some("line"),
    }
}

fn promotion(id: &str, cents: i64) -> Row {
    on_line(id, cents, 0)
}

fn on_line(id: &str, cents: i64, line: i64) -> Row {
    Row::new()
        .with("id", Value::Text(id.into()))
        .with("cents", Value::BigInt(cents))
        .with("expires", Value::Text("2018-08-04 05:32:31".into()))
        .with("line", Value::BigInt(line))
}

const A: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";
const B: &str = "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f";

/// A short lease, so that the test waits little for each switch.
const LEASE: ReadLease = ReadLease { lease: Duration::from_secs(1), skew: Duration::from_millis(100) };

/// The row of `key` in the generation `lease` answers from now.
async fn read_active(
    pool: &deadpool_postgres::Pool,
    lease: &PointerLease,
    key: &str,
) -> Option<(i64, Option<common::engine::store::Row>)> {
    let client = pool.get().await.unwrap();
    loop {
        let generation = lease.generation(pool).await.unwrap()?;
        match lease.read_row(&client, generation, key).await.unwrap() {
            GenerationRow::Row(row) => return Some((generation, row)),
            GenerationRow::Gone => continue,
        }
    }
}

/// Waits until the last switch of `table` is visible (its `visible_at`, plus the skew bound).
async fn until_visible(client: &deadpool_postgres::Client, table: &BulkTable) {
    let pointer = read_pointer(client, table).await.unwrap().expect("switched");
    let visible_at = pointer.visible_at_ms.expect("a lease") + LEASE.skew_ms();
    let wait =
        visible_at - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
}

/// The bulk generation storage on the local PostgreSQL: created, copied,
/// reported, sealed, switched and dropped in transactions, and read by id
/// through the pointer; a duplicate key is found instead of keyed.
#[tokio::test]
async fn a_bulk_generation_is_copied_sealed_switched_and_dropped_in_postgres() {
    let suffix = common::test_util::unique_suffix();
    let (_, _, pg) = common::test_util::isolated(&suffix);
    let migrations = common::engine::pg::migrations::ALL.to_vec();
    let pool = common::engine::pg::connect_migrated(&pg, &migrations).await.expect("the local PostgreSQL");
    let table: &'static BulkTable = Box::leak(Box::new(promotions()));
    let mut client = pool.get().await.unwrap();
    let hint = PointerLease::new(table);

    // Generation 1: two partitions' rows, in two checkpoints; the second report completes it.
    let tx = client.transaction().await.unwrap();
    let mut t = PgTx::new(&tx);
    t.create_generation(table, 1).await.unwrap();
    t.create_generation(table, 1).await.expect("a replay creates nothing");
    assert_eq!(t.copy_rows(table, 1, &[promotion(A, 6068)]).await.unwrap(), 1);
    assert_eq!(t.report_partition(table, 1, 0, 1).await.unwrap(), vec![(0, 1)]);
    tx.commit().await.unwrap();
    assert_eq!(read_active(&pool, &hint, A).await, None);

    let tx = client.transaction().await.unwrap();
    let mut t = PgTx::new(&tx);
    t.copy_rows(table, 1, &[promotion(B, 100)]).await.unwrap();
    assert_eq!(t.report_partition(table, 1, 1, 1).await.unwrap(), vec![(0, 1), (1, 1)]);
    assert_eq!(t.seal_generation(table, 1).await.unwrap(), None);
    assert_eq!(t.seal_generation(table, 1).await.unwrap(), None, "sealing twice (a replay) is a no-op");
    assert_eq!(t.activate_generation(table, 1, LEASE).await.unwrap(), None);
    tx.commit().await.unwrap();
    assert_eq!(read_active(&pool, &PointerLease::new(table), A).await, None, "not visible before its lease");
    until_visible(&client, table).await;
    let (generation, row) = read_active(&pool, &hint, &A.to_uppercase()).await.expect("a generation is active");
    assert_eq!((generation, row.unwrap().big_int("cents").unwrap()), (1, 6068));

    // Generation 2 with duplicate keys: not sealed, dropped; generation 1 still answers. The one
    // reported repeats first in the source (B on line 5, first on line 2; A only on line 8).
    let tx = client.transaction().await.unwrap();
    let mut t = PgTx::new(&tx);
    t.create_generation(table, 2).await.unwrap();
    let rows = [on_line(A, 1, 8), on_line(B, 1, 9), on_line(A, 2, 1), on_line(B, 2, 5), on_line(B, 3, 2)];
    t.copy_rows(table, 2, &rows).await.unwrap();
    let first_repeat = Duplicate { key: B.into(), first: Some(2), repeat: Some(5) };
    assert_eq!(t.seal_generation(table, 2).await.unwrap(), Some(first_repeat));
    t.drop_generation(table, 2).await.unwrap();
    tx.commit().await.unwrap();
    let read = read_active(&pool, &hint, B).await;
    assert_eq!(read.map(|(g, r)| (g, r.is_some())), Some((1, true)));

    // Generation 3 replaces 1: B is gone, 1 is kept until the next switch.
    let tx = client.transaction().await.unwrap();
    let mut t = PgTx::new(&tx);
    t.create_generation(table, 3).await.unwrap();
    t.copy_rows(table, 3, &[promotion(A, 7)]).await.unwrap();
    assert_eq!(t.seal_generation(table, 3).await.unwrap(), None);
    assert_eq!(t.activate_generation(table, 3, LEASE).await.unwrap(), Some(1));
    assert_eq!(t.active_generation(table).await.unwrap(), Some(3));
    assert_eq!(t.bulk_generations(table).await.unwrap(), vec![1, 3], "2 was dropped, 1 is kept");
    tx.commit().await.unwrap();
    let before = read_active(&pool, &PointerLease::new(table), B).await;
    assert_eq!(before.map(|(g, r)| (g, r.is_some())), Some((1, true)), "1 answers until 3 is visible");
    until_visible(&client, table).await;
    let read = read_active(&pool, &hint, B).await;
    assert_eq!(read.map(|(g, r)| (g, r.is_some())), Some((3, false)));
    let kept = client.query_one("SELECT to_regclass('promotions_g1') IS NOT NULL AS kept", &[]).await.unwrap();
    assert!(kept.get::<_, bool>("kept"));

    // Generation 4 replaces 3, and 1 and 3 are dropped: a reader whose lease still names 3 reads the pointer again.
    let stale = PointerLease::new(table);
    let read = read_active(&pool, &stale, A).await;
    assert_eq!(read.map(|(g, r)| (g, r.is_some())), Some((3, true)));
    let tx = client.transaction().await.unwrap();
    let mut t = PgTx::new(&tx);
    t.create_generation(table, 4).await.unwrap();
    t.copy_rows(table, 4, &[promotion(A, 4), promotion(B, 4)]).await.unwrap();
    assert_eq!(t.seal_generation(table, 4).await.unwrap(), None);
    assert_eq!(t.activate_generation(table, 4, LEASE).await.unwrap(), Some(3));
    t.drop_generation(table, 1).await.unwrap();
    t.drop_generation(table, 3).await.unwrap();
    tx.commit().await.unwrap();
    until_visible(&client, table).await;
    for h in [&stale, &hint] {
        let (generation, row) = read_active(&pool, h, B).await.expect("active");
        assert_eq!((generation, row.unwrap().big_int("cents").unwrap()), (4, 4));
    }
    // Generation 5's table was created by a release without the origin column (a file in flight across the
    // upgrade): the next copy adds it (0 in the old rows), and the generation reads and switches as any other.
    client
        .batch_execute(
            "CREATE TABLE promotions_g5 (id UUID NOT NULL, cents BIGINT NOT NULL, expires TEXT NOT NULL);
             INSERT INTO promotions_g5 VALUES ('d018ef0b-dbd9-48f1-ac1a-eb4d90e57118', 5, '2018-08-04 05:32:31')",
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    let mut t = PgTx::new(&tx);
    t.create_generation(table, 5).await.unwrap();
    t.create_generation(table, 5).await.expect("a replay alters nothing");
    t.copy_rows(table, 5, &[on_line(B, 6, 2)]).await.unwrap();
    assert_eq!(t.seal_generation(table, 5).await.unwrap(), None);
    assert_eq!(t.activate_generation(table, 5, LEASE).await.unwrap(), Some(4));
    tx.commit().await.unwrap();
    until_visible(&client, table).await;
    let (generation, row) = read_active(&pool, &hint, A).await.unwrap();
    assert_eq!((generation, row.unwrap().big_int("cents").unwrap()), (5, 5));
    common::test_util::drop_schema(&pg).await;
}
