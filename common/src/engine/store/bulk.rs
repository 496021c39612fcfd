//! Bulk generations: immutable sets of rows loaded in bulk and made visible
//! all at once by moving one pointer.
//!
//! A workload declares a [`BulkTable`] (its name, key and value columns);
//! the engine owns the storage: each generation is its own PostgreSQL table
//! `<table>_g<generation>` (created, filled by `COPY`, keyed once complete,
//! dropped), and `bulk_active` holds the generation readers read. The
//! processor writes them inside its checkpoint transaction
//! (`processor::engine::tables::StateTx`); readers hold a lease on the pointer ([`PointerLease`]) and read a
//! generation's rows by key.
//!
//! A table per generation rather than a partition of one table: creating or
//! dropping a partition locks the parent against every reader, a standalone
//! table locks nothing they read.

use super::table::{Column, ColumnType, Row, Value};
use crate::engine::pg::PgError;

/// A workload's bulk table: every generation has these columns, unique by `key`.
#[derive(Debug, Clone)]
pub struct BulkTable {
    /// The base name: generation `n` is the table `<table>_g<n>`.
    pub table: &'static str,
    pub key: Column,
    pub values: Vec<Column>,
    /// The `BIGINT` value column, if any, holding each row's place in its
    /// source (a file's line number, from 1; 0 when not known): a key held
    /// twice is then reported at its first repeat in the source, and where
    /// it was first ([`Duplicate`]).
    pub origin: Option<&'static str>,
}

/// A key held by more than one row of a generation: with an origin column,
/// the first repeat in the source's order (the lowest place of a key's
/// second row), and the place of that key's first row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The key, as text.
    pub key: String,
    /// Where the key first was (`None`: no origin column, or not known).
    pub first: Option<i64>,
    /// Where it came again.
    pub repeat: Option<i64>,
}

impl Duplicate {
    /// A duplicate whose places are not known.
    pub fn unplaced(key: String) -> Self {
        Duplicate { key, first: None, repeat: None }
    }

    /// From the places read (0 or less: not known).
    pub fn placed(key: String, first: i64, repeat: i64) -> Self {
        let known = |place: i64| (place > 0).then_some(place);
        Duplicate { key, first: known(first), repeat: known(repeat) }
    }
}

/// The SQL type of a column.
fn sql_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::BigInt => "BIGINT",
        ColumnType::Int => "INT",
        ColumnType::Uuid => "UUID",
        ColumnType::Numeric => "NUMERIC",
        ColumnType::Text => "TEXT",
        ColumnType::Bytea => "BYTEA",
    }
}

impl BulkTable {
    /// Every column, the key first.
    pub fn columns(&self) -> impl Iterator<Item = &Column> {
        std::iter::once(&self.key).chain(&self.values)
    }

