//! Event ids for deduplication: an id is counted once while its bucket is open.
//!
//! Pure and deterministic: whether an id counts depends only on the records
//! applied before it, never on when checkpoints ran. An id is held from its
//! first record until its bucket (by default an hour; a workload sets its own
//! length, [`super::Aggregation::DEDUP_BUCKET_MS`]) closes on the partition's
//! watermark; a bucket that is closed is never consulted, whether or not its
//! ids were evicted yet, so eviction timing cannot change an answer.

use std::collections::{BTreeSet, HashMap};

use super::DedupId;

/// An hour: the default granularity at which ids are forgotten.
pub const BUCKET_MS: i64 = 3_600_000;

/// The ids of one partition's open buckets.
#[derive(Debug, Clone)]
pub struct IdWindow {
    /// Id hash → the bucket whose closing forgets it.
    ids: HashMap<u64, i64>,
    /// Every bucket an id of `ids` may be in (a superset: an id that moved to a
    /// newer bucket leaves its old one here until it closes). Eviction checks
    /// these few buckets, not every id, at each checkpoint.
    buckets: BTreeSet<i64>,
    /// Ids first seen since the last checkpoint, with their bucket.
    new: Vec<DedupId>,
    /// Buckets evicted since the last committed checkpoint: their stored
    /// chunks are deleted by the next commit, so they are reported again
    /// until one succeeds (a failed commit leaves the chunks in place).
    closing: BTreeSet<i64>,
    /// A bucket closes once `watermark >= bucket end + retention`.
    retention_ms: i64,
    /// The length of a bucket: its end is its start plus this.
    bucket_len_ms: i64,
}

impl Default for IdWindow {
    fn default() -> Self {
        IdWindow::new(0)
    }
}

impl IdWindow {
    /// A window of hour-long buckets ([`BUCKET_MS`]).
    pub fn new(retention_ms: i64) -> Self {
        Self::with_buckets(BUCKET_MS, retention_ms)
    }

    /// A window of `bucket_len_ms`-long buckets.
    pub fn with_buckets(bucket_len_ms: i64, retention_ms: i64) -> Self {
        IdWindow {
            ids: HashMap::new(),
            buckets: BTreeSet::new(),
            new: Vec::new(),
            closing: BTreeSet::new(),
            retention_ms,
            bucket_len_ms,
        }
    }

    /// True once no record can reach `bucket_ms` any more.
    pub fn is_closed(&self, bucket_ms: i64, watermark_ms: i64) -> bool {
        bucket_ms.saturating_add(self.bucket_len_ms).saturating_add(self.retention_ms) <= watermark_ms
    }

    /// True if the id was not counted yet (and is now); false for a repeat.
    /// An id of a closed bucket is neither held nor refused here: the
    /// workload decides about such a record (analytics skips it as late).
    pub fn admit(&mut self, id: DedupId, watermark_ms: i64) -> bool {
        if self.is_closed(id.bucket_ms, watermark_ms) {
            return true;
        }
        if let Some(held) = self.ids.get(&id.hash) {
            if !self.is_closed(*held, watermark_ms) {
                return false;
            }
        }
        self.ids.insert(id.hash, id.bucket_ms);
        self.buckets.insert(id.bucket_ms);
        self.new.push(id);
        true
    }

    /// Adds ids restored from the store (already persisted). An id found in
    /// several buckets (a failed checkpoint can leave the chunk of a closed
    /// bucket beside the one the id moved to) keeps the newest, whatever
    /// order the buckets are restored in.
    pub fn restore(&mut self, bucket_ms: i64, hashes: impl IntoIterator<Item = u64>) {
        for h in hashes {
            let held = self.ids.entry(h).or_insert(bucket_ms);
            *held = (*held).max(bucket_ms);
        }
        self.buckets.insert(bucket_ms);
    }

    /// Ids first seen since the last checkpoint, per bucket.
    pub fn new_ids(&self) -> HashMap<i64, Vec<u64>> {
        let mut by_bucket: HashMap<i64, Vec<u64>> = HashMap::new();
        for id in &self.new {
            by_bucket.entry(id.bucket_ms).or_default().push(id.hash);
        }
        by_bucket
    }

    pub fn has_new(&self) -> bool {
        !self.new.is_empty()
    }

    /// Forgets the ids of buckets closed at `watermark_ms`; returns those
    /// buckets and the ones evicted since the last committed checkpoint
    /// (their stored chunks can go: no closed bucket is consulted).
    pub fn evict_closed(&mut self, watermark_ms: i64) -> Vec<i64> {
        // Buckets close oldest first: the closed ones are a prefix of the set.
        let closed: Vec<i64> = self.buckets.iter().copied().take_while(|b| self.is_closed(*b, watermark_ms)).collect();
        if !closed.is_empty() {
            self.buckets.retain(|b| !closed.contains(b));
            self.ids.retain(|_, b| !closed.contains(b));
            self.new.retain(|id| !closed.contains(&id.bucket_ms));
            self.closing.extend(closed);
        }
        self.closing.iter().copied().collect()
    }

    /// How many ids were first seen since the last checkpoint.
    pub fn new_len(&self) -> usize {
        self.new.len()
    }

    /// Records that every new id (and the deletion of the closed buckets' chunks) is durable.
    pub fn mark_checkpointed(&mut self) {
        self.new.clear();
        self.closing.clear();
    }

