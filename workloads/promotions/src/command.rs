//! The promotions workload at the write edge: `POST /promotions/files` with
//! a CSV body (`Content-Type: text/csv`), streamed, becomes one generation
//! on the rows topic ([`Upload`]):
//!
//! 1. a begin record in partition 0, waited for: its offset plus one is the
//!    generation's number, unique and ordered by the log;
//! 2. each line as it arrives, parsed ([`parse_line`]) and counted in the
//!    partition its id (lowercase) maps to, as a record keyed by the id
//!    would be partitioned; a partition's rows go out [`BATCH_ROWS`] at a
//!    time, one batch record each (a record per row bounded the upload at
//!    the broker's per-record cost);
//! 3. each partition's last batch, then, once every row is acknowledged, an
//!    end record in each partition with that partition's count and the
//!    file's total → `202 {"generation": n}`.
//!
//! The first malformed line (or an empty file, or a body cut off) ends it:
//! an abort record in every partition instead of the end records, so the
//! processors drop what they loaded, and `400` naming the line and why. The
//! rest of a refused body is read and discarded, so the client gets its
//! answer rather than a reset connection.
//!
//! A duplicate id is not checked here (it would take the file's ids in
//! memory): the processor's switch finds it, and fails the generation.

use common::engine::kafka::TopicSpec;
use hyper::StatusCode;

use ::command::engine::upload::BodyError;
use ::command::engine::{Append, Chunks, Decided, Input, Reject, RejectStatus, Upload, UploadError};

use crate::generation::Failure;
use crate::line::{parse_line, LineError, Lines, Promotion};
use crate::records::{Abort, Begin, End, FileRecord};
use crate::wire::{encode_batch, encode_file_record};

/// The route files are uploaded on.
pub const ROUTE: &str = "/promotions/files";

/// Rows one batch record carries at most (about 40 KB of Avro).
pub const BATCH_ROWS: usize = 512;

/// Batch records an upload keeps unacknowledged at most: about 5 MB, 65,536 rows.
pub const MAX_IN_FLIGHT_BATCHES: usize = 128;

/// `POST /promotions/files`.
pub struct Files {
    topic: TopicSpec,
}

impl Files {
    /// The workload on its rows topic.
    pub fn new(topic: TopicSpec) -> Self {
        Files { topic }
    }
}

/// Why a file is refused: 400, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileReject {
    #[error("the body must be a CSV file of id,price,expiration_date lines: Content-Type: text/csv")]
    ContentType,
    #[error("{error} (generation {generation} failed)")]
    Line { generation: i64, error: LineError },
    #[error("the file has no lines (generation {generation} failed)")]
    Empty { generation: i64 },
}

impl Reject for FileReject {
    fn label(&self) -> &'static str {
        match self {
            FileReject::ContentType => "content_type",
            FileReject::Line { error, .. } => error.reason.label(),
            FileReject::Empty { .. } => "empty_file",
        }
    }

    fn status(&self) -> RejectStatus {
        RejectStatus::BadRequest
    }
}

/// `text/csv`, with any parameters (`; charset=utf-8`), in any case.
fn is_csv(content_type: Option<&str>) -> bool {
    content_type.and_then(|c| c.split(';').next()).is_some_and(|media| media.trim().eq_ignore_ascii_case("text/csv"))
}

/// Why reading a file stopped before its end.
enum Stop {
    Line(LineError),
    Body(BodyError),
}

/// One file being appended: its generation, the rows sent to each
/// partition, and each partition's batch being filled.
struct Sending {
    generation: i64,
    per_partition: Vec<u64>,
    /// Each partition's rows not appended yet (fewer than [`BATCH_ROWS`]).
    batches: Vec<Vec<(u64, Promotion)>>,
}

impl Sending {
    fn new(generation: i64, partitions: i32) -> Self {
        let partitions = usize::try_from(partitions).unwrap_or(0);
        Sending { generation, per_partition: vec![0; partitions], batches: vec![Vec::new(); partitions] }
    }

