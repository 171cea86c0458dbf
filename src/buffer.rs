//! A delivery buffer: the object being assembled from a run of records.
//!
//! Records stream straight into the store's writer, through the compressor or, with format
//! conversion, through the Parquet / ORC writer, so a buffer holds a few hundred KiB (or one row
//! group / stripe) however large `size_mib` is; the log, not memory, is what keeps records until the
//! object is committed. The size hint counts record bytes before conversion and compression (data plus
//! delimiters), as Firehose does.
//!
//! For a request-based destination (HTTP endpoint, OpenSearch) the buffer is a batch: the
//! destination encodes each record into its request as it comes, and the buffer keeps the records
//! (shared slices of the log's read buffers) to write the error documents of those it does not
//! deliver. Its one object is that error object, named like any error object of the run.
//!
//! With conversion, one run of records can make two objects: the converted file and an error object
//! of the records that did not fit the schema (`format-conversion-failed`). Both are functions of
//! the records alone, so a replay of the run rebuilds both under the same keys. With an inferred
//! schema that is not pinned yet, the buffer holds copies of its records (part of the stream's
//! bounded sample) and converts them once the schema is pinned, which happens before any object is
//! written with it, so a replay finds the same schema.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::compression::LazyEncoder;
use crate::config::BufferingHints;
use crate::error_output::{ErrorDetail, ErrorOutput, ErrorWriter, Failure};
use crate::format::infer::Sampled;
use crate::format::{
    ColumnarWriter, Conversion, ConversionError, FormatConversion, FormatError, InferError,
    PushError, SchemaPin, FORMAT_CONVERSION_FAILED,
};
use crate::log::{SequenceNumber, ShardId};
use crate::pipeline::DeliverySettings;
use crate::process::Record;
use crate::sink::{ObjectStore, ObjectWriter, RecordBatch, SinkError};

/// An object being filled with records `first..=last` (of one partition).
pub struct ObjectBuffer {
    pub first: SequenceNumber,
    pub last: SequenceNumber,
    /// Bytes of records taken, before conversion or compression.
    pub raw_bytes: u64,
    pub records: u64,
    opened: Instant,
    key: String,
    body: Body,
    rejected: Option<Rejected>,
    settings: Arc<DeliverySettings>,
    store: Arc<dyn ObjectStore>,
    shard: ShardId,
    /// The partition's identity ("" without dynamic partitioning), part of error object ids.
    partition: String,
    /// Whether this rebuilds an object a checkpoint recorded (whose earlier attempt may have left
    /// objects that this one would not write).
    pub replay: bool,
}

enum Body {
    /// An error object: one error document per record, with the record's failure or, for a data
    /// partition diverted to the error output, this one.
    Errors(Box<ErrorWriter>, Option<Failure>),
    Raw(Box<LazyEncoder<Box<dyn ObjectWriter>>>),
    /// A request of a record destination.
    Batch(Box<Batch>),
    /// With schema inference, before the stream's schema is pinned: the records taken so far,
    /// part of the stream's sample (copied out of the log's read buffers, which they would
    /// otherwise keep alive), converted once the schema is pinned or the object must end.
    Sampling {
        pin: Arc<SchemaPin>,
        held: Vec<Record>,
    },
    Columnar {
        writer: Box<ColumnarWriter<ErrorTap>>,
        /// The store's error behind a failed write, which the format writers wrap in their own.
        store_error: Arc<Mutex<Option<io::Error>>>,
        rows: u64,
    },
}

/// What an object holds.
pub enum Contents {
    /// The records themselves (compressed or converted).
    Records,
    /// Error documents: of an error partition (each record comes with its failure), or, with a
    /// failure, of a data partition whose object the store refused for good.
    Errors(Option<Failure>),
}

/// A batch of a request-based destination and what its error documents need.
struct Batch {
    request: Box<dyn RecordBatch>,
    /// The records the request took, in order.
    records: Vec<Record>,
    /// The records it refused, with why.
    refused: Vec<(Record, Failure, ErrorDetail)>,
}

/// The error object of records that failed conversion.
struct Rejected {
    key: String,
    writer: ErrorWriter,
}

