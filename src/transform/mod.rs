//! WebAssembly transformation plugins: what Firehose does with a Lambda function, in-process.
//!
//! A `wasm` processor sends the records the earlier processors made, in batches of up to its
//! buffer size, to a plugin ([`plugin::Plugin`]) through the batch ABI ([`abi`], documented in
//! `transforms/README.md`), and replaces each record by what the plugin returned for it: zero or
//! more records with optional partition keys (`Ok`), nothing (`Dropped`), or the record itself on
//! its way to the `processing-failed` error output (`ProcessingFailed`). A batch the plugin fails
//! as a whole (trap, deadline, bad output, bad record ids) is retried `number_of_retries` times on
//! a new instance, then (unless it ran out of time) record by record, and what still fails goes
//! to `processing-failed` with the last error. Plugins chain: each one sees what the one before
//! it made, and partition keys accumulate (a later plugin's key replaces an earlier one's).
//!
//! Batches are cut from what the pipeline has read (no extra waiting: Firehose's Lambda buffer
//! interval trades latency for fewer invocations, which an in-process call does not need).
//! Exactly-once delivery needs a plugin's output for a record to depend on that record alone.
//! Failed batches are retried record by record, so a plugin that fails on some records keeps
//! that property whatever batches the reads make; a deadline does not: a batch that runs out of
//! time in one run and not in a replay after a crash can route its records differently in the
//! replay (twice delivered, or skipped where the other place is an already delivered object).

pub mod abi;
pub mod plugin;
mod wasi;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Processor, WasmConfig};
use crate::error_output::Failure;
use crate::process::{Outcome, Record, PROCESSING_FAILED};

use self::abi::{RecordResult, MAX_BATCH_BYTES};
use self::plugin::{CallError, OutputBuffers, Plugin, PluginSpec};

/// A plugin that cannot be used: the delivery stream does not start.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("plugin {plugin}: {reason}")]
    Refused { plugin: String, reason: String },
}

/// Error code of a record its plugin returned as `ProcessingFailed`.
pub const PROCESSING_FAILED_STATUS: &str = "Lambda.ProcessingFailedStatus";
/// Error code of a record too large for any batch (Spillway's: Lambda's 6 MB request cap).
pub const PAYLOAD_TOO_LARGE: &str = "Lambda.PayloadTooLarge";

/// One configured `wasm` processor.
#[derive(Debug)]
struct Transform {
    plugin: Plugin,
    buffer_bytes: usize,
    retries: u32,
}

/// The `wasm` processors of a delivery stream, in order.
#[derive(Debug, Clone, Default)]
pub struct Transforms {
    chain: Vec<Arc<Transform>>,
}

impl Transforms {
    /// Loads every `wasm` processor of `processors` (compiled modules are cached in `cache`).
    pub fn load(
        processors: &[Processor],
        cache: Option<&Path>,
    ) -> Result<Transforms, TransformError> {
        let chain = processors
            .iter()
            .filter_map(|p| match p {
                Processor::Wasm(w) => Some(w),
                _ => None,
            })
            .map(|w| {
                let plugin = Plugin::load(spec(w), cache)?;
                Ok(Arc::new(Transform {
                    plugin,
                    buffer_bytes: (w.buffer_mib * (1 << 20) as f64) as usize,
                    retries: u32::try_from(w.number_of_retries).unwrap_or(u32::MAX),
                }))
            })
            .collect::<Result<_, TransformError>>()?;
        Ok(Transforms { chain })
    }

    /// Whether there is no plugin.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// The largest buffer among the plugins (what is worth reading from the log at once).
    pub fn buffer_bytes(&self) -> usize {
        self.chain.iter().map(|t| t.buffer_bytes).max().unwrap_or(0)
    }

    /// Runs `items` (outcomes tagged with the index of the log record they came from, in order)
    /// through every plugin, in place; failed outcomes pass through in their place.
    pub fn run(&self, items: &mut Vec<(usize, Outcome)>, scratch: &mut Scratch) {
        for t in &self.chain {
            t.run(items, scratch);
        }
    }
}

