//! A delivery stream's consumer of one shard: read → process → partition → buffer → deliver →
//! checkpoint.
//!
//! Every record's way is a pure function of the log record and the configuration: the processors
//! make the same sub-records of it, and each goes to the same partition (an evaluated prefix, "" when
//! the stream is not partitioned) or error partition (one per error output type). A partition has at
//! most one open object at a time; objects close when their size or interval hint is reached.
//!
//! Exactly-once protocol. The checkpoint holds a low-water mark `next` (everything before it is
//! delivered) and the objects of the partitions above it ([`ObjectEntry`]): for each, its partition,
//! record range, the position at which it was closed, its keys and whether it is in flight,
//! delivered or diverted to the error output. Before committing objects the pipeline durably
//! records them as in flight; after the store confirms, as delivered. After a crash, or any delivery
//! error, the pipeline replays from `next` and, until it has passed every recorded object's close
//! position, it does exactly what the interrupted run did: a partition whose object is delivered is
//! open as a "ghost" over that object's range and its records are skipped; an object in flight is
//! rebuilt from the same records and closed at the same position, so it lands under the same key
//! with the same content; and active partitions are counted the same way, so records beyond
//! `max_active_partitions` go to the same place. Time-based closes are suspended until then. Keys
//! and contents are pure functions of the records, so the store ends up with each record exactly
//! once (Kafka Connect S3 uses the same idea: deterministic names from the first offset).
//!
//! A change of the routing configuration (processors, prefix, partitioning, size hint) between a
//! crash and the restart invalidates the recorded objects: which records they hold is only known
//! under the old routing. Undelivered ones are removed and rebuilt under the new configuration;
//! delivered ones stay, so their records at or above the mark are delivered again (at-least-once
//! across that one event, never a loss).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::buffer::{Contents, ObjectBuffer};
use crate::compression::Compression;
use crate::config::BufferingHints;
use crate::error_output::{ErrorOutput, Failure, ACTIVE_PARTITION_EXCEEDED, S3_FAILED};
use crate::format::Conversion;
use crate::log::{
    Checkpoint, CheckpointStore, LogError, LogRecord, ObjectEntry, ObjectState, SequenceNumber,
    ShardLog, StartingPosition, MAX_READ_RECORDS,
};
use crate::partition::Partitioner;
use crate::prefix::{self, PartitionKeys, PrefixTemplate};
use crate::process::{Outcome, Processors, Record};
use crate::sink::{ObjectStore, SinkError};
use crate::time::{TimeZone, UtcDateTime};
use crate::transform::Transforms;

/// Bytes read from the log per step (the pipeline's read buffer).
const READ_BYTES: usize = 1 << 20;
/// With plugins, how many reads the transformation thread may be ahead of placing. Two, not one:
/// the threads cost about the same per read, and with a single read of slack every hiccup of one
/// (an object written, a slow read) idles the other.
const READS_AHEAD: usize = 2;
/// Longest a pipeline sleeps before it looks at the drain flag again.
const POLL: Duration = Duration::from_millis(100);
/// Objects a checkpoint may record above its low-water mark before the partition holding the mark
/// is closed early (at least; twice `max_active_partitions` when that is more).
const MIN_RECORDED_OBJECTS: usize = 16;
/// Error partitions are named apart from data partitions, whose ids never start with this.
const ERROR_PARTITION: &str = "!error/";

/// What a delivery stream does with the records of its shards.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Identifies the data directory (see [`crate::log::instance_id`]); part of object ids.
    pub instance: String,
    pub name: String,
    /// The log consumer whose checkpoints and retention pins these are: the stream's name, or
    /// `<name>+backup` for the pipeline that copies every record to an `AllData` backup.
    pub consumer: String,
    /// Firehose's destination version, part of every object name.
    pub version: u32,
    pub delimiter: Vec<u8>,
    pub hints: BufferingHints,
    pub compression: Compression,
    /// The effective compression level (see `Compression::level`).
    pub compression_level: Option<u32>,
    pub prefix: PrefixTemplate,
    /// Time zone of the prefix's timestamps; `None` is UTC.
    pub time_zone: Option<TimeZone>,
    /// Object extension instead of the compression's or format's (Firehose `FileExtension`).
    pub file_extension: Option<String>,
    /// Where permanently rejected records go.
    pub errors: ErrorOutput,
    /// JSON → Parquet / ORC conversion, if on (then `compression` is none).
    pub conversion: Option<Conversion>,
    /// Decompression and deaggregation.
    pub processors: Processors,
    /// The transformation plugins, after the processors.
    pub transforms: Transforms,
    /// Dynamic partitioning, if on, and its limit on partitions open at once per shard.
    pub partitioner: Option<Partitioner>,
    pub max_active_partitions: usize,
    /// Fingerprint of everything that decides which records go to which object.
    pub routing: String,
    /// A request-based destination (HTTP endpoint, OpenSearch) that takes the data partition's
    /// batches; without one, objects go to the store.
    pub destination: Option<Arc<dyn crate::sink::RecordDestination>>,
    /// Records that failed processing are left out instead of written to the error output (a
    /// backup pipeline: the stream's own pipeline writes them).
    pub skip_failures: bool,
    /// Whether delivered records are dropped from the page cache as the pipeline reads on: only
    /// when it is the shard's one consumer (another may still need them).
    pub drop_cache: bool,
}

/// Errors that interrupt delivery; the pipeline backs off and replays from its checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the store refused an object of partition {partition:?} for good; replaying to write its records to the error output: {error}")]
    Diverted { partition: String, error: SinkError },
    #[error("delivery panicked (a bug; please report it): {0}")]
    Panicked(String),
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

    /// The log consumer it is (the stream's name, or its backup's).
    pub fn consumer(&self) -> &str {
        &self.settings.consumer
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
            // A panic (a bug) must not end delivery for the shard silently: it is logged and the
            // objects are replayed from the checkpoint like any other failure.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut run = Run::start(&self)?;
                let result = run.deliver(&mut backoff);
                if run.progressed {
                    // Objects were delivered before the error: retry soon, not after a long wait.
                    backoff.reset();
                }
                result
            }))
            .unwrap_or_else(|panic| Err(PipelineError::Panicked(panic_text(&*panic))));
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    let wait = match e {
                        // Nothing to wait for: the replay writes the error output.
                        PipelineError::Diverted { .. } => Duration::ZERO,
                        _ => backoff.next(),
                    };
                    tracing::warn!(stream = %self.settings.name, shard = %self.shard.id(), error = %e,
                        retry_in_ms = wait.as_millis() as u64, "delivery failed; replaying from checkpoint");
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn load_checkpoint(&self) -> Result<Checkpoint, LogError> {
        let (s, consumer) = (&self.settings.name, &self.settings.consumer);
        let horizon = self.shard.trim_horizon();
        let ck = self
            .checkpoints
            .load(consumer, s, self.shard.id())?
            .unwrap_or(Checkpoint {
                next: horizon.0,
                ..Checkpoint::default()
            });
        if ck.next < horizon.0 {
            tracing::error!(stream = %s, shard = %self.shard.id(), checkpoint = ck.next, oldest = horizon.0,
                "records before the oldest retained one expired undelivered; continuing from the oldest");
            return Ok(Checkpoint {
                next: horizon.0,
                ..Checkpoint::default()
            });
        }
        Ok(ck)
    }
}

/// A partition's place in the run: an object being filled, or (while replaying) a delivered
/// object's range whose records are skipped.
enum Slot {
    Open {
        buffer: Box<ObjectBuffer>,
        /// Rebuilding a recorded object: it closes only at its recorded position.
        replaying: bool,
    },
    Ghost,
}

impl Slot {
    fn open(buffer: ObjectBuffer, replaying: bool) -> Slot {
        Slot::Open {
            buffer: Box::new(buffer),
            replaying,
        }
    }
}

/// One pass of delivery: from the checkpoint until drained, or until an error sends the pipeline
/// back to the checkpoint.
struct Run<'a> {
    p: &'a Pipeline,
    settings: &'a DeliverySettings,
    slots: HashMap<String, Slot>,
    /// Data partitions among `slots` (error partitions do not count as active).
    active: usize,
    /// The objects above the low-water mark, as in the checkpoint.
    entries: Vec<ObjectEntry>,
    /// Recorded closes still to replay: (close position, partition, first), by position.
    closes: Vec<(u64, String, u64)>,
    /// Until the run has processed this position it replays what the checkpoint recorded.
    replay_end: u64,
    /// The next sequence number to process.
    processed: u64,
    scratch: Vec<Outcome>,
    /// Emptied vectors for reads' outcomes after the plugins (reused across reads).
    transformed: Vec<Vec<(usize, Outcome)>>,
    /// The partition id of the record being placed (reused: no allocation per record).
    id: String,
    /// Whether this run delivered an object.
    progressed: bool,
}

