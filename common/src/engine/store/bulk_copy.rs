//! Local copies of bulk generations: a reader's own read-only, sorted file
//! of a generation, so that a lookup by key costs a read from the page cache
//! instead of a PostgreSQL round trip.
//!
//! A generation never changes once its pointer names it, so a copy taken
//! then is exact for as long as the generation is read, and which generation
//! a request reads stays the lease's decision ([`super::bulk::PointerLease`]):
//! a copy only answers for its own generation, and a generation without one
//! (not built yet, or failed) is read from PostgreSQL as before. So copies
//! change where a row comes from, never which row.
//!
//! ```text
//! pointer names g ─▶ COPY (SELECT … ORDER BY key) TO STDOUT (binary) ─▶ <dir>/<pid>/<table>_g<g>.rows
//!                                                     index: each block's first key, in memory
//! lookup(g, key) ─▶ front table (key's leading bits) ─▶ binary search of those blocks' first keys
//!                ─▶ pread one block (page cache) ─▶ binary search in it
//! ```
//!
//! The file is a run of blocks of at most [`BLOCK`] bytes (a larger row gets
//! a block of its own), each a run of records `key length (u16) · key · values
//! length (u32) · values`, keys strictly ascending, then the records' offsets
//! in the block (`u32` each) and their count (`u32`): a lookup is a binary
//! search of the index (of the few blocks its key's leading bits allow: the
//! index's front table), one read, and a binary search of the block. Keys are stored so that
//! byte order is the column's order (a UUID's 16 bytes, an integer big-endian
//! with its sign flipped, text as its bytes); the build checks the order as it
//! writes, and gives up (the generation is then read from PostgreSQL) if
//! PostgreSQL's order differs (text under a collation that is not byte order).
//!
//! Memory: the index holds one key per block (about 40 rows of 49 bytes per
//! block: some 240,000 keys, 6.8 MB, for 10 million rows; its front table
//! 4 bytes a block, rounded up to a power of two: 1 MB); the rows themselves
//! stay in the kernel's page cache, which is not the process's memory (read
//! with `pread`, not mapped). Disk: about the rows' own bytes per copy, one
//! or two copies (the active generation and, during a switch, the previous).
//!
//! Files live in `<dir>/<pid>/`: each process its own, removed when it stops;
//! one killed leaves its folder, which the next process to open `<dir>`
//! removes (its pid no longer running).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;

use super::bulk::BulkTable;
use super::table::{Column, ColumnType, Row, Value};
use crate::engine::pg::PgError;

/// Gauge: the newest generation whose copy this process built; label `table`.
pub const COPY_GENERATION: &str = "analytics_query_bulk_copy_generation";
/// Gauge: how long that copy took to build, in seconds; label `table`.
pub const COPY_BUILD_SECONDS: &str = "analytics_query_bulk_copy_build_seconds";

/// Most bytes of a block (rows up to it are read with one `pread`). 2 KiB:
/// the kernel's copy of the block was half of a lookup's `pread` at 4 KiB
/// (docs/benchmarks-notes.md), for twice the index's memory (6.8 MB for 10
/// million rows of 49 bytes).
const BLOCK: usize = 2048;

/// Why a copy could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("postgres: {0}")]
    Pg(#[from] PgError),
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
    /// The key column's type has no byte order matching PostgreSQL's (numeric).
    #[error("keys of type {0:?} are not copied")]
    UnsupportedKey(ColumnType),
    /// PostgreSQL's order of the keys is not their bytes' order (a collation).
    #[error("keys not in byte order at {0:?}")]
    Unordered(String),
    #[error("a malformed record at offset {0}")]
    Malformed(u64),
}

impl From<tokio_postgres::Error> for CopyError {
    fn from(e: tokio_postgres::Error) -> Self {
        CopyError::Pg(e.into())
    }
}

