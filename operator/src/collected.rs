//! Which results of a batch have been collected, in a form that survives an
//! operator restart: a set of task ids kept as ranges (tasks finish roughly in
//! queue order, so a batch of millions is a handful of ranges), with the counts
//! derived from it. The reconciler stores it, encoded, in a ConfigMap owned by
//! the TaskBatch (never in the status: it grows with the batch) *before* it
//! deletes the results messages it counted. A message delivered again after a
//! restart then finds its tasks in the set and is not counted twice.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::crd::taskbatch::TaskCounts;

/// A set of task ids as disjoint, non-adjacent ranges `start..end`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdSet {
    /// start → end (exclusive).
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl IdSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; false when it was there already.
    pub fn insert(&mut self, id: u64) -> bool {
        if self.contains(id) {
            return false;
        }
        let mut start = id;
        let mut end = id + 1;
        // Merge with the range ending at `id` and the one starting at `id + 1`.
        if let Some((&s, &e)) = self.ranges.range(..=id).next_back()
            && e == id
        {
            start = s;
            self.ranges.remove(&s);
        }
        if let Some(e) = self.ranges.remove(&end) {
            end = e;
        }
        self.ranges.insert(start, end);
        self.len += 1;
        true
    }

    pub fn contains(&self, id: u64) -> bool {
        self.ranges
            .range(..=id)
            .next_back()
            .is_some_and(|(_, &end)| id < end)
    }

    /// Ids in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many ranges: what the encoded size grows with.
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }
}

/// What the ConfigMap holds: the collected ids, the counts, and how many
/// results objects were written (the next one's number).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Collected {
    pub ids: IdSet,
    pub succeeded: i64,
    pub failed: i64,
    pub retried: i64,
    pub result_parts: u64,
    /// Of `failed`: tasks reported failed because their bundle reached the
    /// pool's dead-letter queue.
    pub dead_lettered: i64,
}

/// The stored form: ranges as (gap from the previous end, length), which
/// postcard writes as small varints.
#[derive(Serialize, Deserialize)]
struct Stored {
    version: u8,
    succeeded: i64,
    failed: i64,
    retried: i64,
    result_parts: u64,
    ranges: Vec<(u64, u64)>,
    /// Since version 2 (absent in 1).
    dead_lettered: i64,
}

/// Version 1: [`Stored`] without `dead_lettered` (postcard has no optional
/// trailing fields, so the old layout is read as it was).
#[derive(Deserialize)]
struct StoredV1 {
    version: u8,
    succeeded: i64,
    failed: i64,
    retried: i64,
    result_parts: u64,
    ranges: Vec<(u64, u64)>,
}

const VERSION: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("malformed: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("unknown version {0}")]
    Version(u8),
    #[error("ranges overlap or are out of order")]
    Ranges,
}

