//! Bounded capture of a process's output: the last bytes are the useful ones
//! (the error at the end of a log), so the tail is kept.

use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug)]
pub struct OutputTail {
    buf: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl OutputTail {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            truncated: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.limit {
            self.truncated |=
                !bytes.is_empty() && (bytes.len() > self.limit || !self.buf.is_empty());
            self.buf.clear();
            self.buf
                .extend_from_slice(&bytes[bytes.len() - self.limit..]);
            return;
        }
        self.buf.extend_from_slice(bytes);
        // Trim in bulk, not per push, so a chatty process costs O(bytes).
        if self.buf.len() > self.limit.saturating_mul(2).max(8192) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.buf.len() > self.limit {
            let excess = self.buf.len() - self.limit;
            self.buf.drain(..excess);
            self.truncated = true;
        }
    }

    /// Reads `source` to its end, keeping the tail.
    pub async fn fill(&mut self, mut source: impl AsyncRead + Unpin) {
        let mut chunk = [0u8; 8192];
        loop {
            match source.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => self.push(&chunk[..n]),
            }
        }
    }

    pub fn truncated(&self) -> bool {
        self.truncated || self.buf.len() > self.limit
    }

    /// The tail as text (invalid UTF-8, such as a character cut in half by the
    /// bound, is replaced, not an error).
    pub fn into_string(mut self) -> String {
        self.trim();
        match String::from_utf8(self.buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(limit: usize, pushes: &[&[u8]]) -> (String, bool) {
        let mut t = OutputTail::new(limit);
        for p in pushes {
            t.push(p);
        }
        let truncated = t.truncated();
        (t.into_string(), truncated)
    }

    #[test]
    fn keeps_everything_under_the_limit() {
        assert_eq!(tail(10, &[b"abc", b"def"]), ("abcdef".into(), false));
        assert_eq!(tail(6, &[b"abc", b"def"]), ("abcdef".into(), false));
        assert_eq!(tail(3, &[b"abc"]), ("abc".into(), false));
    }

    #[test]
    fn keeps_the_last_bytes_over_the_limit() {
        assert_eq!(tail(4, &[b"abc", b"def"]), ("cdef".into(), true));
        assert_eq!(tail(2, &[b"abcdef"]), ("ef".into(), true));
        assert_eq!(tail(3, &[b"x", b"abc"]), ("abc".into(), true));
    }

    #[test]
    fn bulk_trimming_bounds_memory() {
        let mut t = OutputTail::new(100);
        for _ in 0..100_000 {
            t.push(b"0123456789");
        }
        assert!(t.buf.len() <= 8192 + 10, "{}", t.buf.len());
        let s = t.into_string();
        assert_eq!(s.len(), 100);
        assert!(s.starts_with("0123456789"));
    }

    #[test]
    fn zero_limit_keeps_nothing() {
        assert_eq!(tail(0, &[b"abc"]), (String::new(), true));
        assert_eq!(tail(0, &[]), (String::new(), false));
    }

    #[test]
    fn a_cut_multibyte_character_is_replaced() {
        // "é€" is C3 A9 E2 82 AC: the last four bytes start inside the "é".
        assert_eq!(tail(4, &["é€".as_bytes()]), ("\u{FFFD}€".into(), true));
    }
}
