//! The job stream: a Redis stream `{prefix}jobs` read by a consumer group
//! of coordinators. PostgreSQL stays the source of truth; an entry only
//! says "look at job N" and is acknowledged once the job's tasks are in
//! PostgreSQL, so a coordinator that dies before that leaves the entry
//! pending, to be claimed by another after `claim_idle_ms`.

use redis::{aio::ConnectionManager, streams::StreamReadReply, AsyncCommands, Value};

use crate::{jobs::JobId, Result, StoreError};

pub const CONSUMER_GROUP: &str = "coordinators";
/// Longest a read blocks waiting for new entries.
pub const MAX_BLOCK_MS: usize = 5_000;

/// One delivered entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub entry_id: String,
    pub job: JobId,
    /// The trace the job's request belongs to, when it was traced.
    pub traceparent: Option<String>,
}

/// The key prefix when the Redis URL names none.
pub const DEFAULT_PREFIX: &str = "leakscan:";

/// Splits a `?prefix=` query parameter off a Redis URL (a key prefix keeps
/// instances that share a Redis database apart): `(url, prefix)`.
pub fn split_prefix(redis_url: &str) -> (String, String) {
    let Some((base, query)) = redis_url.split_once('?') else {
        return (redis_url.to_string(), DEFAULT_PREFIX.to_string());
    };
    let mut prefix = DEFAULT_PREFIX.to_string();
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("prefix=") {
            Some(value) => prefix = value.to_string(),
            None if !pair.is_empty() => rest.push(pair),
            None => {}
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, prefix)
}

#[derive(Clone)]
pub struct JobQueue {
    connection: ConnectionManager,
    /// Blocking reads only: Redis answers a connection's commands in order,
    /// so a read that waits for entries would hold up every other command
    /// (a readiness ping, an enqueue, an acknowledgement) sent behind it.
    blocking: ConnectionManager,
    stream: String,
}

impl JobQueue {
    /// Connects to a Redis URL that may carry `?prefix=` (see [`split_prefix`]).
    pub async fn connect_url(redis_url: &str) -> Result<JobQueue> {
        let (url, prefix) = split_prefix(redis_url);
        JobQueue::connect(&url, &prefix).await
    }

    /// Connects and makes sure the stream and its consumer group exist.
    /// `prefix` keeps instances apart (e.g. `leakscan:`).
    pub async fn connect(redis_url: &str, prefix: &str) -> Result<JobQueue> {
        let client = redis::Client::open(redis_url)?;
        // Longer than any blocking read (see MAX_BLOCK_MS): a reply that
        // comes after the client gave up would deliver an entry to nobody.
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(
            std::time::Duration::from_millis(MAX_BLOCK_MS as u64 + 5_000),
        ));
        let connection = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        let blocking = ConnectionManager::new_with_config(client, config).await?;
        let queue = JobQueue {
            connection,
            blocking,
            stream: format!("{prefix}jobs"),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        Ok(())
    }

    pub fn stream_key(&self) -> &str {
        &self.stream
    }