/// What a pipeline keeps between reads so that transforming allocates nothing in the steady state.
#[derive(Debug, Default)]
pub struct Scratch {
    outputs: OutputBuffers,
    /// What one record became, before it goes back in its place.
    settled: Vec<(usize, Outcome)>,
    /// The outcomes of records that became zero or several, in order...
    extra: Vec<(usize, Outcome)>,
    /// ...as (index of the record in the items, how many of `extra` replace it).
    reshaped: Vec<(usize, usize)>,
    /// The items with those spliced in.
    out: Vec<(usize, Outcome)>,
}

fn spec(w: &WasmConfig) -> PluginSpec {
    PluginSpec {
        path: w.module.clone(),
        bytes: Arc::clone(&w.bytes),
        function: w.function.clone(),
        config: w.config.clone(),
        timeout: Duration::from_millis(w.timeout_ms),
        memory_bytes: usize::try_from(w.memory_mib << 20).unwrap_or(usize::MAX),
    }
}

impl Transform {
    /// Transforms `items` in place. A record that becomes one record stays in its place, so the
    /// common case moves no outcome (outcomes are 88-byte items streamed through the cache, and
    /// moving each twice more per plugin was a tenth of the plugin thread); records that become
    /// zero or several are set aside and spliced in by one pass at the end.
    fn run(&self, items: &mut Vec<(usize, Outcome)>, s: &mut Scratch) {
        s.extra.clear();
        s.reshaped.clear();
        // The batch being cut: items[start..j], of `len` bytes encoded and `count` records.
        let (mut start, mut len, mut count) = (0, abi::BATCH_HEADER, 0);
        for j in 0..items.len() {
            let need = match &items[j].1 {
                Outcome::Ok(r) => abi::encoded_len(r.data.len()),
                Outcome::Failed(..) => continue,
            };
            if count > 0 && len + need > self.buffer_bytes {
                self.flush(items, start..j, (len, count), s);
                (start, len, count) = (j, abi::BATCH_HEADER, 0);
            }
            let Outcome::Ok(r) = &mut items[j].1 else {
                continue;
            };
            if len + need > MAX_BATCH_BYTES {
                let r = take_record(r);
                let f = self.failure(
                    PAYLOAD_TOO_LARGE,
                    format!(
                        "the record of {} bytes does not fit in a batch of at most {MAX_BATCH_BYTES} bytes",
                        r.data.len()
                    ),
                    1,
                );
                items[j].1 = Outcome::Failed(r, Box::new(f));
            } else {
                len += need;
                count += 1;
            }
        }
        let end = items.len();
        self.flush(items, start..end, (len, count), s);
        if !s.reshaped.is_empty() {
            s.out.clear();
            let mut extra = s.extra.drain(..);
            let mut reshaped = s.reshaped.iter().copied().peekable();
            for (j, item) in items.drain(..).enumerate() {
                match reshaped.next_if(|(k, _)| *k == j) {
                    Some((_, n)) => s.out.extend(extra.by_ref().take(n)),
                    None => s.out.push(item),
                }
            }
            drop(extra);
            std::mem::swap(items, &mut s.out);
        }
    }

