//! Spot interruptions. On an EC2 spot instance the instance metadata service
//! (IMDSv2) announces an interruption two minutes ahead
//! (`spot/instance-action`) and may recommend a rebalance earlier
//! (`events/recommendations/rebalance`). Told either, the worker drains as
//! on SIGTERM: it stops receiving, gives back the bundles it holds but has
//! not started at once, and lets the running ones finish, abandoning (and
//! giving back) what is still running a margin before the deadline. Off
//! unless `--spot-metadata URL` is given: nothing here talks to the
//! metadata service by default.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::pool::Shutdown;

/// How the metadata service is watched.
#[derive(Clone, Debug)]
pub struct SpotConfig {
    /// The metadata service's base URL (`http://169.254.169.254` on EC2).
    pub endpoint: String,
    /// How often it is asked (AWS suggests every 5 s).
    pub poll: Duration,
    /// Running tasks are abandoned this long before the interruption, so
    /// that their bundles are given back while the instance still answers.
    pub margin: Duration,
    /// Drain on a rebalance recommendation too (no deadline: `grace` holds).
    pub on_rebalance: bool,
}

/// What the metadata service said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The instance goes at `at` (stop, terminate or hibernate).
    Interruption {
        action: String,
        at: SystemTime,
    },
    Rebalance,
}

#[derive(Debug, thiserror::Error)]
pub enum SpotError {
    #[error("metadata service {url}: {message}")]
    Http { url: String, message: String },
    #[error("metadata service {url}: unexpected status {status}")]
    Status { url: String, status: StatusCode },
    #[error("metadata service {url}: cannot read {body:?}: {message}")]
    Body {
        url: String,
        body: String,
        message: String,
    },
}

/// An IMDSv2 session: a token, fetched again when refused.
pub struct Metadata {
    client: Client<HttpConnector, Empty<Bytes>>,
    endpoint: String,
    token: Option<String>,
}

const TOKEN_TTL_SECONDS: &str = "21600";

impl Metadata {
    pub fn new(endpoint: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: None,
        }
    }

    async fn send(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, String), SpotError> {
        let url = request.uri().to_string();
        let http = |message: String| SpotError::Http {
            url: url.clone(),
            message,
        };
        let response = tokio::time::timeout(Duration::from_secs(2), self.client.request(request))
            .await
            .map_err(|_| http("no answer within 2 s".into()))?
            .map_err(|e| http(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn token(&mut self) -> Result<String, SpotError> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let url = format!("{}/latest/api/token", self.endpoint);
        let request = Request::builder()
            .method(Method::PUT)
            .uri(&url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)
            .body(Empty::new())
            .expect("a valid request");
        match self.send(request).await? {
            (StatusCode::OK, token) => {
                self.token = Some(token.clone());
                Ok(token)
            }
            (status, _) => Err(SpotError::Status { url, status }),
        }
    }

    /// A metadata path's body, `None` when it is absent (404).
    async fn get(&mut self, path: &str) -> Result<Option<String>, SpotError> {
        let url = format!("{}/latest/meta-data/{path}", self.endpoint);
        for _ in 0..2 {
            let token = self.token().await?;
            let request = Request::builder()
                .uri(&url)
                .header("X-aws-ec2-metadata-token", token)
                .body(Empty::new())
                .expect("a valid request");
            match self.send(request).await? {
                (StatusCode::OK, body) => return Ok(Some(body)),
                (StatusCode::NOT_FOUND, _) => return Ok(None),
                // The token expired: a new one, once.
                (StatusCode::UNAUTHORIZED, _) => self.token = None,
                (status, _) => return Err(SpotError::Status { url, status }),
            }
        }
        Err(SpotError::Status {
            url,
            status: StatusCode::UNAUTHORIZED,
        })
    }

    /// An interruption notice, else a rebalance recommendation, if any.
    pub async fn notice(&mut self) -> Result<Option<Notice>, SpotError> {
        let path = "spot/instance-action";
        if let Some(body) = self.get(path).await? {
            return parse_interruption(&body)
                .map(Some)
                .map_err(|message| SpotError::Body {
                    url: format!("{}/latest/meta-data/{path}", self.endpoint),
                    body,
                    message,
                });
        }
        Ok(self
            .get("events/recommendations/rebalance")
            .await?
            .map(|_| Notice::Rebalance))
    }
}

/// `{"action": "terminate", "time": "2026-11-30T14:00:00Z"}`.
pub fn parse_interruption(body: &str) -> Result<Notice, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let action = v["action"].as_str().ok_or("no \"action\"")?.to_string();
    let time = v["time"].as_str().ok_or("no \"time\"")?;
    let at = humantime::parse_rfc3339(time).map_err(|e| format!("\"time\": {e}"))?;
    Ok(Notice::Interruption { action, at })
}

/// Asks the metadata service every `poll` until a notice or `shutdown`, then
/// drains: `stop` at once and, for an interruption, `abort` a margin before
/// it. Errors are logged and asked again: a worker must not stop for them.
pub async fn watch(config: SpotConfig, shutdown: Shutdown) {
    let mut metadata = Metadata::new(&config.endpoint);
    let mut failing = false;
    let notice = loop {
        tokio::select! {
            _ = shutdown.stop.cancelled() => return,
            _ = tokio::time::sleep(config.poll) => {}
        }
        match metadata.notice().await {
            Ok(Some(Notice::Rebalance)) if !config.on_rebalance => {}
            Ok(Some(notice)) => break notice,
            Ok(None) => failing = false,
            Err(e) => {
                // Once per run of failures: the service may be down a while.
                if !failing {
                    tracing::warn!(error = %e, "cannot ask the metadata service for spot notices");
                }
                failing = true;
            }
        }
    };
    match notice {
        Notice::Interruption { action, at } => {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            let until_abort = left.saturating_sub(config.margin);
            tracing::warn!(%action, in_seconds = left.as_secs(), abandon_in = ?until_abort,
                "spot interruption notice: draining (no more bundles; unstarted ones given back)");
            shutdown.stop.cancel();
            tokio::time::sleep(until_abort).await;
            if !shutdown.abort.is_cancelled() {
                tracing::warn!("spot interruption close: giving back the bundles still running");
                shutdown.abort.cancel();
            }
        }
        Notice::Rebalance => {
            tracing::warn!("spot rebalance recommendation: draining");
            shutdown.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruption_notices_parse_with_clear_errors() {
        let n = parse_interruption(r#"{"action": "terminate", "time": "2026-11-30T14:00:00Z"}"#)
            .unwrap();
        let Notice::Interruption { action, at } = n else {
            panic!("{n:?}")
        };
        assert_eq!(action, "terminate");
        assert_eq!(
            at,
            humantime::parse_rfc3339("2026-11-30T14:00:00Z").unwrap()
        );
        assert!(parse_interruption("nope").is_err());
        assert_eq!(
            parse_interruption(r#"{"action": "stop"}"#).unwrap_err(),
            "no \"time\""
        );
        assert!(
            parse_interruption(r#"{"action": "stop", "time": "soon"}"#)
                .unwrap_err()
                .starts_with("\"time\"")
        );
    }
}
