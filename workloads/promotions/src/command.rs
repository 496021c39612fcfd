//! The promotions workload at the write edge: `POST /promotions/files` with
//! a CSV body (`Content-Type: text/csv`), streamed, becomes one generation
//! on the rows topic ([`Upload`]):
//!
//! 1. a begin record in partition 0, waited for: its offset plus one is the
//!    generation's number, unique and ordered by the log;
//! 2. each line as it arrives, parsed ([`parse_line`]) and appended keyed by
//!    its id (lowercase), counted per partition;
//! 3. an end record in each partition with that partition's count and the
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
use crate::wire::{encode_file_record, encode_row};

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

/// One file being appended: its generation and the rows sent to each partition.
struct Sending {
    generation: i64,
    per_partition: Vec<u64>,
}

impl Sending {
    async fn row<A: Append>(&mut self, out: &mut A, p: &Promotion) -> Result<(), UploadError<FileReject>> {
        let key = p.id.to_string();
        let partition = out.append(key.as_bytes(), encode_row(self.generation, p)).await?;
        let slot = usize::try_from(partition).expect("the appender names one of the topic's partitions");
        self.per_partition[slot] += 1;
        Ok(())
    }

    fn total(&self) -> u64 {
        self.per_partition.iter().sum()
    }

    /// Every partition's end record: the rows it was sent and the file's.
    async fn end<A: Append>(&self, out: &mut A) -> Result<(), UploadError<FileReject>> {
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
    let mut parsed: Vec<Promotion> = Vec::new();
    loop {
        let (result, last) = match body.next_chunk().await {
            Some(Ok(chunk)) => (lines.push(&chunk, |n, text| parse_line(n, text).map(|p| parsed.push(p))), false),
            Some(Err(e)) => return Ok(Err(Stop::Body(e))),
            None => (lines.finish(|n, text| parse_line(n, text).map(|p| parsed.push(p))), true),
        };
        if let Err(e) = result {
            return Ok(Err(Stop::Line(e)));
        }
        // A chunk's rows: a bounded few (a chunk is at most a frame of the connection).
        for p in parsed.drain(..) {
            sending.row(out, &p).await?;
        }
        if last {
            return Ok(Ok(()));
        }
    }
}

impl Upload for Files {
    const NAME: &'static str = "promotions";
    const ROUTE: &'static str = "/promotions/files";

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
        let mut sending = Sending { generation, per_partition: vec![0; partitions as usize] };
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
