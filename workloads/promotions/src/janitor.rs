//! The janitor, in each command instance: follows the rows topic and fails
//! the uploads whose writer died (a command killed mid-upload), so that no
//! generation stays `loading` for ever. The rule is [`crate::stall`]; here
//! the log is read ([`CommandApp::tail`]) and the abort records appended
//! ([`CommandApp::append_to`]).
//!
//! It starts `--promotions-upload-lookback` back in the log: an upload begun
//! earlier, whose every command instance was down since, is not seen (see
//! docs/operations.md). It judges an upload stalled only once it has read
//! everything appended before the judgement, so a janitor catching up never
//! mistakes a live upload for a dead one.

use std::time::Duration;

use ::command::CommandApp;
use common::engine::shutdown::CancellationToken;
use common::engine::task::Task;

use crate::metrics as m;
use crate::records::{Abort, FileRecord};
use crate::stall::{self, Uploads};
use crate::wire::{decode_mark, encode_file_record};

/// The workload's name at the write edge (its topic's owner).
const WORKLOAD: &str = "promotions";

/// How the janitor runs.
#[derive(Debug, Clone, Copy)]
pub struct Janitor {
    /// An open upload with no record for this long is failed.
    pub stall: Duration,
    /// How far back in the log it starts.
    pub lookback: Duration,
}

/// The task over `app`.
pub fn task(janitor: Janitor, app: CommandApp) -> Task {
    Task::new("promotions-janitor", move |stop| run(janitor, app, stop))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn run(janitor: Janitor, app: CommandApp, stop: CancellationToken) -> anyhow::Result<()> {
    let idle = app.upload_idle_timeout();
    anyhow::ensure!(
        janitor.stall >= idle * 2,
        "--promotions-upload-stall ({:?}) must be at least twice --upload-idle-timeout ({idle:?}): a live upload may \
         leave the log quiet that long",
        janitor.stall
    );
    let since_ms = now_ms() - millis(janitor.lookback);
    let policy = common::engine::retry::backoff(Duration::from_secs(1), Duration::from_secs(10));
    let start = || app.tail(WORKLOAD, since_ms);
    let started =
        common::engine::retry::until_cancelled(&stop, policy, "following the promotions rows", start, |_| true).await;
    let mut tail = match started {
        None => return Ok(()),
        Some(Err(e)) => return Err(e),
        Some(Ok(tail)) => tail,
    };
    tracing::info!(stall = ?janitor.stall, "following the promotions uploads");
    let mut uploads = Uploads::new();
    let mut sweep =
        tokio::time::interval((janitor.stall / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            record = tail.next() => match record {
                Ok(r) => match decode_mark(&r.payload) {
                    Ok(mark) => uploads.observe(r.partition, r.offset, r.appended_ms.unwrap_or_else(now_ms), mark),
                    Err(e) => tracing::debug!(error = %e, partition = r.partition, offset = r.offset, "not a promotions record"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "reading the promotions rows");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = sweep.tick() => abort_stalled(&app, &tail, &mut uploads, janitor.stall).await,
        }
    }
}

/// Appends the aborts of every stalled upload, once the tail has read
/// everything appended until now; what fails is tried again at the next sweep.
async fn abort_stalled(app: &CommandApp, tail: &::command::engine::Tail, uploads: &mut Uploads, bound: Duration) {
    let now = now_ms();
    let stalled = uploads.stalled(now, millis(bound));
    if stalled.is_empty() {
        return;
    }
    match tail.caught_up().await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(error = %e, "checking the promotions rows' end");
            return;
        }
    }
    for s in stalled {
        let abort = Abort { generation: s.generation, failure: stall::stopped(bound) };
        let payload = encode_file_record(&FileRecord::Abort(abort));
        let mut appended = true;
        for partition in &s.open {
            if let Err(e) = app.append_to(WORKLOAD, *partition, payload.clone()).await {
                tracing::warn!(error = %e, generation = s.generation, partition, "appending an abort; trying again");
                appended = false;
                break;
            }
        }
        if appended {
            uploads.aborted(s.generation, now);
            metrics::counter!(m::UPLOADS_STOPPED).increment(1);
            tracing::warn!(
                generation = s.generation,
                partitions = ?s.open,
                stall = ?bound,
                "an upload stopped without its end (its writer died?): its generation fails"
            );
        }
    }
}
