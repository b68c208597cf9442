//! The dedup ledger in DynamoDB (see [`crate::ledger`] for the protocol), and the
//! workers' heartbeat rows.
//!
//! Table `<table>`, one item per claimed bundle:
//!
//! | attribute | type | |
//! |---|---|---|
//! | `pk` | S | the claim key (hash key) |
//! | `state` | S | `running` or `done` |
//! | `owner` | S | who claimed it last |
//! | `lease_until` | N | epoch milliseconds (the workers' clocks must roughly agree) |
//! | `attempt` | N | 1, then one more per take-over (a give-back takes one off) |
//! | `done` | B | the bundle's progress: positions of the tasks run and reported ([`BundleProgress`]) |
//! | `results` | B | the encoded results to send again, once done (absent: sent already) |
//! | `expires_at` | N | epoch seconds: DynamoDB's TTL deletes the item after it |
//!
//! Table `<table>-workers`, one item per worker, written by its heartbeat:
//! `pk` (worker id), `host`, `slots`, `busy`, `tasks_done`, `started_at` and
//! `last_seen` (epoch µs), `expires_at`. A table of its own, so that listing
//! the workers scans a handful of rows rather than every claim.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConsumedCapacity, KeySchemaElement, KeyType,
    KeysAndAttributes, ReturnConsumedCapacity, ReturnValue, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};

use super::error::{AwsError, ErrorKind};
use super::stats::RequestStats;
use crate::ledger::{BatchMarks, BundleProgress, Claim, DedupLedger, LedgerError};
use crate::task::Timestamp;

const SERVICE: &str = "DynamoDB";
/// How long a finished bundle's item (and its results) is kept.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A worker that stopped beating disappears from the list after this.
const HEARTBEAT_TTL: Duration = Duration::from_secs(3600);
/// Table creation on a real account takes seconds; give it a bound.
const TABLE_READY_TIMEOUT: Duration = Duration::from_secs(120);

type Item = HashMap<String, AttributeValue>;

/// The dedup ledger on DynamoDB. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamoLedger {
    client: aws_sdk_dynamodb::Client,
    table: String,
    workers_table: String,
    stats: RequestStats,
    result_ttl: Duration,
    /// BatchGetItem was refused (a worker policy from before lane marks,
    /// without `dynamodb:BatchGetItem`): the cancel mark is read alone.
    batch_get_refused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A worker's latest heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerHeartbeat {
    pub id: String,
    pub host: String,
    pub slots: u32,
    pub busy: u32,
    pub tasks_done: u64,
    pub started_at: Timestamp,
    /// Set by [`DynamoLedger::put_worker_heartbeat`] to the time of the write.
    pub last_seen: Timestamp,
}

fn now_ms() -> u64 {
    Timestamp::now().0 / 1000
}