/// A key as stored: bytes whose order is the column's order. `None` for a
/// key that cannot be one of the column's values (then no row has it).
///
/// # Errors
/// [`CopyError::UnsupportedKey`] for a type without such bytes.
pub fn key_bytes(ty: ColumnType, key: &str) -> Result<Option<Vec<u8>>, CopyError> {
    Ok(match ty {
        ColumnType::Uuid => uuid::Uuid::parse_str(key).ok().map(|u| u.as_bytes().to_vec()),
        ColumnType::BigInt => key.parse::<i64>().ok().map(|v| ((v as u64) ^ (1 << 63)).to_be_bytes().to_vec()),
        ColumnType::Int => key.parse::<i32>().ok().map(|v| ((v as u32) ^ (1 << 31)).to_be_bytes().to_vec()),
        ColumnType::Text => Some(key.as_bytes().to_vec()),
        ColumnType::Numeric | ColumnType::Bytea => return Err(CopyError::UnsupportedKey(ty)),
    })
}

/// A stored key back as the value a PostgreSQL read gives ([`Row::read`]):
/// a UUID as its lowercase text, integers as numbers, text as itself.
fn key_value(ty: ColumnType, key: &[u8]) -> Option<Value> {
    Some(match ty {
        ColumnType::Uuid => Value::Text(uuid::Uuid::from_slice(key).ok()?.hyphenated().to_string()),
        ColumnType::BigInt => Value::BigInt((u64::from_be_bytes(key.try_into().ok()?) ^ (1 << 63)) as i64),
        ColumnType::Int => Value::Int((u32::from_be_bytes(key.try_into().ok()?) ^ (1 << 31)) as i32),
        ColumnType::Text => Value::Text(String::from_utf8(key.to_vec()).ok()?),
        ColumnType::Numeric | ColumnType::Bytea => return None,
    })
}

/// The columns a copy holds after the key: the table's read columns.
fn value_columns(table: &BulkTable) -> Vec<Column> {
    table.read_columns().filter(|c| c.name != table.key.name).copied().collect()
}

/// The SQL type a column arrives in from the export (UUID and NUMERIC as text).
fn wire_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::BigInt => Type::INT8,
        ColumnType::Int => Type::INT4,
        ColumnType::Bytea => Type::BYTEA,
        ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => Type::TEXT,
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).expect("a value under 4 GiB").to_le_bytes());
    out.extend_from_slice(bytes);
}

/// One row's values as a record holds them, in `columns`' order.
fn encode_values(columns: &[Column], row: &Row, out: &mut Vec<u8>) -> Result<(), PgError> {
    for c in columns {
        match c.ty {
            ColumnType::BigInt => out.extend_from_slice(&row.big_int(c.name)?.to_le_bytes()),
            ColumnType::Int => out.extend_from_slice(&row.int(c.name)?.to_le_bytes()),
            ColumnType::Bytea => put_bytes(out, row.bytes(c.name)?),
            ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => put_bytes(out, row.text(c.name)?.as_bytes()),
        }
    }
    Ok(())
}

/// Reads `n` bytes at `*at`, moving it on.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let out = bytes.get(*at..at.checked_add(n)?)?;
    *at += n;
    Some(out)
}

fn take_len(bytes: &[u8], at: &mut usize) -> Option<usize> {
    Some(u32::from_le_bytes(take(bytes, at, 4)?.try_into().ok()?) as usize)
}

/// The values of a record back as the [`Row`] a PostgreSQL read gives
/// ([`Row::read`]): the same names, types and text.
fn decode_values(columns: &[Column], bytes: &[u8]) -> Option<Row> {
    let (mut row, mut at) = (Row::new(), 0);
    for c in columns {
        let value = match c.ty {
            ColumnType::BigInt => Value::BigInt(i64::from_le_bytes(take(bytes, &mut at, 8)?.try_into().ok()?)),
            ColumnType::Int => Value::Int(i32::from_le_bytes(take(bytes, &mut at, 4)?.try_into().ok()?)),
            ColumnType::Bytea => {
                let n = take_len(bytes, &mut at)?;
                Value::Bytes(take(bytes, &mut at, n)?.to_vec())
            }
            ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => {
                let n = take_len(bytes, &mut at)?;
                Value::Text(String::from_utf8(take(bytes, &mut at, n)?.to_vec()).ok()?)
            }
        };
        row.set(c.name, value);
    }
    (at == bytes.len()).then_some(row)
}

