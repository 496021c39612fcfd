//! The widgets workload in the engine's deterministic simulation
//! (`processor::engine::sim`, docs/architecture.md "Deterministic
//! simulation"): generated commands over a few serials (so they collide),
//! with retries of the same client id, and what the log must hold once the
//! run quiesces through crashes, zombies, failed transactions and claims
//! that restore the graph from its incremental checkpoints:
//!
//! - the changes: each exactly once, each the change (and the states after
//!   it) the sequential model makes, under its record key
//!   `<input_offset>:<serial>`, so a missing, doubled or different one shows;
//! - the replies: every command's, as the sequential model decides it.
//!
//! The sequential model is the pure state ([`WidgetsState`]) applied to the
//! commands in log order, once; the graph itself is checked against a plain
//! model by its property tests (`crate::check`). `cargo test -p widgets --lib
//! sim`; `SIM_SEED=n` replays one seed.

use std::collections::BTreeMap;

use ::processor::engine::sim::harness::{self, Simulated, RETENTION_MS};
use ::processor::engine::Emit;
use rand::rngs::StdRng;
use rand::Rng;

use crate::input::{Name, Port, Ports, Serial};
use crate::log::{Logged, Reply, WidgetCommand, SHARD_KEY};
use crate::processor::Widgets;
use crate::records::Command;
use crate::state::{At, IdPolicy, WidgetsState};
use crate::wire::{decode_change, decode_reply, encode_command};

const POLICY: IdPolicy = IdPolicy { retention_ms: RETENTION_MS, max_ids: 64 };
static SIMULATED: Widgets = Widgets::new(POLICY);

/// The model's decisions of `events` (each partition in log order): every
/// change by its record key, and every reply by its request.
fn model(events: &[(i32, WidgetCommand)]) -> (BTreeMap<String, Logged>, BTreeMap<String, Reply>) {
    let mut partitions: BTreeMap<i32, (WidgetsState, i64, i64)> = BTreeMap::new();
    let (mut changes, mut replies) = (BTreeMap::new(), BTreeMap::new());
    for (p, command) in events {
        let (state, next_offset, watermark) =
            partitions.entry(*p).or_insert_with(|| (WidgetsState::new(*p, POLICY), 0, i64::MIN));
        *watermark = (*watermark).max(command.accepted_at_ms);
        state.apply(
            command,
            At { offset: *next_offset, accepted_at_ms: command.accepted_at_ms, watermark_ms: *watermark },
        );
        *next_offset += 1;
        for r in state.take_replies() {
            replies.insert(r.record_key(), r);
        }
        if let Some(cp) = state.checkpoint() {
            for c in cp.changes {
                changes.insert(c.record_key(), c);
            }
            state.mark_checkpointed();
        }
    }
    (changes, replies)
}

fn serial(rng: &mut StdRng) -> Serial {
    Serial::parse(["s0", "s1", "s2", "s3", "s4·é"][rng.random_range(0..5)]).expect("a valid serial")
}

fn command(rng: &mut StdRng) -> Command {
    let port = Port::ALL[rng.random_range(0..3)];
    match rng.random_range(0..10) {
        0..=2 => Command::Create {
            serial: serial(rng),
            name: Name::parse("w").expect("a valid name"),
            ports: Ports::parse(["P", "PR", "QQ", "PRQ", "RRP"][rng.random_range(0..5)]).expect("valid ports"),
        },
        3 => Command::Delete { serial: serial(rng) },
        4..=7 => Command::Associate { serial: serial(rng), with: serial(rng), port },
        _ => Command::Dissociate { serial: serial(rng), other: serial(rng), port },
    }
}

impl Simulated for Widgets {
    /// A change as the processor emits it.
    type Value = Logged;

    fn get() -> &'static Self {
        &SIMULATED
    }

    /// Five serials, every kind of command (so every rule and refusal
    /// happens); 70% with an id, and retries as [`harness::decided_commands`]
    /// makes them.
    fn generate(rng: &mut StdRng, retries: &mut u32) -> Vec<WidgetCommand> {
        let fresh = |rng: &mut StdRng, i: usize, request: u128, now| WidgetCommand {
            request: uuid::Uuid::from_u128(request),
            id: rng.random_bool(0.7).then(|| format!("w{i}")),
            command: command(rng),
            accepted_at_ms: now,
        };
        let retry = |first: &WidgetCommand, request: u128, now| WidgetCommand {
            request: uuid::Uuid::from_u128(request),
            accepted_at_ms: now,
            ..first.clone()
        };
        harness::decided_commands(rng, retries, fresh, retry, |c| c.id.is_some())
    }

    /// Keyed by the shard, as the command writes it.
    fn record(command: &WidgetCommand) -> (Vec<u8>, Vec<u8>) {
        (SHARD_KEY.to_vec(), encode_command(command))
    }

    fn read(record: &Emit) -> Result<(i64, Self::Value), String> {
        let c = decode_change(&record.payload).map_err(|e| e.to_string())?;
        if record.key != c.record_key() {
            return Err(format!("change {} under the record key {}", c.record_key(), record.key));
        }
        Ok((c.input_offset, c))
    }

    fn fold(events: &[(i32, WidgetCommand)]) -> BTreeMap<String, Self::Value> {
        model(events).0
    }

    /// Every command has a reply, and it is the sequential model's decision.
    fn check_replies(events: &[(i32, WidgetCommand)], replies: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
        harness::replies_as_modelled(&model(events).1, replies, decode_reply, |_, got, want| got == want)
    }
}

#[test]
fn sim_widgets_decides_every_command_as_the_sequential_model() {
    harness::simulate::<Widgets>();
}

/// Every planted bug that can touch decided changes or replies fails some
/// seed ([`harness::decided_write_bugs`]).
#[test]
fn sim_catches_every_planted_bug_that_applies() {
    harness::catches::<Widgets>(&harness::decided_write_bugs());
}