impl ObjectBuffer {
    /// Starts an object under `key` whose first record is `first`, holding `contents`.
    pub fn open(
        settings: Arc<DeliverySettings>,
        store: Arc<dyn ObjectStore>,
        shard: ShardId,
        partition: &str,
        key: String,
        first: &Record,
        contents: Contents,
    ) -> Result<ObjectBuffer, SinkError> {
        let body = match (contents, &settings.conversion) {
            (Contents::Errors(failure), _) => {
                Body::Errors(Box::new(settings.errors.create(&*store, &key)?), failure)
            }
            (Contents::Records, _) if settings.destination.is_some() => {
                let destination = settings.destination.as_ref().expect("checked");
                // The routing is part of the id: after a configuration change the batch starting
                // at the same record holds other records, and must not look like a retry of the
                // old one to a receiver that drops repeated request ids.
                let id = crate::prefix::object_id(
                    &settings.instance,
                    &format!("{}\0{}", settings.name, settings.routing),
                    shard.0,
                    first.sequence.0,
                );
                Body::Batch(Box::new(Batch {
                    request: destination.batch(shard, &id),
                    records: Vec::new(),
                    refused: Vec::new(),
                }))
            }
            (Contents::Records, Some(Conversion::Fixed(conversion))) => {
                columnar(&*store, &key, conversion)?
            }
            (Contents::Records, Some(Conversion::Inferred(pin))) => match pin.conversion() {
                Some(conversion) => columnar(&*store, &key, conversion)?,
                None => Body::Sampling {
                    pin: Arc::clone(pin),
                    held: Vec::new(),
                },
            },
            (Contents::Records, None) => {
                // A ZIP's one entry is named like the object, without directories or the `.zip`.
                let entry = key.rsplit('/').next().unwrap_or(&key);
                let entry = entry.strip_suffix(".zip").unwrap_or(entry);
                let encoder = LazyEncoder::new(
                    settings.compression,
                    store.create(&key)?,
                    entry,
                    settings.compression_level,
                )
                .map_err(|source| SinkError::Io {
                    op: "start compressor for",
                    key: key.clone(),
                    source,
                })?;
                Body::Raw(Box::new(encoder))
            }
        };
        Ok(ObjectBuffer::new(
            settings, store, shard, partition, key, first, body,
        ))
    }

    fn new(
        settings: Arc<DeliverySettings>,
        store: Arc<dyn ObjectStore>,
        shard: ShardId,
        partition: &str,
        key: String,
        first: &Record,
        body: Body,
    ) -> ObjectBuffer {
        ObjectBuffer {
            first: first.sequence,
            last: first.sequence,
            raw_bytes: 0,
            records: 0,
            opened: Instant::now(),
            key,
            body,
            rejected: None,
            settings,
            store,
            shard,
            partition: partition.to_string(),
            replay: false,
        }
    }

    fn count(&mut self, record: &Record) {
        self.last = record.sequence;
        self.raw_bytes += (record.data.len() + self.settings.delimiter.len()) as u64;
        self.records += 1;
    }

    /// Appends a record: its data and the delimiter, or its rows when converting (a record that
    /// does not fit the schema goes to this object's error object instead), or, in an error
    /// object, its error document with `failure` (or the object's own failure).
    pub fn push(&mut self, record: &Record, failure: Option<&Failure>) -> Result<(), SinkError> {
        match &mut self.body {
            Body::Errors(writer, own) => {
                if let Some(f) = failure.or(own.as_ref()) {
                    writer.push(record, f)?;
                }
            }
            Body::Raw(encoder) => {
                let io = |source| SinkError::from_io("write", &self.key, source);
                encoder.write_all(&record.data).map_err(io)?;
                let delimiter = &self.settings.delimiter;
                if !delimiter.is_empty() {
                    encoder.write_all(delimiter).map_err(io)?;
                }
            }
            Body::Batch(batch) => {
                // The destination gets the record as an object would hold it.
                let delimiter = &self.settings.delimiter;
                let record = if delimiter.is_empty() {
                    record.clone()
                } else {
                    let mut data = Vec::with_capacity(record.data.len() + delimiter.len());
                    data.extend_from_slice(&record.data);
                    data.extend_from_slice(delimiter);
                    Record {
                        data: data.into(),
                        ..record.clone()
                    }
                };
                match batch.request.push(&record) {
                    Ok(()) => batch.records.push(record),
                    Err(refused) => {
                        let (failure, detail) = *refused;
                        batch.refused.push((record, failure, detail));
                    }
                }
            }
            Body::Columnar { .. } => self.convert(record)?,
            Body::Sampling { pin, held } => {
                held.push(Record {
                    data: bytes::Bytes::copy_from_slice(&record.data),
                    ..record.clone()
                });
                let pin = Arc::clone(pin);
                match pin.sample(&record.data) {
                    Ok(Sampled::More) => {}
                    Ok(Sampled::Pinned(conversion)) => self.convert_held(Ok(conversion))?,
                    Err(e) => self.convert_held(Err(e))?,
                }
            }
        }
        self.count(record);
        Ok(())
    }

    /// Converts a record into the columnar file; one that does not fit goes to the error object.
    fn convert(&mut self, record: &Record) -> Result<(), SinkError> {
        let Body::Columnar {
            writer,
            store_error,
            rows,
        } = &mut self.body
        else {
            return Ok(());
        };
        match writer.push_record(&record.data) {
            Ok(n) => *rows += n as u64,
            Err(PushError::Record(e)) => self.reject(record, &e)?,
            Err(PushError::Write(e)) => return Err(format_error(&self.key, store_error, e)),
        }
        Ok(())
    }

