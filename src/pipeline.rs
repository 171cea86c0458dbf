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
use crate::error_output::{ErrorOutput, Failure, S3_FAILED};
use crate::format::FormatConversion;
use crate::log::SequenceNumber;
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
    /// The effective compression level (see `Compression::level`).
    pub compression_level: Option<u32>,
    pub prefix: PrefixTemplate,
    /// Where permanently rejected records go.
    pub errors: ErrorOutput,
    /// JSON → Parquet / ORC conversion, if on (then `compression` is none).
    pub conversion: Option<FormatConversion>,
}

/// Errors that interrupt delivery; the pipeline backs off and replays from its checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("records {first}..={last} are missing from the log")]
    Missing { first: u64, last: u64 },
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
            // object is replayed from the checkpoint like any other failure.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.deliver(&mut backoff)
            }))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(PipelineError::Panicked(what))
            });
            match outcome {
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
                if let Err(e) = obj.push(record) {
                    if !e.is_permanent() {
                        return Err(e.into());
                    }
                    // The store refused a part of this object for good: its records so far go to
                    // the error output, and the next record starts a new object.
                    let first = obj.first.0;
                    open = None;
                    self.divert(first, record.sequence.0, &e, &mut boundary)?;
                    backoff.reset();
                    continue;
                }
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
        let extension = match &s.conversion {
            Some(c) => c.output.extension(),
            None => s.compression.extension(),
        };
        let key = prefix::object_key(
            &s.prefix.render(&at, &id),
            &s.name,
            s.version,
            &at,
            &id,
            extension,
        );
        ObjectBuffer::open(
            Arc::clone(&self.settings),
            Arc::clone(&self.store),
            self.shard.id(),
            key,
            first,
        )
    }

    /// Commits `obj` under the exactly-once protocol described in the module docs.
    fn flush(
        &self,
        obj: ObjectBuffer,
        boundary: &mut Option<InFlightObject>,
    ) -> Result<(), PipelineError> {
        let done = obj.finish()?;
        let intent = InFlightObject {
            first: done.first.0,
            last: done.last.0,
            keys: done.keys(),
        };
        self.record_intent(&intent, boundary)?;
        let (records, raw) = (done.records, done.raw_bytes);
        match done.commit() {
            Ok(()) => {}
            Err(e) if e.is_permanent() => {
                *boundary = Some(intent.clone());
                return self.divert(intent.first, intent.last, &e, boundary);
            }
            Err(e) => return Err(e.into()),
        }
        self.advance(intent.last + 1)?;
        tracing::debug!(stream = %self.settings.name, shard = %self.shard.id(), keys = ?intent.keys,
            records, bytes = raw, "delivered object");
        Ok(())
    }

    /// Makes `intent` the checkpoint's in-flight object, unless it already is (a replay). Objects of
    /// a different earlier attempt (the config changed a key, or the run was diverted to the error
    /// output and now succeeds) are removed first, so exactly one outcome remains.
    fn record_intent(
        &self,
        intent: &InFlightObject,
        boundary: &mut Option<InFlightObject>,
    ) -> Result<(), PipelineError> {
        let s = &self.settings.name;
        match boundary.take() {
            Some(prev) if prev == *intent => Ok(()),
            prev => {
                for stale in prev.iter().flat_map(|p| &p.keys) {
                    if !intent.keys.contains(stale) {
                        self.store.delete(stale)?;
                    }
                }
                self.checkpoints.save(
                    s,
                    s,
                    self.shard.id(),
                    &Checkpoint {
                        next: intent.first,
                        in_flight: Some(intent.clone()),
                    },
                )?;
                Ok(())
            }
        }
    }

    /// Moves the checkpoint to `next` once everything before it is delivered.
    fn advance(&self, next: u64) -> Result<(), PipelineError> {
        let s = &self.settings.name;
        let shard = self.shard.id();
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
        Ok(())
    }

    /// Sends records `first..=last`, which the store permanently rejected, to the error output:
    /// read again from the log, one error document each, under the same exactly-once protocol.
    fn divert(
        &self,
        first: u64,
        last: u64,
        error: &SinkError,
        boundary: &mut Option<InFlightObject>,
    ) -> Result<(), PipelineError> {
        let failure = Failure {
            output_type: S3_FAILED,
            code: format!("S3.{}", error.code().unwrap_or("Unknown")),
            message: error.to_string(),
            attempts: 1,
        };
        let missing = || PipelineError::Missing { first, last };
        let mut reader = self
            .shard
            .reader(StartingPosition::AtSequenceNumber(SequenceNumber(first)));
        let mut batch = reader.read(MAX_READ_RECORDS, READ_BYTES)?;
        let head = batch.first().ok_or_else(missing)?;
        let key = self.settings.errors.key(&failure, self.shard.id(), head);
        let intent = InFlightObject {
            first,
            last,
            keys: vec![key.clone()],
        };
        self.record_intent(&intent, boundary)?;
        let mut writer = self.settings.errors.create(&*self.store, &key)?;
        let mut written = 0u64;
        loop {
            for record in batch.iter().filter(|r| r.sequence.0 <= last) {
                writer.push(record, &failure)?;
                written += 1;
            }
            if reader.position().0 > last {
                break;
            }
            batch = reader.read(MAX_READ_RECORDS, READ_BYTES)?;
            if batch.is_empty() {
                return Err(missing());
            }
        }
        writer.commit()?;
        self.advance(last + 1)?;
        tracing::error!(stream = %self.settings.name, shard = %self.shard.id(), records = written,
            error_key = %key, error = %error, "the store permanently rejected records; they are in the error output");
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
    }

    struct MemoryObject {
        key: String,
        data: Vec<u8>,
        objects: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
        reject: bool,
    }

    impl Write for MemoryObject {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl ObjectWriter for MemoryObject {
        fn commit(self: Box<Self>) -> Result<(), SinkError> {
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
            version: 1,
            delimiter: b"\n".to_vec(),
            hints: BufferingHints {
                size_mib: 1,
                interval_s: 900,
            },
            compression: Compression::None,
            compression_level: None,
            prefix: PrefixTemplate::parse("data/").unwrap(),
            errors: ErrorOutput {
                prefix: PrefixTemplate::parse("data/")
                    .unwrap()
                    .default_error_prefix()
                    .unwrap(),
                stream: "events".into(),
                version: 1,
                instance: "test".into(),
            },
            conversion: None,
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
        assert_eq!(
            ck,
            Checkpoint {
                next: records.len() as u64,
                in_flight: None
            }
        );
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

    fn converting(output: crate::format::OutputFormat) -> Arc<DeliverySettings> {
        let mut s = (*settings()).clone();
        s.conversion = Some(FormatConversion {
            schema: crate::format::TableSchema::from_columns([("id", "int"), ("name", "string")])
                .unwrap(),
            deserializer: crate::format::Deserializer::default(),
            output,
        });
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
                in_flight: Some(InFlightObject {
                    first: 0,
                    last: 29,
                    keys: vec!["data/stale".into()],
                }),
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
}