/// A new copy's file, open for writing it and then reading it.
fn create(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)
}

/// The blocks of a copy by their first keys, packed (one allocation, and a
/// binary search that reads neighbouring memory), with a front table that
/// narrows that search to the blocks of the key's leading bits.
#[derive(Debug, Default)]
struct Index {
    /// Every block's first key, one after the other.
    keys: Vec<u8>,
    /// Where each block's first key starts in `keys`.
    key_at: Vec<u32>,
    /// Each block's offset in the file; one more entry: the file's end.
    offsets: Vec<u64>,
    /// For each value `p` of a key's leading [`Self::bits`] bits ([`prefix`]),
    /// the first block whose first key's leading bits are `p` or more; one more entry:
    /// the blocks' count. Empty until [`Self::seal`]. Measured at 10 million
    /// rows (240,000 blocks, 6.8 MB of first keys): the whole index's 18
    /// probes each missed the CPU's caches twice; the blocks of one prefix
    /// are one or two (docs/benchmarks-notes.md).
    front: Vec<u32>,
    bits: u32,
}

/// Most leading bits the front table is indexed by (4 × 2^24 bytes at most).
const FRONT_BITS_MAX: u32 = 24;

/// A key's leading `bits` bits (1–32): its first four bytes, short keys
/// padded with zeros. Never smaller for a larger key (byte order), which is
/// what the front table relies on.
fn prefix(key: &[u8], bits: u32) -> u32 {
    let mut head = [0u8; 4];
    let n = key.len().min(4);
    head[..n].copy_from_slice(&key[..n]);
    u32::from_be_bytes(head) >> (32 - bits)
}

impl Index {
    fn len(&self) -> usize {
        self.key_at.len()
    }

    fn first_key(&self, block: usize) -> &[u8] {
        let end = self.key_at.get(block + 1).map_or(self.keys.len(), |e| *e as usize);
        &self.keys[self.key_at[block] as usize..end]
    }

    fn push(&mut self, first: &[u8], offset: u64, end: u64) {
        self.key_at.push(u32::try_from(self.keys.len()).expect("an index under 4 GiB"));
        self.keys.extend_from_slice(first);
        if self.offsets.is_empty() {
            self.offsets.push(offset);
        }
        self.offsets.push(end);
    }

    /// Builds the front table once every block is pushed: about one block a
    /// prefix (as many prefixes as blocks, rounded up to a power of two).
    fn seal(&mut self) {
        let blocks = u32::try_from(self.len()).expect("blocks under 4 G");
        self.bits = blocks.next_power_of_two().trailing_zeros().clamp(1, FRONT_BITS_MAX);
        let prefixes = 1usize << self.bits;
        self.front = Vec::with_capacity(prefixes + 1);
        for block in 0..self.len() {
            let p = prefix(self.first_key(block), self.bits) as usize;
            let at = u32::try_from(block).expect("blocks under 4 G");
            while self.front.len() <= p {
                self.front.push(at);
            }
        }
        self.front.resize(prefixes + 1, blocks);
    }

    /// The block that would hold `key`: the last one whose first key is not after it.
    fn block_of(&self, key: &[u8]) -> Option<(u64, usize)> {
        // Blocks before the prefix's first start before `key`, blocks of a larger prefix after it.
        let (mut lo, mut hi) = if self.front.is_empty() {
            (0, self.len())
        } else {
            let p = prefix(key, self.bits) as usize;
            (self.front[p] as usize, self.front[p + 1] as usize)
        };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.first_key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let block = lo.checked_sub(1)?;
        let (start, end) = (self.offsets[block], self.offsets[block + 1]);
        Some((start, usize::try_from(end - start).expect("a block fits memory")))
    }
}

