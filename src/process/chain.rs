//! The processor chain: what happens to one log record before it is partitioned and buffered.
//!
//! Every stage maps one record to zero or more records, or fails it; a failed record leaves the
//! chain with the data it had when it failed (Firehose keeps `decompression-failed` records
//! compressed) and the stage's error. The chain is a pure function of the log record, which the
//! exactly-once replay relies on: a replayed record yields the same sub-records in the same order.

use std::sync::Arc;

use bytes::Bytes;

use super::{cloudwatch, deaggregate, decompress, kpl, ProcessError};
use crate::config::{Processor, SubRecordType};
use crate::error_output::Failure;
use crate::log::{LogRecord, SequenceNumber};

/// Largest record a stage may produce (decompressed or deaggregated): Spillway's own bound, so
/// that a gzip bomb fails cleanly instead of exhausting memory.
pub const MAX_PROCESSED_BYTES: usize = 64 << 20;

/// A record on its way to the destination: a log record, or one of the sub-records the processors
/// made of it (`sub`, Firehose's `subSequenceNumber`, counts them from 0 in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sequence: SequenceNumber,
    pub sub: u32,
    /// Approximate arrival time of the log record, milliseconds since the Unix epoch.
    pub arrival_ms: i64,
    pub data: Bytes,
    /// Partition keys a transformation plugin gave the record (`!{partitionKeyFromLambda:k}`).
    pub keys: Option<Arc<[(String, String)]>>,
}

impl Record {
    /// The log record itself, unprocessed. Its data is moved out (the log record keeps its
    /// position): a clone would touch the read buffer's shared reference count once more per
    /// record, and with plugins that count is written from two threads (see
    /// [`Processors::run`]).
    pub fn whole(record: &mut LogRecord) -> Record {
        Record {
            sequence: record.sequence,
            sub: 0,
            arrival_ms: record.arrival_ms,
            data: std::mem::take(&mut record.data),
            keys: None,
        }
    }
}

/// What the chain made of one piece of a log record.
#[derive(Debug)]
pub enum Outcome {
    Ok(Record),
    /// The record failed a stage; it goes to the error output with this failure (boxed: failures
    /// are rare, and outcomes are moved several times per record on the way to placing).
    Failed(Record, Box<Failure>),
}

#[derive(Debug, Clone)]
enum Stage {
    Gunzip,
    CloudWatch { extract_messages: bool },
    Json { max: usize },
    Delimited { delimiter: Vec<u8>, max: usize },
    Kpl,
}

/// The configured processors that change records (`append_delimiter` is applied by the buffer,
/// `metadata_extraction` by the partitioner).
#[derive(Debug, Clone, Default)]
pub struct Processors {
    stages: Vec<Stage>,
}

impl Processors {
    /// The chain for a (validated) processor list.
    pub fn from_config(list: &[Processor]) -> Processors {
        let stages = list
            .iter()
            .filter_map(|p| match p {
                Processor::Decompress(_) => Some(Stage::Gunzip),
                Processor::CloudwatchLogs(c) => Some(Stage::CloudWatch {
                    extract_messages: c.message_extraction,
                }),
                Processor::Deaggregate(d) => {
                    let max = usize::try_from(d.max_records).unwrap_or(usize::MAX);
                    Some(match d.kind {
                        SubRecordType::Json => Stage::Json { max },
                        SubRecordType::Delimited => Stage::Delimited {
                            delimiter: d.delimiter.clone().unwrap_or_default().into_bytes(),
                            max,
                        },
                        SubRecordType::Kpl => Stage::Kpl,
                    })
                }
                Processor::AppendDelimiter(_)
                | Processor::MetadataExtraction(_)
                | Processor::Wasm(_) => None,
            })
            .collect();
        Processors { stages }
    }

    /// Runs `record` through every stage, appending what comes out, in order, to `out`. A failed
    /// piece keeps its place among the others and skips the later stages.
    ///
    /// The record's data is taken, not cloned: the records of one chunk read from the log share
    /// one reference count, and with plugins the pipeline thread reads and drops records while
    /// the transformation thread processes others, so a clone there is a write to a cache line
    /// the other core is writing too (measured: the clone was 12 % of the plugin thread).
    pub fn run(&self, record: &mut LogRecord, out: &mut Vec<Outcome>) {
        if self.stages.is_empty() {
            out.push(Outcome::Ok(Record::whole(record)));
            return;
        }
        let mut current: Vec<Result<Bytes, (Bytes, ProcessError)>> =
            vec![Ok(std::mem::take(&mut record.data))];
        let mut next = Vec::new();
        let mut made = Vec::new();
        for stage in &self.stages {
            for piece in current.drain(..) {
                match piece {
                    Ok(data) => match apply(stage, &data, &mut made) {
                        Ok(()) => next.extend(made.drain(..).map(Ok)),
                        Err(e) => {
                            made.clear();
                            next.push(Err((data, e)));
                        }
                    },
                    failed => next.push(failed),
                }
            }
            std::mem::swap(&mut current, &mut next);
        }
        for (sub, piece) in current.into_iter().enumerate() {
            let make = |data| Record {
                sequence: record.sequence,
                sub: u32::try_from(sub).unwrap_or(u32::MAX),
                arrival_ms: record.arrival_ms,
                data,
                keys: None,
            };
            out.push(match piece {
                Ok(data) => Outcome::Ok(make(data)),
                Err((data, e)) => Outcome::Failed(make(data), Box::new(failure(&e))),
            });
        }
    }
}

/// The error output entry of a processing error.
pub fn failure(e: &ProcessError) -> Failure {
    Failure {
        output_type: e.output_type(),
        code: e.code().to_string(),
        message: e.to_string().into(),
        attempts: 1,
        plugin: None,
    }
}

fn apply(stage: &Stage, data: &Bytes, out: &mut Vec<Bytes>) -> Result<(), ProcessError> {
    match stage {
        Stage::Gunzip => out.push(Bytes::from(decompress::gunzip(data, MAX_PROCESSED_BYTES)?)),
        Stage::CloudWatch { extract_messages } => match cloudwatch::extract_messages(data)? {
            cloudwatch::CloudWatchOutput::Control => {}
            cloudwatch::CloudWatchOutput::Messages(messages) if *extract_messages => {
                out.extend(messages.into_iter().map(Bytes::from))
            }
            cloudwatch::CloudWatchOutput::Messages(_) => out.push(data.clone()),
        },
        Stage::Json { max } => {
            for range in deaggregate::split_json(data, *max)? {
                out.push(data.slice(range));
            }
        }
        Stage::Delimited { delimiter, max } => {
            for range in deaggregate::split_delimited(data, delimiter, *max) {
                out.push(data.slice(range));
            }
        }
        Stage::Kpl => {
            if kpl::is_aggregated(data) {
                for r in kpl::deaggregate(data)? {
                    out.push(data.slice(r.data));
                }
            } else {
                // Not aggregated (a KPL user may also send plain records): passed on as is.
                out.push(data.clone());
            }
        }
    }
    Ok(())
}
