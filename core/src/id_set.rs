//! A set of task ids, compressed: one roaring bitmap per 2^22 ids. Whoever
//! collects results counts each task once with it (the operator's collector,
//! which also stores it, and `cloudkon submit`); 10 M ids in any order fit in
//! a few megabytes, ids in order in a few kilobytes.

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

/// Ids per piece, as bits: 2^22, so that a piece's worst case (64 bitmap
/// containers) stays under half of a ConfigMap when stored.
pub const PIECE_BITS: u32 = 22;
/// The low bits of an id within its piece.
pub const PIECE_MASK: u64 = (1 << PIECE_BITS) - 1;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdSet {
    /// id >> PIECE_BITS → the low bits of its ids.
    pieces: BTreeMap<u64, RoaringBitmap>,
    len: u64,
}

/// Why a piece cannot join a set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PieceError {
    #[error("piece {0}: ids beyond the piece")]
    Beyond(u64),
    #[error("piece {0}: pieces out of order")]
    Order(u64),
}

impl IdSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; false when it was there already.
    pub fn insert(&mut self, id: u64) -> bool {
        let added = self
            .pieces
            .entry(id >> PIECE_BITS)
            .or_default()
            .insert((id & PIECE_MASK) as u32);
        self.len += u64::from(added);
        added
    }

    /// Adds `start..end`.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        let mut at = start;
        while at < end {
            let key = at >> PIECE_BITS;
            let piece_end = end.min((key + 1) << PIECE_BITS);
            let low = (at & PIECE_MASK) as u32;
            let high = low + (piece_end - at) as u32;
            self.len += self.pieces.entry(key).or_default().insert_range(low..high);
            at = piece_end;
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.pieces
            .get(&(id >> PIECE_BITS))
            .is_some_and(|b| b.contains((id & PIECE_MASK) as u32))
    }

    /// Ids in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the `n` smallest ids out of the set (fewer when it holds
    /// fewer), in order.
    pub fn take_first(&mut self, n: u64) -> Vec<u64> {
        let mut taken = Vec::new();
        while (taken.len() as u64) < n {
            let Some(mut entry) = self.pieces.first_entry() else {
                break;
            };
            let key = *entry.key();
            let want = n - taken.len() as u64;
            let piece = entry.get_mut();
            let low: Vec<u32> = piece.iter().take(want as usize).collect();
            if let Some(&last) = low.last() {
                piece.remove_range(..=last);
            }
            taken.extend(low.into_iter().map(|l| (key << PIECE_BITS) | u64::from(l)));
            if piece.is_empty() {
                entry.remove();
            }
        }
        self.len -= taken.len() as u64;
        taken
    }

    /// Turns runs of ids into run containers where that is smaller (ids in
    /// order then take a few bytes, in memory too).
    pub fn optimize(&mut self) {
        for b in self.pieces.values_mut() {
            b.optimize();
        }
    }

    /// The pieces by key, in order (for storing the set).
    pub fn pieces(&self) -> impl Iterator<Item = (u64, &RoaringBitmap)> {
        self.pieces.iter().map(|(&k, b)| (k, b))
    }

    /// Adds a stored piece back: keys must come in increasing order (as
    /// [`IdSet::pieces`] gives them), and the bitmap hold low bits only.
    pub fn push_piece(&mut self, key: u64, bitmap: RoaringBitmap) -> Result<(), PieceError> {
        if bitmap.max().is_some_and(|m| u64::from(m) > PIECE_MASK) {
            return Err(PieceError::Beyond(key));
        }
        if self.pieces.last_key_value().is_some_and(|(&k, _)| k >= key) {
            return Err(PieceError::Order(key));
        }
        self.len += bitmap.len();
        self.pieces.insert(key, bitmap);
        Ok(())
    }

    /// Bytes the containers' data take in memory (their headers and the
    /// map's nodes aside).
    pub fn memory_bytes(&self) -> u64 {
        self.pieces
            .values()
            .map(|b| {
                let s = b.statistics();
                // roaring 0.12's byte counts are off (a bitmap's counted in
                // bits, array elements as u32): a bitmap is 8 KiB, an array
                // element 2 bytes.
                u64::from(s.n_bitset_containers) * 8192
                    + s.n_bytes_array_containers / 2
                    + s.n_bytes_run_containers
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_counts_once_across_pieces() {
        let mut set = IdSet::new();
        assert!(set.insert(3));
        assert!(!set.insert(3));
        assert!(set.insert(PIECE_MASK + 5));
        set.insert_range(PIECE_MASK - 1, PIECE_MASK + 7);
        // 3, and PIECE_MASK-1 ..= PIECE_MASK+6 (8 ids, one already there).
        assert_eq!(set.len(), 9);
        assert!(set.contains(PIECE_MASK + 6));
        assert!(!set.contains(PIECE_MASK + 7));
        assert_eq!(set.pieces().count(), 2);
    }

    #[test]
    fn pieces_come_back_in_order_and_bounded() {
        let mut set = IdSet::new();
        set.insert_range(0, 10);
        set.insert((5 << PIECE_BITS) + 1);
        let mut back = IdSet::new();
        for (key, bitmap) in set.pieces() {
            back.push_piece(key, bitmap.clone()).unwrap();
        }
        assert_eq!(back, set);
        let again = set.pieces().next().unwrap();
        assert_eq!(
            back.push_piece(again.0, again.1.clone()),
            Err(PieceError::Order(0))
        );
        let mut wide = RoaringBitmap::new();
        wide.insert(u32::MAX);
        assert_eq!(IdSet::new().push_piece(9, wide), Err(PieceError::Beyond(9)));
    }

    #[test]
    fn the_first_ids_are_taken_in_order_across_pieces() {
        let mut set = IdSet::new();
        let edge = 1u64 << PIECE_BITS;
        set.insert_range(edge - 3, edge + 2);
        set.insert(5);
        set.insert(3 * edge);
        assert_eq!(set.take_first(2), [5, edge - 3]);
        assert_eq!(set.len(), 5);
        assert_eq!(set.take_first(3), [edge - 2, edge - 1, edge]);
        assert!(!set.contains(edge) && set.contains(edge + 1));
        assert_eq!(set.take_first(10), [edge + 1, 3 * edge]);
        assert!(set.is_empty());
        assert_eq!(set.take_first(1), Vec::<u64>::new());
    }
}