impl<'a> Run<'a> {
    fn start(p: &'a Pipeline) -> Result<Run<'a>, PipelineError> {
        let settings = &*p.settings;
        let mut ck = p.load_checkpoint()?;
        p.shard.pin(&settings.consumer, ck.next_sequence());
        if ck.next > p.shard.durable_end().0 {
            tracing::error!(stream = %settings.name, shard = %p.shard.id(), checkpoint = ck.next,
                durable_end = p.shard.durable_end().0,
                "the checkpoint is ahead of the log (was the log deleted?); waiting for records to reach it");
        }
        // A checkpoint of an older version (no fingerprint) only ever holds one unpartitioned
        // object in flight, which a replay handles like any other.
        if ck.routing != settings.routing && !ck.objects.is_empty() {
            // Which records the recorded objects hold is only known under the old routing. The
            // undelivered ones are removed and rebuilt under the new one; delivered objects stay
            // (their records may be in the lake, and in readers' hands), so records of theirs at
            // or above the mark are delivered again: at-least-once across this one event.
            tracing::warn!(stream = %settings.name, shard = %p.shard.id(), objects = ck.objects.len(),
                "routing configuration changed while objects were open; records of objects delivered above the checkpoint may be delivered again");
            for key in ck
                .objects
                .iter()
                .filter(|e| e.state != ObjectState::Delivered)
                .flat_map(|e| &e.keys)
            {
                p.store.delete(key)?;
            }
            ck.objects.clear();
        }
        let mut run = Run {
            p,
            settings,
            slots: HashMap::new(),
            active: 0,
            closes: ck
                .objects
                .iter()
                .map(|e| (e.closed_at, e.partition.clone(), e.first))
                .collect(),
            replay_end: ck.objects.iter().map(|e| e.closed_at).max().unwrap_or(0),
            entries: ck.objects,
            processed: ck.next,
            scratch: Vec::new(),
            transformed: Vec::new(),
            id: String::new(),
            progressed: false,
        };
        run.closes.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        // Partitions whose delivered object began below the mark were open when the replay starts.
        for e in &run.entries {
            if e.first < ck.next && e.state == ObjectState::Delivered && e.closed_at > ck.next {
                run.active += usize::from(!is_error_partition(&e.partition));
                run.slots.insert(slot_key(&e.partition), Slot::Ghost);
            }
        }
        run.save()?;
        Ok(run)
    }

    fn replaying(&self) -> bool {
        self.processed < self.replay_end
    }

    /// Delivers from the run's position until drained. With plugins, each read is transformed on
    /// a thread of its own, up to [`READS_AHEAD`] reads ahead of the one being placed (see
    /// [`Transformer`]).
    fn deliver(&mut self, backoff: &mut Backoff) -> Result<(), PipelineError> {
        if self.settings.transforms.is_empty() {
            return self.deliver_reads(backoff, None);
        }
        let settings = self.settings;
        std::thread::scope(|scope| {
            let (jobs, inbox) = std::sync::mpsc::sync_channel(READS_AHEAD);
            let (outbox, done) = std::sync::mpsc::sync_channel(READS_AHEAD);
            let thread = std::thread::Builder::new()
                .name(format!("transform-{}", self.p.shard.id()))
                .spawn_scoped(scope, move || Transformer::serve(settings, inbox, outbox))
                .map_err(|e| PipelineError::Panicked(format!("no transformation thread: {e}")))?;
            // The worker's channels are gone when this returns, which ends the thread.
            let delivered = self.deliver_reads(backoff, Some(Worker { jobs, done }));
            match thread.join() {
                Ok(()) => delivered,
                Err(panic) => Err(PipelineError::Panicked(panic_text(&*panic))),
            }
        })
    }

    /// The delivery loop: reads from the run's position, places each read (through `worker`
    /// when there are plugins, up to [`READS_AHEAD`] reads behind it), closes objects when due, and waits for
    /// records when the log has none; returns once drained, or on the first error.
    fn deliver_reads(
        &mut self,
        backoff: &mut Backoff,
        worker: Option<Worker>,
    ) -> Result<(), PipelineError> {
        let shard = &self.p.shard;
        let mut reader = shard.reader(StartingPosition::AtSequenceNumber(SequenceNumber(
            self.processed,
        )));
        if self.settings.drop_cache {
            reader = reader.drop_cache_behind();
        }
        let mut full = Vec::new();
        // Reads with the worker, not yet placed.
        let mut in_flight = 0;
        loop {
            let bytes = READ_BYTES.max(self.settings.transforms.buffer_bytes());
            let mut batch = reader.read(MAX_READ_RECORDS, bytes)?;
            if let Some(w) = &worker {
                let sent = !batch.is_empty();
                if sent {
                    let items = self.transformed.pop().unwrap_or_default();
                    w.jobs
                        .send(Transformed { batch, items })
                        .map_err(|_| Worker::gone())?;
                    in_flight += 1;
                }
                if in_flight > READS_AHEAD || (!sent && in_flight > 0) {
                    // The oldest read, placed while the worker transforms the ones after it.
                    let Transformed {
                        mut batch,
                        mut items,
                    } = w.done.recv().map_err(|_| Worker::gone())?;
                    in_flight -= 1;
                    self.place_read(&mut batch, Some(&mut items), &mut full, backoff)?;
                    items.clear();
                    self.transformed.push(items);
                    continue;
                }
                if sent {
                    continue; // read on while the worker transforms
                }
            } else if !batch.is_empty() {
                self.place_read(&mut batch, None, &mut full, backoff)?;
                continue;
            }
            self.replay_closes(self.processed)?;
            if self.replaying() && shard.durable_end().0 <= self.processed {
                // Only possible if the log lost records it had made durable (e.g. files
                // removed by hand): deliver what there is instead of waiting forever.
                tracing::error!(stream = %self.settings.name, shard = %shard.id(),
                    replay_end = self.replay_end, "records of interrupted objects are missing from the log");
                self.replay_closes(u64::MAX)?;
                self.replay_end = 0;
            }
            let draining = self.p.drain.load(Ordering::Acquire);
            if !self.replaying() {
                let due = self.due(draining);
                if !due.is_empty() {
                    self.close(due)?;
                    backoff.reset();
                    continue;
                }
            }
            if draining && self.slots.is_empty() {
                return Ok(());
            }
            let wait = self.time_left().min(POLL);
            reader.wait(wait.max(Duration::from_millis(1)));
        }
    }

    /// Places the records of one read: `items`, the processors' and plugins' outcomes for it
    /// (each tagged with the index of its log record), or, without plugins, the processors' run
    /// here record by record.
    fn place_read(
        &mut self,
        batch: &mut [LogRecord],
        items: Option<&mut Vec<(usize, Outcome)>>,
        full: &mut Vec<String>,
        backoff: &mut Backoff,
    ) -> Result<(), PipelineError> {
        let mut transformed = items.map(|items| items.drain(..).peekable());
        for (i, record) in batch.iter_mut().enumerate() {
            self.replay_closes(record.sequence.0)?;
            match &mut transformed {
                None => {
                    let mut outcomes = std::mem::take(&mut self.scratch);
                    self.settings.processors.run(record, &mut outcomes);
                    let taken = self.take(outcomes.drain(..), full);
                    self.scratch = outcomes;
                    taken?;
                }
                // Straight from the worker's items: no copy into the scratch vector first.
                Some(t) => self.take(
                    std::iter::from_fn(|| t.next_if(|(j, _)| *j == i).map(|(_, o)| o)),
                    full,
                )?,
            }
            self.processed = record.sequence.0 + 1;
            if !full.is_empty() {
                self.close(std::mem::take(full))?;
                backoff.reset();
            }
        }
        if !self.replaying() {
            let due = self.due(false);
            if !due.is_empty() {
                self.close(due)?;
                backoff.reset();
            }
            if let Some(oldest) = self.holding_the_mark() {
                self.close(vec![oldest])?;
            }
        }
        Ok(())
    }

    /// When the checkpoint records too many objects (a quiet partition holds the low-water mark
    /// while busy ones close object after object, and every checkpoint write rewrites the list),
    /// the partition whose object holds the mark, to close early.
    fn holding_the_mark(&self) -> Option<String> {
        let limit = MIN_RECORDED_OBJECTS.max(self.settings.max_active_partitions.saturating_mul(2));
        if self.entries.len() <= limit {
            return None;
        }
        self.filling()
            .map(|(partition, buffer)| (buffer.first.0, partition))
            .min()
            .map(|(_, partition)| partition.clone())
    }

    /// The objects being filled that close by their size or interval (not ghosts, not rebuilds
    /// of recorded objects), with their partitions.
    fn filling(&self) -> impl Iterator<Item = (&String, &ObjectBuffer)> {
        self.slots
            .iter()
            .filter_map(|(partition, slot)| match slot {
                Slot::Open {
                    buffer,
                    replaying: false,
                } => Some((partition, &**buffer)),
                _ => None,
            })
    }

    /// Routes the pieces of one log record (`outcomes`) into their partitions; partitions that
    /// became full are added to `full`.
    fn take(
        &mut self,
        outcomes: impl Iterator<Item = Outcome>,
        full: &mut Vec<String>,
    ) -> Result<(), PipelineError> {
        let mut result = Ok(());
        let mut id = std::mem::take(&mut self.id);
        for outcome in outcomes {
            let placed = match outcome {
                Outcome::Ok(r) => match &self.settings.partitioner {
                    None => self.place(Cow::Borrowed(unpartitioned()), false, &r, None, full),
                    Some(partitioner) => match partitioner.id_into(
                        &r.data,
                        r.keys.as_deref().unwrap_or(&[]),
                        &mut id,
                    ) {
                        Ok(()) => self.place(Cow::Borrowed(&id), true, &r, None, full),
                        Err(f) => {
                            let partition = Cow::Owned(error_partition(f.output_type));
                            self.place(partition, false, &r, Some(f), full)
                        }
                    },
                },
                Outcome::Failed(..) if self.settings.skip_failures => Ok(()),
                Outcome::Failed(r, f) => {
                    let partition = Cow::Owned(error_partition(f.output_type));
                    self.place(partition, false, &r, Some(*f), full)
                }
            };
            if let Err(e) = placed {
                result = Err(e);
                break;
            }
        }
        self.id = id;
        result
    }

    /// Puts one record into its partition's object, opening it (or its ghost) if needed. `keyed`:
    /// a data partition of dynamic partitioning, whose keys are looked up when it opens.
    fn place(
        &mut self,
        mut partition: Cow<'_, str>,
        keyed: bool,
        record: &Record,
        mut failure: Option<Failure>,
        full: &mut Vec<String>,
    ) -> Result<(), PipelineError> {
        // One lookup for a record of an open partition, the common case.
        if let Some(slot) = self.slots.get_mut(&*partition) {
            let pushed = push_to(slot, record, failure.as_ref(), &self.settings.hints);
            return self.pushed(pushed, partition, record, full);
        }
        let mut keys = None;
        if let (true, Some(partitioner)) = (keyed, &self.settings.partitioner) {
            // The record's keys, again (a pure function of it), now that they are needed.
            let lambda = record.keys.as_deref().unwrap_or(&[]);
            let refused = match partitioner.route(&record.data, lambda) {
                Err(f) => Some(f),
                Ok(_) if self.active >= self.settings.max_active_partitions => Some(Failure {
                    output_type: ACTIVE_PARTITION_EXCEEDED,
                    code: "DynamicPartitioning.ActivePartitionExceeded".into(),
                    message: format!(
                        "more than {} partitions are active in shard {}; the record's partition {partition} is not opened",
                        self.settings.max_active_partitions,
                        self.p.shard.id(),
                    ).into(),
                    attempts: 1,
                    plugin: None,
                }),
                Ok(k) => match partitioner.check(&k) {
                    Err(f) => Some(f),
                    Ok(()) => {
                        keys = Some(k);
                        None
                    }
                },
            };
            if let Some(f) = refused {
                partition = Cow::Owned(error_partition(f.output_type));
                failure = Some(f);
            }
        }
        if !self.slots.contains_key(&*partition) {
            self.open(&partition, keys.as_ref(), record, failure.as_ref())?;
        }
        let Some(slot) = self.slots.get_mut(&*partition) else {
            unreachable!("the partition's slot was just opened");
        };
        let pushed = push_to(slot, record, failure.as_ref(), &self.settings.hints);
        self.pushed(pushed, partition, record, full)
    }

    /// Acts on what pushing `record` into `partition`'s slot did.
    fn pushed(
        &mut self,
        pushed: Pushed,
        partition: Cow<'_, str>,
        record: &Record,
        full: &mut Vec<String>,
    ) -> Result<(), PipelineError> {
        match pushed {
            Pushed::Taken => Ok(()),
            Pushed::Full => {
                if !full.iter().any(|p| *p == *partition) {
                    full.push(partition.into_owned());
                }
                Ok(())
            }
            Pushed::Refused {
                first,
                key,
                error,
                divertible,
            } if divertible && !is_error_partition(&partition) => {
                let last = record.sequence.0;
                // While replaying, the partition stays active until the replay's end, as it
                // was in the run being replayed (its later records go to the error object too).
                let closed_at = (last + 1).max(self.replay_end);
                self.divert(&partition, first, last, closed_at, vec![key], error)
            }
            Pushed::Refused { error, .. } => Err(error.into()),
        }
    }

    /// Opens `partition`'s slot at `record`: a ghost over a delivered object, the rebuild of a
    /// recorded one, or a new object.
    fn open(
        &mut self,
        partition: &str,
        keys: Option<&PartitionKeys>,
        record: &Record,
        failure: Option<&Failure>,
    ) -> Result<(), PipelineError> {
        let seq = record.sequence.0;
        // A replayed object opens exactly at its first record; entries whose close has been
        // replayed already describe earlier objects of the partition.
        let pending = self
            .closes
            .iter()
            .any(|(_, p, first)| *first == seq && p == partition);
        let recorded = pending
            .then(|| {
                self.entries
                    .iter()
                    .find(|e| e.partition == partition && e.first == seq)
                    .map(|e| e.state.clone())
            })
            .flatten();
        let s = self.settings;
        let shard = self.p.shard.id();
        let store = Arc::clone(&self.p.store);
        let settings = Arc::clone(&self.p.settings);
        let slot = match (&recorded, failure) {
            (Some(ObjectState::Delivered), _) => Slot::Ghost,
            (Some(ObjectState::Diverted { code, message }), _) => {
                let f = Failure {
                    output_type: S3_FAILED,
                    code: code.clone(),
                    message: message.as_str().into(),
                    attempts: 1,
                    plugin: None,
                };
                let key = s.errors.key(&f, shard, partition, record);
                let buffer = ObjectBuffer::open(
                    settings,
                    store,
                    shard,
                    partition,
                    key,
                    record,
                    Contents::Errors(Some(f)),
                )?;
                Slot::open(buffer, true)
            }
            (_, Some(f)) => {
                let key = s.errors.key(f, shard, partition, record);
                let contents = Contents::Errors(None);
                let buffer =
                    ObjectBuffer::open(settings, store, shard, partition, key, record, contents)?;
                Slot::open(buffer, recorded.is_some())
            }
            (_, None) => {
                let key = match &s.destination {
                    // A batch's one object is the error object of the records it does not deliver.
                    Some(d) => s
                        .errors
                        .key_of_type(d.output_type(), shard, partition, record),
                    None => self.object_key(partition, keys, record),
                };
                let contents = Contents::Records;
                let mut buffer =
                    ObjectBuffer::open(settings, store, shard, partition, key, record, contents)?;
                buffer.replay = recorded.is_some();
                Slot::open(buffer, recorded.is_some())
            }
        };
        self.active += usize::from(!is_error_partition(partition));
        self.slots.insert(slot_key(partition), slot);
        Ok(())
    }

    fn object_key(&self, partition: &str, keys: Option<&PartitionKeys>, first: &Record) -> String {
        let s = self.settings;
        let at = UtcDateTime::from_epoch_ms(first.arrival_ms);
        let local = s
            .time_zone
            .as_ref()
            .map_or(at, |z| z.calendar(first.arrival_ms));
        let seed = if partition.is_empty() {
            s.name.clone()
        } else {
            format!("{}\0{partition}", s.name)
        };
        let id = prefix::object_id(&s.instance, &seed, self.p.shard.id().0, first.sequence.0);
        let extension = match (&s.file_extension, &s.conversion) {
            (Some(e), _) => e.as_str(),
            (None, Some(c)) => c.output().extension(),
            (None, None) => s.compression.extension(),
        };
        let default_keys = PartitionKeys::default();
        let prefix = s
            .prefix
            .render_partition(&local, &id, keys.unwrap_or(&default_keys));
        // Firehose names objects in the custom time zone too ("the time zone used for time prefix
        // and suffix").
        prefix::object_key(&prefix, &s.name, s.version, &local, &id, extension)
    }

    /// Partitions due by their interval (all open ones when draining).
    fn due(&self, draining: bool) -> Vec<String> {
        self.filling()
            .filter(|(_, buffer)| draining || buffer.time_left(&self.settings.hints).is_zero())
            .map(|(partition, _)| partition.clone())
            .collect()
    }

    /// How long until the next object is due by its interval.
    fn time_left(&self) -> Duration {
        self.slots
            .values()
            .filter_map(|slot| match slot {
                Slot::Open { buffer, .. } => Some(buffer.time_left(&self.settings.hints)),
                Slot::Ghost => None,
            })
            .min()
            .unwrap_or(POLL)
    }

    /// Replays the recorded closes at or before `position`.
    fn replay_closes(&mut self, position: u64) -> Result<(), PipelineError> {
        let mut closing = Vec::new();
        while self.closes.last().is_some_and(|(at, _, _)| *at <= position) {
            let (_, partition, first) = self.closes.pop().expect("checked");
            match self.slots.get(&partition) {
                Some(Slot::Ghost) => {
                    self.slots.remove(&partition);
                    self.active = self
                        .active
                        .saturating_sub(usize::from(!is_error_partition(&partition)));
                }
                Some(Slot::Open { buffer, .. }) if buffer.first.0 == first => {
                    closing.push(partition)
                }
                // The recorded object's records never came (the log lost them): forget it, and
                // remove whatever an attempt at it left.
                _ => {
                    if let Some(i) = self
                        .entries
                        .iter()
                        .position(|e| e.partition == partition && e.first == first)
                    {
                        let e = self.entries.remove(i);
                        tracing::error!(stream = %self.settings.name, shard = %self.p.shard.id(),
                            partition = %e.partition, first = e.first, last = e.last,
                            "records of a recorded object are missing from the log");
                        if e.state != ObjectState::Delivered {
                            for key in &e.keys {
                                self.p.store.delete(key)?;
                            }
                        }
                    }
                }
            }
        }
        if closing.is_empty() {
            Ok(())
        } else {
            self.close(closing)
        }
    }

    /// Closes the objects of `partitions` under the exactly-once protocol of the module docs.
    fn close(&mut self, partitions: Vec<String>) -> Result<(), PipelineError> {
        let mut finished = Vec::with_capacity(partitions.len());
        let mut diversion = None;
        for partition in partitions {
            let Some(Slot::Open { buffer, .. }) = self.slots.remove(&partition) else {
                continue;
            };
            self.active = self
                .active
                .saturating_sub(usize::from(!is_error_partition(&partition)));
            let (first, last, key) = (buffer.first.0, buffer.last.0, buffer.key().to_string());
            let divertible = !is_error_partition(&partition) && !buffer.holds_errors();
            match buffer.finish() {
                Ok(done) => finished.push((partition, done)),
                // Recorded, not returned at once: the objects finished before it in this batch
                // must be recorded too, or the low-water mark would pass their records.
                Err(e) if e.is_permanent() && divertible => {
                    let closed_at = self.processed;
                    self.mark_diverted(&partition, first, last, closed_at, vec![key], &e);
                    diversion.get_or_insert((partition, e));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Record every object as in flight (or as the error object it is diverted to).
        let mut changed = false;
        for (partition, done) in &finished {
            let keys = done.keys();
            match self
                .entries
                .iter_mut()
                .find(|e| e.partition == *partition && e.first == done.first.0)
            {
                Some(e) if e.keys == keys => {}
                Some(e) => {
                    for stale in e.keys.iter().filter(|k| !keys.contains(k)) {
                        self.p.store.delete(stale)?;
                    }
                    e.keys = keys;
                    changed = true;
                }
                None => {
                    self.entries.push(ObjectEntry {
                        partition: partition.clone(),
                        first: done.first.0,
                        last: done.last.0,
                        closed_at: self.processed,
                        keys,
                        state: ObjectState::InFlight,
                    });
                    changed = true;
                }
            }
        }
        if let Some((partition, error)) = diversion {
            // The replay rebuilds the finished objects and writes the diverted one's records to
            // the error output.
            self.save()?;
            return Err(PipelineError::Diverted { partition, error });
        }
        if changed {
            self.save()?;
        }
        for (partition, done) in finished {
            let first = done.first.0;
            let (records, raw) = (done.records, done.raw_bytes);
            let keys = done.keys();
            let Some(i) = self
                .entries
                .iter()
                .position(|e| e.partition == partition && e.first == first)
            else {
                unreachable!("every finished object was recorded above");
            };
            match done.commit() {
                Ok(()) => {
                    // A delivered object's keys are not needed again: a replay only skips it.
                    self.entries[i].state = ObjectState::Delivered;
                    self.entries[i].keys = Vec::new();
                    self.progressed = true;
                }
                Err(e)
                    if e.is_permanent()
                        && self.entries[i].state == ObjectState::InFlight
                        && !is_error_partition(&partition) =>
                {
                    self.entries[i].state = diverted(&e);
                    self.save()?;
                    return Err(PipelineError::Diverted {
                        partition,
                        error: e,
                    });
                }
                Err(e) => {
                    // Keep what was delivered, so that the replay rebuilds only the rest.
                    if self.progressed {
                        self.save()?;
                    }
                    return Err(e.into());
                }
            }
            tracing::debug!(stream = %self.settings.name, shard = %self.p.shard.id(), ?keys,
                records, bytes = raw, "delivered object");
        }
        self.save()
    }

    /// Records that the store refused `partition`'s object for good, so that the replay writes its
    /// records to the error output instead, and returns the error that starts that replay.
    fn divert(
        &mut self,
        partition: &str,
        first: u64,
        last: u64,
        closed_at: u64,
        keys: Vec<String>,
        error: SinkError,
    ) -> Result<(), PipelineError> {
        self.mark_diverted(partition, first, last, closed_at, keys, &error);
        self.save()?;
        Err(PipelineError::Diverted {
            partition: partition.to_string(),
            error,
        })
    }

    /// [`Self::divert`]'s record, without writing the checkpoint.
    fn mark_diverted(
        &mut self,
        partition: &str,
        first: u64,
        last: u64,
        closed_at: u64,
        keys: Vec<String>,
        error: &SinkError,
    ) {
        let state = diverted(error);
        match self
            .entries
            .iter_mut()
            .find(|e| e.partition == partition && e.first == first)
        {
            Some(e) => e.state = state,
            None => self.entries.push(ObjectEntry {
                partition: partition.to_string(),
                first,
                last,
                closed_at,
                keys,
                state,
            }),
        }
    }

    /// Writes the checkpoint: the low-water mark below every open or undelivered object, and the
    /// objects above it.
    fn save(&mut self) -> Result<(), PipelineError> {
        let open = self.slots.values().filter_map(|s| match s {
            Slot::Open { buffer, .. } => Some(buffer.first.0),
            Slot::Ghost => None,
        });
        let undelivered = self
            .entries
            .iter()
            .filter(|e| e.state != ObjectState::Delivered)
            .map(|e| e.first);
        let next = open
            .chain(undelivered)
            .min()
            .unwrap_or(self.processed)
            .min(self.processed);
        self.entries
            .retain(|e| e.state != ObjectState::Delivered || e.closed_at > next);
        let (s, consumer) = (&self.settings.name, &self.settings.consumer);
        let shard = self.p.shard.id();
        self.p.checkpoints.save(
            consumer,
            s,
            shard,
            &Checkpoint {
                next,
                in_flight: None,
                objects: self.entries.clone(),
                routing: self.settings.routing.clone(),
            },
        )?;
        self.p.shard.pin(consumer, SequenceNumber(next));
        if self.p.shard.over_disk_budget() {
            // Under disk pressure, free what is now delivered instead of waiting for the
            // periodic retention pass.
            if let Err(e) = self.p.shard.enforce_retention(crate::log::now_ms()) {
                tracing::warn!(stream = %s, %shard, error = %e, "could not delete delivered segments");
            }
        }
        Ok(())
    }
}

/// A panic's message.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// A read on its way through the processors and plugins: its log records, and their outcomes,
/// each tagged with the index of its log record (empty until transformed).
struct Transformed {
    batch: Vec<LogRecord>,
    items: Vec<(usize, Outcome)>,
}

/// The processors and plugins of a stream, run on a thread of their own up to [`READS_AHEAD`]
/// reads ahead of the pipeline that places the records. A plugin costs about as much per record as placing does,
/// so a shard's pipeline then uses two cores instead of one. What a read becomes depends on
/// its records alone, so running it early changes nothing downstream; a read in flight when
/// the run ends is dropped and read again by the replay.
#[derive(Default)]
struct Transformer {
    scratch: Vec<Outcome>,
    plugins: crate::transform::Scratch,
}

impl Transformer {
    /// Transforms each read of `inbox` and sends it to `outbox`, until either is closed.
    fn serve(
        settings: &DeliverySettings,
        inbox: std::sync::mpsc::Receiver<Transformed>,
        outbox: std::sync::mpsc::SyncSender<Transformed>,
    ) {
        let mut t = Transformer::default();
        for mut read in inbox {
            t.run(settings, &mut read.batch, &mut read.items);
            if outbox.send(read).is_err() {
                return;
            }
        }
    }

    /// The processors' and plugins' outcomes for `batch`, each tagged with the index of its log
    /// record; the pieces of one log record are numbered again (`sub`) as the plugins left them.
    fn run(
        &mut self,
        settings: &DeliverySettings,
        batch: &mut [LogRecord],
        items: &mut Vec<(usize, Outcome)>,
    ) {
        for (i, record) in batch.iter_mut().enumerate() {
            settings.processors.run(record, &mut self.scratch);
            items.extend(self.scratch.drain(..).map(|o| (i, o)));
        }
        settings.transforms.run(items, &mut self.plugins);
        let mut last = (usize::MAX, 0u32);
        for (i, outcome) in items.iter_mut() {
            let sub = if last.0 == *i { last.1 + 1 } else { 0 };
            last = (*i, sub);
            match outcome {
                Outcome::Ok(r) | Outcome::Failed(r, _) => r.sub = sub,
            }
        }
    }
}

/// The pipeline's ends of the channels to its [`Transformer`] thread.
struct Worker {
    jobs: std::sync::mpsc::SyncSender<Transformed>,
    done: std::sync::mpsc::Receiver<Transformed>,
}

impl Worker {
    /// The error of a transformation thread that ended (it panicked: `Run::deliver` reports the
    /// panic's message when it joins the thread, and the pipeline replays).
    fn gone() -> PipelineError {
        PipelineError::Panicked("the transformation thread ended".into())
    }
}

/// What pushing a record into a slot did.
enum Pushed {
    /// Taken (or skipped: the slot is a ghost over a delivered object).
    Taken,
    /// Taken, and the object is now full (by its size hint, or its destination's limits).
    Full,
    /// The store refused the object's write; `divertible`: for good, and the object holds
    /// records (not error documents), so its records can go to the error output instead.
    Refused {
        first: u64,
        key: String,
        error: SinkError,
        divertible: bool,
    },
}

/// Pushes `record` (with its `failure`, in an error object) into `slot`.
fn push_to(
    slot: &mut Slot,
    record: &Record,
    failure: Option<&Failure>,
    hints: &BufferingHints,
) -> Pushed {
    let Slot::Open { buffer, replaying } = slot else {
        return Pushed::Taken; // a ghost: the record is in a delivered object
    };
    match buffer.push(record, failure) {
        Ok(()) if !*replaying && buffer.is_full(hints) => Pushed::Full,
        Ok(()) => Pushed::Taken,
        Err(error) => Pushed::Refused {
            first: buffer.first.0,
            key: buffer.key().to_string(),
            divertible: error.is_permanent() && !buffer.holds_errors(),
            error,
        },
    }
}

/// The partition id of records without dynamic partitioning: "", with a pointer into a static
/// (see [`slot_key`]).
fn unpartitioned() -> &'static str {
    static ANCHOR: &str = "-";
    &ANCHOR[..0]
}

/// `partition` as a key of `Run::slots`. An empty key gets an allocation: comparing two empty
/// strings calls `memcmp` with a length of 0, and glibc's AVX-512 `memcmp` then does a masked
/// load from both pointers; from an empty `String`'s dangling pointer that load takes a
/// fault-suppression assist costing hundreds of cycles (measured: 10 % of the pipeline thread,
/// one lookup per record). Keys and the unpartitioned id ([`unpartitioned`]) that point at
/// mapped memory keep the comparison cheap.
fn slot_key(partition: &str) -> String {
    let mut key = String::with_capacity(partition.len().max(1));
    key.push_str(partition);
    key
}

/// The error partition of an error output type.
fn error_partition(output_type: &str) -> String {
    format!("{ERROR_PARTITION}{output_type}")
}

fn is_error_partition(partition: &str) -> bool {
    partition.starts_with(ERROR_PARTITION)
}

fn diverted(e: &SinkError) -> ObjectState {
    ObjectState::Diverted {
        code: format!("S3.{}", e.code().unwrap_or("Unknown")),
        message: e.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogOptions, ShardId};
    use crate::sink::ObjectWriter;
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::sync::Mutex;

    /// An in-memory store that permanently rejects keys starting with `reject`.
    #[derive(Default)]
    struct MemoryStore {
        objects: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
        reject: Option<String>,
        /// Writes to keys starting with this fail for good (a part upload refused).
        reject_writes: Option<String>,
        /// One commit in `flaky` fails transiently, at random (0: never), to exercise replays.
        flaky: u64,
        commits: Arc<std::sync::atomic::AtomicU64>,
    }

    struct MemoryObject {
        key: String,
        data: Vec<u8>,
        objects: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
        fail: bool,
        fail_writes: bool,
        reject: bool,
    }

    impl Write for MemoryObject {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.fail_writes {
                return Err(std::io::Error::other(SinkError::Store {
                    message: format!("UploadPart {}: EntityTooLarge (HTTP 400)", self.key),
                    code: Some("EntityTooLarge".into()),
                    permanent: true,
                }));
            }
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl ObjectWriter for MemoryObject {
        fn commit(self: Box<Self>) -> Result<(), SinkError> {
            if self.fail {
                return Err(SinkError::Store {
                    message: format!("PutObject {}: SlowDown (HTTP 503)", self.key),
                    code: Some("SlowDown".into()),
                    permanent: false,
                });
            }
            if self.reject {
                return Err(SinkError::Store {
                    message: format!("PutObject {}: InvalidArgument (HTTP 400)", self.key),
                    code: Some("InvalidArgument".into()),
                    permanent: true,
                });
            }
            self.objects.lock().unwrap().insert(self.key, self.data);
            Ok(())
        }
    }

    impl ObjectStore for MemoryStore {
        fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, SinkError> {
            Ok(Box::new(MemoryObject {
                key: key.to_string(),
                data: Vec::new(),
                objects: Arc::clone(&self.objects),
                reject: self.reject.as_deref().is_some_and(|r| key.starts_with(r)),
                fail_writes: self
                    .reject_writes
                    .as_deref()
                    .is_some_and(|r| key.starts_with(r)),
                fail: self.flaky > 0 && {
                    // A xorshift step per object: failures land anywhere in a replay.
                    let mut x = self
                        .commits
                        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
                        | 1;
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % self.flaky == 0
                },
            }))
        }
        fn delete(&self, key: &str) -> Result<(), SinkError> {
            self.objects.lock().unwrap().remove(key);
            Ok(())
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn settings() -> Arc<DeliverySettings> {
        Arc::new(DeliverySettings {
            instance: "test".into(),
            name: "events".into(),
            consumer: "events".into(),
            version: 1,
            delimiter: b"\n".to_vec(),
            hints: BufferingHints {
                size_mib: 1,
                interval_s: 900,
            },
            compression: Compression::None,
            compression_level: None,
            prefix: PrefixTemplate::parse("data/").unwrap(),
            time_zone: None,
            file_extension: None,
            errors: ErrorOutput {
                prefix: PrefixTemplate::parse("data/")
                    .unwrap()
                    .default_error_prefix()
                    .unwrap(),
                stream: "events".into(),
                consumer: "events".into(),
                version: 1,
                instance: "test".into(),
                time_zone: None,
            },
            conversion: None,
            processors: Processors::default(),
            transforms: Transforms::default(),
            partitioner: None,
            max_active_partitions: 500,
            routing: "test".into(),
            destination: None,
            skip_failures: false,
            drop_cache: true,
        })
    }

    /// Appends `records` to a fresh shard and runs a pipeline over them until drained.
    fn deliver(store: Arc<MemoryStore>, records: &[Vec<u8>]) -> tempfile::TempDir {
        deliver_with(settings(), store, records, None)
    }

    /// Appends `records` to a fresh shard and runs a pipeline until it has delivered them all,
    /// starting from `checkpoint` if given (as after a crash).
    fn deliver_with(
        settings: Arc<DeliverySettings>,
        store: Arc<MemoryStore>,
        records: &[Vec<u8>],
        checkpoint: Option<Checkpoint>,
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let shard = ShardLog::open(
            ShardId(0),
            dir.path().join("log"),
            LogOptions::default(),
            Arc::default(),
        )
        .unwrap();
        let appended = shard
            .append(records.iter().map(|r| (&b""[..], r.as_slice())))
            .unwrap();
        appended.durable.blocking_recv().unwrap().unwrap();
        let drain = Arc::new(AtomicBool::new(true));
        let checkpoints = CheckpointStore::new(dir.path().join("ck"));
        if let Some(ck) = checkpoint {
            checkpoints
                .save("events", "events", ShardId(0), &ck)
                .unwrap();
        }
        Pipeline::new(
            settings,
            Arc::clone(&shard),
            store,
            checkpoints.clone(),
            drain,
        )
        .run();
        let ck = checkpoints
            .load("events", "events", ShardId(0))
            .unwrap()
            .unwrap();
        assert_eq!(ck.next, records.len() as u64, "{ck:?}");
        assert_eq!(ck.objects, vec![], "everything delivered");
        shard.close();
        dir
    }

    #[test]
    fn permanently_rejected_records_become_error_documents() {
        let store = Arc::new(MemoryStore {
            reject: Some("data/20".into()),
            ..MemoryStore::default()
        });
        let records: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("record-{i}").into_bytes())
            .collect();
        let _dir = deliver(Arc::clone(&store), &records);
        let objects = store.objects.lock().unwrap();
        assert_eq!(objects.len(), 1, "{:?}", objects.keys().collect::<Vec<_>>());
        let (key, body) = objects.iter().next().unwrap();
        assert!(key.starts_with("data/s3-failed/20"), "{key}");
        let docs: Vec<serde_json::Value> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(docs.len(), 50);
        for (doc, record) in docs.iter().zip(&records) {
            assert_eq!(doc["errorCode"], "S3.InvalidArgument");
            assert!(doc["errorMessage"]
                .as_str()
                .unwrap()
                .contains("InvalidArgument"));
            assert_eq!(doc["attemptsMade"], 1);
            assert!(doc["arrivalTimestamp"].as_i64().unwrap() > 0);
            assert!(
                doc["attemptEndingTimestamp"].as_i64().unwrap()
                    >= doc["arrivalTimestamp"].as_i64().unwrap()
            );
            let raw = base64_simd::STANDARD
                .decode_to_vec(doc["rawData"].as_str().unwrap())
                .unwrap();
            assert_eq!(&raw, record);
        }
    }

    #[test]
    fn accepted_records_are_delivered_as_data() {
        let store = Arc::new(MemoryStore::default());
        let records: Vec<Vec<u8>> = (0..10).map(|i| format!("r{i}").into_bytes()).collect();
        let _dir = deliver(Arc::clone(&store), &records);
        let objects = store.objects.lock().unwrap();
        assert_eq!(objects.len(), 1);
        let (key, body) = objects.iter().next().unwrap();
        assert!(key.starts_with("data/20"), "{key}");
        assert_eq!(
            body,
            &records
                .iter()
                .flat_map(|r| [r.as_slice(), b"\n"].concat())
                .collect::<Vec<u8>>()
        );
    }

    /// A plugin that returns each record unchanged, in one-record batches (a WAT module).
    fn passthrough() -> Transforms {
        // Batch: magic, count, then id (8), arrival (16), length (24), data (28). Output at 8192:
        // SPR1, 1 result: the id, Ok, one piece of the record's data, no keys.
        let body = "(local $len i32)
            (local.set $len (i32.load (i32.add (local.get $p) (i32.const 24))))
            (i32.store (i32.const 8192) (i32.const 0x31525053))
            (i32.store (i32.const 8196) (i32.const 1))
            (i64.store (i32.const 8200) (i64.load (i32.add (local.get $p) (i32.const 8))))
            (i32.store8 (i32.const 8208) (i32.const 0))
            (i32.store (i32.const 8209) (i32.const 1))
            (i32.store (i32.const 8213) (local.get $len))
            (memory.copy (i32.const 8217) (i32.add (local.get $p) (i32.const 28)) (local.get $len))
            (i32.store16 (i32.add (i32.const 8217) (local.get $len)) (i32.const 0))
            (i64.or (i64.shl (i64.const 8192) (i64.const 32))
                    (i64.extend_i32_u (i32.add (local.get $len) (i32.const 27))))";
        let module = crate::transform::plugin::testing::wat(body, "");
        let wasm = crate::config::WasmConfig {
            module: "passthrough.wat".into(),
            function: "spillway_transform".into(),
            config: String::new(),
            buffer_mib: 1e-9, // one record per call
            number_of_retries: 0,
            timeout_ms: 10_000,
            memory_mib: 16,
            bytes: Arc::new(module.into_bytes()),
            digest: String::new(),
        };
        Transforms::load(&[crate::config::Processor::Wasm(wasm)], None).unwrap()
    }

    /// With a plugin, reads are transformed on the worker thread ahead of placing; with
    /// commits failing at random, runs end while reads are with the worker and are replayed.
    #[test]
    fn with_a_plugin_every_record_is_delivered_once_across_reads_and_replays() {
        let mut s = (*settings()).clone();
        s.transforms = passthrough();
        let store = Arc::new(MemoryStore {
            flaky: 3,
            ..MemoryStore::default()
        });
        // 65,000 records of 50-100 bytes: seven reads (10,000 records at most each), so that runs
        // end with up to three reads in flight, and objects of 1 MiB closing inside them.
        let records: Vec<Vec<u8>> = (0..65_000)
            .map(|i| format!("record-{i:06}-{}", "x".repeat(40 + i % 50)).into_bytes())
            .collect();
        let _dir = deliver_with(Arc::new(s), Arc::clone(&store), &records, None);
        let (data, errors) = delivered(&store);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(store.objects.lock().unwrap().len() >= 2, "one object");
        let (got, want) = sorted_records(&data, &errors, "", &records);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "records lost or delivered twice");
    }

    fn converting(output: crate::format::OutputFormat) -> Arc<DeliverySettings> {
        let mut s = (*settings()).clone();
        s.conversion = Some(Conversion::Fixed(crate::format::FormatConversion {
            schema: crate::format::TableSchema::from_columns([("id", "int"), ("name", "string")])
                .unwrap(),
            deserializer: crate::format::Deserializer::default(),
            output,
        }));
        Arc::new(s)
    }

    /// Parquet conversion with the schema inferred from `sample_records` records, pinned at `path`
    /// (read back if it is there).
    fn inferring(path: &std::path::Path, sample_records: usize) -> Arc<DeliverySettings> {
        let pin = crate::format::SchemaPin::open(
            path.to_path_buf(),
            crate::format::Deserializer::default(),
            crate::format::OutputFormat::Parquet(Default::default()),
            sample_records,
        )
        .unwrap();
        let mut s = (*settings()).clone();
        s.conversion = Some(Conversion::Inferred(Arc::new(pin)));
        Arc::new(s)
    }

    /// Every third record does not fit the schema: the good rows form one columnar object, the bad
    /// records one `format-conversion-failed` error object; a stale key of an earlier attempt at the
    /// same records is removed.
    #[test]
    fn conversion_splits_good_rows_from_bad_records() {
        use crate::format::{OrcOptions, OutputFormat, ParquetOptions};
        for output in [
            OutputFormat::Parquet(ParquetOptions::default()),
            OutputFormat::Orc(OrcOptions::default()),
        ] {
            let store = Arc::new(MemoryStore::default());
            store
                .objects
                .lock()
                .unwrap()
                .insert("data/stale".into(), b"old".to_vec());
            let records: Vec<Vec<u8>> = (0..30)
                .map(|i| match i % 3 {
                    2 => format!(r#"{{"id":"x{i}"}}"#).into_bytes(),
                    1 => format!(r#"{{"id":{i}}}{{"id":{},"name":"b"}}"#, i + 1000).into_bytes(),
                    _ => format!(r#"{{"id":{i},"NAME":"n{i}"}}"#).into_bytes(),
                })
                .collect();
            let stale = Checkpoint {
                next: 0,
                objects: vec![ObjectEntry {
                    partition: String::new(),
                    first: 0,
                    last: 29,
                    closed_at: 30,
                    keys: vec!["data/stale".into()],
                    state: ObjectState::InFlight,
                }],
                routing: "test".into(),
                ..Checkpoint::default()
            };
            let _dir = deliver_with(
                converting(output.clone()),
                Arc::clone(&store),
                &records,
                Some(stale),
            );
            let objects = store.objects.lock().unwrap();
            let keys: Vec<_> = objects.keys().cloned().collect();
            assert_eq!(keys.len(), 2, "{keys:?}");
            let data = keys
                .iter()
                .find(|k| k.ends_with(output.extension()))
                .unwrap();
            let errors = keys
                .iter()
                .find(|k| k.starts_with("data/format-conversion-failed/"))
                .unwrap();
            let rows = match output {
                OutputFormat::Parquet(_) => {
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                        bytes::Bytes::from(objects[data].clone()),
                    )
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum::<usize>()
                }
                OutputFormat::Orc(_) => {
                    orc_rust::ArrowReaderBuilder::try_new(bytes::Bytes::from(objects[data].clone()))
                        .unwrap()
                        .build()
                        .map(|b| b.unwrap().num_rows())
                        .sum::<usize>()
                }
            };
            assert_eq!(rows, 10 + 2 * 10, "one row per good object");
            let docs: Vec<serde_json::Value> = objects[errors]
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            assert_eq!(docs.len(), 10);
            for (n, doc) in docs.iter().enumerate() {
                let i = n * 3 + 2;
                assert_eq!(doc["ErrorCode"], "DataFormatConversion.SchemaMismatch");
                assert!(
                    doc["ErrorMessage"].as_str().unwrap().starts_with("id:"),
                    "{doc}"
                );
                assert_eq!(doc["sequenceNumber"], i.to_string());
                assert_eq!(doc["subSequenceNumber"], 0);
                assert!(doc["dataCatalogTable"].is_object());
                let raw = base64_simd::STANDARD
                    .decode_to_vec(doc["rawData"].as_str().unwrap())
                    .unwrap();
                assert_eq!(raw, records[i]);
            }
        }
    }

    /// With an inferred schema, every object of the stream has the schema pinned from its first
    /// records: a field that appears later is not in it, in this run or the next (which reads the
    /// pin back instead of sampling its own records).
    #[test]
    fn an_inferred_schema_is_pinned_for_every_object() {
        let state = tempfile::tempdir().unwrap();
        let path = state.path().join("schemas").join("events.json");
        let pad = "p".repeat(600);
        let records: Vec<Vec<u8>> = (0..3000)
            .map(|i| match i {
                0..100 => format!(r#"{{"id":{i},"name":"n{i}","pad":"{pad}"}}"#),
                _ => format!(r#"{{"id":{i},"name":"n{i}","pad":"{pad}","late":{i}}}"#),
            })
            .map(String::into_bytes)
            .collect();
        let schemas = |records: &[Vec<u8>]| {
            let store = Arc::new(MemoryStore::default());
            let _dir = deliver_with(inferring(&path, 100), Arc::clone(&store), records, None);
            let objects = store.objects.lock().unwrap();
            let mut rows = 0;
            let mut schemas = Vec::new();
            for (key, body) in objects.iter() {
                assert!(key.ends_with(".parquet"), "{key}");
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                        bytes::Bytes::from(body.clone()),
                    )
                    .unwrap();
                schemas.push(reader.schema().clone());
                rows += reader
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum::<usize>();
            }
            assert_eq!(rows, records.len(), "every record is a row");
            schemas
        };
        let first = schemas(&records);
        assert!(first.len() >= 2, "the run spans several objects");
        let names: Vec<_> = first[0]
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["id", "name", "pad"]);
        assert!(
            first.iter().all(|s| s == &first[0]),
            "objects share one schema"
        );
        // The next run, whose first records have the late field, keeps the pinned schema.
        let again = schemas(&records[100..200]);
        assert!(again.iter().all(|s| s == &first[0]));
    }

    /// Records from which no schema can be inferred go to the error output as records that
    /// cannot be converted; nothing is pinned.
    #[test]
    fn records_without_a_schema_to_infer_go_to_the_error_output() {
        let state = tempfile::tempdir().unwrap();
        let path = state.path().join("events.json");
        let store = Arc::new(MemoryStore::default());
        let records = vec![
            b"not json".to_vec(),
            b"[1]".to_vec(),
            br#"{"bad key":1}"#.to_vec(),
        ];
        let _dir = deliver_with(inferring(&path, 1000), Arc::clone(&store), &records, None);
        let objects = store.objects.lock().unwrap();
        assert_eq!(objects.len(), 1, "{:?}", objects.keys());
        let (key, body) = objects.iter().next().unwrap();
        assert!(key.starts_with("data/format-conversion-failed/"), "{key}");
        let text = String::from_utf8(body.clone()).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("no schema can be inferred"), "{text}");
        assert!(!path.exists());
    }

    /// When every record fails conversion there is no data object, only the error object.
    #[test]
    fn conversion_of_only_bad_records_writes_only_errors() {
        let store = Arc::new(MemoryStore::default());
        let records = vec![b"not json".to_vec(), b"[1]".to_vec(), Vec::new()];
        let output = crate::format::OutputFormat::Parquet(Default::default());
        let _dir = deliver_with(converting(output), Arc::clone(&store), &records, None);
        let objects = store.objects.lock().unwrap();
        assert_eq!(objects.len(), 1);
        let (key, body) = objects.iter().next().unwrap();
        assert!(key.starts_with("data/format-conversion-failed/"), "{key}");
        let text = String::from_utf8(body.clone()).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.contains("DataFormatConversion.MalformedData"),
            "{text}"
        );
    }

    fn partitioned(max_active: usize) -> Arc<DeliverySettings> {
        let mut s = (*settings()).clone();
        let prefix = PrefixTemplate::parse("c=!{partitionKeyFromQuery:c}/").unwrap();
        let query = crate::partition::query::MetadataQuery::compile("{c: .c}").unwrap();
        s.partitioner = Some(Partitioner::new(prefix.clone(), Some(Arc::new(query)), ""));
        s.prefix = prefix;
        s.errors.prefix =
            PrefixTemplate::parse_error_prefix("errors/!{firehose:error-output-type}/").unwrap();
        s.max_active_partitions = max_active;
        Arc::new(s)
    }

    /// Every record once, across data objects (by partition) and error documents (by type).
    /// (partition or error type, record) pairs.
    type Lines = Vec<(String, Vec<u8>)>;

    fn delivered(store: &MemoryStore) -> (Lines, Lines) {
        let (mut data, mut errors) = (Vec::new(), Vec::new());
        for (key, body) in store.objects.lock().unwrap().iter() {
            let mut plain = Vec::new();
            let body = if key.ends_with(".gz") {
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(&body[..]),
                    &mut plain,
                )
                .unwrap();
                &plain
            } else {
                body
            };
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Some(rest) = key.strip_prefix("errors/") {
                    let kind = rest.split('/').next().unwrap().to_string();
                    let doc: serde_json::Value = serde_json::from_slice(line).unwrap();
                    let raw = base64_simd::STANDARD
                        .decode_to_vec(doc["rawData"].as_str().unwrap())
                        .unwrap();
                    errors.push((kind, raw));
                } else {
                    let part = key.split('/').next().unwrap().to_string();
                    data.push((part, line.to_vec()));
                }
            }
        }
        (data, errors)
    }

    /// The records delivered (data lines and, all of `error_type`, error documents' raw data)
    /// and the records put, both sorted, to compare.
    fn sorted_records(
        data: &Lines,
        errors: &Lines,
        error_type: &str,
        put: &[Vec<u8>],
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut got: Vec<Vec<u8>> = data.iter().map(|(_, l)| l.clone()).collect();
        got.extend(errors.iter().map(|(kind, raw)| {
            assert_eq!(kind, error_type);
            raw.clone()
        }));
        got.sort();
        let mut want = put.to_vec();
        want.sort();
        (got, want)
    }

    fn customer_record(i: usize, customer: usize, pad: usize) -> Vec<u8> {
        format!(
            r#"{{"c":"k{customer}","i":{i},"pad":"{}"}}"#,
            "p".repeat(pad)
        )
        .into_bytes()
    }

    #[test]
    fn partitions_get_their_own_objects_and_bad_records_their_error_type() {
        let store = Arc::new(MemoryStore::default());
        let mut records: Vec<Vec<u8>> = (0..40).map(|i| customer_record(i, i % 4, 3)).collect();
        records.push(br#"{"no_c":1}"#.to_vec());
        records.push(br#"{"c":""}"#.to_vec());
        records.push(b"not json".to_vec());
        let _dir = deliver_with(partitioned(500), Arc::clone(&store), &records, None);
        let keys: Vec<String> = store.objects.lock().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 5, "{keys:?}");
        let (data, errors) = delivered(&store);
        assert_eq!(data.len(), 40);
        for (part, line) in &data {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(*part, format!("c={}", v["c"].as_str().unwrap()));
        }
        assert_eq!(errors.len(), 3);
        assert!(errors.iter().all(|(kind, _)| kind == "processing-failed"));
    }

    #[test]
    fn partitions_beyond_the_limit_go_to_active_partition_exceeded() {
        let store = Arc::new(MemoryStore::default());
        // Three partitions open at once, the limit is two: the third's records overflow.
        let records: Vec<Vec<u8>> = (0..30).map(|i| customer_record(i, i % 3, 3)).collect();
        let _dir = deliver_with(partitioned(2), Arc::clone(&store), &records, None);
        let (data, errors) = delivered(&store);
        assert_eq!(data.len(), 20);
        assert!(data.iter().all(|(p, _)| p == "c=k0" || p == "c=k1"));
        assert_eq!(errors.len(), 10);
        for (kind, raw) in &errors {
            assert_eq!(kind, ACTIVE_PARTITION_EXCEEDED);
            assert!(raw.starts_with(br#"{"c":"k2""#));
        }
    }

    /// A drain closes two partitions and the second's object is refused for good while it is
    /// finished: the first is still delivered, the second's records become s3-failed documents.
    #[test]
    fn a_refused_object_in_a_batch_of_closes_costs_no_other_partition() {
        for refused in ["c=k0/", "c=k1/"] {
            let store = Arc::new(MemoryStore {
                reject_writes: Some(refused.into()),
                ..MemoryStore::default()
            });
            let mut s = (*partitioned(500)).clone();
            // Compressed objects write at finish (the compressor starts late), as big parts do.
            s.compression = Compression::Gzip;
            let records: Vec<Vec<u8>> = (0..20).map(|i| customer_record(i, i % 2, 3)).collect();
            let _dir = deliver_with(Arc::new(s), Arc::clone(&store), &records, None);
            let (data, errors) = delivered(&store);
            let (got, want) = sorted_records(&data, &errors, S3_FAILED, &records);
            assert_eq!(got, want, "refused {refused}");
            assert_eq!(errors.len(), 10, "refused {refused}");
            assert!(data.iter().all(|(p, _)| format!("{p}/") != refused));
        }
    }

    /// A quiet partition holding the low-water mark while a busy one closes object after object:
    /// once the checkpoint records more than the bound, the quiet one is closed early, so its
    /// later record starts a second object.
    #[test]
    fn a_quiet_partition_is_closed_early_when_too_many_objects_are_recorded() {
        let store = Arc::new(MemoryStore::default());
        let mut records = vec![customer_record(0, 0, 3)];
        // Two of these fill the 1 MiB size hint: 20 objects of the busy partition.
        records.extend((1..=40).map(|i| customer_record(i, 1, 520 << 10)));
        records.push(customer_record(41, 0, 3));
        let _dir = deliver_with(partitioned(2), Arc::clone(&store), &records, None);
        let quiet = store
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("c=k0/"))
            .count();
        assert_eq!(
            quiet, 2,
            "the quiet partition's first object was closed early"
        );
        let (data, errors) = delivered(&store);
        assert_eq!(data.len(), records.len());
        assert!(errors.is_empty());
    }

    /// A memory store already holding `key`.
    fn store_holding(key: &str, body: &[u8]) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::default());
        store
            .objects
            .lock()
            .unwrap()
            .insert(key.into(), body.to_vec());
        store
    }

    /// A checkpoint at `next` recording one object of `partition`: (first, last, closed_at).
    fn one_object(
        next: u64,
        partition: &str,
        (first, last, closed_at): (u64, u64, u64),
        key: &str,
        state: ObjectState,
        routing: &str,
    ) -> Checkpoint {
        Checkpoint {
            next,
            objects: vec![ObjectEntry {
                partition: partition.into(),
                first,
                last,
                closed_at,
                keys: vec![key.into()],
                state,
            }],
            routing: routing.into(),
            ..Checkpoint::default()
        }
    }

    /// An old checkpoint's object in flight, unpartitioned, then a restart with partitioning: the
    /// old object is removed and its records delivered into partitions (nothing pins the mark).
    #[test]
    fn an_old_checkpoint_under_new_routing_is_rebuilt_not_pinned() {
        let store = store_holding("data/old", b"partial");
        let records: Vec<Vec<u8>> = (0..12).map(|i| customer_record(i, i % 3, 3)).collect();
        let legacy = one_object(0, "", (0, 11, 12), "data/old", ObjectState::InFlight, "");
        let _dir = deliver_with(partitioned(500), Arc::clone(&store), &records, Some(legacy));
        assert!(!store.objects.lock().unwrap().contains_key("data/old"));
        let (data, errors) = delivered(&store);
        assert_eq!(data.len(), 12);
        assert!(errors.is_empty());
    }

    /// A routing change after a crash with a delivered object straddling the mark: the delivered
    /// object stays, and nothing is lost (records above the mark may come again).
    #[test]
    fn a_routing_change_keeps_delivered_objects_and_loses_nothing() {
        let store = store_holding("c=k0/delivered", b"kept");
        let records: Vec<Vec<u8>> = (0..12).map(|i| customer_record(i, i % 2, 3)).collect();
        let crashed = one_object(
            1,
            "partitionKeyFromQuery:c=k0/",
            (0, 10, 11),
            "c=k0/delivered",
            ObjectState::Delivered,
            "an older configuration",
        );
        let _dir = deliver_with(
            partitioned(500),
            Arc::clone(&store),
            &records,
            Some(crashed),
        );
        let objects = store.objects.lock().unwrap();
        assert_eq!(objects["c=k0/delivered"], b"kept");
        drop(objects);
        let (data, _) = delivered(&store);
        for r in &records[1..] {
            assert!(data.iter().any(|(_, l)| l == r), "lost {r:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]
        /// Partitions closing by size in any order, an overflowing partition limit, and commits
        /// failing now and then (each failure replays from the checkpoint, with delivered objects
        /// above the low-water mark): every record ends up exactly once, in its partition or in
        /// the error output.
        #[test]
        fn replays_with_many_partitions_deliver_each_record_once(
            sizes in proptest::collection::vec((0usize..6, 2_000usize..60_000), 30..120),
            max_active in 1usize..7,
            flaky in proptest::sample::select(vec![0u64, 2, 3, 5]),
        ) {
            let store = Arc::new(MemoryStore { flaky, ..MemoryStore::default() });
            let records: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, (c, pad))| customer_record(i, *c, *pad))
                .collect();
            let _dir = deliver_with(partitioned(max_active), Arc::clone(&store), &records, None);
            let (data, errors) = delivered(&store);
            let (got, want) =
                sorted_records(&data, &errors, ACTIVE_PARTITION_EXCEEDED, &records);
            proptest::prop_assert_eq!(got.len(), want.len());
            proptest::prop_assert!(got == want, "records lost or duplicated");
            for (part, line) in &data {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                proptest::prop_assert_eq!(part.clone(), format!("c={}", v["c"].as_str().unwrap()));
            }
        }
    }
}