    /// Calls the plugin on the `Ok` records of `items[range]` (`(len, count)`: their encoded
    /// length and number), encoded straight into its memory, and puts what became of each record in its
    /// place, or into `s.extra` (see [`Transform::run`]).
    ///
    /// A batch of several records that fails after its retries for any reason but the deadline
    /// is tried again record by record, so that a record that breaks the plugin fails alone:
    /// every record's outcome is then what the plugin makes of it, whatever batch it came in
    /// (which replays after a crash need, as batches are cut from reads). A deadline failure is
    /// not: each single call could cost a deadline again.
    fn flush(
        &self,
        items: &mut [(usize, Outcome)],
        range: Range<usize>,
        (len, count): (usize, usize),
        s: &mut Scratch,
    ) {
        if count == 0 {
            return;
        }
        let batch = Pending {
            items: &items[range.clone()],
            len,
            count,
        };
        let (results, attempts) = self.call(&batch, &mut s.outputs);
        let isolate = matches!(&results, Err(e) if !e.deadline) && count > 1;
        let mut results = results.map(Vec::into_iter);
        for j in range {
            let (mut result, attempts) = match &mut results {
                _ if !matches!(items[j].1, Outcome::Ok(_)) => continue,
                Ok(list) => (list.next().ok_or(None), attempts),
                Err(_) if isolate => {
                    let (result, attempts) = self.call(&Pending::of(&items[j..=j]), &mut s.outputs);
                    let result = result
                        .map_err(Some)
                        .and_then(|list| list.into_iter().next().ok_or(None));
                    (result, attempts)
                }
                Err(e) => (Err(Some(e.clone())), attempts),
            };
            let (i, outcome) = &mut items[j];
            let Outcome::Ok(r) = outcome else {
                continue;
            };
            if let Ok(RecordResult::Ok { pieces, keys }) = &mut result {
                // The usual result, one record and no keys: only the data changes.
                if keys.is_empty() {
                    if let Some(data) = pieces.take_only() {
                        r.data = data;
                        continue;
                    }
                }
            }
            self.settle(*i, take_record(r), result, attempts, &mut s.settled);
            if s.settled.len() == 1 {
                if let Some((_, became)) = s.settled.pop() {
                    *outcome = became;
                }
            } else {
                s.reshaped.push((j, s.settled.len()));
                s.extra.append(&mut s.settled);
            }
        }
    }

    /// Puts what became of record `r` (of log record `i`) into `out`. `Err(None)`: no result
    /// for it, which `parse_output` rules out.
    fn settle(
        &self,
        i: usize,
        r: Record,
        result: Result<RecordResult, Option<CallError>>,
        attempts: u32,
        out: &mut Vec<(usize, Outcome)>,
    ) {
        match result {
            Ok(RecordResult::Ok { pieces, keys }) => {
                let keys = merge_keys(r.keys.as_ref(), keys);
                let mut pieces = pieces.into_iter();
                let last = pieces.next_back();
                for data in pieces {
                    let record = Record {
                        data,
                        keys: keys.clone(),
                        ..r.clone()
                    };
                    out.push((i, Outcome::Ok(record)));
                }
                if let Some(data) = last {
                    // The input record becomes its last piece: no reference count traffic.
                    let mut r = r;
                    r.data = data;
                    r.keys = keys;
                    out.push((i, Outcome::Ok(r)));
                }
            }
            Ok(RecordResult::Dropped) => {}
            Ok(RecordResult::Failed { message }) => {
                let message = message
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "the plugin returned ProcessingFailed".into());
                let f = self.failure(PROCESSING_FAILED_STATUS, message, attempts);
                out.push((i, Outcome::Failed(r, Box::new(f))));
            }
            Err(Some(e)) => {
                let f = self.failure(e.code, e.message, attempts);
                out.push((i, Outcome::Failed(r, Box::new(f))));
            }
            Err(None) => {
                let f = self.failure(
                    abi::OutputError::MissingId(0).code(),
                    "no result for the record".into(),
                    attempts,
                );
                out.push((i, Outcome::Failed(r, Box::new(f))));
            }
        }
    }

    /// One batch, with its retries: the results, or the last error; and the attempts made.
    fn call(
        &self,
        batch: &dyn abi::Batch,
        outputs: &mut OutputBuffers,
    ) -> (Result<Vec<RecordResult>, CallError>, u32) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.plugin.call(batch, outputs) {
                Ok(results) => return (Ok(results), attempt),
                Err(e) => {
                    let last = attempt > self.retries;
                    tracing::warn!(plugin = %self.plugin.identity(), code = e.code, error = %e.message,
                        records = batch.records(), attempt, "transformation failed{}",
                        if last { "; its records go to the processing-failed output" } else { "; retrying" });
                    if last {
                        return (Err(e), attempt);
                    }
                }
            }
        }
    }

    fn failure(&self, code: &str, message: String, attempts: u32) -> Failure {
        Failure {
            output_type: PROCESSING_FAILED,
            code: code.to_string(),
            message: message.into(),
            attempts,
            plugin: Some(Arc::clone(self.plugin.identity())),
        }
    }
}