    /// The columns a reader reads: every one but the origin, which only
    /// places duplicates at the switch (and which a generation written
    /// before the table had one lacks).
    pub fn read_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns().filter(|c| Some(c.name) != self.origin)
    }

    /// Adds the origin column, 0 (not known) in every row, to a generation
    /// whose table was created before the table declared one (a file in
    /// flight across the upgrade): `None` without an origin column.
    pub fn add_origin_sql(&self, generation: i64) -> Option<String> {
        let origin = self.origin?;
        Some(format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {origin} BIGINT NOT NULL DEFAULT 0",
            self.generation_table(generation)
        ))
    }

    /// The table of `generation` (never negative: the engine's own numbers).
    pub fn generation_table(&self, generation: i64) -> String {
        format!("{}_g{}", self.table, generation.max(0))
    }

    /// Creates `generation`'s table if missing, without its key yet (rows are
    /// copied in first; [`BulkTable::seal_sql`] checks and keys them).
    pub fn create_sql(&self, generation: i64) -> String {
        let columns: Vec<String> = self.columns().map(|c| format!("{} {} NOT NULL", c.name, sql_type(c.ty))).collect();
        format!("CREATE TABLE IF NOT EXISTS {} ({})", self.generation_table(generation), columns.join(", "))
    }

    /// `COPY … FROM STDIN` (text format) into `generation`'s table.
    pub fn copy_sql(&self, generation: i64) -> String {
        let names: Vec<&str> = self.columns().map(|c| c.name).collect();
        format!("COPY {} ({}) FROM STDIN", self.generation_table(generation), names.join(", "))
    }

    /// One key with more than one row in `generation`, as text, if any.
    pub fn duplicate_sql(&self, generation: i64) -> String {
        format!(
            "SELECT {key}::text AS {key} FROM {t} GROUP BY {key} HAVING count(*) > 1 LIMIT 1",
            key = self.key.name,
            t = self.generation_table(generation)
        )
    }

    /// With an origin column, the duplicate key of `generation` that repeats
    /// first in the source, as text, with the places of its first two rows
    /// (`first_at`, `repeat_at`); ties (places not known) go to the lowest
    /// key. Run only once [`BulkTable::duplicate_sql`] found one: it sorts
    /// the duplicated keys' rows, never the whole table.
    pub fn first_duplicate_sql(&self, generation: i64) -> Option<String> {
        let origin = self.origin?;
        Some(format!(
            "SELECT {key}::text AS {key}, first_at, repeat_at FROM (\
             SELECT {key}, lag({origin}) OVER w AS first_at, {origin} AS repeat_at, row_number() OVER w AS n \
             FROM {t} WHERE {key} IN (SELECT {key} FROM {t} GROUP BY {key} HAVING count(*) > 1) \
             WINDOW w AS (PARTITION BY {key} ORDER BY {origin})) d \
             WHERE n = 2 ORDER BY repeat_at, {key} LIMIT 1",
            key = self.key.name,
            t = self.generation_table(generation)
        ))
    }

    /// Keys `generation`'s table by its key (after [`BulkTable::duplicate_sql`] found none).
    pub fn seal_sql(&self, generation: i64) -> String {
        let t = self.generation_table(generation);
        format!("ALTER TABLE {t} ADD CONSTRAINT {t}_pkey PRIMARY KEY ({})", self.key.name)
    }

    /// Drops `generation`'s table if it exists.
    pub fn drop_sql(&self, generation: i64) -> String {
        format!("DROP TABLE IF EXISTS {}", self.generation_table(generation))
    }

    /// One row of `generation` by key (the key given as text): the columns, UUID and NUMERIC as text.
    pub fn read_sql(&self, generation: i64) -> String {
        let columns: Vec<String> = self
            .read_columns()
            .map(|c| if c.ty.read_as_text() { format!("{0}::text AS {0}", c.name) } else { c.name.to_owned() })
            .collect();
        format!(
            "SELECT {} FROM {} WHERE {} = $1::text::{}",
            columns.join(", "),
            self.generation_table(generation),
            self.key.name,
            sql_type(self.key.ty)
        )
    }

    /// `rows` as `COPY` text: one line per row, columns in declaration order.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when a row lacks a column or holds a value of another type.
    pub fn copy_text(&self, rows: &[Row]) -> Result<Vec<u8>, PgError> {
        let mut out = Vec::with_capacity(rows.len() * 64);
        for row in rows {
            for (i, c) in self.columns().enumerate() {
                if i > 0 {
                    out.push(b'\t');
                }
                let corrupt = || PgError::Corrupt(format!("{}: a row without a valid {}", self.table, c.name));
                match (c.ty, row.get(c.name).ok_or_else(corrupt)?) {
                    (ColumnType::BigInt, Value::BigInt(v)) => out.extend_from_slice(v.to_string().as_bytes()),
                    (ColumnType::Int, Value::Int(v)) => out.extend_from_slice(v.to_string().as_bytes()),
                    (ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text, Value::Text(v)) => escape(v, &mut out),
                    (ColumnType::Bytea, Value::Bytes(v)) => {
                        // bytea's hex input `\x…`, its backslash escaped for COPY.
                        out.extend_from_slice(b"\\\\x");
                        for b in v {
                            out.extend_from_slice(format!("{b:02x}").as_bytes());
                        }
                    }
                    _ => return Err(corrupt()),
                }
            }
            out.push(b'\n');
        }
        Ok(out)
    }
}

/// One value of a row written straight as `COPY` text
/// ([`BulkTable::push_copy_row`]): borrowed, so that a workload buffering
/// many rows holds their text, never a [`Row`] each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyValue<'a> {
    BigInt(i64),
    Int(i32),
    /// For `TEXT`, `UUID` and `NUMERIC` columns.
    Text(&'a str),
}

