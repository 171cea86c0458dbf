//! A delivery stream's consumer of one shard: read → process → buffer → deliver → checkpoint.
//!
//! Exactly-once protocol. Before committing an object the pipeline durably records, in its checkpoint,
//! the object's record range and key (the "in-flight" object); after the store confirms, it moves the
//! checkpoint past the range. After a crash, or after any delivery error, the pipeline rewinds to the
//! checkpoint and rebuilds the in-flight object from the log with exactly the same records, so it lands
//! under the same key with the same bytes, replacing whatever a partial attempt left. Keys and the
//! content are pure functions of the records, so the store ends up with each record exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::buffer::ObjectBuffer;
use crate::compression::Compression;
use crate::config::BufferingHints;
use crate::log::{
    Checkpoint, CheckpointStore, InFlightObject, LogError, LogRecord, ShardLog, StartingPosition,
    MAX_READ_RECORDS,
};
use crate::prefix::{self, PrefixTemplate};
use crate::sink::{ObjectStore, SinkError};
use crate::time::UtcDateTime;

/// Bytes read from the log per step (the pipeline's read buffer).
const READ_BYTES: usize = 1 << 20;
/// Longest a pipeline sleeps before it looks at the drain flag again.
const POLL: Duration = Duration::from_millis(100);

/// What a delivery stream does with the records of its shards.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Identifies the data directory (see [`crate::log::instance_id`]); part of object ids.
    pub instance: String,
    pub name: String,
    /// Firehose's destination version, part of every object name.
    pub version: u32,
    pub delimiter: Vec<u8>,
    pub hints: BufferingHints,
    pub compression: Compression,
    pub prefix: PrefixTemplate,
}

/// Errors that interrupt delivery; the pipeline backs off and replays from its checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// One (delivery stream, shard) consumer.
pub struct Pipeline {
    settings: Arc<DeliverySettings>,
    shard: Arc<ShardLog>,
    store: Arc<dyn ObjectStore>,
    checkpoints: CheckpointStore,
    drain: Arc<AtomicBool>,
}

impl Pipeline {
    pub fn new(
        settings: Arc<DeliverySettings>,
        shard: Arc<ShardLog>,
        store: Arc<dyn ObjectStore>,
        checkpoints: CheckpointStore,
        drain: Arc<AtomicBool>,
    ) -> Pipeline {
        Pipeline {
            settings,
            shard,
            store,
            checkpoints,
            drain,
        }
    }

    /// The delivery stream's name.
    pub fn stream(&self) -> &str {
        &self.settings.name
    }

    /// The shard this pipeline consumes.
    pub fn shard(&self) -> crate::log::ShardId {
        self.shard.id()
    }

