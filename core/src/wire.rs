//! TEMPORARY stand-in (JSON) until the compact encoding lands.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::task::TaskResult;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultsMessage {
    pub key: String,
    pub ideal: Duration,
    pub results: Vec<TaskResult>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WireError(String);

pub const SQS_MAX_MESSAGE_BYTES: usize = 262_144;

pub fn encode_results(m: &ResultsMessage, _max: usize) -> Result<String, WireError> {
    serde_json::to_string(m).map_err(|e| WireError(e.to_string()))
}

pub fn decode_results(s: &str) -> Result<ResultsMessage, WireError> {
    serde_json::from_str(s).map_err(|e| WireError(e.to_string()))
}