/// One record in a block: its key and its values.
fn record_at(block: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    let mut at = at;
    let key_len = u16::from_le_bytes(take(block, &mut at, 2)?.try_into().ok()?) as usize;
    let key = take(block, &mut at, key_len)?;
    let values_len = take_len(block, &mut at)?;
    Some((key, take(block, &mut at, values_len)?))
}

/// The values of `key` in `block`, by a binary search of the block's table
/// of record offsets (its tail: a `u32` per record, then their count).
fn find_in_block<'b>(block: &'b [u8], key: &[u8]) -> Option<Result<Option<&'b [u8]>, ()>> {
    let n = u32::from_le_bytes(block.get(block.len().checked_sub(4)?..)?.try_into().ok()?) as usize;
    let table = block.len().checked_sub(4 + 4 * n)?;
    let offset = |i: usize| u32::from_le_bytes(block[table + 4 * i..table + 4 * i + 4].try_into().expect("4")) as usize;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let Some((found, values)) = record_at(&block[..table], offset(mid)) else { return Some(Err(())) };
        match found.cmp(key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(Ok(Some(values))),
        }
    }
    Some(Ok(None))
}

/// Writes a copy's records in key order, block by block, and indexes the blocks.
struct CopyWriter {
    out: std::io::BufWriter<File>,
    block: Vec<u8>,
    /// Where each record of the block starts.
    starts: Vec<u32>,
    first: Vec<u8>,
    last: Option<Vec<u8>>,
    index: Index,
    offset: u64,
    rows: u64,
}

impl CopyWriter {
    fn new(file: File) -> Self {
        CopyWriter {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            block: Vec::with_capacity(BLOCK),
            starts: Vec::new(),
            first: Vec::new(),
            last: None,
            index: Index::default(),
            offset: 0,
            rows: 0,
        }
    }

    fn push(&mut self, key: &[u8], values: &[u8]) -> Result<(), CopyError> {
        if self.last.as_deref().is_some_and(|last| last >= key) {
            return Err(CopyError::Unordered(String::from_utf8_lossy(key).into_owned()));
        }
        let len = 2 + key.len() + 4 + values.len() + 4;
        if !self.block.is_empty() && self.block.len() + 4 * self.starts.len() + 4 + len > BLOCK {
            self.end_block()?;
        }
        if self.block.is_empty() {
            self.first = key.to_vec();
        }
        self.starts.push(u32::try_from(self.block.len()).expect("a block under 4 GiB"));
        self.block.extend_from_slice(&u16::try_from(key.len()).expect("a key under 64 KiB").to_le_bytes());
        self.block.extend_from_slice(key);
        put_bytes(&mut self.block, values);
        self.last = Some(key.to_vec());
        self.rows += 1;
        Ok(())
    }

    fn end_block(&mut self) -> std::io::Result<()> {
        for start in &self.starts {
            self.block.extend_from_slice(&start.to_le_bytes());
        }
        let n = u32::try_from(self.starts.len()).expect("records of a block under 4 G");
        self.block.extend_from_slice(&n.to_le_bytes());
        self.out.write_all(&self.block)?;
        let end = self.offset + self.block.len() as u64;
        self.index.push(&self.first, self.offset, end);
        self.offset = end;
        self.block.clear();
        self.starts.clear();
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<(File, Index, u64)> {
        if !self.block.is_empty() {
            self.end_block()?;
        }
        let file = self.out.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        file.sync_data()?;
        self.index.seal();
        Ok((file, self.index, self.rows))
    }
}

/// One generation's copy, open for lookups; its file goes when it is dropped.
pub struct GenerationCopy {
    file: File,
    path: PathBuf,
    index: Index,
    key_name: &'static str,
    key_type: ColumnType,
    values: Vec<Column>,
    rows: u64,
}

impl std::fmt::Debug for GenerationCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationCopy").field("path", &self.path).field("rows", &self.rows).finish()
    }
}