    /// Ends sampling with the stream's pinned conversion: starts the columnar file and converts
    /// the held records into it. When the stream's sample gave no schema (no record is a JSON
    /// object with a usable key), the held records go to the error object as records that cannot
    /// be converted, and the next record samples afresh.
    fn convert_held(
        &mut self,
        pinned: Result<&FormatConversion, InferError>,
    ) -> Result<(), SinkError> {
        let Body::Sampling { held, .. } = &mut self.body else {
            return Ok(());
        };
        let held = std::mem::take(held);
        match pinned {
            Ok(conversion) => {
                self.body = columnar(&*self.store, &self.key, conversion)?;
                for record in &held {
                    self.convert(record)?;
                }
            }
            Err(e @ InferError::NoColumns(_)) => {
                let error = ConversionError {
                    path: "$".into(),
                    reason: e.to_string(),
                };
                for record in &held {
                    self.reject(record, &error)?;
                }
            }
            Err(e) => {
                return Err(SinkError::Io {
                    op: "pin the inferred schema of",
                    key: self.key.clone(),
                    source: io::Error::other(e),
                })
            }
        }
        Ok(())
    }

    fn reject(&mut self, record: &Record, error: &ConversionError) -> Result<(), SinkError> {
        let failure = Failure {
            output_type: FORMAT_CONVERSION_FAILED,
            code: if error.path == "$" {
                "DataFormatConversion.MalformedData".into()
            } else {
                "DataFormatConversion.SchemaMismatch".into()
            },
            message: error.to_string().into(),
            attempts: 1,
            plugin: None,
        };
        if self.rejected.is_none() {
            let key = self
                .settings
                .errors
                .key(&failure, self.shard, &self.partition, record);
            let writer = self.settings.errors.create(&*self.store, &key)?;
            self.rejected = Some(Rejected { key, writer });
        }
        let rejected = self.rejected.as_mut().expect("just set");
        rejected.writer.push(record, &failure)
    }

    /// Whether this is an error object (of error documents), which has no error output to go to.
    pub fn holds_errors(&self) -> bool {
        matches!(self.body, Body::Errors(..))
    }

    /// The object's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the size hint is reached.
    pub fn is_full(&self, hints: &BufferingHints) -> bool {
        self.raw_bytes >= hints.size_bytes()
            || matches!(&self.body, Body::Batch(b) if b.request.is_full())
    }

    /// How long until the interval hint is reached (zero when it is).
    pub fn time_left(&self, hints: &BufferingHints) -> Duration {
        hints.interval().saturating_sub(self.opened.elapsed())
    }

    /// Finishes compression or the columnar file: the object(s) are complete, but not yet visible.
    pub fn finish(mut self) -> Result<FinishedObject, SinkError> {
        // The object must be written: its held records pin the schema from the sample so far.
        if let Body::Sampling { pin, held } = &self.body {
            if !held.is_empty() {
                let pin = Arc::clone(pin);
                self.convert_held(pin.pin())?;
            }
        }
        let key = self.key;
        let mut objects = Vec::with_capacity(2);
        match self.body {
            Body::Errors(writer, _) => objects.push((key, Pending::Object(writer.into_inner()))),
            Body::Raw(encoder) => {
                let writer = (*encoder)
                    .finish()
                    .map_err(|source| SinkError::from_io("finish compression of", &key, source))?;
                objects.push((key, Pending::Object(writer)));
            }
            Body::Batch(batch) => objects.push((
                key,
                Pending::Batch {
                    batch,
                    errors: self.settings.errors.clone(),
                    store: Arc::clone(&self.store),
                    replay: self.replay,
                },
            )),
            // Every record failed conversion (or no schema could be inferred from them): there is
            // no data object, only the error object.
            Body::Columnar { rows: 0, .. } | Body::Sampling { .. } => {}
            Body::Columnar {
                writer,
                store_error,
                ..
            } => {
                let tap = writer
                    .finish()
                    .map_err(|e| format_error(&key, &store_error, e))?;
                objects.push((key, Pending::Object(tap.inner)));
            }
        }
        if let Some(r) = self.rejected {
            objects.push((r.key, Pending::Object(r.writer.into_inner())));
        }
        Ok(FinishedObject {
            first: self.first,
            last: self.last,
            records: self.records,
            raw_bytes: self.raw_bytes,
            objects,
        })
    }
}