/// A batch for a plugin: the `Ok` records of `items`, written straight into the plugin's memory
/// from the records (no staging buffer, which was one more copy of every byte).
struct Pending<'a> {
    items: &'a [(usize, Outcome)],
    /// Encoded length and number of the `Ok` records.
    len: usize,
    count: usize,
}

impl Pending<'_> {
    /// The batch of the `Ok` records of `items`.
    fn of(items: &[(usize, Outcome)]) -> Pending<'_> {
        let (mut len, mut count) = (abi::BATCH_HEADER, 0);
        for (_, data) in records_of(items) {
            len += abi::encoded_len(data.len());
            count += 1;
        }
        Pending { items, len, count }
    }
}

/// The (arrival time, data) of the `Ok` records of `items`, in order.
fn records_of(items: &[(usize, Outcome)]) -> impl Iterator<Item = (i64, &[u8])> {
    items.iter().filter_map(|(_, o)| match o {
        Outcome::Ok(r) => Some((r.arrival_ms, &r.data[..])),
        Outcome::Failed(..) => None,
    })
}

impl abi::Batch for Pending<'_> {
    fn encoded_len(&self) -> usize {
        self.len
    }
    fn records(&self) -> usize {
        self.count
    }
    fn write_to(&self, out: &mut [u8]) {
        abi::write_batch(records_of(self.items), out);
    }
}

/// Moves the record out of `r`, leaving it empty (no allocation: empty `Bytes`, no keys).
fn take_record(r: &mut Record) -> Record {
    Record {
        data: std::mem::take(&mut r.data),
        keys: r.keys.take(),
        ..*r
    }
}