impl Collected {
    pub fn encode(&self) -> String {
        let mut previous_end = 0;
        let ranges = self
            .ids
            .ranges
            .iter()
            .map(|(&start, &end)| {
                let gap = start - previous_end;
                previous_end = end;
                (gap, end - start)
            })
            .collect();
        let stored = Stored {
            version: VERSION,
            succeeded: self.succeeded,
            failed: self.failed,
            retried: self.retried,
            result_parts: self.result_parts,
            ranges,
            dead_lettered: self.dead_lettered,
        };
        BASE64.encode(postcard::to_stdvec(&stored).expect("plain data always serializes"))
    }

    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let bytes = BASE64.decode(text.trim())?;
        // The version is the first byte (a u8 is written as itself).
        let stored: Stored = match bytes.first() {
            Some(1) => {
                let v1: StoredV1 = postcard::from_bytes(&bytes)?;
                Stored {
                    version: v1.version,
                    succeeded: v1.succeeded,
                    failed: v1.failed,
                    retried: v1.retried,
                    result_parts: v1.result_parts,
                    ranges: v1.ranges,
                    dead_lettered: 0,
                }
            }
            _ => postcard::from_bytes(&bytes)?,
        };
        if stored.version != 1 && stored.version != VERSION {
            return Err(DecodeError::Version(stored.version));
        }
        let mut ids = IdSet::new();
        let mut previous_end: u64 = 0;
        for (gap, len) in stored.ranges {
            let start = previous_end.checked_add(gap).ok_or(DecodeError::Ranges)?;
            let end = start.checked_add(len).ok_or(DecodeError::Ranges)?;
            // Ranges are stored merged: a zero gap (after the first) or an
            // empty range means a corrupt value.
            if len == 0 || (gap == 0 && !ids.ranges.is_empty()) {
                return Err(DecodeError::Ranges);
            }
            ids.ranges.insert(start, end);
            ids.len += len;
            previous_end = end;
        }
        Ok(Collected {
            ids,
            succeeded: stored.succeeded,
            failed: stored.failed,
            retried: stored.retried,
            result_parts: stored.result_parts,
            dead_lettered: stored.dead_lettered,
        })
    }

    /// The counts of the status (total, enqueued and running come from
    /// elsewhere).
    pub fn apply_to(&self, counts: &mut TaskCounts) {
        counts.succeeded = self.succeeded;
        counts.failed = self.failed;
        counts.retried = self.retried;
        counts.dead_lettered = self.dead_lettered;
    }

    pub fn finished(&self) -> i64 {
        self.succeeded + self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_neighbours_and_refuses_repeats() {
        let mut set = IdSet::new();
        for id in [5, 7, 6, 0, 2, 1, 100] {
            assert!(set.insert(id), "{id} is new");
        }
        assert!(!set.insert(6));
        assert!(!set.insert(0));
        assert_eq!(set.len(), 7);
        // 0..3, 5..8, 100..101
        assert_eq!(set.ranges(), 3);
        for id in [0, 1, 2, 5, 6, 7, 100] {
            assert!(set.contains(id), "{id}");
        }
        for id in [3, 4, 8, 99, 101, u64::MAX - 1] {
            assert!(!set.contains(id), "{id}");
        }
        assert!(set.insert(3) && set.insert(4));
        assert_eq!(set.ranges(), 2, "3 and 4 joined 0..3 and 5..8");
    }

    #[test]
    fn a_million_ids_in_order_are_one_range_and_a_few_bytes() {
        let mut c = Collected::default();
        for id in 0..1_000_000 {
            c.ids.insert(id);
        }
        c.succeeded = 999_990;
        c.failed = 10;
        c.dead_lettered = 4;
        c.result_parts = 42;
        let text = c.encode();
        assert!(text.len() < 40, "{} bytes", text.len());
        assert_eq!(Collected::decode(&text).unwrap(), c);
    }

    #[test]
    fn scattered_ids_round_trip() {
        let mut c = Collected::default();
        // A pseudo-random order with holes, as many workers produce.
        let mut x: u64 = 12345;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            c.ids.insert((x >> 33) % 50_000);
        }
        c.retried = 3;
        let back = Collected::decode(&c.encode()).unwrap();
        assert_eq!(back, c);
        for id in 0..50_000 {
            assert_eq!(back.ids.contains(id), c.ids.contains(id));
        }
    }

    #[test]
    fn version_1_values_still_decode() {
        #[derive(Serialize)]
        struct V1 {
            version: u8,
            succeeded: i64,
            failed: i64,
            retried: i64,
            result_parts: u64,
            ranges: Vec<(u64, u64)>,
        }
        let old = V1 {
            version: 1,
            succeeded: 7,
            failed: 3,
            retried: 2,
            result_parts: 1,
            ranges: vec![(0, 10)],
        };
        let back = Collected::decode(&BASE64.encode(postcard::to_stdvec(&old).unwrap())).unwrap();
        assert_eq!((back.succeeded, back.failed, back.retried), (7, 3, 2));
        assert_eq!((back.result_parts, back.dead_lettered), (1, 0));
        assert_eq!(back.ids.len(), 10);
    }

    #[test]
    fn corrupt_values_are_errors() {
        assert!(matches!(
            Collected::decode("***"),
            Err(DecodeError::Base64(_))
        ));
        let future = Stored {
            version: 9,
            succeeded: 0,
            failed: 0,
            retried: 0,
            result_parts: 0,
            ranges: vec![],
            dead_lettered: 0,
        };
        let text = BASE64.encode(postcard::to_stdvec(&future).unwrap());
        assert!(matches!(
            Collected::decode(&text),
            Err(DecodeError::Version(9))
        ));
        assert!(matches!(
            Collected::decode(&BASE64.encode([1u8])),
            Err(DecodeError::Postcard(_))
        ));
        let overlapping = Stored {
            version: VERSION,
            succeeded: 0,
            failed: 0,
            retried: 0,
            result_parts: 0,
            ranges: vec![(0, 5), (0, 3)],
            dead_lettered: 0,
        };
        let text = BASE64.encode(postcard::to_stdvec(&overlapping).unwrap());
        assert!(matches!(Collected::decode(&text), Err(DecodeError::Ranges)));
    }
}