impl BulkTable {
    /// Appends one row to `out` as a line of `COPY` text ([`BulkTable::copy_sql`]):
    /// the columns in declaration order, each value given by `cell` for the column's name.
    ///
    /// # Errors
    /// [`PgError::Corrupt`] when `cell` has no value of a column's type (`out` is then left with part of a line).
    pub fn push_copy_row<'a>(
        &self,
        out: &mut Vec<u8>,
        mut cell: impl FnMut(&str) -> Option<CopyValue<'a>>,
    ) -> Result<(), PgError> {
        use std::io::Write;
        for (i, c) in self.columns().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match (c.ty, cell(c.name)) {
                (ColumnType::BigInt, Some(CopyValue::BigInt(v))) => write!(out, "{v}").expect("writing to a Vec"),
                (ColumnType::Int, Some(CopyValue::Int(v))) => write!(out, "{v}").expect("writing to a Vec"),
                (ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text, Some(CopyValue::Text(v))) => escape(v, out),
                _ => return Err(PgError::Corrupt(format!("{}: a row without a valid {}", self.table, c.name))),
            }
        }
        out.push(b'\n');
        Ok(())
    }

    /// The rows of `COPY` text written by [`BulkTable::push_copy_row`] or
    /// [`BulkTable::copy_text`], as PostgreSQL reads them: for a store that
    /// keeps rows rather than running `COPY` (the processor's simulation).
    ///
    /// # Errors
    /// [`PgError::Corrupt`] for a line with another number of fields, a
    /// number that does not parse, or a `BYTEA` column.
    pub fn rows_of_copy_text(&self, text: &[u8]) -> Result<Vec<Row>, PgError> {
        let corrupt = |what: &str| PgError::Corrupt(format!("{}: COPY text: {what}", self.table));
        let text = std::str::from_utf8(text).map_err(|_| corrupt("not UTF-8"))?;
        let mut rows = Vec::new();
        for line in text.split_terminator('\n') {
            let fields: Vec<&str> = line.split('\t').collect();
            let columns: Vec<&Column> = self.columns().collect();
            if fields.len() != columns.len() {
                return Err(corrupt("a line with another number of fields"));
            }
            let mut row = Row::new();
            for (c, field) in columns.into_iter().zip(fields) {
                let value = match c.ty {
                    ColumnType::BigInt => Value::BigInt(field.parse().map_err(|_| corrupt(c.name))?),
                    ColumnType::Int => Value::Int(field.parse().map_err(|_| corrupt(c.name))?),
                    ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => Value::Text(unescape(field)),
                    ColumnType::Bytea => return Err(corrupt("BYTEA is not read back")),
                };
                row = row.with(c.name, value);
            }
            rows.push(row);
        }
        Ok(rows)
    }
}

/// The inverse of [`escape`].
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => {}
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// COPY text escaping: backslash, tab, newline and carriage return.
fn escape(text: &str, out: &mut Vec<u8>) {
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
}

/// The active generation of `table`, if one was ever switched to.
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn active_generation(
    client: &impl deadpool_postgres::GenericClient,
    table: &BulkTable,
) -> Result<Option<i64>, PgError> {
    let row = client.query_opt("SELECT generation FROM bulk_active WHERE bulk_table = $1", &[&table.table]).await?;
    Ok(row.map(|r| r.get("generation")))
}

/// How long a reader may answer from a pointer it read, and the bound on
/// clock skew between readers and PostgreSQL: what a switch waits before any
/// reader may see the new generation ([`ActivePointer::visible_at_ms`]).
///
/// Written by the switch into the pointer's row, so every reader follows the
/// settings of the switch it read, never its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLease {
    /// `L`: a reader answers from a pointer for this long after it started reading it.
    pub lease: std::time::Duration,
    /// `ε`: clocks of readers and PostgreSQL differ by less than this.
    pub skew: std::time::Duration,
}

impl Default for ReadLease {
    fn default() -> Self {
        ReadLease { lease: std::time::Duration::from_secs(1), skew: std::time::Duration::from_millis(250) }
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl ReadLease {
    /// The lease in milliseconds, as stored.
    pub fn lease_ms(&self) -> i64 {
        millis(self.lease)
    }

    /// The skew bound in milliseconds, as stored.
    pub fn skew_ms(&self) -> i64 {
        millis(self.skew)
    }
}

/// A table's row of `bulk_active`, as a switch wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivePointer {
    /// The generation switched to.
    pub active: i64,
    /// The generation it replaced (`None`: the first one).
    pub previous: Option<i64>,
    /// When `active` becomes visible, on PostgreSQL's clock (Unix ms): the
    /// switch's commit plus the lease plus the skew bound. `None`: visible at
    /// once (a switch written before the lease existed).
    pub visible_at_ms: Option<i64>,
    /// The settings of the switch: how long a reader may hold this pointer.
    pub lease: ReadLease,
}

/// What a reader holding a pointer may do now ([`decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Answer from this generation (`None`: none is active yet).
    Read(Option<i64>),
    /// Too close to the switch for this clock to tell which side it is on:
    /// wait until this time (Unix ms), then decide again.
    WaitUntil(i64),
    /// The lease ran out: read the pointer again first.
    Reread,
}

