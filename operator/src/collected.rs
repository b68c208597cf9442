//! Which results of a batch have been collected, in a form that survives an
//! operator restart: a set of task ids with the counts derived from it. The
//! reconciler stores it (see `batch_record`) in ConfigMaps owned by the
//! TaskBatch (never in the status: it grows with the batch) *before* it
//! deletes the results messages it counted. A message delivered again after a
//! restart then finds its tasks in the set and is not counted twice.
//!
//! The set is a compressed bitmap (roaring), cut into pieces of 2^22 ids.
//! Tasks mostly finish in queue order, and then a piece is a run per 65,536
//! ids (10 M ids: 2.2 KB stored, under 1 KB in memory); in the worst order (every other id, or a random half) a piece is
//! 64 plain bitmaps of 8 KiB: 513 KiB, under half of a ConfigMap's 1 MiB. So
//! 10 M ids in any order are at most 3 pieces (1.26 MB), where the ranges of
//! the first encoding took 2 bytes per hole (every other task of 10 M: 10 MB,
//! and ~200 MB of memory). Small pieces travel inline in the head; large
//! ones are stored on their own, named by their digest, so a flush rewrites
//! only the pieces that changed, and the head, written last, is the one
//! atomic switch from the old set to the new (see `KubeRecord`). Pieces in
//! S3 next to the results were the other choice; but a batch without a
//! results location has no bucket, and two stores would have two ways to fail.

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use cloudkon_core::Usage;
use cloudkon_core::id_set::{IdSet, PieceError};

use crate::crd::taskbatch::TaskCounts;

/// Bytes of pieces kept inline in the head at most; larger pieces are stored
/// on their own. With the piece list this keeps the head well under 1 MiB.
pub const INLINE_MAX: usize = 512 << 10;

/// What the record holds: the collected ids, the counts, and how many
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
    /// Of `failed`: tasks reported failed because they were nowhere (see
    /// `pool_idle`).
    pub lost: i64,
    /// What the batch cost so far (the operator's requests and the workers'
    /// shares): kept with the ids, so that results counted once are charged
    /// once across restarts.
    pub usage: Usage,
    /// Of `usage`, the workers' shares.
    pub worker_usage: Usage,
}

/// The stored form: a head (which a record stores last, in one write) and
/// the large pieces it names by digest (stored before it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Encoded {
    pub head: Vec<u8>,
    pub pieces: Vec<Piece>,
}

/// A piece stored on its own: a serialized roaring bitmap.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    /// Hex of the first 16 bytes of the SHA-256 of `bytes`: its name.
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Encoded {
    /// Head and pieces, in bytes.
    pub fn size(&self) -> usize {
        self.head.len() + self.pieces.iter().map(|p| p.bytes.len()).sum::<usize>()
    }
}

/// The first encodings (versions 1 and 2, base64 text in the ConfigMap):
/// ranges as (gap from the previous end, length). Still read: batches in
/// flight during an upgrade.
#[derive(Serialize, Deserialize)]
struct StoredRanges {
    version: u8,
    succeeded: i64,
    failed: i64,
    retried: i64,
    result_parts: u64,
    ranges: Vec<(u64, u64)>,
    /// Since version 2.
    dead_lettered: i64,
}

/// Version 1: [`StoredRanges`] without `dead_lettered` (postcard has no
/// optional trailing fields, so the old layout is read as it was).
#[derive(Serialize, Deserialize)]
struct StoredV1 {
    version: u8,
    succeeded: i64,
    failed: i64,
    retried: i64,
    result_parts: u64,
    ranges: Vec<(u64, u64)>,
}