impl GenerationCopy {
    /// Rows in the copy.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes of memory its index holds.
    pub fn index_bytes(&self) -> usize {
        let i = &self.index;
        i.keys.capacity() + 4 * i.key_at.capacity() + 8 * i.offsets.capacity() + 4 * i.front.capacity()
    }

    /// The row of `key` (as text), if the generation has one.
    ///
    /// # Errors
    /// [`CopyError`] when the file cannot be read or holds a malformed block.
    pub fn get(&self, key: &str) -> Result<Option<Row>, CopyError> {
        let Some(key) = key_bytes(self.key_type, key)? else { return Ok(None) };
        let Some((offset, len)) = self.index.block_of(&key) else { return Ok(None) };
        // A read of the page cache: a microsecond, fine on a runtime thread (a copy not yet
        // in the page cache after a restart costs one disk read per block, once).
        let mut small = [0u8; BLOCK];
        let mut large = Vec::new();
        let block = if len <= BLOCK {
            &mut small[..len]
        } else {
            large.resize(len, 0);
            &mut large[..]
        };
        self.file.read_exact_at(block, offset)?;
        match find_in_block(block, &key) {
            Some(Ok(Some(values))) => decode_values(&self.values, values)
                .zip(key_value(self.key_type, &key))
                .map(|(row, key)| Some(row.with(self.key_name, key)))
                .ok_or(CopyError::Malformed(offset)),
            Some(Ok(None)) => Ok(None),
            Some(Err(())) | None => Err(CopyError::Malformed(offset)),
        }
    }
}

