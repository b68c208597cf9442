//! S3Store against a real S3 server (fauxqs, started by scripts/test).

mod common;

use std::io::Write as _;
use std::time::Duration;

use cloudkon_core::aws::{ErrorKind, S3Store};
use common::{aws, unique};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn store() -> (S3Store, String) {
    let s3 = aws().await.s3();
    let bucket = unique("ck-bucket");
    s3.ensure_bucket(&bucket).await.unwrap();
    s3.ensure_bucket(&bucket).await.unwrap(); // idempotent
    (s3, bucket)
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn small_objects_round_trip() {
    let (s3, bucket) = store().await;
    s3.put_bytes(&bucket, "dir/a.txt", b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(s3.get_bytes(&bucket, "dir/a.txt").await.unwrap(), b"hello");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.txt");
    assert_eq!(
        s3.download_to(&bucket, "dir/a.txt", &path).await.unwrap(),
        5
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    s3.delete_object(&bucket, "dir/a.txt").await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn an_upload_is_given_the_time_its_body_takes() {
    // Timeouts far shorter than sending 8 MiB takes here (a slow uplink's
    // stand-in): an upload's grow with its size, where with the timeouts
    // of other calls every attempt failed. (A part of a file's multipart
    // upload is given its time the same way.)
    let (s3, bucket) = store().await;
    let ms = Duration::from_millis;
    let tight = common::aws_with(cloudkon_core::aws::AwsSettings {
        attempt_timeout: ms(20),
        read_timeout: ms(20),
        ..Default::default()
    })
    .await
    .s3();
    let body: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    tight
        .put_bytes(&bucket, "big.bin", body.clone())
        .await
        .unwrap();
    assert_eq!(s3.get_bytes(&bucket, "big.bin").await.unwrap(), body);
    s3.delete_object(&bucket, "big.bin").await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_20_mib_file_goes_up_in_parts() {
    let aws = aws().await;
    let s3 = aws.s3();
    let bucket = unique("ck-bucket");
    s3.ensure_bucket(&bucket).await.unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    file.write_all(&data).unwrap();
    file.flush().unwrap();

    let before = aws.stats().snapshot();
    s3.put_file(&bucket, "big.bin", file.path()).await.unwrap();
    let used = aws.stats().snapshot().since(&before);
    assert_eq!(used.get("S3.CreateMultipartUpload"), 1, "{used}");
    assert_eq!(used.get("S3.UploadPart"), 3, "{used}"); // 8 + 8 + 4 MiB
    assert_eq!(used.get("S3.CompleteMultipartUpload"), 1, "{used}");
    assert_eq!(used.get("S3.AbortMultipartUpload"), 0, "{used}");
    assert!(
        s3.get_bytes(&bucket, "big.bin").await.unwrap() == data,
        "content differs"
    );

    // A small file: one PutObject.
    let mut small = tempfile::NamedTempFile::new().unwrap();
    small.write_all(b"small").unwrap();
    let before = aws.stats().snapshot();
    s3.put_file(&bucket, "small.bin", small.path())
        .await
        .unwrap();
    assert_eq!(aws.stats().snapshot().since(&before).get("S3.PutObject"), 1);
    assert_eq!(s3.get_bytes(&bucket, "small.bin").await.unwrap(), b"small");
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_multipart_upload_dropped_midway_is_aborted() {
    // A task that times out drops its upload: the parts sent so far would be
    // billed until a lifecycle rule removed them.
    let aws = aws().await;
    let s3 = aws.s3();
    let bucket = unique("ck-bucket");
    s3.ensure_bucket(&bucket).await.unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    file.write_all(&data).unwrap();
    file.flush().unwrap();

    let before = aws.stats().snapshot();
    let used = || aws.stats().snapshot().since(&before);
    let mut upload = Box::pin(s3.put_file(&bucket, "cut.bin", file.path()));
    // Cut once its parts go up (the upload's id known to it).
    let parts_going = async {
        while used().get("S3.UploadPart") == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        done = &mut upload => panic!("8 parts went up before the test could cut them: {done:?}"),
        () = parts_going => {}
    }
    drop(upload);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while used().get("S3.AbortMultipartUpload") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{}", used());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(used().get("S3.CompleteMultipartUpload"), 0, "{}", used());
    let e = s3.get_bytes(&bucket, "cut.bin").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

/// A plain HTTP/1.1 GET, as a browser or curl would fetch a presigned URL.
async fn http_get(url: &str) -> (String, Vec<u8>) {
    let rest = url
        .strip_prefix("http://")
        .expect("the test server speaks http");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the server answered")
        .unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    (head, response[split + 4..].to_vec())
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_presigned_url_is_fetchable_without_credentials() {
    let (s3, bucket) = store().await;
    s3.put_bytes(&bucket, "video.mp4", b"not really a video".to_vec())
        .await
        .unwrap();
    let url = s3
        .presign_get(&bucket, "video.mp4", Duration::from_secs(600))
        .await
        .unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let (head, body) = http_get(&url).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(body, b"not really a video");
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_missing_key_is_a_clear_error() {
    let (s3, bucket) = store().await;
    let err = s3.get_bytes(&bucket, "nope/missing.png").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("s3://{bucket}/nope/missing.png")),
        "{text}"
    );
    assert!(text.contains("does not exist"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let err = s3
        .download_to(&bucket, "missing", &dir.path().join("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn an_object_over_a_limit_is_refused_before_its_body_is_read() {
    use cloudkon_core::aws::Limited;

    let (s3, bucket) = store().await;
    let limit: u64 = 1 << 20;
    let at_limit: Vec<u8> = (0..limit).map(|i| (i % 251) as u8).collect();
    s3.put_bytes(&bucket, "at-limit", at_limit.clone())
        .await
        .unwrap();
    // 20 MiB (in parts: local servers take 10 MiB a request): what a user
    // could name to fill the operator's memory.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&vec![7u8; 20 << 20]).unwrap();
    file.flush().unwrap();
    s3.put_file(&bucket, "over", file.path()).await.unwrap();

    // The declared size (Content-Length) refuses it: `declared` means the
    // body was not read.
    assert_eq!(
        s3.get_bytes_at_most(&bucket, "over", limit).await.unwrap(),
        Limited::TooLarge {
            size: 20 << 20,
            declared: true
        }
    );
    // One byte over: refused too.
    assert_eq!(
        s3.get_bytes_at_most(&bucket, "at-limit", limit - 1)
            .await
            .unwrap(),
        Limited::TooLarge {
            size: limit,
            declared: true
        }
    );
    // At the limit: read whole.
    match s3
        .get_bytes_at_most(&bucket, "at-limit", limit)
        .await
        .unwrap()
    {
        Limited::Bytes(bytes) => assert!(bytes == at_limit, "content differs"),
        other => panic!("refused at the limit: {other:?}"),
    }
    // A missing key is still a NotFound error, not a size.
    let err = s3
        .get_bytes_at_most(&bucket, "missing", limit)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn keys_are_listed_across_pages_under_their_prefix_only() {
    use futures_util::StreamExt as _;

    let (s3, bucket) = store().await;
    // One more page than the server's 1,000 keys a page.
    let n = 1_003;
    futures_util::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let s3 = s3.clone();
            let bucket = bucket.clone();
            async move {
                s3.put_bytes(
                    &bucket,
                    &format!("parts/part-{i:06}.jsonl"),
                    b"{}\n".to_vec(),
                )
                .await
                .unwrap();
            }
        })
        .await;
    s3.put_bytes(&bucket, "other/x", b"x".to_vec())
        .await
        .unwrap();
    let keys = s3.list_keys(&bucket, "parts/").await.unwrap();
    assert_eq!(keys.len(), n);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(keys[0], "parts/part-000000.jsonl");
    assert!(s3.list_keys(&bucket, "none/").await.unwrap().is_empty());
}