    /// Delivers until drained: once the drain flag is set, everything durable in the shard is delivered
    /// and the function returns. Errors are logged and retried with backoff; they never end the loop.
    pub fn run(self) {
        let mut backoff = Backoff::new();
        loop {
            match self.deliver(&mut backoff) {
                Ok(()) => return,
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(stream = %self.settings.name, shard = %self.shard.id(), error = %e,
                        retry_in_ms = wait.as_millis() as u64, "delivery failed; replaying from checkpoint");
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn load_checkpoint(&self) -> Result<Checkpoint, LogError> {
        let s = &self.settings.name;
        let horizon = self.shard.trim_horizon();
        let ck = self
            .checkpoints
            .load(s, s, self.shard.id())?
            .unwrap_or(Checkpoint {
                next: horizon.0,
                in_flight: None,
            });
        if ck.next < horizon.0 {
            tracing::error!(stream = %s, shard = %self.shard.id(), checkpoint = ck.next, oldest = horizon.0,
                "records before the oldest retained one expired undelivered; continuing from the oldest");
            return Ok(Checkpoint {
                next: horizon.0,
                in_flight: None,
            });
        }
        Ok(ck)
    }

    fn deliver(&self, backoff: &mut Backoff) -> Result<(), PipelineError> {
        let settings = &*self.settings;
        let ck = self.load_checkpoint()?;
        self.shard.pin(&settings.name, ck.next_sequence());
        if ck.next > self.shard.durable_end().0 {
            tracing::error!(stream = %settings.name, shard = %self.shard.id(), checkpoint = ck.next,
                durable_end = self.shard.durable_end().0,
                "the checkpoint is ahead of the log (was the log deleted?); waiting for records to reach it");
        }
        let mut reader = self
            .shard
            .reader(StartingPosition::AtSequenceNumber(ck.next_sequence()))
            .drop_cache_behind();
        // While replaying, the object must end exactly where the interrupted one did.
        let mut boundary = ck.in_flight;
        let mut open: Option<ObjectBuffer> = None;
        loop {
            let batch = reader.read(MAX_READ_RECORDS, READ_BYTES)?;
            if batch.is_empty() {
                if let Some(b) = &boundary {
                    if b.last >= self.shard.durable_end().0 {
                        // Only possible if the log lost records it had made durable (e.g. files
                        // removed by hand): deliver what there is instead of waiting forever.
                        tracing::error!(stream = %settings.name, shard = %self.shard.id(), last = b.last,
                            "records of the interrupted object are missing from the log");
                        boundary = None;
                        continue;
                    }
                }
                let draining = self.drain.load(Ordering::Acquire);
                if let Some(obj) = &open {
                    let due = obj.time_left(&settings.hints).is_zero();
                    if boundary.is_none() && (due || draining) {
                        self.flush(open.take().expect("checked"), &mut boundary)?;
                        backoff.reset();
                        continue;
                    }
                } else if draining {
                    return Ok(());
                }
                let wait = open
                    .as_ref()
                    .map_or(POLL, |o| o.time_left(&settings.hints).min(POLL));
                reader.wait(wait.max(Duration::from_millis(1)));
                continue;
            }
            for record in &batch {
                let obj = match &mut open {
                    Some(obj) => obj,
                    None => open.insert(self.open_object(record)?),
                };
                obj.push(record, &settings.delimiter)?;
                let full = match &boundary {
                    Some(b) => record.sequence.0 >= b.last,
                    None => obj.is_full(&settings.hints),
                };
                if full {
                    self.flush(open.take().expect("just used"), &mut boundary)?;
                    backoff.reset();
                }
            }
            if let Some(obj) = &open {
                if boundary.is_none() && obj.time_left(&settings.hints).is_zero() {
                    self.flush(open.take().expect("checked"), &mut boundary)?;
                    backoff.reset();
                }
            }
        }
    }

    fn open_object(&self, first: &LogRecord) -> Result<ObjectBuffer, SinkError> {
        let s = &*self.settings;
        let at = UtcDateTime::from_epoch_ms(first.arrival_ms);
        let id = prefix::object_id(&s.instance, &s.name, self.shard.id().0, first.sequence.0);
        let key = prefix::object_key(
            &s.prefix.render(&at, &id),
            &s.name,
            s.version,
            &at,
            &id,
            s.compression.extension(),
        );
        ObjectBuffer::open(&*self.store, key, s.compression, first)
    }

    /// Commits `obj` under the exactly-once protocol described in the module docs.
    fn flush(
        &self,
        obj: ObjectBuffer,
        boundary: &mut Option<InFlightObject>,
    ) -> Result<(), PipelineError> {
        let s = &self.settings.name;
        let shard = self.shard.id();
        let intent = InFlightObject {
            first: obj.first.0,
            last: obj.last.0,
            key: obj.key.clone(),
        };
        match boundary.take() {
            // Replaying the same object: the checkpoint already names it.
            Some(prev) if prev == intent => {}
            prev => {
                if let Some(stale) = prev {
                    // The config changed the key since the interrupted attempt: remove that attempt.
                    self.store.delete(&stale.key)?;
                }
                self.checkpoints.save(
                    s,
                    s,
                    shard,
                    &Checkpoint {
                        next: intent.first,
                        in_flight: Some(intent.clone()),
                    },
                )?;
            }
        }
        let (records, raw) = (obj.records, obj.raw_bytes);
        obj.commit()?;
        let next = intent.last + 1;
        self.checkpoints.save(
            s,
            s,
            shard,
            &Checkpoint {
                next,
                in_flight: None,
            },
        )?;
        self.shard.pin(s, crate::log::SequenceNumber(next));
        if self.shard.over_disk_budget() {
            // Under disk pressure, free what is now delivered instead of waiting for the
            // periodic retention pass.
            if let Err(e) = self.shard.enforce_retention(crate::log::now_ms()) {
                tracing::warn!(stream = %s, %shard, error = %e, "could not delete delivered segments");
            }
        }
        tracing::debug!(stream = %s, %shard, key = %intent.key, records, bytes = raw, "delivered object");
        Ok(())
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 30 s, each wait drawn from [½·d, d].
struct Backoff {
    current: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Backoff {
            current: Duration::from_millis(100),
            seed,
        }
    }

    /// Back to the shortest wait, after delivery succeeded again.
    fn reset(&mut self) {
        self.current = Duration::from_millis(100);
    }

    fn next(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.current;
        self.current = (self.current * 2).min(Duration::from_secs(30));
        let half = d / 2;
        half + Duration::from_nanos(self.seed % (half.as_nanos() as u64 + 1))
    }
}
