//! The engine's generated read-model statements against the real PostgreSQL:
//! the offset guard (an older offset never overwrites a newer row, in one
//! batch or across batches), the counter guard (the version moves only on a
//! change), the rollup, the reads by key and by page, every column read
//! by name, and the rows a [`WriteTx`] keeps (what each statement changed, as
//! it returned them).

use std::time::{Duration, SystemTime};

use common::engine::store::table::lock_in_order;
use common::engine::store::{Column, ColumnType, Rollup, Row, Value, Version, VersionedTable, WriteTx};
use common::test_util::{drop_schema, isolated, unique_suffix};

fn parts() -> VersionedTable {
    VersionedTable::new(
        "parts",
        vec![Column::new("id", ColumnType::Uuid), Column::new("partition", ColumnType::Int)],
        vec![Column::new("total", ColumnType::BigInt), Column::new("note", ColumnType::Numeric)],
        Version::Offset("input_offset"),
    )
}

fn totals() -> VersionedTable {
    VersionedTable::new(
        "totals",
        vec![Column::new("id", ColumnType::Uuid)],
        vec![Column::new("total", ColumnType::BigInt).cached_as("t")],
        Version::Counter("version"),
    )
}

const ID: &str = "0b3c8f2e-7d41-4c55-9a1e-5f6b7c8d9e0f";

fn part(partition: i32, total: i64, offset: i64) -> Row {
    Row::new()
        .with("id", Value::Text(ID.into()))
        .with("partition", Value::Int(partition))
        .with("total", Value::BigInt(total))
        .with("note", Value::Text(format!("{}", i128::from(total) << 70)))
        .with("input_offset", Value::BigInt(offset))
}

fn key(partition: i32) -> Row {
    Row::new().with("id", Value::Text(ID.into())).with("partition", Value::Int(partition))
}

/// An isolated schema with the engine's tables and the test's `parts` and `totals`; drop it with `drop_schema`.
async fn with_tables() -> (common::engine::config::PgConfig, deadpool_postgres::Object) {
    let (_, _, pg) = isolated(&unique_suffix());
    let pool = common::engine::pg::pool(&pg).unwrap();
    common::engine::pg::migrate(&pool, &pg, &[]).await.unwrap();
    let client = pool.get().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE parts (id UUID, partition INT, total BIGINT NOT NULL, note NUMERIC NOT NULL,
                 input_offset BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (id, partition));
             CREATE TABLE totals (id UUID PRIMARY KEY, total BIGINT NOT NULL, version BIGINT NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now());",
        )
        .await
        .unwrap();
    (pg, client)
}

