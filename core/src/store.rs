//! The object store results are written to: S3 in the cloud, memory in tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

/// A write that failed, with what and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Whole objects by bucket and key.
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes (or overwrites) one object.
    fn put(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The keys of `bucket` under `prefix`, every one.
    fn keys(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}

/// Objects in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryStore {
    /// The objects of `bucket` under `prefix`, in key order.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.objects
            .lock()
            .expect("store lock")
            .iter()
            .filter(|((b, k), _)| b == bucket && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl ObjectStore for MemoryStore {
    async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.objects
            .lock()
            .expect("store lock")
            .insert((bucket.to_string(), key.to_string()), bytes);
        Ok(())
    }

    async fn keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list(bucket, prefix)
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
}