    /// Records that a checkpoint made durable the first `new` new ids (those
    /// [`new_ids`](Self::new_ids) gave when it started) and the deletion of
    /// the `closed` buckets' chunks. Ids admitted since it started stay new,
    /// for the next checkpoint. (Eviction, which may drop new ids, runs only
    /// when a checkpoint starts, never while one is in flight: the first
    /// `new` are still the snapshot's.)
    pub fn checkpointed(&mut self, new: usize, closed: &[i64]) {
        self.new.drain(..new.min(self.new.len()));
        for b in closed {
            self.closing.remove(b);
        }
    }

    pub fn held(&self) -> usize {
        self.ids.len()
    }

    pub fn heap_bytes(&self) -> usize {
        // hashbrown: a (u64, i64) entry plus one control byte.
        self.ids.capacity() * 17 + self.new.capacity() * std::mem::size_of::<DedupId>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H0: i64 = 1_800_000_000_000 / BUCKET_MS * BUCKET_MS;
    const RETENTION: i64 = 7 * 24 * BUCKET_MS;

    fn id(bucket_ms: i64, hash: u64) -> DedupId {
        DedupId { bucket_ms, hash }
    }

    #[test]
    fn an_id_is_counted_once_while_its_bucket_is_open() {
        let mut w = IdWindow::new(RETENTION);
        assert!(w.admit(id(H0, 42), H0));
        assert!(!w.admit(id(H0, 42), H0 + 10));
        // The same id in another bucket (a client reusing it): still one event.
        assert!(!w.admit(id(H0 + BUCKET_MS, 42), H0 + 10));
        assert!(w.admit(id(H0, 43), H0 + 10));
        let new = w.new_ids();
        assert_eq!(new[&H0], vec![42, 43]);
        w.mark_checkpointed();
        assert!(!w.has_new());
        assert!(!w.admit(id(H0, 43), H0 + 20), "checkpointed ids are still held");
    }

    #[test]
    fn a_restored_window_still_knows_the_ids() {
        let mut w = IdWindow::new(RETENTION);
        w.restore(H0, [7, 8]);
        assert!(!w.admit(id(H0, 7), H0));
        assert!(w.admit(id(H0, 9), H0));
        assert_eq!(w.held(), 3);
    }

    #[test]
    fn ids_are_forgotten_when_their_bucket_closes_whenever_eviction_runs() {
        let closes = H0 + BUCKET_MS + RETENTION;
        let mut evicted = IdWindow::new(RETENTION);
        let mut kept = IdWindow::new(RETENTION);
        for w in [&mut evicted, &mut kept] {
            assert!(w.admit(id(H0, 1), H0));
        }
        assert_eq!(evicted.evict_closed(closes), vec![H0]);
        assert_eq!(evicted.held(), 0);
        assert!(kept.evict_closed(closes - 1).is_empty());
        // Closed bucket: neither window refuses or holds the id, evicted or not.
        assert!(evicted.admit(id(H0, 1), closes));
        assert!(kept.admit(id(H0, 1), closes));
        // An open bucket's id whose older copy sits in a closed, unevicted bucket is new.
        assert!(kept.admit(id(closes, 1), closes));
        assert!(!kept.admit(id(closes, 1), closes));
        // The old bucket is still reported closed (its stored chunk goes), the moved id stays.
        assert_eq!(kept.evict_closed(closes), vec![H0]);
        assert_eq!(kept.held(), 1);
        assert!(!kept.admit(id(closes, 1), closes));
    }

    #[test]
    fn a_restored_id_keeps_its_newest_bucket_whatever_the_chunk_order() {
        // A failed checkpoint left the id's old chunk (its bucket closed) beside
        // the chunk of the bucket it moved to: restore must keep the newest.
        let closes = H0 + BUCKET_MS + RETENTION;
        let newer = closes;
        for order in [[H0, newer], [newer, H0]] {
            let mut w = IdWindow::new(RETENTION);
            for bucket in order {
                w.restore(bucket, [42]);
            }
            assert!(!w.admit(id(newer, 42), closes), "restored in order {order:?}: the id is still held");
            assert_eq!(w.held(), 1);
        }
    }

    #[test]
    fn ids_admitted_while_a_checkpoint_is_in_flight_stay_new() {
        let mut w = IdWindow::new(RETENTION);
        assert!(w.admit(id(H0, 1), H0));
        assert!(w.admit(id(H0, 2), H0));
        let (snapshot, n) = (w.new_ids(), w.new_len());
        assert!(w.admit(id(H0, 3), H0), "applied while the checkpoint is in flight");
        w.checkpointed(n, &[]);
        assert_eq!(snapshot[&H0], vec![1, 2]);
        assert_eq!(w.new_ids()[&H0], vec![3], "the next checkpoint persists the id the snapshot missed");
        assert!(!w.admit(id(H0, 3), H0), "and it is still held");
    }

    #[test]
    fn closed_buckets_are_reported_again_until_a_checkpoint_commits() {
        let closes = H0 + BUCKET_MS + RETENTION;
        let mut w = IdWindow::new(RETENTION);
        assert!(w.admit(id(H0, 1), H0));
        w.mark_checkpointed();
        assert_eq!(w.evict_closed(closes), vec![H0]);
        // That checkpoint failed: its chunk is still stored, so the next one must delete it.
        assert_eq!(w.evict_closed(closes), vec![H0]);
        w.mark_checkpointed();
        assert!(w.evict_closed(closes).is_empty());
    }
}
