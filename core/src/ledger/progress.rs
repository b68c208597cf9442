//! Which tasks of a bundle have run and had their results sent: a bitmap over
//! the tasks' positions in the bundle. The holder writes it to the ledger at
//! each lease renewal and when it gives a bundle back, so that whoever claims
//! the bundle next runs only the rest.

/// A set of task positions within one bundle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleProgress {
    /// Bit `i % 8` of byte `i / 8`: position `i` is done. No trailing zero
    /// bytes, so that equal sets encode equally.
    bits: Vec<u8>,
}

impl BundleProgress {
    pub fn new() -> Self {
        Self::default()
    }

    /// From the ledger's stored bytes (any bytes are a valid set).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut bits = bytes.to_vec();
        while bits.last() == Some(&0) {
            bits.pop();
        }
        Self { bits }
    }

    /// The bytes stored in the ledger: one bit per position up to the highest.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn insert(&mut self, position: usize) {
        let byte = position / 8;
        if self.bits.len() <= byte {
            self.bits.resize(byte + 1, 0);
        }
        self.bits[byte] |= 1 << (position % 8);
    }

    pub fn contains(&self, position: usize) -> bool {
        self.bits
            .get(position / 8)
            .is_some_and(|b| b & (1 << (position % 8)) != 0)
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_bytes() {
        let mut p = BundleProgress::new();
        assert!(p.is_empty());
        for i in [0, 3, 8, 4095] {
            p.insert(i);
        }
        p.insert(3);
        assert_eq!(p.len(), 4);
        assert_eq!(p.as_bytes().len(), 512, "4096 tasks take 512 bytes at most");
        let back = BundleProgress::from_bytes(p.as_bytes());
        assert_eq!(back, p);
        for i in 0..4100 {
            assert_eq!(back.contains(i), [0, 3, 8, 4095].contains(&i), "{i}");
        }
    }

    #[test]
    fn trailing_zero_bytes_do_not_change_the_set() {
        let a = BundleProgress::from_bytes(&[0b101, 0, 0]);
        let b = BundleProgress::from_bytes(&[0b101]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert!(BundleProgress::from_bytes(&[0, 0]).is_empty());
    }
}