impl Drop for GenerationCopy {
    fn drop(&mut self) {
        // Readers still holding it keep the open file; the name goes now.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Exports `generation` of `table` from PostgreSQL into a copy at `path`,
/// in one statement of `tx` (whose statement timeout is lifted for it: a
/// generation of millions of rows takes longer than any request).
///
/// # Errors
/// [`CopyError`]; a partly written file is removed.
pub async fn build(
    tx: &tokio_postgres::Transaction<'_>,
    table: &BulkTable,
    generation: i64,
    path: &Path,
) -> Result<GenerationCopy, CopyError> {
    key_bytes(table.key.ty, "")?; // the type's support, before any work
    let values = value_columns(table);
    let select: Vec<String> = std::iter::once(&table.key)
        .chain(&values)
        .map(|c| if wire_type(c.ty) == Type::TEXT { format!("{}::text", c.name) } else { c.name.to_owned() })
        .collect();
    let sql = format!(
        "COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT (FORMAT binary)",
        select.join(", "),
        table.generation_table(generation),
        table.key.name
    );
    let types: Vec<Type> = std::iter::once(&table.key).chain(&values).map(|c| wire_type(c.ty)).collect();
    let file = create(path)?;
    let written = async {
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        let stream = BinaryCopyOutStream::new(tx.copy_out(&sql).await?, &types);
        pin_mut!(stream);
        let mut writer = CopyWriter::new(file.try_clone()?);
        let mut encoded = Vec::new();
        while let Some(record) = stream.try_next().await? {
            let mut row = Row::new();
            for (i, c) in values.iter().enumerate() {
                let value = match c.ty {
                    ColumnType::BigInt => Value::BigInt(record.try_get(i + 1)?),
                    ColumnType::Int => Value::Int(record.try_get(i + 1)?),
                    ColumnType::Bytea => Value::Bytes(record.try_get(i + 1)?),
                    ColumnType::Uuid | ColumnType::Numeric | ColumnType::Text => Value::Text(record.try_get(i + 1)?),
                };
                row.set(c.name, value);
            }
            let key = match table.key.ty {
                ColumnType::BigInt => key_bytes(ColumnType::BigInt, &record.try_get::<i64>(0)?.to_string())?,
                ColumnType::Int => key_bytes(ColumnType::Int, &record.try_get::<i32>(0)?.to_string())?,
                ty => key_bytes(ty, record.try_get::<&str>(0)?)?,
            }
            .ok_or_else(|| CopyError::Malformed(writer.offset))?;
            encoded.clear();
            encode_values(&values, &row, &mut encoded)?;
            writer.push(&key, &encoded)?;
        }
        Ok::<_, CopyError>(writer.finish()?)
    }
    .await;
    match written {
        Ok((_, index, rows)) => Ok(GenerationCopy {
            file,
            path: path.to_owned(),
            index,
            key_name: table.key.name,
            key_type: table.key.ty,
            values,
            rows,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// A process's folder of copies, `<root>/<pid>`: removed when dropped; those
/// of processes no longer running are removed when it is opened.
#[derive(Debug)]
pub struct CopiesDir {
    dir: PathBuf,
}

impl CopiesDir {
    /// # Errors
    /// When the folder cannot be created.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        for entry in std::fs::read_dir(root)?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir)?;
        Ok(CopiesDir { dir })
    }

    fn path(&self, table: &BulkTable, generation: i64) -> PathBuf {
        self.dir.join(format!("{}.rows", table.generation_table(generation)))
    }
}

impl Drop for CopiesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The copies of one table's generations in one process: those the pointer
/// names, built one at a time in the background.
#[derive(Debug)]
pub struct LocalCopies {
    table: &'static BulkTable,
    dir: Arc<CopiesDir>,
    ready: RwLock<BTreeMap<i64, Arc<GenerationCopy>>>,
    /// The generations the pointer names now (a copy of another is dropped, or not kept once built).
    named: Mutex<BTreeSet<i64>>,
    /// The generation being built, or the last one whose build failed, and when it failed.
    building: Mutex<Option<(i64, Option<std::time::Instant>)>>,
}

/// How long after a failed build the same generation is tried again.
const RETRY_BUILD: std::time::Duration = std::time::Duration::from_secs(30);

impl LocalCopies {
    pub fn new(table: &'static BulkTable, dir: Arc<CopiesDir>) -> Arc<Self> {
        Arc::new(LocalCopies {
            table,
            dir,
            ready: RwLock::default(),
            named: Mutex::default(),
            building: Mutex::default(),
        })
    }

    /// The copy of `generation`, if built.
    pub fn get(&self, generation: i64) -> Option<Arc<GenerationCopy>> {
        self.ready.read().expect("never poisoned").get(&generation).cloned()
    }

    /// Forgets the copy of `generation` (a read of it failed): it is read from PostgreSQL from now on.
    pub fn discard(&self, generation: i64) {
        self.ready.write().expect("never poisoned").remove(&generation);
    }

    /// The pointer now names `named` (the active generation first): copies of
    /// others are dropped, and the first named one without a copy is built in
    /// the background if no build runs (one at a time: a build reads the
    /// whole generation). A failed build is logged and tried again
    /// [`RETRY_BUILD`] later.
    pub fn follow(self: &Arc<Self>, pool: &deadpool_postgres::Pool, named: &[i64]) {
        *self.named.lock().expect("never poisoned") = named.iter().copied().collect();
        self.ready.write().expect("never poisoned").retain(|g, _| named.contains(g));
        let Some(&generation) = named.first() else { return };
        if self.get(generation).is_some() {
            return;
        }
        let mut building = self.building.lock().expect("never poisoned");
        match *building {
            // This one or a newer one is being built.
            Some((g, None)) if g >= generation => return,
            // Failed a moment ago (PostgreSQL away, the disk full): tried again later.
            Some((g, Some(failed))) if g == generation && failed.elapsed() < RETRY_BUILD => return,
            _ => {}
        }
        *building = Some((generation, None));
        let (copies, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move { copies.build(&pool, generation).await });
    }

    async fn build(&self, pool: &deadpool_postgres::Pool, generation: i64) {
        let started = std::time::Instant::now();
        let path = self.dir.path(self.table, generation);
        let built = async {
            let mut client = pool.get().await.map_err(PgError::from)?;
            let tx = client.transaction().await?;
            let copy = build(&tx, self.table, generation, &path).await?;
            tx.commit().await?;
            Ok::<_, CopyError>(copy)
        }
        .await;
        match built {
            Ok(copy) => {
                let seconds = started.elapsed().as_secs_f64();
                tracing::info!(table = self.table.table, generation, rows = copy.rows(), seconds, "local copy ready");
                metrics::gauge!(COPY_GENERATION, "table" => self.table.table).set(generation as f64);
                metrics::gauge!(COPY_BUILD_SECONDS, "table" => self.table.table).set(seconds);
                if self.named.lock().expect("never poisoned").contains(&generation) {
                    self.ready.write().expect("never poisoned").insert(generation, Arc::new(copy));
                }
            }
            Err(e) => {
                tracing::warn!(table = self.table.table, generation, error = %e, "no local copy; reading PostgreSQL");
                let mut building = self.building.lock().expect("never poisoned");
                if *building == Some((generation, None)) {
                    *building = Some((generation, Some(std::time::Instant::now())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_sort_as_their_values() {
        let sorted = |ty, keys: &[&str]| {
            let bytes: Vec<Vec<u8>> = keys.iter().map(|k| key_bytes(ty, k).unwrap().unwrap()).collect();
            bytes.windows(2).all(|w| w[0] < w[1])
        };
        assert!(sorted(
            ColumnType::BigInt,
            &["-9223372036854775808", "-5", "-1", "0", "1", "7", "9223372036854775807"]
        ));
        assert!(sorted(ColumnType::Int, &["-2147483648", "-1", "0", "3", "2147483647"]));
        assert!(sorted(
            ColumnType::Uuid,
            &[
                "00000000-0000-0000-0000-000000000001",
                "7fffffff-0000-0000-0000-000000000000",
                "FFFFFFFF-0000-0000-0000-000000000000"
            ]
        ));
        assert_eq!(key_bytes(ColumnType::Uuid, "not a uuid").unwrap(), None);
        // Back as PostgreSQL prints them.
        let id = "D018EF0B-DBD9-48F1-AC1A-EB4D90E57118";
        let stored = key_bytes(ColumnType::Uuid, id).unwrap().unwrap();
        assert_eq!(key_value(ColumnType::Uuid, &stored), Some(Value::Text(id.to_lowercase())));
        let stored = key_bytes(ColumnType::Int, "-42").unwrap().unwrap();
        assert_eq!(key_value(ColumnType::Int, &stored), Some(Value::Int(-42)));
        assert_eq!(key_bytes(ColumnType::BigInt, "1.5").unwrap(), None);
        assert!(matches!(key_bytes(ColumnType::Numeric, "1"), Err(CopyError::UnsupportedKey(_))));
    }

    #[test]
    fn values_come_back_as_a_postgres_read_gives_them() {
        let columns = [
            Column::new("cents", ColumnType::BigInt),
            Column::new("n", ColumnType::Int),
            Column::new("note", ColumnType::Text),
            Column::new("raw", ColumnType::Bytea),
        ];
        let row = Row::new()
            .with("cents", Value::BigInt(-6068))
            .with("n", Value::Int(7))
            .with("note", Value::Text("2018-08-04 05:32:31 ünï".into()))
            .with("raw", Value::Bytes(vec![0, 1, 255]));
        let mut out = Vec::new();
        encode_values(&columns, &row, &mut out).unwrap();
        assert_eq!(decode_values(&columns, &out), Some(row));
        assert_eq!(decode_values(&columns, &out[..out.len() - 1]), None, "a short record is malformed");
    }

    /// The whole index's binary search, the front table's answer checked against.
    fn block_of_unfronted(index: &Index, key: &[u8]) -> Option<(u64, usize)> {
        let (keys, key_at, offsets) = (index.keys.clone(), index.key_at.clone(), index.offsets.clone());
        Index { keys, key_at, offsets, front: Vec::new(), bits: 0 }.block_of(key)
    }

    proptest::proptest! {
        /// Whatever the keys (short, long, sharing their leading bytes or not), the
        /// front table names the block the whole index's search does, for keys in and out.
        #[test]
        fn the_front_table_finds_the_block_the_whole_search_does(
            mut firsts in proptest::collection::btree_set(proptest::collection::vec(0u8..=255, 0..6), 0..300),
            probes in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..6), 0..200),
        ) {
            firsts.insert(vec![0x7f, 0x7f, 0x7f, 0x7f, 1]);
            let mut index = Index::default();
            for (i, first) in firsts.iter().enumerate() {
                index.push(first, 10 * i as u64, 10 * (i as u64 + 1));
            }
            index.seal();
            proptest::prop_assert_eq!(index.front.len(), (1 << index.bits) + 1);
            for key in probes.iter().chain(firsts.iter()) {
                proptest::prop_assert_eq!(index.block_of(key), block_of_unfronted(&index, key), "key {:?}", key);
            }
        }
    }

    #[test]
    fn an_empty_index_has_no_block() {
        let mut index = Index::default();
        index.seal();
        assert_eq!(index.block_of(b"any"), None);
        assert_eq!(index.block_of(b""), None);
    }

    /// A copy written by the writer, read back by key: every key found in
    /// any block, keys between or beyond them absent, rows larger than a block.
    #[test]
    fn every_key_is_found_across_blocks_and_no_other() {
        static TABLE: std::sync::LazyLock<BulkTable> = std::sync::LazyLock::new(|| BulkTable {
            table: "copy_test",
            key: Column::new("id", ColumnType::BigInt),
            values: vec![Column::new("note", ColumnType::Text)],
            origin: None,
        });
        let dir = std::env::temp_dir().join(format!("bulk-copy-test-{}", crate::random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.rows");
        let values = value_columns(&TABLE);
        let mut writer = CopyWriter::new(create(&path).unwrap());
        let note = |k: i64| if k % 1000 == 0 { "x".repeat(3 * BLOCK) } else { format!("row {k}") };
        let keys: Vec<i64> = (-3000..3000).map(|k| k * 2).collect();
        for k in &keys {
            let mut encoded = Vec::new();
            encode_values(&values, &Row::new().with("note", Value::Text(note(*k))), &mut encoded).unwrap();
            writer.push(&key_bytes(ColumnType::BigInt, &k.to_string()).unwrap().unwrap(), &encoded).unwrap();
        }
        assert!(matches!(
            writer.push(&key_bytes(ColumnType::BigInt, "0").unwrap().unwrap(), &[]),
            Err(CopyError::Unordered(_))
        ));
        let (file, index, rows) = writer.finish().unwrap();
        assert!(index.len() > 40, "{} blocks", index.len());
        assert!(index.first_key(0) < index.first_key(1));
        let copy = GenerationCopy {
            file,
            path: path.clone(),
            index,
            key_name: "id",
            key_type: ColumnType::BigInt,
            values,
            rows,
        };
        assert_eq!(copy.rows(), keys.len() as u64);
        for k in &keys {
            let row = copy.get(&k.to_string()).unwrap().unwrap_or_else(|| panic!("{k}"));
            assert_eq!(row, Row::new().with("note", Value::Text(note(*k))).with("id", Value::BigInt(*k)));
            assert_eq!(copy.get(&(k + 1).to_string()).unwrap(), None, "{}", k + 1);
        }
        assert_eq!(copy.get("-6001").unwrap(), None);
        assert_eq!(copy.get("999999").unwrap(), None);
        assert_eq!(copy.get("not a number").unwrap(), None);
        drop(copy);
        assert!(!path.exists(), "a dropped copy's file is removed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_dead_process_folder_is_removed_and_its_own_on_drop() {
        let root = std::env::temp_dir().join(format!("bulk-copies-{}", crate::random_suffix()));
        let dead = root.join("4000000000"); // above any pid
        std::fs::create_dir_all(&dead).unwrap();
        let dir = CopiesDir::open(&root).unwrap();
        assert!(!dead.exists());
        let own = root.join(std::process::id().to_string());
        assert!(own.is_dir());
        drop(dir);
        assert!(!own.exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}