/// The keys of a record after a plugin: the earlier plugins' keys with this one's added over them.
fn merge_keys(
    earlier: Option<&Arc<[(String, String)]>>,
    new: Vec<(String, String)>,
) -> Option<Arc<[(String, String)]>> {
    match earlier {
        None if new.is_empty() => None,
        None => Some(new.into()),
        Some(e) if new.is_empty() => Some(Arc::clone(e)),
        Some(e) => {
            let mut all: Vec<(String, String)> = e
                .iter()
                .filter(|(k, _)| !new.iter().any(|(n, _)| n == k))
                .cloned()
                .collect();
            all.extend(new);
            Some(all.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plugin::testing::{wat, OK_OUTPUT};
    use super::*;
    use bytes::Bytes;

    use crate::log::SequenceNumber;

    /// A stage around a WAT plugin (see `plugin::testing`), which answers one-record batches.
    fn stage(module: String, buffer_bytes: usize, retries: u32) -> Transform {
        let spec = PluginSpec {
            path: "t.wat".into(),
            bytes: Arc::new(module.into_bytes()),
            function: "spillway_transform".into(),
            config: String::new(),
            timeout: Duration::from_millis(500),
            memory_bytes: 1 << 20,
        };
        Transform {
            plugin: Plugin::load(spec, None).unwrap(),
            buffer_bytes,
            retries,
        }
    }

    fn run_stage(t: &Transform, mut items: Vec<(usize, Outcome)>) -> Vec<(usize, Outcome)> {
        let mut s = Scratch::default();
        t.run(&mut items, &mut s);
        items
    }

    fn record(seq: u64, data: &'static [u8]) -> Record {
        Record {
            sequence: SequenceNumber(seq),
            sub: 0,
            arrival_ms: 5,
            data: Bytes::from_static(data),
            keys: None,
        }
    }

    fn summary(items: &[(usize, Outcome)]) -> Vec<(usize, String)> {
        items
            .iter()
            .map(|(i, o)| match o {
                Outcome::Ok(r) => (*i, format!("ok {}", String::from_utf8_lossy(&r.data))),
                Outcome::Failed(r, f) => (
                    *i,
                    format!(
                        "{} {} x{}",
                        String::from_utf8_lossy(&r.data),
                        f.code,
                        f.attempts
                    ),
                ),
            })
            .collect()
    }

    #[test]
    fn a_failed_batch_is_retried_on_fresh_instances_then_its_records_fail() {
        // Fails (returns 0) on the first call of each instance: retries that reused the failed
        // instance would succeed; fresh ones fail the same way every time.
        let first_call_fails = wat(
            &format!(
                "(global.set $calls (i32.add (global.get $calls) (i32.const 1)))
                 (if (result i64) (i32.eq (global.get $calls) (i32.const 1))
                   (then (i64.const 0)) (else {OK_OUTPUT}))"
            ),
            "",
        );
        let t = stage(first_call_fails, 1 << 20, 3);
        let out = run_stage(&t, vec![(0, Outcome::Ok(record(1, b"a")))]);
        assert_eq!(
            summary(&out),
            vec![(0, "a Lambda.FunctionError x4".to_string())]
        );
        let Outcome::Failed(_, f) = &out[0].1 else {
            unreachable!()
        };
        assert_eq!(f.output_type, PROCESSING_FAILED);
        assert!(f.message.contains("returned 0"), "{}", f.message);
        assert_eq!(f.plugin.as_deref(), Some("wasm:t.wat#spillway_transform"));
        // No retries: one attempt.
        let t = stage(wat("(i64.const 0)", ""), 1 << 20, 0);
        let out = run_stage(&t, vec![(0, Outcome::Ok(record(1, b"a")))]);
        assert_eq!(
            summary(&out),
            vec![(0, "a Lambda.FunctionError x1".to_string())]
        );
    }

    #[test]
    fn batches_are_cut_at_the_buffer_size_and_failed_records_keep_their_place() {
        let items = || {
            vec![
                (0, Outcome::Ok(record(1, b"a"))),
                (
                    1,
                    Outcome::Failed(
                        record(2, b"earlier failure"),
                        Box::new(Failure {
                            output_type: "decompression-failed",
                            code: "X".into(),
                            message: "".into(),
                            attempts: 1,
                            plugin: None,
                        }),
                    ),
                ),
                (2, Outcome::Ok(record(3, b"b"))),
            ]
        };
        // Room for one record per batch: each call answers its record.
        let t = stage(wat(OK_OUTPUT, ""), 8 + abi::encoded_len(1), 0);
        assert_eq!(
            summary(&run_stage(&t, items())),
            vec![
                (0, "ok ok".into()),
                (1, "earlier failure X x1".into()),
                (2, "ok ok".into())
            ]
        );
        // Both in one batch: the plugin answers only id 0, so the batch fails as a whole, and
        // each record is then tried alone, which works.
        let t = stage(wat(OK_OUTPUT, ""), 1 << 20, 0);
        assert_eq!(
            summary(&run_stage(&t, items())),
            vec![
                (0, "ok ok".into()),
                (1, "earlier failure X x1".into()),
                (2, "ok ok".into())
            ]
        );
    }

    #[test]
    fn a_record_that_breaks_the_plugin_fails_alone_but_a_deadline_fails_the_batch() {
        // Traps when a batch's first record starts with 'P', loops when it starts with 'L'.
        let body = format!(
            "(if (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.const 28))) (i32.const 80))
                (then (unreachable)))
             (if (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.const 28))) (i32.const 76))
                (then (loop $l (br $l))))
             {OK_OUTPUT}"
        );
        let t = stage(wat(&body, ""), 1 << 20, 1);
        let items = |first: &'static [u8]| {
            vec![
                (0, Outcome::Ok(record(1, first))),
                (0, Outcome::Ok(record(1, b"x"))),
                (1, Outcome::Ok(record(2, b"y"))),
            ]
        };
        assert_eq!(
            summary(&run_stage(&t, items(b"P"))),
            vec![
                (0, "P Lambda.FunctionError x2".into()),
                (0, "ok ok".into()),
                (1, "ok ok".into())
            ]
        );
        assert_eq!(
            summary(&run_stage(&t, items(b"L"))),
            vec![
                (0, "L Lambda.FunctionError x2".into()),
                (0, "x Lambda.FunctionError x2".into()),
                (1, "y Lambda.FunctionError x2".into())
            ]
        );
    }

    #[test]
    fn a_record_too_large_for_any_batch_fails_alone() {
        let t = stage(wat(OK_OUTPUT, ""), 1 << 20, 0);
        let big: &'static [u8] = Box::leak(vec![b'x'; MAX_BATCH_BYTES].into_boxed_slice());
        let out = run_stage(
            &t,
            vec![
                (0, Outcome::Ok(record(1, big))),
                (1, Outcome::Ok(record(2, b"a"))),
            ],
        );
        assert!(matches!(&out[0], (0, Outcome::Failed(_, f)) if f.code == PAYLOAD_TOO_LARGE));
        assert!(matches!(&out[1], (1, Outcome::Ok(r)) if &r.data[..] == b"ok"));
    }

    /// Records that become several, none, a failure or one record, in one batch with an earlier
    /// failure among them: each lands in its place, in order, and the next plugin sees them so.
    #[test]
    fn results_of_any_shape_keep_the_order_of_their_records() {
        // Answers ids 0..3: Ok "x" "yy"; Dropped; ProcessingFailed "bad"; Ok "z".
        let output = concat!(
            r#"(data (i32.const 256) "SPR1\04\00\00\00" "#,
            r#""\00\00\00\00\00\00\00\00\00\02\00\00\00\01\00\00\00x\02\00\00\00yy\00\00" "#,
            r#""\01\00\00\00\00\00\00\00\01\00\00\00\00\00\00" "#,
            r#""\02\00\00\00\00\00\00\00\02\01\00\00\00\03\00\00\00bad\00\00" "#,
            r#""\03\00\00\00\00\00\00\00\00\01\00\00\00\01\00\00\00z\00\00")"#
        );
        let t = stage(wat("(i64.const 1099511627867)", output), 1 << 20, 0);
        let earlier = Failure {
            output_type: "decompression-failed",
            code: "X".into(),
            message: "".into(),
            attempts: 1,
            plugin: None,
        };
        let items = vec![
            (0, Outcome::Ok(record(1, b"a"))),
            (1, Outcome::Failed(record(2, b"earlier"), Box::new(earlier))),
            (2, Outcome::Ok(record(3, b"b"))),
            (3, Outcome::Ok(record(4, b"c"))),
            (3, Outcome::Ok(record(4, b"d"))),
        ];
        let expected: Vec<(usize, String)> = vec![
            (0, "ok x".into()),
            (0, "ok yy".into()),
            (1, "earlier X x1".into()),
            (3, format!("c {PROCESSING_FAILED_STATUS} x1")),
            (3, "ok z".into()),
        ];
        assert_eq!(summary(&run_stage(&t, items)), expected);
    }

    #[test]
    fn later_keys_replace_earlier_ones_of_the_same_name() {
        let earlier: Arc<[(String, String)]> =
            vec![("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let merged = merge_keys(Some(&earlier), vec![("b".into(), "3".into())]).unwrap();
        assert_eq!(
            &merged[..],
            &[("a".into(), "1".into()), ("b".into(), "3".into())]
        );
        assert!(Arc::ptr_eq(
            &merge_keys(Some(&earlier), vec![]).unwrap(),
            &earlier
        ));
        assert!(merge_keys(None, vec![]).is_none());
    }
}
