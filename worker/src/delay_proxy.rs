//! A delaying TCP proxy for benches (`cloudkon bench sqs`, `cloudkon bench
//! taskbatch`): a cloud region's round trip in front of
//! the local AWS servers (the kernel here has no netem). Every byte is held
//! `delay` in each direction, without serialising what follows: each chunk is
//! stamped when read and written when its time comes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Listens on a loopback port and forwards each connection to `upstream`
/// (a loopback address), `delay` each way. Runs until the runtime stops.
pub async fn start(upstream: SocketAddr, delay: Duration) -> Result<SocketAddr> {
    anyhow::ensure!(
        upstream.ip().is_loopback(),
        "the bench proxy only forwards to loopback, not {upstream}"
    );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the bench proxy")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    pipe(client_read, server_write, delay),
                    pipe(server_read, client_write, delay)
                );
            });
        }
    });
    Ok(addr)
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
async fn pipe<R, W>(mut from: R, mut to: W, delay: Duration)
where
    R: AsyncReadExt + Unpin + Send + 'static,
    W: AsyncWriteExt + Unpin + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_whole_and_late_in_both_directions() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let delay = Duration::from_millis(20);
        let proxy = start(echo_addr, delay).await.unwrap();
        let mut c = TcpStream::connect(proxy).await.unwrap();
        let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        c.write_all(&message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message);
        // At least one delay each way (the bound that matters: never less).
        assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn only_loopback_upstreams_are_taken() {
        let err = start("192.0.2.1:80".parse().unwrap(), Duration::ZERO)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only forwards to loopback"));
    }
}