/// Which generation a reader answers from, holding `pointer` (`None`: no
/// row, nothing was ever switched to) read `age` ago (measured from before
/// the read was sent), when its clock says `now_ms`. Pure.
///
/// The promise, across readers whose clocks differ from PostgreSQL's by less
/// than `ε`: a switch locks the pointer's row at `U` (readers' reads of it
/// wait from then until it commits) and makes the new generation visible at
/// `V = U + L + ε`. A reader that read the old row did so before `U` and
/// answers from it until `U + L` at the latest. A reader that read the new
/// row answers from the old generation only while its clock reads before
/// `V − 2ε` (before `V − ε` in PostgreSQL's time), from the new one once its
/// clock reads `V` (after `V − ε`), and in between waits. So every answer
/// from the old generation comes before `V − ε`, every one from the new
/// after: once one reader saw the new generation, none sees the old.
/// Nothing is held without a row (a lease of 0: only the read that found
/// no row may answer from it).
pub fn decide(pointer: Option<&ActivePointer>, age: std::time::Duration, now_ms: i64) -> LeaseDecision {
    let Some(p) = pointer else {
        return if age.is_zero() { LeaseDecision::Read(None) } else { LeaseDecision::Reread };
    };
    if age > p.lease.lease {
        return LeaseDecision::Reread;
    }
    let Some(visible_at) = p.visible_at_ms else { return LeaseDecision::Read(Some(p.active)) };
    if now_ms >= visible_at {
        LeaseDecision::Read(Some(p.active))
    } else if now_ms < visible_at.saturating_sub(2 * p.lease.skew_ms()) {
        LeaseDecision::Read(p.previous)
    } else {
        LeaseDecision::WaitUntil(visible_at)
    }
}

/// The pointer of `table` as a reader reads it: `FOR SHARE`, so a read waits
/// while a switch holds the row (from its lock to its commit) instead of
/// seeing the row the switch is replacing.
const POINTER_SQL: &str = "SELECT generation, previous, \
    (extract(epoch FROM visible_at) * 1000)::bigint AS visible_at_ms, lease_ms, skew_ms \
    FROM bulk_active WHERE bulk_table = $1 FOR SHARE";

/// Reads the pointer of `table` (see [`POINTER_SQL`]).
///
/// # Errors
/// [`PgError`] when PostgreSQL cannot answer.
pub async fn read_pointer(
    client: &impl deadpool_postgres::GenericClient,
    table: &BulkTable,
) -> Result<Option<ActivePointer>, PgError> {
    let statement = client.prepare_cached(POINTER_SQL).await?;
    let Some(r) = client.query_opt(&statement, &[&table.table]).await? else { return Ok(None) };
    let ms = |column: &str| -> Result<std::time::Duration, PgError> {
        let v: i64 = r.try_get(column)?;
        Ok(std::time::Duration::from_millis(u64::try_from(v).unwrap_or(0)))
    };
    Ok(Some(ActivePointer {
        active: r.try_get("generation")?,
        previous: r.try_get("previous")?,
        visible_at_ms: r.try_get("visible_at_ms")?,
        lease: ReadLease { lease: ms("lease_ms")?, skew: ms("skew_ms")? },
    }))
}

/// A pointer as one reader holds it: what it read, and when it started reading.
#[derive(Debug)]
struct Held {
    pointer: Option<ActivePointer>,
    read_at: std::time::Instant,
    /// Nothing read yet, or a table the pointer named was gone: read again.
    stale: bool,
}

impl Held {
    fn stale() -> Self {
        Held { pointer: None, read_at: std::time::Instant::now(), stale: true }
    }
}

/// Generations whose read statements each connection drops from its cache:
/// those a refresh found the pointer had left (a long-lived connection does
/// not keep one prepared statement per generation).
const RETIRED: usize = 4;

