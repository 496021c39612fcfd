//! Rows buffered as PostgreSQL `COPY` text, in shared blocks.
//!
//! A workload that loads rows in bulk buffers them between checkpoints as the
//! text a `COPY` reads ([`super::bulk::BulkTable::push_copy_row`]), and each
//! checkpoint takes a snapshot of what is buffered while the buffer goes on
//! growing. One contiguous buffer is copied whole by every snapshot and grown
//! by doubling: a partition could hold up to three times its pending text
//! (the buffer, its slack, the snapshot; the processor's peak RSS in 10M-row
//! promotions loads is in docs/benchmarks-notes.md, "Fetches that wait, and a
//! bound that holds"). Here the text is a queue of frozen blocks of about [`BLOCK_BYTES`] and one open tail: a
//! snapshot shares the blocks (a reference count each) and copies only the
//! tail, and the buffer's memory is its text plus one block.

use std::collections::VecDeque;

use bytes::Bytes;

/// The size at which the open tail is frozen into a block: large enough that
/// a `COPY` sends few messages, small enough that a snapshot's copy of the
/// tail and the slack of a block stay small.
pub const BLOCK_BYTES: usize = 64 * 1024;

/// Room past [`BLOCK_BYTES`] for the line that crosses it (a longer line grows the tail).
const LINE_ROOM: usize = 4 * 1024;

/// Lines of `COPY` text, appended whole at the back, dropped from the front.
#[derive(Debug, Clone, Default)]
pub struct CopyText {
    /// Frozen blocks, oldest first.
    blocks: VecDeque<Bytes>,
    /// The block being written.
    tail: Vec<u8>,
    len: usize,
}

impl CopyText {
    /// Appends what `write` writes (whole lines) to the end.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.tail.capacity() == 0 {
            // With room for the line that crosses the block's size: the tail is never grown (a grown one
            // would double, and keep its doubled capacity as a block).
            self.tail.reserve_exact(BLOCK_BYTES + LINE_ROOM);
        }
        let before = self.tail.len();
        write(&mut self.tail);
        self.len += self.tail.len() - before;
        if self.tail.len() >= BLOCK_BYTES {
            self.blocks.push_back(Bytes::from(std::mem::take(&mut self.tail)));
        }
    }

    /// Bytes of text held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the first `bytes` of the text (all of it if it holds fewer): a
    /// snapshot's length, so the cut falls at the end of a line.
    pub fn drain_front(&mut self, bytes: usize) {
        let mut left = bytes.min(self.len);
        self.len -= left;
        while left > 0 {
            match self.blocks.front_mut() {
                Some(block) if block.len() <= left => {
                    left -= block.len();
                    self.blocks.pop_front();
                }
                Some(block) => {
                    // Cut inside a block that was the tail when the snapshot was taken.
                    *block = block.slice(left..);
                    left = 0;
                }
                None => {
                    self.tail.drain(..left);
                    left = 0;
                }
            }
        }
        if self.len == 0 {
            // A finished buffer holds no memory.
            self.tail = Vec::new();
        }
    }

    /// The text in pieces, in order, for a `COPY`: the blocks shared, the tail copied.
    pub fn pieces(&self) -> impl Iterator<Item = Bytes> + '_ {
        let tail = (!self.tail.is_empty()).then(|| Bytes::copy_from_slice(&self.tail));
        self.blocks.iter().cloned().chain(tail)
    }

    /// The whole text, contiguous (tests and the simulation's store).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for block in &self.blocks {
            out.extend_from_slice(block);
        }
        out.extend_from_slice(&self.tail);
        out
    }

    /// Bytes held: the blocks' text and the open tail's capacity (a block shared with a snapshot counted here once).
    pub fn capacity(&self) -> usize {
        self.blocks.iter().map(Bytes::len).sum::<usize>() + self.tail.capacity()
    }
}

impl PartialEq for CopyText {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.to_vec() == other.to_vec()
    }
}

impl Eq for CopyText {}

