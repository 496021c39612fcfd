//! The answers workload in the engine's deterministic simulation
//! (`processor::engine::sim`, docs/architecture.md "Deterministic
//! simulation"): generated writes (with retries of the same client id), and
//! what the log must hold once the run quiesces through crashes, zombies and
//! failed transactions:
//!
//! - the changes: every key's versions 1..n, each exactly once, each the
//!   change the sequential model makes (the harness's read model keeps one
//!   record per record key, `<version>:<key>`, so a missing, doubled or
//!   different change shows);
//! - the replies: every command's, as the sequential model decides it (the
//!   harness has checked that every publication of one request's reply is
//!   the same bytes, a replay's or a zombie's included).
//!
//! The sequential model is the pure rules ([`AnswersState`]) applied to each
//! partition's commands in log order, once; the rules themselves are checked
//! against a plain model by their property tests (`crate::rules`).
//! `cargo test -p answers --lib sim`; `SIM_SEED=n` replays one seed.

use std::collections::BTreeMap;

use ::processor::engine::sim::harness::{self, Simulated, RETENTION_MS};
use ::processor::engine::Emit;
use rand::rngs::StdRng;
use rand::Rng;

use crate::processor::Answers;
use crate::records::AnswerCommand;
use crate::request::{AnswerValue, Op};
use crate::rules::{Event, Policy};
use crate::state::{AnswersState, At};
use crate::wire::{decode_change, decode_reply, encode_command};
use crate::AnswerKey;

/// Ids held as long as the harness's retention (ids of the other workloads too).
static SIMULATED: Answers = Answers::new(Policy { id_retention_ms: RETENTION_MS, max_ids_per_key: 64 });

/// Every change by its record key: its event, value and time.
type Changes = BTreeMap<String, (Event, String, i64)>;
/// Every reply by its request: its outcome and version.
type Replies = BTreeMap<String, (crate::Outcome, u64)>;

/// The model's decisions of `events` (each partition in log order): every
/// change by its record key, and every reply by its request.
fn model(events: &[(i32, AnswerCommand)]) -> (Changes, Replies) {
    let policy = Policy { id_retention_ms: RETENTION_MS, max_ids_per_key: 64 };
    let mut partitions: BTreeMap<i32, (AnswersState, i64, i64)> = BTreeMap::new();
    let (mut changes, mut replies) = (BTreeMap::new(), BTreeMap::new());
    for (p, command) in events {
        let (state, next_offset, watermark) =
            partitions.entry(*p).or_insert_with(|| (AnswersState::new(*p, policy), 0, i64::MIN));
        *watermark = (*watermark).max(command.accepted_at_ms);
        state.apply(
            command,
            At { offset: *next_offset, accepted_at_ms: command.accepted_at_ms, watermark_ms: *watermark },
        );
        *next_offset += 1;
        for r in state.take_replies() {
            replies.insert(r.record_key(), (r.outcome, r.version));
        }
        if let Some(cp) = state.checkpoint() {
            for c in cp.changes {
                changes.insert(c.record_key(), (c.event, c.value, c.at_ms));
            }
            state.mark_checkpointed();
        }
    }
    (changes, replies)
}

impl Simulated for Answers {
    /// A change: its event, value and time (its version is in its record key).
    type Value = (Event, String, i64);

    fn get() -> &'static Self {
        &SIMULATED
    }

    /// Keys k0..k4, creates, updates and deletes in equal parts (so every
    /// outcome happens), values with U+0000 in them; 70% with an id, and
    /// retries as [`harness::decided_commands`] makes them.
    fn generate(rng: &mut StdRng, retries: &mut u32) -> Vec<AnswerCommand> {
        let fresh = |rng: &mut StdRng, i: usize, request: u128, now| {
            let op = [Op::Create, Op::Update, Op::Delete][rng.random_range(0..3)];
            let value = format!("v{i}\u{0}{}", rng.random_range(0..100));
            AnswerCommand {
                request: uuid::Uuid::from_u128(request),
                id: rng.random_bool(0.7).then(|| format!("w{i}")),
                op,
                key: AnswerKey::parse(&format!("k{}", rng.random_range(0..5))).expect("a valid key"),
                value: (op != Op::Delete).then(|| AnswerValue::new(value).expect("short")),
                accepted_at_ms: now,
            }
        };
        let retry = |first: &AnswerCommand, request: u128, now| AnswerCommand {
            request: uuid::Uuid::from_u128(request),
            accepted_at_ms: now,
            ..first.clone()
        };
        harness::decided_commands(rng, retries, fresh, retry, |c| c.id.is_some())
    }

    /// Keyed by the answer key, as the command writes it.
    fn record(command: &AnswerCommand) -> (Vec<u8>, Vec<u8>) {
        (command.partition_key().to_vec(), encode_command(command))
    }

    fn read(record: &Emit) -> Result<(i64, Self::Value), String> {
        let c = decode_change(&record.payload).map_err(|e| e.to_string())?;
        if record.key != c.record_key() {
            return Err(format!("change {} under the record key {}", c.record_key(), record.key));
        }
        Ok((c.input_offset, (c.event, c.value, c.at_ms)))
    }

    /// Every change the sequential model makes, by record key.
    fn fold(events: &[(i32, AnswerCommand)]) -> BTreeMap<String, Self::Value> {
        let changes = model(events).0;
        // Versions 1..n per key, each once: the model's own promise, checked here too.
        let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for key in changes.keys() {
            let (version, answer) = key.split_once(':').expect("<version>:<key>");
            versions.entry(answer).or_default().push(version.parse().expect("a version"));
        }
        for (answer, mut v) in versions {
            v.sort_unstable();
            assert_eq!(v, (1..=v.len() as u64).collect::<Vec<_>>(), "the model's versions of {answer}");
        }
        changes
    }

    /// Every command has a reply, and it is the sequential model's decision.
    fn check_replies(events: &[(i32, AnswerCommand)], replies: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
        harness::replies_as_modelled(&model(events).1, replies, decode_reply, |request, got, want| {
            (got.outcome, got.version) == *want && got.record_key() == request
        })
    }
}

#[test]
fn sim_answers_decides_every_command_as_the_sequential_model() {
    harness::simulate::<Answers>();
}

/// Every planted bug that can touch decided changes or replies fails some
/// seed ([`harness::decided_write_bugs`]).
#[test]
fn sim_catches_every_planted_bug_that_applies() {
    harness::catches::<Answers>(&harness::decided_write_bugs());
}
