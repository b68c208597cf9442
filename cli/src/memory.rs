//! This process's memory use, for summaries and benchmarks.

/// Peak resident set size (`VmHWM`), where the kernel reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_rss_is_read_on_linux() {
        let rss = super::peak_rss_bytes().expect("VmHWM in /proc/self/status");
        assert!(rss > 1024 * 1024, "{rss}");
    }
}