    /// Adds line `line` to its partition's batch, and appends the batch once full.
    async fn row<A: Append>(&mut self, out: &mut A, line: u64, p: Promotion) -> Result<(), UploadError<FileReject>> {
        let mut key = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let key = p.id.uuid().hyphenated().encode_lower(&mut key);
        // As the keyed records were partitioned: the engine's partitioner over the agreed count.
        let partition = common::engine::kafka::partition_for(key.as_bytes(), self.batches.len() as i32);
        let slot = usize::try_from(partition).expect("a partition of the agreed count");
        self.per_partition[slot] += 1;
        self.batches[slot].push((line, p));
        if self.batches[slot].len() >= BATCH_ROWS {
            self.send(out, slot).await?;
        }
        Ok(())
    }

    /// Appends partition `slot`'s batch, if it has rows.
    async fn send<A: Append>(&mut self, out: &mut A, slot: usize) -> Result<(), UploadError<FileReject>> {
        if self.batches[slot].is_empty() {
            return Ok(());
        }
        let partitions = self.batches.len() as u32;
        let record = encode_batch(self.generation, slot as i32, partitions, &self.batches[slot]);
        self.batches[slot].clear();
        out.append_to(slot as i32, record).await?;
        Ok(())
    }

    fn total(&self) -> u64 {
        self.per_partition.iter().sum()
    }

    /// Every partition's last batch, then, once every row is acknowledged,
    /// every partition's end record: the rows it was sent and the file's.
    /// (Waiting first keeps each end after its partition's rows whatever
    /// producer carries which record.)
    async fn end<A: Append>(&mut self, out: &mut A) -> Result<(), UploadError<FileReject>> {
        for slot in 0..self.batches.len() {
            self.send(out, slot).await?;
        }
        out.flush().await?;
        let partitions = self.per_partition.len() as u32;
        for (partition, rows) in self.per_partition.iter().enumerate() {
            let partition = partition as i32;
            let end = End { generation: self.generation, partition, partitions, rows: *rows, total: self.total() };
            out.append_to(partition, encode_file_record(&FileRecord::End(end))).await?;
        }
        Ok(out.flush().await?)
    }

    /// An abort record in every partition: the processors drop the generation.
    async fn abort<A: Append>(&self, out: &mut A, failure: Failure) -> Result<(), UploadError<FileReject>> {
        let record = encode_file_record(&FileRecord::Abort(Abort { generation: self.generation, failure }));
        for partition in 0..self.per_partition.len() as i32 {
            out.append_to(partition, record.clone()).await?;
        }
        Ok(out.flush().await?)
    }
}

/// Reads the body to its end or its first bad line, appending each valid row.
async fn send_rows<C: Chunks, A: Append>(
    sending: &mut Sending,
    lines: &mut Lines,
    body: &mut C,
    out: &mut A,
) -> Result<Result<(), Stop>, UploadError<FileReject>> {
    let mut parsed: Vec<(u64, Promotion)> = Vec::new();
    loop {
        let (result, last) = match body.next_chunk().await {
            Some(Ok(chunk)) => (lines.push(&chunk, |n, text| parse_line(n, text).map(|p| parsed.push((n, p)))), false),
            Some(Err(e)) => return Ok(Err(Stop::Body(e))),
            None => (lines.finish(|n, text| parse_line(n, text).map(|p| parsed.push((n, p)))), true),
        };
        if let Err(e) = result {
            return Ok(Err(Stop::Line(e)));
        }
        // A chunk's rows: a bounded few (a chunk is at most a frame of the connection).
        for (n, p) in parsed.drain(..) {
            sending.row(out, n, p).await?;
        }
        if last {
            return Ok(Ok(()));
        }
    }
}

impl Upload for Files {
    const NAME: &'static str = "promotions";
    const ROUTE: &'static str = ROUTE;

    /// Batch records: each carries up to [`BATCH_ROWS`] rows.
    const MAX_IN_FLIGHT: usize = MAX_IN_FLIGHT_BATCHES;

    type Reject = FileReject;

    fn topic(&self) -> TopicSpec {
        self.topic.clone()
    }