/// Text written whole: cut into blocks of [`BLOCK_BYTES`] that share it, not
/// copied, so that a `COPY` of it still sends messages of a bounded size.
impl From<Vec<u8>> for CopyText {
    fn from(text: Vec<u8>) -> Self {
        let (len, text) = (text.len(), Bytes::from(text));
        let blocks = (0..len).step_by(BLOCK_BYTES).map(|at| text.slice(at..(at + BLOCK_BYTES).min(len))).collect();
        CopyText { blocks, tail: Vec::new(), len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(i: usize, width: usize) -> Vec<u8> {
        let mut l = format!("{i}\t").into_bytes();
        l.resize(width.max(l.len()), b'x');
        l.push(b'\n');
        l
    }

    #[test]
    fn a_snapshot_shares_the_blocks_and_a_drain_of_its_length_leaves_what_came_after() {
        let mut text = CopyText::default();
        let mut expected = Vec::new();
        for i in 0..5_000 {
            let l = line(i, 60);
            expected.extend_from_slice(&l);
            text.push_with(|t| t.extend_from_slice(&l));
        }
        assert!(text.blocks.len() >= 4, "{} blocks", text.blocks.len());
        let snapshot = text.clone();
        assert!(snapshot.blocks.iter().zip(&text.blocks).all(|(a, b)| a.as_ptr() == b.as_ptr()), "shared, not copied");
        let mut later = Vec::new();
        for i in 5_000..6_000 {
            let l = line(i, 60);
            later.extend_from_slice(&l);
            text.push_with(|t| t.extend_from_slice(&l));
        }
        assert_eq!(snapshot.to_vec(), expected);
        text.drain_front(snapshot.len());
        assert_eq!(text.to_vec(), later);
        assert_eq!(text.len(), later.len());
        text.drain_front(text.len());
        assert!(text.is_empty());
        assert_eq!(text.capacity(), 0, "an empty buffer holds no memory");
    }

    #[test]
    fn a_line_longer_than_a_block_is_one_piece() {
        let mut text = CopyText::default();
        let long = line(1, 3 * BLOCK_BYTES);
        text.push_with(|t| t.extend_from_slice(&long));
        text.push_with(|t| t.extend_from_slice(b"2\ty\n"));
        let pieces: Vec<Bytes> = text.pieces().collect();
        assert_eq!(pieces.len(), 2);
        assert_eq!(&pieces[0][..], &long[..]);
        assert_eq!(&pieces[1][..], b"2\ty\n");
    }

    #[test]
    fn text_written_whole_is_sent_in_blocks() {
        let whole: Vec<u8> = (0..3 * BLOCK_BYTES + 100).map(|i| b'a' + (i % 26) as u8).collect();
        let text = CopyText::from(whole.clone());
        let pieces: Vec<Bytes> = text.pieces().collect();
        assert_eq!(pieces.len(), 4);
        assert!(pieces.iter().all(|p| p.len() <= BLOCK_BYTES));
        assert_eq!(text.to_vec(), whole);
        assert_eq!(text.len(), whole.len());
        assert!(CopyText::from(Vec::new()).is_empty());
        assert_eq!(CopyText::from(Vec::new()).pieces().count(), 0);
    }

    proptest! {
        /// Any sequence of appends, snapshots and drains of a snapshot's
        /// length keeps exactly the text of a plain byte queue.
        #[test]
        fn it_holds_what_a_plain_queue_would(ops in proptest::collection::vec((0usize..300, any::<bool>()), 1..400)) {
            let mut text = CopyText::default();
            let mut model: Vec<u8> = Vec::new();
            let mut snapshot: Option<usize> = None;
            for (i, (width, snap)) in ops.into_iter().enumerate() {
                let l = line(i, width * 8);
                text.push_with(|t| t.extend_from_slice(&l));
                model.extend_from_slice(&l);
                if snap {
                    match snapshot.take() {
                        Some(len) => {
                            text.drain_front(len);
                            model.drain(..len);
                        }
                        None => snapshot = Some(text.len()),
                    }
                }
                prop_assert_eq!(text.len(), model.len());
                let pieces: Vec<u8> = text.pieces().flat_map(|p| p.to_vec()).collect();
                prop_assert_eq!(&pieces, &model);
            }
        }
    }
}
