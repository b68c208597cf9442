//! A batch's results parts in S3: their names, their order, and the parts a
//! crashed write-out left behind.
//!
//! A write-out puts its parts (`part-000000.jsonl`, numbered on from the
//! count in the collected record), then stores the record with the new
//! count, then deletes the results messages. A runner stopped between the
//! first part and the record leaves parts past the stored count whose
//! results come back from the response queue and are written again. The
//! next write-outs put their parts over the same names from the stored
//! count on, but a batch that ends with fewer parts than were left keeps the
//! rest: results twice. So a runner blanks them before it collects.

use cloudkon_core::store::{ObjectStore, StoreError};

/// The key of part `n` under `prefix` (which ends with `/`).
pub fn key(prefix: &str, n: u64) -> String {
    format!("{prefix}part-{n:06}.jsonl")
}

/// A results part's number, from its key (`.../part-000042.jsonl`).
pub fn number(key: &str) -> Option<u64> {
    key.rsplit('/')
        .next()?
        .strip_prefix("part-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// Parts in the order they were written: by number, which outgrows its
/// six digits past part 999999 (as text, `part-1000000` would come before
/// `part-100001`); any other file after them, by name.
pub fn sort(keys: &mut [String]) {
    keys.sort_by_cached_key(|k| {
        let n = number(k);
        (n.is_none(), n, k.clone())
    });
}

/// The parts under `prefix` numbered `written` or more: none was recorded as
/// written, so each is what a stopped write-out left. In key order.
pub async fn left_behind(
    store: &impl ObjectStore,
    bucket: &str,
    prefix: &str,
    written: u64,
) -> Result<Vec<String>, StoreError> {
    let mut keys = store.keys(bucket, &format!("{prefix}part-")).await?;
    keys.retain(|k| {
        // Only this batch's parts, not a deeper prefix's.
        k.strip_prefix(prefix)
            .is_some_and(|rest| !rest.contains('/'))
            && number(k).is_some_and(|n| n >= written)
    });
    sort(&mut keys);
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudkon_core::store::MemoryStore;

    #[test]
    fn parts_are_merged_in_the_order_of_their_numbers() {
        let mut keys: Vec<String> = [
            "r/part-1000000.jsonl",
            "r/part-100001.jsonl",
            "r/other.jsonl",
            "r/part-000002.jsonl",
            "r/part-999999.jsonl",
        ]
        .map(String::from)
        .to_vec();
        sort(&mut keys);
        assert_eq!(
            keys,
            [
                "r/part-000002.jsonl",
                "r/part-100001.jsonl",
                "r/part-999999.jsonl",
                "r/part-1000000.jsonl",
                "r/other.jsonl",
            ]
        );
        assert_eq!(number(&key("r/", 42)), Some(42));
    }

    #[tokio::test]
    async fn the_parts_left_behind_are_those_past_the_count_written() {
        let store = MemoryStore::default();
        for k in [
            "r/b/part-000000.jsonl",
            "r/b/part-000001.jsonl",
            "r/b/part-000002.jsonl",
            "r/b/part-000010.jsonl",
            "r/b/other.jsonl",
            "r/b/part-000003.jsonl/x",
            "r/b2/part-000005.jsonl",
        ] {
            store.put("results", k, b"{}\n".to_vec()).await.unwrap();
        }
        assert_eq!(
            left_behind(&store, "results", "r/b/", 2).await.unwrap(),
            ["r/b/part-000002.jsonl", "r/b/part-000010.jsonl"]
        );
        assert!(
            left_behind(&store, "results", "r/b/", 11)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            left_behind(&store, "other", "r/b/", 0)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