    async fn ensure_group(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// After Redis lost its data (flushed, or restarted without
    /// persistence) the stream and its group are gone and every group
    /// command answers NOGROUP: they are made again, so consuming goes on.
    /// The jobs whose entries were lost are still queued in PostgreSQL; the
    /// leading coordinator expands them all the same (its periodic
    /// reconciliation).
    async fn recreate_group(&self, error: &redis::RedisError) -> Result<()> {
        tracing::warn!(stream = %self.stream, %error, "the job stream or its group is gone: creating them again");
        self.ensure_group().await
    }

    /// Appends a job id.
    pub async fn enqueue(&self, job: JobId) -> Result<String> {
        self.enqueue_traced(job, None).await
    }

    /// Appends a job id and the `traceparent` of the request that made it.
    pub async fn enqueue_traced(&self, job: JobId, traceparent: Option<&str>) -> Result<String> {
        let mut connection = self.connection.clone();
        let mut fields = vec![("job", job.0.to_string())];
        if let Some(traceparent) = traceparent {
            fields.push(("traceparent", traceparent.to_string()));
        }
        let id: String = connection.xadd(&self.stream, "*", &fields).await?;
        Ok(id)
    }

    /// Entries for `consumer`: first those it was given before but never
    /// acknowledged (a reply lost on the way, a restart under the same
    /// name), then new ones, waiting up to `block_ms` (at most
    /// [`MAX_BLOCK_MS`]) for the first.
    pub async fn read(
        &self,
        consumer: &str,
        count: usize,
        block_ms: usize,
    ) -> Result<Vec<Delivery>> {
        let own_pending = self.read_from(consumer, count, "0", None).await?;
        if !own_pending.is_empty() {
            return Ok(own_pending);
        }
        self.read_from(consumer, count, ">", Some(block_ms.min(MAX_BLOCK_MS)))
            .await
    }

    async fn read_from(
        &self,
        consumer: &str,
        count: usize,
        id: &str,
        block_ms: Option<usize>,
    ) -> Result<Vec<Delivery>> {
        let connection = if block_ms.is_some() {
            self.blocking.clone()
        } else {
            self.connection.clone()
        };
        let stream = self.stream.clone();
        let reply: Option<StreamReadReply> = self
            .retrying_on_nogroup(|| {
                let (mut connection, stream) = (connection.clone(), stream.clone());
                let mut options = redis::streams::StreamReadOptions::default()
                    .group(CONSUMER_GROUP, consumer)
                    .count(count);
                if let Some(block_ms) = block_ms {
                    options = options.block(block_ms);
                }
                let id = id.to_string();
                async move { connection.xread_options(&[&stream], &[&id], &options).await }
            })
            .await?;
        let mut deliveries = Vec::new();
        for key in reply.map(|reply| reply.keys).unwrap_or_default() {
            for entry in key.ids {
                deliveries.push(parse_entry(&entry.id, &entry.map)?);
            }
        }
        Ok(deliveries)
    }

    /// Takes over entries another consumer received but did not acknowledge
    /// within `min_idle_ms` (it died before the tasks were recorded).
    pub async fn claim_stale(
        &self,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        let connection = self.connection.clone();
        let mut command = redis::cmd("XAUTOCLAIM");
        command
            .arg(&self.stream)
            .arg(CONSUMER_GROUP)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count);
        let reply: redis::streams::StreamAutoClaimReply = self
            .retrying_on_nogroup(|| {
                let (mut connection, command) = (connection.clone(), command.clone());
                async move { command.query_async(&mut connection).await }
            })
            .await?;
        reply
            .claimed
            .iter()
            .map(|entry| parse_entry(&entry.id, &entry.map))
            .collect()
    }

    /// Acknowledges an entry, whose job's tasks are in PostgreSQL, and
    /// deletes it: the one group is done with it, so the stream holds only
    /// entries still to handle and does not grow with every job.
    pub async fn ack(&self, entry_id: &str) -> Result<()> {
        let mut connection = self.connection.clone();
        let _: (i64, i64) = redis::pipe()
            .atomic()
            .xack(&self.stream, CONSUMER_GROUP, &[entry_id])
            .xdel(&self.stream, &[entry_id])
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Runs a group command, and once more after making the stream and its
    /// group again when it answered NOGROUP ([`Self::recreate_group`]).
    async fn retrying_on_nogroup<T, Call, Answer>(&self, mut call: Call) -> Result<T>
    where
        Call: FnMut() -> Answer,
        Answer: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match call().await {
            Err(error) if is_nogroup(&error) => {
                self.recreate_group(&error).await?;
                Ok(call().await?)
            }
            other => Ok(other?),
        }
    }

    /// Entries waiting to be read or acknowledged (the autoscaling signal).
    pub async fn depth(&self) -> Result<u64> {
        let (lag, pending) = self.stream_stats().await?;
        Ok(lag + pending)
    }

    /// The consumer group's lag (entries no coordinator has read yet) and
    /// its pending entries (read, not yet acknowledged).
    pub async fn stream_stats(&self) -> Result<(u64, u64)> {
        let mut connection = self.connection.clone();
        let length: u64 = connection.xlen(&self.stream).await?;
        let stream = self.stream.clone();
        let pending: redis::streams::StreamPendingReply = self
            .retrying_on_nogroup(|| {
                let (mut connection, stream) = (connection.clone(), stream.clone());
                async move { connection.xpending(&stream, CONSUMER_GROUP).await }
            })
            .await?;
        let lag: u64 = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async::<Vec<std::collections::HashMap<String, Value>>>(&mut connection)
            .await?
            .into_iter()
            .find(|group| matches!(group.get("name"), Some(Value::BulkString(name)) if name == CONSUMER_GROUP.as_bytes()))
            .and_then(|group| match group.get("lag") {
                Some(Value::Int(lag)) => Some(*lag as u64),
                _ => None,
            })
            .unwrap_or(length);
        Ok((lag, pending.count() as u64))
    }
}

/// Redis's answer to a group command on a stream or group that does not
/// exist.
fn is_nogroup(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

fn parse_entry(
    entry_id: &str,
    fields: &std::collections::HashMap<String, Value>,
) -> Result<Delivery> {
    let traceparent = match fields.get("traceparent") {
        Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
        _ => None,
    };
    let job = match fields.get("job") {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<i64>().ok()),
        _ => None,
    };
    let job =
        job.ok_or_else(|| StoreError::Invalid(format!("stream entry {entry_id} has no job id")))?;
    Ok(Delivery {
        entry_id: entry_id.to_string(),
        job: JobId(job),
        traceparent,
    })
}