/// A finished run of records: its object, and with conversion its error object, ready to commit.
pub struct FinishedObject {
    pub first: SequenceNumber,
    pub last: SequenceNumber,
    pub records: u64,
    pub raw_bytes: u64,
    objects: Vec<(String, Pending)>,
}

/// What committing makes visible: an object written, or a batch to send whose undelivered
/// records become the error object under its key.
enum Pending {
    Object(Box<dyn ObjectWriter>),
    Batch {
        batch: Box<Batch>,
        errors: ErrorOutput,
        store: Arc<dyn ObjectStore>,
        replay: bool,
    },
}

impl FinishedObject {
    /// The keys the objects will have, data object first.
    pub fn keys(&self) -> Vec<String> {
        self.objects.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Makes every object durable and visible, in order.
    pub fn commit(self) -> Result<(), SinkError> {
        for (key, pending) in self.objects {
            match pending {
                Pending::Object(writer) => writer.commit()?,
                Pending::Batch {
                    batch,
                    errors,
                    store,
                    replay,
                } => deliver(*batch, &key, &errors, &*store, replay)?,
            }
        }
        Ok(())
    }
}

/// Sends a batch; the records it did not deliver (and those it refused) become the error object
/// `key`. Without any, a stale error object of an interrupted earlier attempt is removed.
fn deliver(
    batch: Batch,
    key: &str,
    errors: &ErrorOutput,
    store: &dyn ObjectStore,
    replay: bool,
) -> Result<(), SinkError> {
    let Batch {
        request,
        records,
        refused,
    } = batch;
    let undelivered = request.deliver();
    if undelivered.is_empty() && refused.is_empty() {
        if replay {
            store.delete(key)?;
        }
        return Ok(());
    }
    let mut failed: Vec<(&Record, &Failure, &ErrorDetail)> = refused
        .iter()
        .map(|(r, f, d)| (r, f, d))
        .chain(
            undelivered
                .iter()
                .filter_map(|u| match records.get(u.index) {
                    Some(r) => Some((r, &u.failure, &u.detail)),
                    None => {
                        tracing::error!(key, index = u.index, records = records.len(),
                    "a destination reported a record it was never given (a bug; please report it)");
                        None
                    }
                }),
        )
        .collect();
    failed.sort_by_key(|(r, _, _)| (r.sequence, r.sub));
    tracing::warn!(
        key,
        records = failed.len(),
        "records not delivered go to the error output"
    );
    // The batch's outcome is known now: a failed write is retried here rather than by a replay,
    // which would send the batch again (a store that stays down still ends in a replay).
    let mut wait = Duration::from_secs(1);
    loop {
        let written = errors.create(store, key).and_then(|mut writer| {
            for (record, failure, detail) in &failed {
                writer.push_detailed(record, failure, detail)?;
            }
            writer.commit()
        });
        match written {
            Err(e) if !e.is_permanent() && wait <= ERROR_WRITE_PATIENCE => {
                tracing::warn!(key, error = %e, retry_in_s = wait.as_secs(),
                    "could not write the error object of a delivered batch; retrying");
                std::thread::sleep(wait);
                wait *= 2;
            }
            written => return written,
        }
    }
}

/// Longest wait between two tries of a batch's error object (1 s doubling: six tries in ~1 min).
const ERROR_WRITE_PATIENCE: Duration = Duration::from_secs(32);

/// Passes writes to the object, keeping the store's error when one fails (the format writers report
/// it wrapped in their own error type, which would lose whether it is permanent).
struct ErrorTap {
    inner: Box<dyn ObjectWriter>,
    error: Arc<Mutex<Option<io::Error>>>,
}

impl Write for ErrorTap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.keep(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| self.keep(e))
    }
}

impl ErrorTap {
    fn keep(&self, e: io::Error) -> io::Error {
        let copy = io::Error::new(e.kind(), e.to_string());
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
        copy
    }
}

/// The body of a columnar object under `key` converted with `conversion`.
fn columnar(
    store: &dyn ObjectStore,
    key: &str,
    conversion: &FormatConversion,
) -> Result<Body, SinkError> {
    let store_error = Arc::new(Mutex::new(None));
    let tap = ErrorTap {
        inner: store.create(key)?,
        error: Arc::clone(&store_error),
    };
    let writer = Box::new(
        ColumnarWriter::new(tap, conversion).map_err(|e| format_error(key, &store_error, e))?,
    );
    Ok(Body::Columnar {
        writer,
        store_error,
        rows: 0,
    })
}

/// The store's error behind `e` if there is one, else `e` as an encoding failure (retried).
fn format_error(key: &str, store_error: &Mutex<Option<io::Error>>, e: FormatError) -> SinkError {
    match store_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        Some(io) => SinkError::from_io("write", key, io),
        None => SinkError::Io {
            op: "encode",
            key: key.to_string(),
            source: io::Error::other(e),
        },
    }
}