    async fn receive<C: Chunks, A: Append>(
        &self,
        input: &Input<'_>,
        _now_ms: i64,
        body: &mut C,
        out: &mut A,
    ) -> Result<Decided, UploadError<FileReject>> {
        if !is_csv(input.content_type) {
            return Err(UploadError::Rejected(FileReject::ContentType));
        }
        let partitions = out.partitions();
        let begin = encode_file_record(&FileRecord::Begin(Begin { partitions: partitions.max(0) as u32 }));
        let generation = out.deliver_to(0, begin).await?.offset + 1;
        let mut sending = Sending::new(generation, partitions);
        let mut lines = Lines::new();
        let (reject, failure) = match send_rows(&mut sending, &mut lines, body, out).await? {
            Ok(()) if sending.total() == 0 => {
                let reject = FileReject::Empty { generation };
                let failure = Failure { line: None, error: reject.to_string() };
                (reject, failure)
            }
            Ok(()) => {
                sending.end(out).await?;
                let answer = serde_json::json!({ "generation": generation }).to_string();
                return Ok(Decided { status: StatusCode::ACCEPTED, body: Some(answer) });
            }
            Err(Stop::Line(error)) => {
                // Read to the end, so that the client is answered rather than cut off mid-send.
                while let Some(Ok(_)) = body.next_chunk().await {}
                let failure = Failure { line: Some(error.line), error: error.to_string() };
                (FileReject::Line { generation, error }, failure)
            }
            Err(Stop::Body(e)) => {
                let error = format!("the upload stopped after line {}: {e}", lines.count());
                sending.abort(out, Failure { line: None, error }).await?;
                return Err(UploadError::Body(e));
            }
        };
        sending.abort(out, failure).await?;
        Err(UploadError::Rejected(reject))
    }
}

#[cfg(test)]
mod tests {
    use ::command::engine::{AppendError, Delivered};
    use hyper::body::Bytes;

    use super::*;
    use crate::wire::decode_file_record;

    /// A log of `partitions` partitions in memory, keyed records placed as the engine would.
    struct Log {
        partitions: Vec<Vec<FileRecord>>,
    }

    impl Append for Log {
        fn partitions(&self) -> i32 {
            self.partitions.len() as i32
        }

        async fn append(&mut self, key: &[u8], payload: Vec<u8>) -> Result<i32, AppendError> {
            let p = common::engine::kafka::partition_for(key, self.partitions());
            self.partitions[p as usize].push(decode_file_record(&payload).expect("a record"));
            Ok(p)
        }

        async fn append_to(&mut self, partition: i32, payload: Vec<u8>) -> Result<(), AppendError> {
            self.partitions[partition as usize].push(decode_file_record(&payload).expect("a record"));
            Ok(())
        }

        async fn deliver_to(&mut self, partition: i32, payload: Vec<u8>) -> Result<Delivered, AppendError> {
            self.append_to(partition, payload).await?;
            let offset = self.partitions[partition as usize].len() as i64 - 1;
            Ok(Delivered { partition, offset, appended_ms: None })
        }

        async fn flush(&mut self) -> Result<(), AppendError> {
            Ok(())
        }
    }

    struct Body(std::vec::IntoIter<Result<Bytes, BodyError>>);

