//! The Animoto executor's S3 object store against a real S3 server (fauxqs):
//! the size cap, missing objects and buckets, uploads with presigned URLs.
//!
//! Ignored by a plain `cargo test`; `scripts/test` runs them with the servers up.

use std::time::Duration;

use cloudkon_core::aws::{Aws, S3Store};
use cloudkon_core::{AnimotoSpec, BatchId, Outcome, Task, TaskSpec};
use cloudkon_worker::exec::animoto::{
    AnimotoConfig, AnimotoExecutor, ObjectStore, S3ObjectStore, S3StoreError,
};
use cloudkon_worker::{ExecLimits, Executor};

async fn bucket() -> (S3Store, String) {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL_S3").is_some(),
        "AWS_ENDPOINT_URL_S3 is not set: run these tests with scripts/test, or after \
         `source \"$(scripts/aws-servers up)\"`"
    );
    let s3 = Aws::load().await.s3();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let bucket = format!("ck-store-{}-{nanos}", std::process::id());
    s3.ensure_bucket(&bucket).await.unwrap();
    (s3, bucket)
}

/// 3,000 bytes that start like a PNG.
fn fake_png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.resize(3000, 7);
    bytes
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn downloads_are_capped_and_missing_objects_named() {
    let (s3, bucket) = bucket().await;
    s3.put_bytes(&bucket, "in/a.png", fake_png()).await.unwrap();
    let store = S3ObjectStore::new(s3, Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.png");
    let url = format!("s3://{bucket}/in/a.png");

    assert_eq!(store.download(&url, &dest, 3000).await.unwrap(), 3000);
    assert_eq!(std::fs::read(&dest).unwrap(), fake_png());

    // Declared larger than the cap: refused before reading.
    std::fs::remove_file(&dest).unwrap();
    let err = store.download(&url, &dest, 2999).await.unwrap_err();
    assert!(
        matches!(
            err,
            S3StoreError::TooLarge {
                size: 3000,
                limit: 2999
            }
        ),
        "{err}"
    );
    assert!(!dest.exists(), "a refused object was written");

    let err = store
        .download(&format!("s3://{bucket}/in/nope.png"), &dest, 3000)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no such object");
    let err = store
        .download("s3://ck-no-such-bucket-here/a.png", &dest, 3000)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no such bucket `ck-no-such-bucket-here`");
    let err = store
        .download(&format!("s3://{bucket}/in/"), &dest, 3000)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("names no object"), "{err}");
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn uploads_come_back_with_a_presigned_url() {
    let (s3, bucket) = bucket().await;
    let store = S3ObjectStore::new(s3.clone(), Duration::from_secs(900));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"a video, more or less").unwrap();
    let url = format!("s3://{bucket}/videos/b-1.mp4");
    let stored = store.put(file.path(), &url).await.unwrap();
    assert_eq!(stored.uri, url);
    let presigned = stored.url.unwrap();
    assert!(presigned.contains("X-Amz-Expires=900&"), "{presigned}");
    assert!(
        presigned.contains(&format!("/{bucket}/videos/b-1.mp4?")),
        "{presigned}"
    );
    assert_eq!(
        s3.get_bytes(&bucket, "videos/b-1.mp4").await.unwrap(),
        b"a video, more or less"
    );
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn an_s3_image_over_the_cap_fails_its_task() {
    let (s3, bucket) = bucket().await;
    s3.put_bytes(&bucket, "big.png", fake_png()).await.unwrap();
    let mut config = AnimotoConfig::default();
    config.fetch.max_bytes = 1000;
    let out_dir = tempfile::tempdir().unwrap();
    config.output = out_dir.path().to_string_lossy().into_owned();
    let executor = AnimotoExecutor::new(config).with_object_store(std::sync::Arc::new(
        S3ObjectStore::new(s3, Duration::from_secs(60)),
    ));
    let task = Task {
        batch: BatchId::new("cap"),
        id: 0,
        attempt: 1,
        timeout: None,
        spec: TaskSpec::Animoto(AnimotoSpec {
            urls: vec![format!("s3://{bucket}/big.png")],
            seconds_per_image: None,
            resolution: Some("320x240".into()),
            frame_rate: None,
            output: None,
        }),
    };
    let out = executor
        .execute(
            &task,
            ExecLimits {
                timeout: Some(Duration::from_secs(60)),
                output_bytes: 1024,
            },
        )
        .await;
    assert_eq!(
        out.outcome,
        Outcome::Failed {
            reason: format!(
                "image s3://{bucket}/big.png: 3000 bytes, more than the limit of 1000 bytes"
            )
        }
    );
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
}