fn epoch_secs_after(d: Duration) -> u64 {
    (SystemTime::now() + d)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// Whether `expression` names `placeholder` as a whole word: `#done` is
/// not in `#done_n`, and DynamoDB refuses a name declared and not used.
fn uses(expression: &str, placeholder: &str) -> bool {
    expression.match_indices(placeholder).any(|(at, _)| {
        !expression[at + placeholder.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// An item's size as DynamoDB bills it, about: attribute names plus values.
fn item_size(item: &Item) -> usize {
    fn value_size(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
            AttributeValue::B(b) => b.as_ref().len(),
            AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
            AttributeValue::L(l) => 3 + l.iter().map(value_size).sum::<usize>(),
            AttributeValue::M(m) => {
                3 + m
                    .iter()
                    .map(|(k, v)| k.len() + value_size(v))
                    .sum::<usize>()
            }
            _ => 8,
        }
    }
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

/// Write units of one write of an item this big: 1 per started KiB.
fn write_units_for(size: usize) -> f64 {
    size.div_ceil(1024).max(1) as f64
}

impl DynamoLedger {
    pub(crate) fn new(
        client: aws_sdk_dynamodb::Client,
        table: String,
        stats: RequestStats,
    ) -> Self {
        Self {
            client,
            workers_table: format!("{table}-workers"),
            table,
            stats,
            result_ttl: DEFAULT_RESULT_TTL,
            batch_get_refused: Default::default(),
        }
    }

    /// The cancel mark alone, by one consistent GetItem.
    async fn cancel_mark_alone(&self, key: &str) -> Result<BatchMarks, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| ledger_error(AwsError::sdk(SERVICE, "GetItem", &self.table, e)))?;
        Ok(BatchMarks {
            cancelled: out.item.is_some(),
            lane_at: None,
        })
    }

    /// How long items are kept after their last write (default 7 days).
    pub fn with_result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn workers_table(&self) -> &str {
        &self.workers_table
    }

    /// Counts the write units of a write: as reported, else computed from the
    /// item (DynamoDB Local reports them; a failed conditional write reports
    /// nothing and costs at least one).
    fn record_units(&self, reported: Option<&ConsumedCapacity>, size: usize) {
        match reported.and_then(ConsumedCapacity::capacity_units) {
            Some(units) => self.stats.record_write_units(units, false),
            None => self.stats.record_write_units(write_units_for(size), true),
        }
    }

    /// Creates both tables if missing (hash key `pk`, on-demand billing), waits
    /// until they are active, and enables TTL on `expires_at`. Safe to call from
    /// many workers at once.
    pub async fn ensure_table(&self) -> Result<(), AwsError> {
        for table in [&self.table, &self.workers_table] {
            self.ensure_one_table(table).await?;
        }
        Ok(())
    }

    async fn ensure_one_table(&self, table: &str) -> Result<(), AwsError> {
        let err = |op, e| AwsError::sdk(SERVICE, op, table, e);
        let described = self.client.describe_table().table_name(table).send().await;
        match described {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                let created = self
                    .client
                    .create_table()
                    .table_name(table)
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name("pk")
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .expect("name and type are set"),
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name("pk")
                            .key_type(KeyType::Hash)
                            .build()
                            .expect("name and type are set"),
                    )
                    .billing_mode(BillingMode::PayPerRequest)
                    .send()
                    .await;
                match created {
                    Ok(_) => tracing::info!(table, "ledger table created"),
                    // Another worker created it meanwhile.
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_resource_in_use_exception()) => {}
                    Err(e) => return Err(AwsError::sdk(SERVICE, "CreateTable", table, e)),
                }
            }
            Err(e) => return Err(err("DescribeTable", e)),
        }
        // Poll until active, with a bound: a new table is unusable until then.
        let deadline = tokio::time::Instant::now() + TABLE_READY_TIMEOUT;
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| AwsError::sdk(SERVICE, "DescribeTable", table, e))?;
            let status = out.table.and_then(|t| t.table_status);
            if status == Some(TableStatus::Active) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AwsError::new(
                    SERVICE,
                    "DescribeTable",
                    table,
                    ErrorKind::Transient,
                    format!("not active after {TABLE_READY_TIMEOUT:?} (status {status:?})"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .map_err(|e| AwsError::sdk(SERVICE, "DescribeTimeToLive", table, e))?;
        let status = ttl
            .time_to_live_description
            .and_then(|d| d.time_to_live_status);
        if !matches!(
            status,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        ) {
            let enabled = self
                .client
                .update_time_to_live()
                .table_name(table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name("expires_at")
                        .build()
                        .expect("fields are set"),
                )
                .send()
                .await;
            match enabled {
                Ok(_) => {}
                // Another worker enabled it between our look and our write.
                Err(e)
                    if e.as_service_error()
                        .and_then(|e| e.meta().message())
                        .is_some_and(|m| m.contains("already enabled")) => {}
                Err(e) => return Err(AwsError::sdk(SERVICE, "UpdateTimeToLive", table, e)),
            }
        }
        Ok(())
    }

    /// Deletes both tables (tests, teardown).
    pub async fn delete_tables(&self) -> Result<(), AwsError> {
        for table in [&self.table, &self.workers_table] {
            match self.client.delete_table().table_name(table).send().await {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_resource_not_found_exception()) => {}
                Err(e) => return Err(AwsError::sdk(SERVICE, "DeleteTable", table, e)),
            }
        }
        Ok(())
    }

    /// One conditional UpdateItem on `key`. `Ok(Err(old))`: the condition
    /// failed and this is the item as it was (ALL_OLD, same request).
    async fn conditional_update(
        &self,
        operation: &'static str,
        key: &str,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        return_new: bool,
    ) -> Result<Result<UpdateItemOutput, Item>, AwsError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#lease", "lease_until")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        let mut size = key.len() + 2;
        for (name, value) in values {
            size += name.len() + item_size(&HashMap::from([(String::new(), value.clone())]));
            request = request.expression_attribute_values(name, value);
        }
        if return_new {
            request = request.return_values(ReturnValue::AllNew);
        }
        // Only the attribute names used by the expressions may be declared.
        for (placeholder, name) in [
            ("#attempt", "attempt"),
            ("#done", "done"),
            ("#done_n", "done_n"),
            ("#results", "results"),
            ("#expires", "expires_at"),
        ] {
            if uses(update, placeholder) || uses(condition, placeholder) {
                request = request.expression_attribute_names(placeholder, name);
            }
        }
        match request.send().await {
            Ok(out) => {
                let size = out.attributes.as_ref().map_or(size, item_size);
                self.record_units(out.consumed_capacity.as_ref(), size);
                Ok(Ok(out))
            }
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    let old = failed.item.clone().unwrap_or_default();
                    self.record_units(None, item_size(&old));
                    Ok(Err(old))
                }
                _ => Err(AwsError::sdk(
                    SERVICE,
                    operation,
                    format!("{}/{key}", self.table),
                    e,
                )),
            },
        }
    }

    /// Records a worker's heartbeat (an unconditional write of its row).
    pub async fn put_worker_heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), AwsError> {
        let item: Item = HashMap::from([
            ("pk".to_string(), s(&heartbeat.id)),
            ("host".to_string(), s(&heartbeat.host)),
            ("slots".to_string(), n(heartbeat.slots)),
            ("busy".to_string(), n(heartbeat.busy)),
            ("tasks_done".to_string(), n(heartbeat.tasks_done)),
            ("started_at".to_string(), n(heartbeat.started_at.0)),
            ("last_seen".to_string(), n(Timestamp::now().0)),
            ("expires_at".to_string(), n(epoch_secs_after(HEARTBEAT_TTL))),
        ]);
        let size = item_size(&item);
        let out = self
            .client
            .put_item()
            .table_name(&self.workers_table)
            .set_item(Some(item))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| AwsError::sdk(SERVICE, "PutItem", &self.workers_table, e))?;
        self.record_units(out.consumed_capacity.as_ref(), size);
        Ok(())
    }

    /// The first task of every bundle of `batch` claimed so far, in order:
    /// where its bundles were cut (a Scan, for tests and inspection; not on
    /// the data path).
    pub async fn claimed_bundles(&self, batch: &str) -> Result<Vec<u64>, AwsError> {
        let prefix = format!("{batch}#");
        let mut firsts = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :p)")
                .expression_attribute_values(":p", AttributeValue::S(prefix.clone()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| AwsError::sdk(SERVICE, "Scan", &self.table, e))?;
            for item in out.items.unwrap_or_default() {
                // Only claim keys end with a task number (the cancel mark,
                // `#cancel#<batch>#`, has none).
                if let Some(first) = get_s(&item, "pk")
                    .and_then(|pk| pk.strip_prefix(&prefix))
                    .and_then(|n| n.parse().ok())
                {
                    firsts.push(first);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        firsts.sort_unstable();
        Ok(firsts)
    }

    /// Every worker that beat within the last hour, by id.
    pub async fn list_workers(&self) -> Result<Vec<WorkerHeartbeat>, AwsError> {
        let mut workers = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.workers_table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| AwsError::sdk(SERVICE, "Scan", &self.workers_table, e))?;
            for item in out.items.unwrap_or_default() {
                let Some(id) = get_s(&item, "pk") else {
                    continue;
                };
                workers.push(WorkerHeartbeat {
                    id: id.to_string(),
                    host: get_s(&item, "host").unwrap_or_default().to_string(),
                    slots: get_n(&item, "slots").unwrap_or(0),
                    busy: get_n(&item, "busy").unwrap_or(0),
                    tasks_done: get_n(&item, "tasks_done").unwrap_or(0),
                    started_at: Timestamp(get_n(&item, "started_at").unwrap_or(0)),
                    last_seen: Timestamp(get_n(&item, "last_seen").unwrap_or(0)),
                });
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }
}

/// A claim item's progress (none stored: nothing done).
fn progress_of(item: &Item) -> BundleProgress {
    match item.get("done") {
        Some(AttributeValue::B(b)) => BundleProgress::from_bytes(b.as_ref()),
        _ => BundleProgress::new(),
    }
}

fn ledger_error(e: AwsError) -> LedgerError {
    if e.is_retryable() {
        LedgerError::Unavailable(e.to_string())
    } else {
        LedgerError::Backend(e.to_string())
    }
}

fn unexpected(key: &str, what: &str) -> LedgerError {
    LedgerError::Backend(format!("ledger item {key}: {what}"))
}

impl DedupLedger for DynamoLedger {
    /// Not once BatchGetItem was refused: the cancel mark is then read alone.
    fn reads_lane_marks(&self) -> bool {
        !self
            .batch_get_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An unconditional PutItem of the batch's cancel mark (kept as long as
    /// stored results).
    async fn cancel_batch(&self, batch: &str) -> Result<(), LedgerError> {
        let key = crate::ledger::cancel_key(batch);
        let item: Item = HashMap::from([
            ("pk".to_string(), s(&key)),
            ("state".to_string(), s("cancelled")),
            (
                "expires_at".to_string(),
                n(epoch_secs_after(self.result_ttl)),
            ),
        ]);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| ledger_error(AwsError::sdk(SERVICE, "PutItem", &self.table, e)))?;
        Ok(())
    }

    /// One consistent BatchGetItem of the cancel mark and the lane mark
    /// (workers cache the answer for a few seconds).
    async fn batch_marks(&self, batch: &str) -> Result<BatchMarks, LedgerError> {
        use std::sync::atomic::Ordering;
        let cancel = crate::ledger::cancel_key(batch);
        if self.batch_get_refused.load(Ordering::Relaxed) {
            return self.cancel_mark_alone(&cancel).await;
        }
        let lane = crate::ledger::lane_key(batch);
        let keys = KeysAndAttributes::builder()
            .keys(HashMap::from([("pk".to_string(), s(&cancel))]))
            .keys(HashMap::from([("pk".to_string(), s(&lane))]))
            .consistent_read(true)
            .build()
            .map_err(|e| LedgerError::Backend(format!("BatchGetItem on {}: {e}", self.table)))?;
        let out = match self
            .client
            .batch_get_item()
            .request_items(&self.table, keys)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = AwsError::sdk(SERVICE, "BatchGetItem", &self.table, e);
                if e.code
                    .as_deref()
                    .is_some_and(|c| c.contains("AccessDenied"))
                {
                    // Cancels must still be seen: lane marks are only a
                    // quicker start for a batch applied beside others.
                    tracing::warn!(error = %e, "BatchGetItem refused: reading the cancel mark alone, lane marks unread (add dynamodb:BatchGetItem to the worker's policy)");
                    self.batch_get_refused.store(true, Ordering::Relaxed);
                    return self.cancel_mark_alone(&cancel).await;
                }
                return Err(ledger_error(e));
            }
        };
        // A key left unprocessed (throttling) is not an answer on the cancel
        // mark; a lane mark left so is only a look at the lane missed.
        let unprocessed = out
            .unprocessed_keys
            .as_ref()
            .and_then(|u| u.get(&self.table))
            .is_some_and(|k| {
                k.keys
                    .iter()
                    .any(|k| get_s(k, "pk") == Some(cancel.as_str()))
            });
        if unprocessed {
            return Err(LedgerError::Unavailable(format!(
                "BatchGetItem on {} left the cancel mark of {batch} unread (throttled)",
                self.table
            )));
        }
        let mut marks = BatchMarks::default();
        for item in out
            .responses
            .as_ref()
            .and_then(|r| r.get(&self.table))
            .into_iter()
            .flatten()
        {
            match get_s(item, "pk") {
                Some(pk) if pk == cancel => marks.cancelled = true,
                Some(pk) if pk == lane => {
                    marks.lane_at = item.get("at").and_then(|v| v.as_n().ok()?.parse().ok());
                }
                _ => {}
            }
        }
        Ok(marks)
    }

    /// An unconditional PutItem of the lane mark, gone with the TTL of a
    /// day: a mark older than [`crate::ledger::LANE_MARK_FRESH`] is not
    /// acted on.
    async fn mark_lane(&self, batch: &str, at_ms: u64) -> Result<(), LedgerError> {
        let item: Item = HashMap::from([
            ("pk".to_string(), s(crate::ledger::lane_key(batch))),
            ("at".to_string(), n(at_ms)),
            (
                "expires_at".to_string(),
                n(epoch_secs_after(Duration::from_secs(24 * 3600))),
            ),
        ]);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| ledger_error(AwsError::sdk(SERVICE, "PutItem", &self.table, e)))?;
        Ok(())
    }

    /// One conditional UpdateItem: granted if the item is new or its lease ran
    /// out; otherwise the old item, returned by the failed write itself, tells
    /// done (with results) from held.
    async fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<Claim, LedgerError> {
        let now = now_ms();
        let until = now + u64::try_from(lease.as_millis()).unwrap_or(u64::MAX / 2);
        let answer = self
            .conditional_update(
                "UpdateItem(claim)",
                key,
                "SET #state = :running, #owner = :owner, #lease = :until, #expires = :expires \
                 ADD #attempt :one",
                "attribute_not_exists(pk) OR (#state = :running AND #lease < :now)",
                vec![
                    (":running", s("running")),
                    (":owner", s(owner)),
                    (":until", n(until)),
                    (":now", n(now)),
                    (":expires", n(epoch_secs_after(self.result_ttl))),
                    (":one", n(1)),
                ],
                true,
            )
            .await
            .map_err(ledger_error)?;
        let old = match answer {
            Ok(out) => {
                let attributes = out.attributes.unwrap_or_default();
                let attempt = get_n(&attributes, "attempt")
                    .ok_or_else(|| unexpected(key, "no attempt after a granted claim"))?;
                return Ok(Claim::Granted {
                    attempt,
                    done: progress_of(&attributes),
                });
            }
            Err(old) => old,
        };
        match get_s(&old, "state") {
            Some("done") => {
                let results = match old.get("results") {
                    Some(AttributeValue::B(b)) => b.clone().into_inner(),
                    // Sent before completion: nothing to send again.
                    _ => Vec::new(),
                };
                Ok(Claim::Done { results })
            }
            Some("running") if get_s(&old, "owner") == Some(owner) => {
                // Our own claim, written by an attempt whose answer was lost
                // (timeout, then the SDK's retry): it is ours.
                let attempt =
                    get_n(&old, "attempt").ok_or_else(|| unexpected(key, "no attempt"))?;
                tracing::debug!(key, owner, "claim already held by this owner");
                Ok(Claim::Granted {
                    attempt,
                    done: progress_of(&old),
                })
            }
            Some("running") => {
                let until: u64 = get_n(&old, "lease_until").unwrap_or(0);
                Ok(Claim::Held {
                    remaining: Duration::from_millis(until.saturating_sub(now_ms())),
                })
            }
            other => Err(unexpected(key, &format!("unknown state {other:?}"))),
        }
    }

    /// One conditional UpdateItem; the progress rides along (the holder's own
    /// set only grows, so it replaces the stored one), with its size, so that
    /// a renewal that lands after a later one (sent before it, it timed out
    /// on the worker, or the SDK tried it again) takes none back.
    async fn renew(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        done: &BundleProgress,
    ) -> Result<bool, LedgerError> {
        let until = now_ms() + u64::try_from(lease.as_millis()).unwrap_or(u64::MAX / 2);
        let mut values = vec![
            (":owner", s(owner)),
            (":running", s("running")),
            (":until", n(until)),
        ];
        let held = "#owner = :owner AND #state = :running";
        let (update, condition) = if done.is_empty() {
            ("SET #lease = :until", held.to_string())
        } else {
            values.push((":done", AttributeValue::B(Blob::new(done.as_bytes()))));
            values.push((":n", n(done.len())));
            (
                "SET #lease = :until, #done = :done, #done_n = :n",
                format!("{held} AND (attribute_not_exists(#done_n) OR #done_n <= :n)"),
            )
        };
        let answer = self
            .conditional_update("UpdateItem(renew)", key, update, &condition, values, false)
            .await
            .map_err(ledger_error)?;
        Ok(match answer {
            Ok(_) => true,
            // Still its own: a later renewal of its landed first (more
            // progress, a later lease), or its completion did.
            Err(old) => {
                get_s(&old, "owner") == Some(owner)
                    && matches!(get_s(&old, "state"), Some("running" | "done"))
            }
        })
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        results: Vec<u8>,
    ) -> Result<bool, LedgerError> {
        let mut values = vec![
            (":owner", s(owner)),
            (":running", s("running")),
            (":done", s("done")),
            (":expires", n(epoch_secs_after(self.result_ttl))),
        ];
        // No progress kept once done; results only when there is something to
        // send again (DynamoDB Local refuses empty binary values).
        let update = if results.is_empty() {
            "SET #state = :done, #expires = :expires REMOVE #lease, #done, #done_n"
        } else {
            values.push((":results", AttributeValue::B(Blob::new(results))));
            "SET #state = :done, #results = :results, #expires = :expires REMOVE #lease, #done, #done_n"
        };
        let answer = self
            .conditional_update(
                "UpdateItem(complete)",
                key,
                update,
                "#owner = :owner AND #state = :running",
                values,
                false,
            )
            .await
            .map_err(ledger_error)?;
        Ok(match answer {
            Ok(_) => true,
            // Done by us already: a retried request whose first attempt landed.
            Err(old) => get_s(&old, "state") == Some("done") && get_s(&old, "owner") == Some(owner),
        })
    }

    async fn release(
        &self,
        key: &str,
        owner: &str,
        done: &BundleProgress,
    ) -> Result<(), LedgerError> {
        // Lease ending at 0 and one attempt off: the next claim takes it over
        // at once as the same attempt (a give-back is not a failure). Not ours
        // (any more): nothing to give back.
        // Its owner is no one's: a renewal of this holder that lands after
        // (its round began before the release) finds it not its own.
        let mut values = vec![
            (":owner", s(owner)),
            (":running", s("running")),
            (":zero", n(0)),
            (":minus", n(-1)),
            (":released", s(crate::ledger::RELEASED_OWNER)),
        ];
        let update = if done.is_empty() {
            "SET #lease = :zero, #owner = :released ADD #attempt :minus"
        } else {
            values.push((":done", AttributeValue::B(Blob::new(done.as_bytes()))));
            values.push((":n", n(done.len())));
            "SET #lease = :zero, #done = :done, #done_n = :n, #owner = :released ADD #attempt :minus"
        };
        let _released_or_not_ours = self
            .conditional_update(
                "UpdateItem(release)",
                key,
                update,
                "#owner = :owner AND #state = :running",
                values,
                false,
            )
            .await
            .map_err(ledger_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placeholder_is_used_only_as_a_whole_word() {
        let e = "SET #done_n = :n REMOVE #lease";
        assert!(!uses(e, "#done"));
        assert!(uses(e, "#done_n") && uses(e, "#lease"));
        assert!(uses("SET #done = :done, #done_n = :n", "#done"));
        assert!(uses("attribute_not_exists(#done)", "#done"));
    }

    #[test]
    fn write_units_are_billed_per_started_kib() {
        assert_eq!(write_units_for(0), 1.0);
        assert_eq!(write_units_for(1024), 1.0);
        assert_eq!(write_units_for(1025), 2.0);
        let item = HashMap::from([
            ("pk".to_string(), s("b#0")),
            (
                "results".to_string(),
                AttributeValue::B(Blob::new(vec![0; 3000])),
            ),
        ]);
        assert_eq!(item_size(&item), 2 + 3 + 7 + 3000);
        assert_eq!(write_units_for(item_size(&item)), 3.0);
    }
}