    impl Chunks for Body {
        async fn next_chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
            self.0.next()
        }
    }

    fn line(i: u32) -> String {
        format!("00000000-0000-4000-8000-{i:012X},{i}.505,2018-08-04 05:32:31 +0200 CEST\n")
    }

    /// Uploads `chunks` into a fresh 3-partition log with 5 records in partition 0 already.
    async fn upload(chunks: Vec<Result<Bytes, BodyError>>) -> (Result<Decided, UploadError<FileReject>>, Log) {
        let mut log = Log { partitions: vec![Vec::new(); 3] };
        for _ in 0..5 {
            log.partitions[0].push(FileRecord::Begin(Begin { partitions: 3 }));
        }
        let files = Files::new(TopicSpec::events_named("promotions.rows", 3));
        let input = Input::post(None, Some("text/csv; charset=utf-8"), b"");
        let result = files.receive(&input, 0, &mut Body(chunks.into_iter()), &mut log).await;
        (result, log)
    }

    fn chunked(text: &str, size: usize) -> Vec<Result<Bytes, BodyError>> {
        text.as_bytes().chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect()
    }

    #[tokio::test]
    async fn a_file_is_a_begin_its_rows_in_batches_by_id_and_an_end_per_partition_with_its_count() {
        let lines = 3 * BATCH_ROWS as u32 + 50;
        let text: String = (1..=lines).map(line).collect();
        let (result, log) = upload(chunked(&text, 37)).await;
        let decided = result.expect("accepted");
        assert_eq!((decided.status, decided.body.as_deref()), (StatusCode::ACCEPTED, Some(r#"{"generation":6}"#)));
        let mut seen = Vec::new();
        for (p, records) in log.partitions.iter().enumerate() {
            let mut rows = 0;
            for record in records {
                let FileRecord::Batch(batch) = record else { continue };
                assert_eq!((batch.generation, batch.partition, batch.partitions), (6, p as i32, 3));
                assert!((1..=BATCH_ROWS).contains(&batch.rows.len()), "{} rows", batch.rows.len());
                for (n, promotion) in &batch.rows {
                    // The partition a record keyed by the id would have gone to.
                    let key = promotion.id.to_string();
                    assert_eq!(common::engine::kafka::partition_for(key.as_bytes(), 3), p as i32, "line {n}");
                    assert_eq!(promotion, &parse_line(*n, line(*n as u32).trim_end()).unwrap(), "line {n}");
                    seen.push(*n);
                }
                rows += batch.rows.len() as u64;
            }
            let Some(FileRecord::End(end)) = records.last() else { panic!("partition {p} ends with its end record") };
            let total = u64::from(lines);
            assert_eq!(*end, End { generation: 6, partition: p as i32, partitions: 3, rows, total });
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=u64::from(lines)).collect::<Vec<_>>(), "every line once");
    }

    #[tokio::test]
    async fn the_first_bad_line_aborts_the_file_in_every_partition_and_names_the_line() {
        let text: String = (1..=9).map(line).collect::<String>() + "not,a,line\n" + &line(11);
        let (result, log) = upload(chunked(&text, 64)).await;
        let Err(UploadError::Rejected(reject)) = result else { panic!("refused") };
        assert_eq!(Reject::label(&reject), "bad_id");
        assert!(reject.to_string().starts_with("line 10: bad UUID `not`"), "{reject}");
        assert!(reject.to_string().ends_with("(generation 6 failed)"), "{reject}");
        for records in &log.partitions {
            let Some(FileRecord::Abort(abort)) = records.last() else { panic!("every partition ends with an abort") };
            assert_eq!((abort.generation, abort.failure.line), (6, Some(10)));
            assert!(!records.iter().any(|r| matches!(r, FileRecord::End(_))));
        }
    }

    #[tokio::test]
    async fn an_empty_file_a_cut_off_body_and_another_type_are_refused() {
        let (result, log) = upload(Vec::new()).await;
        assert!(matches!(result, Err(UploadError::Rejected(FileReject::Empty { generation: 6 }))));
        assert!(log.partitions.iter().all(|r| matches!(r.last(), Some(FileRecord::Abort(_)))));

        let mut cut = chunked(&line(1), 10);
        cut.push(Err(BodyError::Unreadable));
        let (result, log) = upload(cut).await;
        assert!(matches!(result, Err(UploadError::Body(BodyError::Unreadable))));
        assert!(log.partitions.iter().all(|r| matches!(r.last(), Some(FileRecord::Abort(_)))));

        let files = Files::new(TopicSpec::events_named("promotions.rows", 3));
        let mut log = Log { partitions: vec![Vec::new(); 3] };
        let input = Input::post(None, Some("application/json"), b"");
        let result = files.receive(&input, 0, &mut Body(Vec::new().into_iter()), &mut log).await;
        assert!(matches!(result, Err(UploadError::Rejected(FileReject::ContentType))));
        assert!(log.partitions.iter().all(Vec::is_empty), "nothing appended");
    }
}