/// One reader instance's lease on the pointer of a table: which generation
/// to answer from, without reading PostgreSQL while the lease lasts
/// ([`decide`]). One read refreshes it for every request: a request past
/// half the lease tries to refresh it (if no other is), a request past the
/// whole lease waits for the refresh.
#[derive(Debug)]
pub struct PointerLease {
    table: &'static BulkTable,
    held: std::sync::RwLock<std::sync::Arc<Held>>,
    refreshing: tokio::sync::Mutex<()>,
    retired: std::sync::Mutex<Vec<String>>,
    /// This process's copies of the named generations, if it keeps them ([`super::bulk_copy`]).
    copies: Option<std::sync::Arc<super::bulk_copy::LocalCopies>>,
}

/// A row read from a generation's table ([`PointerLease::read_row`]).
#[derive(Debug)]
pub enum GenerationRow {
    /// The row of the key, if the generation has one.
    Row(Option<Row>),
    /// The generation's table is gone (dropped after a later switch): decide again.
    Gone,
}

impl PointerLease {
    /// A lease on `table`'s pointer, read at the first request.
    pub fn new(table: &'static BulkTable) -> Self {
        Self::with_copies(table, None)
    }

    /// A lease whose reads are answered from local copies of the generations
    /// the pointer names, once built, in the files of `dir`
    /// ([`super::bulk_copy`]); from PostgreSQL without `dir`, or until then.
    pub fn with_copies(table: &'static BulkTable, dir: Option<std::sync::Arc<super::bulk_copy::CopiesDir>>) -> Self {
        PointerLease {
            table,
            held: std::sync::RwLock::new(std::sync::Arc::new(Held::stale())),
            refreshing: tokio::sync::Mutex::new(()),
            retired: std::sync::Mutex::new(Vec::new()),
            copies: dir.map(|dir| super::bulk_copy::LocalCopies::new(table, dir)),
        }
    }

    fn held(&self) -> std::sync::Arc<Held> {
        self.held.read().expect("the lease's lock is never poisoned").clone()
    }

    /// Reads the pointer and holds it.
    async fn refresh(&self, pool: &deadpool_postgres::Pool) -> Result<(), PgError> {
        let client = pool.get().await?;
        // Before the read is sent: the lease counts from no later than the row's snapshot.
        let read_at = std::time::Instant::now();
        let pointer = read_pointer(&client, self.table).await?;
        let mut held = self.held.write().expect("the lease's lock is never poisoned");
        let kept = |p: &Option<ActivePointer>| p.map(|p| [Some(p.active), p.previous]).unwrap_or_default();
        let (before, after) = (kept(&held.pointer), kept(&pointer));
        if let Some(copies) = &self.copies {
            // The previous generation is read only until the switch is visible ([`decide`]).
            let switching = pointer.and_then(|p| p.visible_at_ms).is_some_and(|at| crate::now_ms() < at);
            let named = pointer.map(|p| [Some(p.active), p.previous.filter(|_| switching)]).unwrap_or_default();
            copies.follow(pool, &named.into_iter().flatten().collect::<Vec<_>>());
        }
        let left = before.into_iter().flatten().filter(|g| !after.contains(&Some(*g)));
        let mut retired = self.retired.lock().expect("the retired list's lock is never poisoned");
        for g in left {
            retired.push(self.table.read_sql(g));
        }
        let excess = retired.len().saturating_sub(RETIRED);
        retired.drain(..excess);
        *held = std::sync::Arc::new(Held { pointer, read_at, stale: false });
        Ok(())
    }

    /// Keeps the pointer read while no request reads it (every half lease), so
    /// that local copies of a new generation are built right after its switch
    /// rather than at its first request; does nothing without copies. Ends
    /// when the lease is dropped.
    pub fn keep_copies_current(self: &std::sync::Arc<Self>, pool: &deadpool_postgres::Pool) {
        let Some(runtime) = self.copies.as_ref().and_then(|_| tokio::runtime::Handle::try_current().ok()) else {
            return;
        };
        let (lease, pool) = (std::sync::Arc::downgrade(self), pool.clone());
        runtime.spawn(async move {
            loop {
                let Some(lease) = lease.upgrade() else { return };
                let pause = lease.held().pointer.map_or(std::time::Duration::from_secs(1), |p| p.lease.lease / 2);
                // A failed read is the requests' problem too; the next round tries again.
                let _ = lease.generation(&pool).await;
                drop(lease);
                tokio::time::sleep(pause.max(std::time::Duration::from_millis(100))).await;
            }
        });
    }