impl From<StoredV1> for StoredRanges {
    fn from(v1: StoredV1) -> Self {
        StoredRanges {
            version: v1.version,
            succeeded: v1.succeeded,
            failed: v1.failed,
            retried: v1.retried,
            result_parts: v1.result_parts,
            ranges: v1.ranges,
            dead_lettered: 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Head {
    version: u8,
    succeeded: i64,
    failed: i64,
    retried: i64,
    result_parts: u64,
    dead_lettered: i64,
    /// By increasing key.
    pieces: Vec<PieceRef>,
}

#[derive(Serialize, Deserialize)]
struct PieceRef {
    /// The piece's ids are `key << PIECE_BITS` plus the bitmap's values.
    key: u64,
    data: PieceData,
}

#[derive(Serialize, Deserialize)]
enum PieceData {
    Inline(Vec<u8>),
    /// Stored on its own, by this digest.
    Stored([u8; 16]),
}

/// Version 4: a version-3 head (with `version` 4), then the usage.
#[derive(Serialize, Deserialize)]
struct HeadV4 {
    head: Head,
    usage: Usage,
    worker_usage: Usage,
}

/// Version 5: a version-4 head, then the lost tasks. Written only when some
/// were lost, so that an older operator still reads the others.
#[derive(Serialize, Deserialize)]
struct HeadV5 {
    v4: HeadV4,
    lost: i64,
}

/// Ranges.
const V1: u8 = 1;
/// Ranges and `dead_lettered`.
const V2: u8 = 2;
/// A head with roaring pieces.
const V3: u8 = 3;
/// The head and the batch's usage.
const V4: u8 = 4;
/// And the lost tasks.
const V5: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("unknown version {0}")]
    Version(u8),
    #[error("empty")]
    Empty,
    #[error("ranges overlap or are out of order")]
    Ranges,
    #[error("pieces out of order")]
    Order,
    #[error("piece {0} is missing")]
    MissingPiece(String),
    #[error("piece {0} does not match its digest")]
    Digest(String),
    #[error("piece {key} is not a bitmap: {error}")]
    Bitmap { key: u64, error: std::io::Error },
}

fn digest(bytes: &[u8]) -> [u8; 16] {
    let full = Sha256::digest(bytes);
    let mut d = [0; 16];
    d.copy_from_slice(&full[..16]);
    d
}

fn hex(d: &[u8; 16]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collected {
    /// The stored form. Optimizes the set's containers first (hence `&mut`).
    pub fn encode(&mut self) -> Encoded {
        self.ids.optimize();
        let mut pieces = Vec::new();
        let mut refs = Vec::new();
        let mut inline = 0;
        for (key, bitmap) in self.ids.pieces() {
            if bitmap.is_empty() {
                continue;
            }
            let mut bytes = Vec::with_capacity(bitmap.serialized_size());
            bitmap
                .serialize_into(&mut bytes)
                .expect("writing to a Vec cannot fail");
            let data = if inline + bytes.len() <= INLINE_MAX {
                inline += bytes.len();
                PieceData::Inline(bytes)
            } else {
                let d = digest(&bytes);
                pieces.push(Piece {
                    digest: hex(&d),
                    bytes,
                });
                PieceData::Stored(d)
            };
            refs.push(PieceRef { key, data });
        }
        let head = Head {
            version: if self.lost > 0 { V5 } else { V4 },
            succeeded: self.succeeded,
            failed: self.failed,
            retried: self.retried,
            result_parts: self.result_parts,
            dead_lettered: self.dead_lettered,
            pieces: refs,
        };
        let v4 = HeadV4 {
            head,
            usage: self.usage,
            worker_usage: self.worker_usage,
        };
        let head = if self.lost > 0 {
            postcard::to_stdvec(&HeadV5 {
                v4,
                lost: self.lost,
            })
        } else {
            postcard::to_stdvec(&v4)
        };
        Encoded {
            head: head.expect("plain data always serializes"),
            pieces,
        }
    }

    /// Reads either encoding: its first byte is its version.
    pub fn decode(stored: &Encoded) -> Result<Self, DecodeError> {
        match stored.head.first() {
            None => Err(DecodeError::Empty),
            Some(&V1 | &V2) => Self::decode_ranges(&stored.head),
            Some(&V3 | &V4 | &V5) => Self::decode_pieces(stored),
            Some(&v) => Err(DecodeError::Version(v)),
        }
    }

    fn decode_ranges(bytes: &[u8]) -> Result<Self, DecodeError> {
        // Version 1 lacks the trailing field: read it without, as written.
        let stored: StoredRanges = if bytes.first() == Some(&V1) {
            postcard::from_bytes::<StoredV1>(bytes)?.into()
        } else {
            postcard::from_bytes(bytes)?
        };
        let mut ids = IdSet::new();
        let mut previous_end: u64 = 0;
        for (i, (gap, len)) in stored.ranges.into_iter().enumerate() {
            let start = previous_end.checked_add(gap).ok_or(DecodeError::Ranges)?;
            let end = start.checked_add(len).ok_or(DecodeError::Ranges)?;
            // Ranges are stored merged: a zero gap (after the first) or an
            // empty range means a corrupt value.
            if len == 0 || (gap == 0 && i > 0) {
                return Err(DecodeError::Ranges);
            }
            ids.insert_range(start, end);
            previous_end = end;
        }
        Ok(Collected {
            ids,
            succeeded: stored.succeeded,
            failed: stored.failed,
            retried: stored.retried,
            result_parts: stored.result_parts,
            dead_lettered: stored.dead_lettered,
            lost: 0,
            usage: Usage::default(),
            worker_usage: Usage::default(),
        })
    }

    fn decode_pieces(stored: &Encoded) -> Result<Self, DecodeError> {
        let (head, usage, worker_usage, lost) = match stored.head.first() {
            Some(&V5) => {
                let v5: HeadV5 = postcard::from_bytes(&stored.head)?;
                (v5.v4.head, v5.v4.usage, v5.v4.worker_usage, v5.lost)
            }
            Some(&V4) => {
                let v4: HeadV4 = postcard::from_bytes(&stored.head)?;
                (v4.head, v4.usage, v4.worker_usage, 0)
            }
            _ => {
                let head: Head = postcard::from_bytes(&stored.head)?;
                (head, Usage::default(), Usage::default(), 0)
            }
        };
        let mut ids = IdSet::new();
        for piece in head.pieces {
            let bytes = match &piece.data {
                PieceData::Inline(bytes) => bytes.as_slice(),
                PieceData::Stored(d) => {
                    let name = hex(d);
                    let found = stored
                        .pieces
                        .iter()
                        .find(|p| p.digest == name)
                        .ok_or_else(|| DecodeError::MissingPiece(name.clone()))?;
                    if digest(&found.bytes) != *d {
                        return Err(DecodeError::Digest(name));
                    }
                    found.bytes.as_slice()
                }
            };
            let bitmap =
                RoaringBitmap::deserialize_from(bytes).map_err(|error| DecodeError::Bitmap {
                    key: piece.key,
                    error,
                })?;
            ids.push_piece(piece.key, bitmap).map_err(|e| match e {
                PieceError::Order(_) => DecodeError::Order,
                PieceError::Beyond(key) => DecodeError::Bitmap {
                    key,
                    error: std::io::Error::other("ids beyond the piece"),
                },
            })?;
        }
        Ok(Collected {
            ids,
            succeeded: head.succeeded,
            failed: head.failed,
            retried: head.retried,
            result_parts: head.result_parts,
            usage,
            worker_usage,
            dead_lettered: head.dead_lettered,
            lost,
        })
    }

    /// The counts of the status (total, enqueued and running come from
    /// elsewhere).
    pub fn apply_to(&self, counts: &mut TaskCounts) {
        counts.succeeded = self.succeeded;
        counts.failed = self.failed;
        counts.retried = self.retried;
        counts.dead_lettered = self.dead_lettered;
        counts.lost = self.lost;
    }

    pub fn finished(&self) -> i64 {
        self.succeeded + self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use cloudkon_core::id_set::PIECE_BITS;

    /// What one ConfigMap takes (data and binaryData together).
    const CONFIGMAP_MAX: usize = 1 << 20;
    /// A piece's worst case: 64 bitmap containers and their headers.
    const PIECE_WORST: usize = 64 * 8192 + 64 * 8 + 8;

    fn round_trip(c: &mut Collected) -> Encoded {
        let stored = c.encode();
        let back = Collected::decode(&stored).unwrap();
        assert_eq!(&back, c);
        stored
    }

    /// Every bound a record relies on, for a set of ids below `n`.
    fn assert_bounded(stored: &Encoded, n: u64) {
        let pieces = n.div_ceil(1 << PIECE_BITS) as usize;
        assert!(
            stored.head.len() <= INLINE_MAX + 4096,
            "head {}",
            stored.head.len()
        );
        for p in &stored.pieces {
            assert!(p.bytes.len() <= PIECE_WORST, "piece {}", p.bytes.len());
        }
        assert!(stored.pieces.len() <= pieces);
        assert!(
            stored.size() <= pieces * PIECE_WORST + 4096,
            "{}",
            stored.size()
        );
        // Each fits a ConfigMap with room for its name and labels.
        assert!(stored.head.len() < CONFIGMAP_MAX / 2 + 8192);
        assert!(
            stored
                .pieces
                .iter()
                .all(|p| p.bytes.len() < CONFIGMAP_MAX / 2 + 8192)
        );
    }

    #[test]
    fn insert_refuses_repeats_across_pieces() {
        let mut set = IdSet::new();
        let far = (1 << PIECE_BITS) + 3;
        for id in [5, 7, 6, 0, far, 100, u64::MAX - 1] {
            assert!(set.insert(id), "{id} is new");
        }
        assert!(!set.insert(6));
        assert!(!set.insert(far));
        assert_eq!(set.len(), 7);
        for id in [0, 5, 6, 7, 100, far, u64::MAX - 1] {
            assert!(set.contains(id), "{id}");
        }
        for id in [3, 4, 8, 99, 101, far - 1, 3 + (2 << PIECE_BITS), u64::MAX] {
            assert!(!set.contains(id), "{id}");
        }
        let mut c = Collected {
            ids: set,
            ..Collected::default()
        };
        round_trip(&mut c);
    }

    #[test]
    fn ten_million_ids_in_order_are_a_few_kilobytes() {
        let mut c = Collected::default();
        for id in 0..10_000_000 {
            c.ids.insert(id);
        }
        c.succeeded = 9_999_990;
        c.failed = 10;
        c.dead_lettered = 4;
        c.result_parts = 42;
        c.usage = Usage {
            sqs_requests: 1234.5,
            worker_seconds: 99.0,
            ..Usage::default()
        };
        c.worker_usage = c.usage.scaled(0.5);
        let stored = round_trip(&mut c);
        assert!(stored.pieces.is_empty(), "all inline");
        // A run and its container's headers per 65,536 ids.
        assert!(stored.head.len() < 4096, "{} bytes", stored.head.len());
        // Run containers in memory too.
        assert!(c.ids.memory_bytes() < 4096, "{}", c.ids.memory_bytes());
        eprintln!(
            "10 M in order: head {} bytes; {} bytes in memory",
            stored.head.len(),
            c.ids.memory_bytes()
        );
    }

    #[test]
    fn ten_million_every_other_id_stays_bounded() {
        let n = 10_000_000;
        let mut c = Collected::default();
        for id in (0..n).step_by(2) {
            c.ids.insert(id);
        }
        c.succeeded = (n / 2) as i64;
        let stored = round_trip(&mut c);
        assert_bounded(&stored, n);
        // 2 pieces of 513 KiB on their own; the last 1.6 M ids inline.
        assert_eq!(stored.pieces.len(), 2);
        let size = stored.size();
        assert!(size < 1_300_000, "{size} bytes");
        // One bit per id below the highest, in memory as stored.
        let memory = c.ids.memory_bytes();
        assert!(memory <= n / 8 + 65536, "{memory} bytes in memory");
        eprintln!(
            "10 M every other: {size} bytes stored in {} pieces + head {}; {memory} bytes in memory",
            stored.pieces.len(),
            stored.head.len()
        );
    }

    #[test]
    fn a_random_half_of_ten_million_in_random_order_stays_bounded() {
        let n: u64 = 10_000_000;
        let mut c = Collected::default();
        // A full-period LCG over 2^24 visits every id below 2^24 once, in a
        // scrambled order; the first half of those below n is a random half.
        let mut x: u64 = 1;
        let mut seen = 0;
        while c.ids.len() < n / 2 {
            x = (x.wrapping_mul(1_103_515_245).wrapping_add(12_345)) & ((1 << 24) - 1);
            seen += 1;
            assert!(seen <= 1 << 24, "the LCG cycled");
            if x < n {
                assert!(c.ids.insert(x));
            }
        }
        let stored = round_trip(&mut c);
        assert_bounded(&stored, n);
        let size = stored.size();
        assert!(size < 1_300_000, "{size} bytes");
        eprintln!(
            "10 M random half: {size} bytes stored in {} pieces + head {}; {} bytes in memory",
            stored.pieces.len(),
            stored.head.len(),
            c.ids.memory_bytes()
        );
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

    /// The first encoding, as the operator before this one wrote it.
    fn v1_text(ranges: Vec<(u64, u64)>) -> String {
        let stored = StoredV1 {
            version: V1,
            succeeded: 7,
            failed: 1,
            retried: 2,
            result_parts: 3,
            ranges,
        };
        BASE64.encode(postcard::to_stdvec(&stored).unwrap())
    }

    #[test]
    fn the_first_encoding_is_still_read() {
        // 0..3, 5..8, and edge-2..edge+18 across a piece boundary (gaps
        // count from the previous range's end).
        let edge = 1 << PIECE_BITS;
        let text = v1_text(vec![(0, 3), (2, 3), (edge - 10, 20)]);
        let head = BASE64.decode(&text).unwrap();
        let c = Collected::decode(&Encoded {
            head,
            pieces: vec![],
        })
        .unwrap();
        assert_eq!(
            (c.succeeded, c.failed, c.retried, c.result_parts),
            (7, 1, 2, 3)
        );
        assert_eq!(c.ids.len(), 26);
        for id in (0..3).chain(5..8).chain(edge - 2..edge + 18) {
            assert!(c.ids.contains(id), "{id}");
        }
        for id in [3, 4, 8, edge - 3, edge + 18] {
            assert!(!c.ids.contains(id), "{id}");
        }
        let overlapping = BASE64.decode(v1_text(vec![(0, 5), (0, 3)])).unwrap();
        assert!(matches!(
            Collected::decode(&Encoded {
                head: overlapping,
                pieces: vec![]
            }),
            Err(DecodeError::Ranges)
        ));
    }

    #[test]
    fn lost_tasks_are_kept_and_without_them_the_fourth_encoding_is_written() {
        let mut c = Collected {
            succeeded: 3,
            failed: 2,
            lost: 2,
            ..Collected::default()
        };
        c.ids.insert_range(0, 5);
        let stored = round_trip(&mut c);
        assert_eq!(stored.head[0], V5);
        assert_eq!(Collected::decode(&stored).unwrap().lost, 2);
        // None lost: what an older operator reads.
        c.lost = 0;
        let stored = round_trip(&mut c);
        assert_eq!(stored.head[0], V4);
        let v4: HeadV4 = postcard::from_bytes(&stored.head).unwrap();
        assert_eq!(v4.head.failed, 2);
    }

    #[test]
    fn the_second_encoding_is_still_read() {
        let stored = StoredRanges {
            version: V2,
            succeeded: 7,
            failed: 3,
            retried: 2,
            result_parts: 1,
            ranges: vec![(0, 10)],
            dead_lettered: 3,
        };
        let c = Collected::decode(&Encoded {
            head: postcard::to_stdvec(&stored).unwrap(),
            pieces: vec![],
        })
        .unwrap();
        assert_eq!((c.succeeded, c.failed, c.retried), (7, 3, 2));
        assert_eq!((c.result_parts, c.dead_lettered), (1, 3));
        assert_eq!(c.ids.len(), 10);
        // And what version 1 lacked reads as none.
        let v1 = Collected::decode(&Encoded {
            head: BASE64.decode(v1_text(vec![(0, 1)])).unwrap(),
            pieces: vec![],
        })
        .unwrap();
        assert_eq!(v1.dead_lettered, 0);
    }

    #[test]
    fn version_3_heads_read_with_no_usage() {
        let mut c = Collected::default();
        c.ids.insert_range(0, 1000);
        c.succeeded = 1000;
        c.usage.sqs_requests = 7.0;
        let v4 = c.encode();
        let head: HeadV4 = postcard::from_bytes(&v4.head).unwrap();
        let v3 = Head {
            version: V3,
            ..head.head
        };
        let back = Collected::decode(&Encoded {
            head: postcard::to_stdvec(&v3).unwrap(),
            pieces: v4.pieces,
        })
        .unwrap();
        assert_eq!(back.ids, c.ids);
        assert_eq!(back.succeeded, 1000);
        assert!(back.usage.is_zero());
    }

    #[test]
    fn corrupt_or_torn_values_are_errors() {
        let decode =
            |head: Vec<u8>, pieces: Vec<Piece>| Collected::decode(&Encoded { head, pieces });
        assert!(matches!(decode(vec![], vec![]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(vec![9], vec![]),
            Err(DecodeError::Version(9))
        ));
        assert!(matches!(
            decode(vec![V3], vec![]),
            Err(DecodeError::Postcard(_))
        ));
        // A head whose stored piece is missing or was changed.
        let mut c = Collected::default();
        for id in (0..6_000_000).step_by(2) {
            c.ids.insert(id);
        }
        let stored = c.encode();
        assert_eq!(stored.pieces.len(), 1);
        assert!(matches!(
            decode(stored.head.clone(), vec![]),
            Err(DecodeError::MissingPiece(_))
        ));
        let mut changed = stored.pieces.clone();
        changed[0].bytes[100] ^= 1;
        assert!(matches!(
            decode(stored.head.clone(), changed),
            Err(DecodeError::Digest(_))
        ));
    }
}
