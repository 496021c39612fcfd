//! A workload's row table on the local PostgreSQL (service tier): a claim's
//! read of a partition (`StateTx::read_rows`, one binary `COPY`; and
//! `read_cells`, the same copy lent row by row) hands every
//! row of that partition back exactly, of every column type, in bounded
//! chunks, inside the claim's transaction, and leaves the connection's
//! statement timeout as it was.

use std::collections::BTreeMap;

use common::engine::store::{Column, ColumnType, Row, Value};
use processor::engine::state_store::PgTx;
use processor::engine::tables::{RowTable, StateTx};
use processor::engine::Scope;

fn table() -> RowTable {
    RowTable {
        table: "test_rows",
        key: Column::new("id", ColumnType::Uuid),
        values: vec![
            Column::new("n", ColumnType::BigInt),
            Column::new("small", ColumnType::Int),
            Column::new("amount", ColumnType::Numeric),
            Column::new("label", ColumnType::Text),
            Column::new("blob", ColumnType::Bytea),
        ],
    }
}

const DDL: &str = "CREATE TABLE test_rows (
    topic TEXT NOT NULL, partition INT NOT NULL, id UUID NOT NULL, n BIGINT NOT NULL, small INT NOT NULL,
    amount NUMERIC NOT NULL, label TEXT NOT NULL, blob BYTEA NOT NULL, PRIMARY KEY (topic, partition, id))";

fn row(i: u32) -> Row {
    Row::new()
        .with("id", Value::Text(format!("00000000-0000-4000-8000-{i:012x}")))
        .with("n", Value::BigInt(i64::MIN + i64::from(i)))
        .with("small", Value::Int(-(i as i32)))
        .with("amount", Value::Text(format!("{i}.50")))
        .with("label", Value::Text(if i.is_multiple_of(2) { String::new() } else { format!("é 'label' {i}") }))
        .with("blob", Value::Bytes(i.to_le_bytes().to_vec()))
}

/// Rows by key, to compare regardless of order (a read hands them in no particular order).
fn by_key(rows: impl IntoIterator<Item = Row>) -> BTreeMap<String, Row> {
    rows.into_iter().map(|r| (r.text("id").unwrap().to_owned(), r)).collect()
}

#[tokio::test]
async fn a_partition_is_read_back_exactly_in_bounded_chunks_within_the_claims_transaction() {
    let suffix = common::test_util::unique_suffix();
    let (_, _, pg) = common::test_util::isolated(&suffix);
    let migrations = common::engine::pg::migrations::ALL.to_vec();
    let pool = common::engine::pg::connect_migrated(&pg, &migrations).await.expect("the local PostgreSQL");
    let mut client = pool.get().await.unwrap();
    client.batch_execute(DDL).await.unwrap();
    let table = table();
    // A topic the copy's SQL has to quote; beside it, another partition and another topic.
    let topic = "it's.topic";
    let ours = Scope { topic, partition: 1 };
    let rows: Vec<Row> = (0..25_003).map(row).collect();

    let tx = client.transaction().await.unwrap();
    let mut t = PgTx::new(&tx);
    t.upsert_rows(&table, ours, &rows).await.unwrap();
    t.upsert_rows(&table, Scope { topic, partition: 2 }, &[row(1_000_000)]).await.unwrap();
    t.upsert_rows(&table, Scope { topic: "other", partition: 1 }, &[row(1_000_001)]).await.unwrap();
    // Read in the same transaction, before it commits: the copy sees what the transaction sees.
    let mut read = Vec::new();
    let mut chunks = Vec::new();
    t.read_rows(&table, ours, |chunk| {
        chunks.push(chunk.len());
        read.extend(chunk);
        Ok(())
    })
    .await
    .unwrap();
    assert!(chunks.iter().all(|n| (1..=10_000).contains(n)), "chunks of at most 10,000 rows: {chunks:?}");
    assert_eq!(chunks.iter().sum::<usize>(), rows.len());
    assert_eq!(by_key(read), by_key(rows.clone()));
    // Lent instead of handed over: the same cells, read where the copy holds them; a missing column is an error.
    let mut lent = Vec::new();
    t.read_cells(&table, ours, |cells| {
        assert!(cells.text("no_such_column").is_err());
        lent.push(
            Row::new()
                .with("id", Value::Text(cells.text("id")?.to_owned()))
                .with("n", Value::BigInt(cells.big_int("n")?))
                .with("small", Value::Int(cells.int("small")?))
                .with("amount", Value::Text(cells.text("amount")?.to_owned()))
                .with("label", Value::Text(cells.text("label")?.to_owned()))
                .with("blob", Value::Bytes(cells.bytes("blob")?.to_vec())),
        );
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(by_key(lent), by_key(rows.clone()));
    let timeout: String = tx.query_one("SHOW statement_timeout", &[]).await.unwrap().get(0);
    assert_eq!(timeout, "5s", "the connection's statement timeout is back after the copy");
    tx.commit().await.unwrap();

    // An empty partition: no chunk at all. A failing restore stops the read with its error.
    let tx = client.transaction().await.unwrap();
    let mut t = PgTx::new(&tx);
    let mut calls = 0;
    t.read_rows(&table, Scope { topic, partition: 3 }, |_| {
        calls += 1;
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(calls, 0);
    let failed = t
        .read_rows(&table, ours, |_| Err(common::engine::pg::PgError::Corrupt("a bad row".into())))
        .await
        .expect_err("the restore's error");
    assert!(failed.to_string().contains("a bad row"), "{failed}");
    drop(tx);

    // The connection is usable after a copy stopped part way (the transaction rolled back).
    let n: i64 = client.query_one("SELECT count(*) FROM test_rows", &[]).await.unwrap().get(0);
    assert_eq!(n, 25_005);
    drop(client);
    common::test_util::drop_schema(&pg).await;
}