    /// Forgets the held pointer: the next request reads it again (a table it named was gone).
    fn expire(&self) {
        *self.held.write().expect("the lease's lock is never poisoned") = std::sync::Arc::new(Held::stale());
    }

    /// The generation a request arriving now answers from (`None`: nothing
    /// active yet), from the held pointer while its lease lasts.
    ///
    /// # Errors
    /// [`PgError`] when the pointer must be read and PostgreSQL cannot answer.
    pub async fn generation(&self, pool: &deadpool_postgres::Pool) -> Result<Option<i64>, PgError> {
        let arrived = std::time::Instant::now();
        loop {
            let held = self.held();
            // A read started after the request arrived may answer it whatever its lease.
            let age = if held.read_at >= arrived { std::time::Duration::ZERO } else { held.read_at.elapsed() };
            let decision =
                if held.stale { LeaseDecision::Reread } else { decide(held.pointer.as_ref(), age, crate::now_ms()) };
            match decision {
                LeaseDecision::Read(g) => {
                    if let Some(p) = &held.pointer {
                        if age * 2 >= p.lease.lease {
                            if let Ok(_one) = self.refreshing.try_lock() {
                                if std::sync::Arc::ptr_eq(&held, &self.held()) {
                                    // Early: a failed refresh leaves the lease as it was, until it runs out.
                                    if let Err(e) = self.refresh(pool).await {
                                        tracing::warn!(error = %e, table = self.table.table, "refreshing the pointer");
                                    }
                                }
                            }
                        }
                    }
                    return Ok(g);
                }
                LeaseDecision::WaitUntil(at_ms) => {
                    let wait = u64::try_from(at_ms - crate::now_ms()).unwrap_or(0).max(1);
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                LeaseDecision::Reread => {
                    let _one = self.refreshing.lock().await;
                    // Another request may have read it meanwhile, after this one arrived.
                    let now = self.held();
                    if now.stale || now.read_at < arrived {
                        self.refresh(pool).await?;
                    }
                }
            }
        }
    }

    /// The row of `key` (as text) in `generation`, from this process's copy
    /// of it: `None` when there is none (not built yet, not kept, or a read of
    /// it failed: it is then discarded), and the row must be read from
    /// PostgreSQL ([`Self::read_row`]).
    pub fn read_copy(&self, generation: i64, key: &str) -> Option<Option<Row>> {
        let copies = self.copies.as_ref()?;
        match copies.get(generation)?.get(key) {
            Ok(row) => Some(row),
            Err(e) => {
                tracing::warn!(table = self.table.table, generation, error = %e, "local copy unreadable; reading PostgreSQL");
                copies.discard(generation);
                None
            }
        }
    }

    /// The row of `key` (as text) in `generation`'s table: one statement by
    /// key, prepared once per connection.
    ///
    /// # Errors
    /// [`PgError`] when PostgreSQL cannot answer.
    pub async fn read_row(
        &self,
        client: &deadpool_postgres::Client,
        generation: i64,
        key: &str,
    ) -> Result<GenerationRow, PgError> {
        let retired = self.retired.lock().expect("the retired list's lock is never poisoned").clone();
        for sql in &retired {
            client.statement_cache.remove(sql, &[]);
        }
        let sql = self.table.read_sql(generation);
        let read = match client.prepare_cached(&sql).await {
            Ok(statement) => client.query_opt(&statement, &[&key]).await,
            Err(e) => Err(e),
        };
        match read {
            Ok(row) => Ok(GenerationRow::Row(row.map(|r| Row::read(&r, self.table.read_columns())).transpose()?)),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                client.statement_cache.remove(&sql, &[]);
                self.expire();
                Ok(GenerationRow::Gone)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BulkTable {
        BulkTable {
            table: "promotions",
            key: Column::new("id", ColumnType::Uuid),
            values: vec![Column::new("cents", ColumnType::BigInt), Column::new("note", ColumnType::Text)],
            origin: None,
        }
    }

    fn switched(previous: Option<i64>, visible_at_ms: Option<i64>) -> ActivePointer {
        ActivePointer { active: 9, previous, visible_at_ms, lease: ReadLease::default() }
    }

    #[test]
    fn a_lease_answers_from_the_old_generation_before_the_switch_and_the_new_one_after() {
        use std::time::Duration;
        let v = 100_000; // visible_at: the lock plus L (1 s) plus ε (250 ms)
        let p = switched(Some(4), Some(v));
        let fresh = Duration::from_millis(10);
        assert_eq!(decide(Some(&p), fresh, v - 501), LeaseDecision::Read(Some(4)), "surely before: the old one");
        assert_eq!(decide(Some(&p), fresh, v - 500), LeaseDecision::WaitUntil(v), "within 2ε: this clock cannot tell");
        assert_eq!(decide(Some(&p), fresh, v - 1), LeaseDecision::WaitUntil(v));
        assert_eq!(decide(Some(&p), fresh, v), LeaseDecision::Read(Some(9)), "from visible_at: the new one");
        assert_eq!(decide(Some(&p), fresh, v + 60_000), LeaseDecision::Read(Some(9)));
        // The lease runs out whatever the time: the pointer must be read again.
        assert_eq!(decide(Some(&p), Duration::from_millis(1000), v), LeaseDecision::Read(Some(9)));
        assert_eq!(decide(Some(&p), Duration::from_millis(1001), v), LeaseDecision::Reread);
        assert_eq!(decide(Some(&p), Duration::from_millis(1001), v - 10_000), LeaseDecision::Reread);
    }

    #[test]
    fn a_first_generation_is_nothing_until_visible_and_no_row_is_never_held() {
        use std::time::Duration;
        let first = switched(None, Some(5_000));
        assert_eq!(decide(Some(&first), Duration::ZERO, 4_000), LeaseDecision::Read(None), "nothing active yet");
        assert_eq!(decide(Some(&first), Duration::ZERO, 5_000), LeaseDecision::Read(Some(9)));
        // A switch written before the lease existed: visible at once, held for its lease (0: not at all).
        let old =
            ActivePointer { lease: ReadLease { lease: Duration::ZERO, skew: Duration::ZERO }, ..switched(None, None) };
        assert_eq!(decide(Some(&old), Duration::ZERO, 0), LeaseDecision::Read(Some(9)));
        assert_eq!(decide(Some(&old), Duration::from_millis(1), 0), LeaseDecision::Reread);
        assert_eq!(decide(None, Duration::ZERO, 0), LeaseDecision::Read(None), "the read that found no row");
        assert_eq!(decide(None, Duration::from_millis(1), 0), LeaseDecision::Reread, "no row is not held");
    }

    /// The promise of [`decide`], over clocks off by less than ε: for every
    /// pair of readers, one that read the old row before the lock and one the
    /// new row after it, every old answer comes before every new one in
    /// PostgreSQL's time.
    #[test]
    fn no_answer_from_the_old_generation_follows_one_from_the_new_across_skewed_clocks() {
        use std::time::Duration;
        let lease = ReadLease::default();
        let (l, e) = (lease.lease_ms(), lease.skew_ms());
        let lock = 50_000; // U, PostgreSQL's clock
        let v = lock + l + e;
        let new = ActivePointer { active: 2, previous: Some(1), visible_at_ms: Some(v), lease };
        let old = ActivePointer { active: 1, previous: None, visible_at_ms: Some(0), lease };
        let (mut last_old, mut first_new) = (i64::MIN, i64::MAX);
        for skew in [-(e - 1), -e / 2, 0, e / 2, e - 1] {
            for pg_ms in (lock - 2 * l)..(v + 2 * e) {
                let local = pg_ms + skew;
                // A reader of the old row read it at most L before (and before the lock).
                for read_pg in [pg_ms - l, lock - 1, pg_ms] {
                    if read_pg >= lock || read_pg > pg_ms {
                        continue;
                    }
                    let age = Duration::from_millis(u64::try_from(pg_ms - read_pg).unwrap());
                    if decide(Some(&old), age, local) == LeaseDecision::Read(Some(1)) {
                        last_old = last_old.max(pg_ms);
                    }
                }
                // A reader of the new row read it after the lock.
                if pg_ms >= lock {
                    match decide(Some(&new), Duration::ZERO, local) {
                        LeaseDecision::Read(Some(1)) => last_old = last_old.max(pg_ms),
                        LeaseDecision::Read(Some(2)) => first_new = first_new.min(pg_ms),
                        _ => {}
                    }
                }
            }
        }
        assert!(last_old < first_new, "an old answer at {last_old} after a new one at {first_new}");
        assert!(first_new <= v + e, "the switch is visible everywhere by V + ε");
    }

    #[test]
    fn a_duplicate_is_placed_by_the_origin_column_when_there_is_one() {
        assert_eq!(table().first_duplicate_sql(7), None, "no origin: the key alone");
        assert_eq!(table().add_origin_sql(7), None);
        let t = BulkTable { origin: Some("cents"), ..table() };
        assert_eq!(t.read_sql(7), "SELECT id::text AS id, note FROM promotions_g7 WHERE id = $1::text::UUID");
        assert_eq!(
            t.add_origin_sql(7).unwrap(),
            "ALTER TABLE promotions_g7 ADD COLUMN IF NOT EXISTS cents BIGINT NOT NULL DEFAULT 0"
        );
        assert_eq!(
            t.first_duplicate_sql(7).unwrap(),
            "SELECT id::text AS id, first_at, repeat_at FROM (\
             SELECT id, lag(cents) OVER w AS first_at, cents AS repeat_at, row_number() OVER w AS n \
             FROM promotions_g7 WHERE id IN (SELECT id FROM promotions_g7 GROUP BY id HAVING count(*) > 1) \
             WINDOW w AS (PARTITION BY id ORDER BY cents)) d WHERE n = 2 ORDER BY repeat_at, id LIMIT 1"
        );
        assert_eq!(Duplicate::placed("a".into(), 3, 7), Duplicate { key: "a".into(), first: Some(3), repeat: Some(7) });
        assert_eq!(Duplicate::placed("a".into(), 0, 0), Duplicate::unplaced("a".into()));
    }

    #[test]
    fn each_generation_is_its_own_table_keyed_once_sealed() {
        let t = table();
        assert_eq!(
            t.create_sql(7),
            "CREATE TABLE IF NOT EXISTS promotions_g7 (id UUID NOT NULL, cents BIGINT NOT NULL, note TEXT NOT NULL)"
        );
        assert_eq!(t.copy_sql(7), "COPY promotions_g7 (id, cents, note) FROM STDIN");
        assert_eq!(t.seal_sql(7), "ALTER TABLE promotions_g7 ADD CONSTRAINT promotions_g7_pkey PRIMARY KEY (id)");
        assert_eq!(t.read_sql(7), "SELECT id::text AS id, cents, note FROM promotions_g7 WHERE id = $1::text::UUID");
        assert_eq!(t.generation_table(-1), "promotions_g0", "never a negative name");
    }

    #[test]
    fn copy_text_escapes_what_copy_would_read_as_syntax() {
        let row = Row::new()
            .with("id", Value::Text("d018ef0b-dbd9-48f1-ac1a-eb4d90e57118".into()))
            .with("cents", Value::BigInt(6068))
            .with("note", Value::Text("a\tb\\c\nd".into()));
        let text = table().copy_text(&[row.clone(), row.clone()]).unwrap();
        let line = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118\t6068\ta\\tb\\\\c\\nd\n";
        assert_eq!(String::from_utf8(text.clone()).unwrap(), line.repeat(2));
        // Written straight from borrowed values, the same text; read back, the same rows.
        let mut pushed = Vec::new();
        for _ in 0..2 {
            table()
                .push_copy_row(&mut pushed, |c| match c {
                    "id" => Some(CopyValue::Text("d018ef0b-dbd9-48f1-ac1a-eb4d90e57118")),
                    "cents" => Some(CopyValue::BigInt(6068)),
                    _ => Some(CopyValue::Text("a\tb\\c\nd")),
                })
                .unwrap();
        }
        assert_eq!(pushed, text);
        assert_eq!(table().rows_of_copy_text(&text).unwrap(), vec![row.clone(), row]);
        assert!(table().push_copy_row(&mut Vec::new(), |_| Some(CopyValue::BigInt(1))).is_err(), "a text column");
        assert!(table().rows_of_copy_text(b"a\t1\n").is_err(), "a field missing");
        let missing = Row::new().with("id", Value::Text("x".into()));
        assert!(table().copy_text(&[missing]).is_err());
        let wrong = Row::new()
            .with("id", Value::Text("x".into()))
            .with("cents", Value::Text("1".into()))
            .with("note", Value::Text(String::new()));
        assert!(table().copy_text(&[wrong]).is_err());
    }
}