#[tokio::test]
async fn an_older_offset_never_overwrites_a_newer_row_and_versions_move_only_on_change() {
    let (pg, mut client) = with_tables().await;
    let (parts, totals) = (parts(), totals());
    let rollup = Rollup::new(&totals, &parts);
    let sum_key = [Row::new().with("id", Value::Text(ID.into()))];

    // One batch, out of order and with a duplicate key: the highest offset wins.
    let tx = client.transaction().await.unwrap();
    lock_in_order(&tx, 7, &[3, 1, 3]).await.unwrap();
    parts.upsert(&tx, vec![part(0, 5, 5), part(0, 9, 9), part(1, 2, 2), part(0, 7, 7)]).await.unwrap();
    rollup.apply(&totals, &tx, &sum_key).await.unwrap();
    tx.commit().await.unwrap();
    let p0 = parts.read(&client, &key(0)).await.unwrap().expect("written");
    assert_eq!((p0.row.big_int("total").unwrap(), p0.version), (9, 9));
    assert_eq!(p0.row.text("note").unwrap(), (9i128 << 70).to_string(), "numeric read back as exact text");
    assert_eq!(p0.row.text("id").unwrap(), ID);
    let t = totals.read(&client, &sum_key[0]).await.unwrap().unwrap();
    assert_eq!((t.row.big_int("total").unwrap(), t.version), (11, 1));

    // A later batch carrying an older offset changes nothing; the rollup keeps its version.
    let tx = client.transaction().await.unwrap();
    parts.upsert(&tx, vec![part(0, 1, 8)]).await.unwrap();
    rollup.apply(&totals, &tx, &sum_key).await.unwrap();
    tx.commit().await.unwrap();
    let p0 = parts.read(&client, &key(0)).await.unwrap().unwrap();
    assert_eq!((p0.row.big_int("total").unwrap(), p0.version), (9, 9), "offset 8 is older than 9");
    assert_eq!(totals.read(&client, &sum_key[0]).await.unwrap().unwrap().version, 1);

    // A replay of the same offset is a no-op too; a newer one moves the row and the total.
    let tx = client.transaction().await.unwrap();
    parts.upsert(&tx, vec![part(0, 100, 9)]).await.unwrap();
    parts.upsert(&tx, vec![part(1, 4, 3)]).await.unwrap();
    rollup.apply(&totals, &tx, &sum_key).await.unwrap();
    tx.commit().await.unwrap();
    let t = totals.read(&client, &sum_key[0]).await.unwrap().unwrap();
    assert_eq!((t.row.big_int("total").unwrap(), t.version), (13, 2));

    // A counter-versioned upsert: the same values keep the version, others bump it.
    let tx = client.transaction().await.unwrap();
    totals.upsert(&tx, vec![sum_key[0].clone().with("total", Value::BigInt(13))]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(totals.read(&client, &sum_key[0]).await.unwrap().unwrap().version, 2);
    let tx = client.transaction().await.unwrap();
    totals.upsert(&tx, vec![sum_key[0].clone().with("total", Value::BigInt(14))]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(totals.read(&client, &sum_key[0]).await.unwrap().unwrap().version, 3);

    // Reads of a batch's keys and pages in key order.
    let mut read = parts.read_keys(&client, &[key(1), key(0), key(2)]).await.unwrap();
    read.sort_by_key(|s| s.row.int("partition").unwrap());
    let got: Vec<(i32, i64)> =
        read.iter().map(|s| (s.row.int("partition").unwrap(), s.row.big_int("total").unwrap())).collect();
    assert_eq!(got, vec![(0, 9), (1, 4)]);
    let before = SystemTime::now() - Duration::from_secs(60);
    let (first, scanned) = parts.page(&client, before, None, 1).await.unwrap();
    assert_eq!((first.len(), scanned), (1, 1));
    assert!(first[0].1, "changed within the minute");
    assert_eq!(first[0].0.row.int("partition").unwrap(), 0);
    // Of the rows scanned, only the changed ones come back, and the last (where the next page starts).
    let (all, scanned) = parts.page(&client, SystemTime::now() + Duration::from_secs(60), None, 10).await.unwrap();
    assert_eq!(
        (all.iter().map(|(s, changed)| (s.row.int("partition").unwrap(), *changed)).collect::<Vec<_>>(), scanned),
        (vec![(1, false)], 2)
    );
    let (next, _) = parts.page(&client, before, Some(&key(0)), 10).await.unwrap();
    assert_eq!(
        next.iter().map(|(s, changed)| (s.row.int("partition").unwrap(), *changed)).collect::<Vec<_>>(),
        [(1, true)]
    );
    let (rest, scanned) = parts.page(&client, before, Some(&key(1)), 10).await.unwrap();
    assert!(rest.is_empty() && scanned == 0);
    assert!(parts.read(&client, &key(5)).await.unwrap().is_none());

    drop_schema(&pg).await;
}

#[tokio::test]
async fn a_write_transaction_keeps_the_rows_its_statements_changed_and_only_those() {
    let (pg, mut client) = with_tables().await;
    let (parts, totals) = (parts(), totals());
    let rollup = Rollup::new(&totals, &parts);
    let sum_key = [Row::new().with("id", Value::Text(ID.into()))];
    let kept = |rows: &[common::engine::store::Stored]| -> Vec<(i32, i64, i64)> {
        rows.iter().map(|s| (s.row.int("partition").unwrap(), s.row.big_int("total").unwrap(), s.version)).collect()
    };

    // One statement, a key twice: the newest per key is written and returned, every column by name.
    let tx = WriteTx::new(client.transaction().await.unwrap(), "parts");
    parts.upsert(&tx, vec![part(0, 5, 5), part(0, 9, 9), part(1, 2, 2)]).await.unwrap();
    rollup.apply(&totals, &tx, &sum_key).await.unwrap(); // not the recorded table: nothing kept
    let (tx, written) = tx.into_parts();
    tx.commit().await.unwrap();
    assert_eq!(kept(&written), vec![(0, 9, 9), (1, 2, 2)]);
    assert_eq!(written[0].row.text("note").unwrap(), (9i128 << 70).to_string());
    assert_eq!(written[0].row.text("id").unwrap(), ID);
    assert_eq!(written[0], parts.read(&client, &key(0)).await.unwrap().unwrap(), "as a read-back would see it");

    // A replay and an older offset change nothing, so nothing is returned; a newer one is.
    let tx = WriteTx::new(client.transaction().await.unwrap(), "parts");
    parts.upsert(&tx, vec![part(0, 9, 9), part(1, 1, 1)]).await.unwrap();
    parts.upsert(&tx, vec![part(1, 4, 3)]).await.unwrap();
    let (tx, written) = tx.into_parts();
    tx.commit().await.unwrap();
    assert_eq!(kept(&written), vec![(1, 4, 3)]);

    // The rollup's changed target rows are kept when the target is recorded; an unchanged sum is not.
    let tx = WriteTx::new(client.transaction().await.unwrap(), "totals");
    rollup.apply(&totals, &tx, &sum_key).await.unwrap();
    let (tx, written) = tx.into_parts();
    tx.commit().await.unwrap();
    assert_eq!(written.iter().map(|s| (s.row.big_int("total").unwrap(), s.version)).collect::<Vec<_>>(), [(13, 2)]);
    let tx = WriteTx::new(client.transaction().await.unwrap(), "totals");
    rollup.apply(&totals, &tx, &sum_key).await.unwrap();
    assert!(tx.into_parts().1.is_empty(), "the sums did not move");

    drop_schema(&pg).await;
}
