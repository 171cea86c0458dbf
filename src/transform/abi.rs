//! The byte formats of plugin ABI version 1 (`transforms/README.md`): the batch the host writes
//! into guest memory, and the output it reads back and validates before using any of it.
//!
//! Record ids are the records' indexes in the batch, so a result maps back to its input without a
//! lookup table. All integers are unaligned little-endian.

use bytes::Bytes;

/// The one ABI version this host implements (`spillway_abi_version()`).
pub const ABI_VERSION: i32 = 1;
/// Magic of an input batch.
pub const BATCH_MAGIC: [u8; 4] = *b"SPW1";
/// Magic of a plugin's output.
pub const OUTPUT_MAGIC: [u8; 4] = *b"SPR1";
/// Largest output accepted: Lambda's 6 MB response cap plus framing slack.
pub const MAX_OUTPUT_BYTES: usize = 7 << 20;
/// Largest batch ever sent (Lambda's 6 MB request cap).
pub const MAX_BATCH_BYTES: usize = 6 << 20;
/// Partition keys one record may carry (Firehose: 50).
pub const MAX_KEYS: usize = 50;
/// Longest key name, in bytes.
pub const MAX_KEY_NAME: usize = 256;
/// Longest key value, in bytes.
pub const MAX_KEY_VALUE: usize = 1024;
/// Most records one output may hold: each costs the host a record's bookkeeping (~200 bytes),
/// whereas an empty piece costs the plugin 4 bytes of output.
pub const MAX_PIECES: usize = 100_000;
/// A ProcessingFailed message is cut to this many bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// id (u64) + arrival (i64) + length (u32).
const RECORD_HEADER: usize = 20;
/// Bytes of an empty batch (its magic and record count).
pub const BATCH_HEADER: usize = 8;
/// id (u64) + result (u8) + piece count (u32) + key count (u16): the smallest result.
const MIN_RESULT: usize = 15;

/// Bytes one record of `data_len` bytes takes in a batch.
pub fn encoded_len(data_len: usize) -> usize {
    RECORD_HEADER + data_len
}

/// An input batch as the host writes it into guest memory: its encoded size, its records, and
/// the encoding itself, written in place (the pipeline's batches are encoded straight into the
/// plugin's memory from the records, with no staging copy).
pub trait Batch {
    /// Size of the encoded batch.
    fn encoded_len(&self) -> usize;
    /// Records in the batch.
    fn records(&self) -> usize;
    /// Writes the encoded batch into `out`, which is [`Batch::encoded_len`] bytes long.
    fn write_to(&self, out: &mut [u8]);
}

/// Writes a batch of `records` (arrival time, data) into `out`, exactly as long as they encode
/// to; ids are the records' indexes.
pub fn write_batch<'a>(records: impl Iterator<Item = (i64, &'a [u8])>, out: &mut [u8]) {
    let (header, mut rest) = out.split_at_mut(BATCH_HEADER);
    let mut count = 0u32;
    for (arrival_ms, data) in records {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(RECORD_HEADER);
        head.copy_from_slice(&record_header(count, arrival_ms, data.len()));
        let (body, tail) = tail.split_at_mut(data.len());
        body.copy_from_slice(data);
        rest = tail;
        count += 1;
    }
    header[..4].copy_from_slice(&BATCH_MAGIC);
    header[4..].copy_from_slice(&count.to_le_bytes());
}

/// The header of record `id` of a batch.
fn record_header(id: u32, arrival_ms: i64, len: usize) -> [u8; RECORD_HEADER] {
    let mut h = [0; RECORD_HEADER];
    h[..8].copy_from_slice(&u64::from(id).to_le_bytes());
    h[8..16].copy_from_slice(&arrival_ms.to_le_bytes());
    // Callers keep batches under MAX_BATCH_BYTES, so a record's length fits.
    h[16..].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    h
}

impl Batch for BatchWriter {
    fn encoded_len(&self) -> usize {
        self.buf.len()
    }
    fn records(&self) -> usize {
        self.count as usize
    }
    fn write_to(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.buf);
    }
}

/// Builds an input batch in a buffer of its own, for tests and benchmarks (the pipeline writes
/// its batches in place, see [`write_batch`]).
#[derive(Debug)]
pub struct BatchWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for BatchWriter {
    fn default() -> Self {
        let mut w = BatchWriter {
            buf: Vec::new(),
            count: 0,
        };
        w.clear();
        w
    }
}

impl BatchWriter {
    /// Empties the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&BATCH_MAGIC);
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.count = 0;
    }

    /// Appends a record; its id is its index in the batch.
    pub fn push(&mut self, arrival_ms: i64, data: &[u8]) {
        self.buf
            .extend_from_slice(&record_header(self.count, arrival_ms, data.len()));
        self.buf.extend_from_slice(data);
        self.count += 1;
        self.buf[4..8].copy_from_slice(&self.count.to_le_bytes());
    }

    /// Records in the batch.
    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// Size of the encoded batch.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded batch.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The records a plugin made of one input record; the usual one is held without an allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pieces {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
}

impl Pieces {
    fn push(&mut self, piece: Bytes) {
        if self.first.is_none() {
            self.first = Some(piece);
        } else {
            self.rest.push(piece);
        }
    }

    /// How many records.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The piece, if there is exactly one (the usual case), taken out.
    pub fn take_only(&mut self) -> Option<Bytes> {
        if self.rest.is_empty() {
            self.first.take()
        } else {
            None
        }
    }
}

impl From<Vec<Bytes>> for Pieces {
    fn from(list: Vec<Bytes>) -> Pieces {
        let mut p = Pieces::default();
        for b in list {
            p.push(b);
        }
        p
    }
}

impl IntoIterator for Pieces {
    type Item = Bytes;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Bytes>, std::vec::IntoIter<Bytes>>;

    /// The records in order.
    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// What a plugin made of one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordResult {
    /// The records to deliver in its place (zero or more, slices of the output) and its
    /// partition keys.
    Ok {
        pieces: Pieces,
        keys: Vec<(String, String)>,
    },
    /// Filtered out: delivered nowhere, counted as processed.
    Dropped,
    /// The record goes to the error output, with the plugin's message if it gave one.
    Failed { message: Option<String> },
}

/// Why a plugin's output was refused as a whole. Every variant fails the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    /// Framing, shape or limit broken.
    #[error("malformed output: {0}")]
    Malformed(String),
    #[error("the output has a result for record id {0}, which is not in the batch")]
    UnknownId(u64),
    #[error("the output has two results for record id {0}")]
    DuplicatedId(u64),
    #[error("the output has no result for record id {0}")]
    MissingId(u64),
}

impl OutputError {
    /// The Firehose error code under which the batch's records go to the error output.
    pub fn code(&self) -> &'static str {
        match self {
            OutputError::Malformed(_) | OutputError::UnknownId(_) => {
                "Lambda.JsonProcessingException"
            }
            OutputError::DuplicatedId(_) => "Lambda.DuplicatedRecordId",
            OutputError::MissingId(_) => "Lambda.MissingRecordId",
        }
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.s.len() - self.at
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], OutputError> {
        if n > self.left() {
            return Err(OutputError::Malformed(format!(
                "{what} at byte {} needs {n} bytes, {} are left",
                self.at,
                self.left()
            )));
        }
        let piece = &self.s[self.at..self.at + n];
        self.at += n;
        Ok(piece)
    }

    fn u8(&mut self, what: &str) -> Result<u8, OutputError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, OutputError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, OutputError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, OutputError> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn text(&mut self, n: usize, what: &str) -> Result<String, OutputError> {
        let at = self.at;
        let b = self.take(n, what)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| OutputError::Malformed(format!("{what} at byte {at} is not UTF-8")))
    }
}

fn malformed(msg: String) -> OutputError {
    OutputError::Malformed(msg)
}

/// Parses and validates a plugin's output for a batch of `count` records. The whole output is
/// checked before anything is returned; id errors are reported in the ABI's order (an unknown id,
/// then a duplicated one, then a missing one). Returns the results in input order.
pub fn parse_output(out: &Bytes, count: usize) -> Result<Vec<RecordResult>, OutputError> {
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(malformed(format!(
            "{} bytes exceed the limit of {MAX_OUTPUT_BYTES}",
            out.len()
        )));
    }
    let mut c = Cursor { s: out, at: 0 };
    if c.take(4, "the magic")? != OUTPUT_MAGIC {
        return Err(malformed("the output does not start with SPR1".into()));
    }
    let n = c.u32("the result count")? as usize;
    if n.saturating_mul(MIN_RESULT) > c.left() {
        return Err(malformed(format!(
            "{n} results cannot fit in {} bytes",
            out.len()
        )));
    }
    // Results in input order, the usual case, go straight into `ordered`; the first one out of
    // order moves them all to `scattered`, where each id has its place.
    let mut ordered: Vec<RecordResult> = Vec::with_capacity(count.min(n));
    let mut scattered: Option<Vec<Option<RecordResult>>> = None;
    let (mut unknown, mut duplicated) = (None, None);
    let mut total_pieces = 0usize;
    for _ in 0..n {
        let id = c.u64("a record id")?;
        let at = c.at;
        let result = c.u8("a result")?;
        let piece_count = c.u32("a piece count")? as usize;
        if piece_count.saturating_mul(4) > c.left() {
            return Err(malformed(format!(
                "record {id}: {piece_count} pieces cannot fit in what is left"
            )));
        }
        total_pieces += piece_count;
        if total_pieces > MAX_PIECES {
            return Err(malformed(format!(
                "more than {MAX_PIECES} output records in one output"
            )));
        }
        let mut pieces = Pieces::default();
        for _ in 0..piece_count {
            let len = c.u32("a piece length")? as usize;
            let start = c.at;
            c.take(len, "a piece")?;
            pieces.push(out.slice(start..start + len));
        }
        let key_count = c.u16("a key count")? as usize;
        if key_count > MAX_KEYS {
            return Err(malformed(format!(
                "record {id}: {key_count} partition keys exceed the limit of {MAX_KEYS}"
            )));
        }
        let mut keys: Vec<(String, String)> = Vec::with_capacity(key_count);
        for _ in 0..key_count {
            let klen = c.u16("a key name length")? as usize;
            if klen == 0 || klen > MAX_KEY_NAME {
                return Err(malformed(format!(
                    "record {id}: a key name of {klen} bytes (1 to {MAX_KEY_NAME} allowed)"
                )));
            }
            let name = c.text(klen, "a key name")?;
            let vlen = c.u16("a key value length")? as usize;
            if vlen > MAX_KEY_VALUE {
                return Err(malformed(format!(
                    "record {id}: key {name:?} has a value of {vlen} bytes (at most {MAX_KEY_VALUE})"
                )));
            }
            let value = c.text(vlen, "a key value")?;
            if keys.iter().any(|(k, _)| *k == name) {
                return Err(malformed(format!(
                    "record {id}: key {name:?} appears twice"
                )));
            }
            keys.push((name, value));
        }
        let parsed = match result {
            0 => RecordResult::Ok { pieces, keys },
            1 if pieces.is_empty() && keys.is_empty() => RecordResult::Dropped,
            2 if pieces.len() <= 1 && keys.is_empty() => RecordResult::Failed {
                message: pieces.first.as_deref().map(message),
            },
            1 | 2 => {
                return Err(malformed(format!(
                    "record {id}: a {} result with {} pieces and {} keys",
                    if result == 1 {
                        "Dropped"
                    } else {
                        "ProcessingFailed"
                    },
                    pieces.len(),
                    keys.len()
                )))
            }
            other => {
                return Err(malformed(format!(
                    "record {id}: result {other} at byte {at} (0 Ok, 1 Dropped, 2 ProcessingFailed)"
                )))
            }
        };
        let results = match &mut scattered {
            None if id == ordered.len() as u64 && ordered.len() < count => {
                ordered.push(parsed);
                continue;
            }
            None => {
                let mut all: Vec<Option<RecordResult>> = ordered.drain(..).map(Some).collect();
                all.resize(count, None);
                scattered.insert(all)
            }
            Some(all) => all,
        };
        match usize::try_from(id).ok().and_then(|i| results.get_mut(i)) {
            None => {
                unknown.get_or_insert(id);
            }
            Some(Some(_)) => {
                duplicated.get_or_insert(id);
            }
            Some(slot) => *slot = Some(parsed),
        }
    }
    if c.left() > 0 {
        return Err(malformed(format!(
            "{} bytes after the last result",
            c.left()
        )));
    }
    if let Some(id) = unknown {
        return Err(OutputError::UnknownId(id));
    }
    if let Some(id) = duplicated {
        return Err(OutputError::DuplicatedId(id));
    }
    let Some(results) = scattered else {
        if ordered.len() < count {
            return Err(OutputError::MissingId(ordered.len() as u64));
        }
        return Ok(ordered);
    };
    if let Some(missing) = results.iter().position(Option::is_none) {
        return Err(OutputError::MissingId(missing as u64));
    }
    Ok(results.into_iter().flatten().collect())
}

/// A ProcessingFailed message as text: invalid UTF-8 replaced, cut to [`MAX_ERROR_MESSAGE`] bytes
/// on a character boundary.
fn message(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_ERROR_MESSAGE)]);
    let mut text = text.into_owned();
    while text.len() > MAX_ERROR_MESSAGE {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An encoder for outputs, the guest side of the format (used to test the parser).
    #[derive(Default)]
    struct Out(Vec<u8>, u32);

    impl Out {
        fn result(&mut self, id: u64, result: u8, pieces: &[&[u8]], keys: &[(&str, &str)]) {
            self.0.extend_from_slice(&id.to_le_bytes());
            self.0.push(result);
            self.0
                .extend_from_slice(&(pieces.len() as u32).to_le_bytes());
            for p in pieces {
                self.0.extend_from_slice(&(p.len() as u32).to_le_bytes());
                self.0.extend_from_slice(p);
            }
            self.0.extend_from_slice(&(keys.len() as u16).to_le_bytes());
            for (k, v) in keys {
                self.0.extend_from_slice(&(k.len() as u16).to_le_bytes());
                self.0.extend_from_slice(k.as_bytes());
                self.0.extend_from_slice(&(v.len() as u16).to_le_bytes());
                self.0.extend_from_slice(v.as_bytes());
            }
            self.1 += 1;
        }

        fn bytes(&self) -> Bytes {
            let mut b = OUTPUT_MAGIC.to_vec();
            b.extend_from_slice(&self.1.to_le_bytes());
            b.extend_from_slice(&self.0);
            Bytes::from(b)
        }
    }

    #[test]
    fn a_batch_has_its_header_and_records() {
        let mut w = BatchWriter::default();
        w.push(7, b"ab");
        w.push(-1, b"");
        let b = w.bytes();
        assert_eq!(&b[..4], b"SPW1");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 0);
        assert_eq!(i64::from_le_bytes(b[16..24].try_into().unwrap()), 7);
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 2);
        assert_eq!(&b[28..30], b"ab");
        assert_eq!(u64::from_le_bytes(b[30..38].try_into().unwrap()), 1);
        assert_eq!(w.len(), 8 + encoded_len(2) + encoded_len(0));
        w.clear();
        assert_eq!((w.len(), w.count()), (8, 0));
    }

    #[test]
    fn results_come_back_in_input_order() {
        let mut o = Out::default();
        o.result(2, 2, &[b"bad"], &[]);
        o.result(0, 0, &[b"a", b"b"], &[("k", "v")]);
        o.result(1, 1, &[], &[]);
        let r = parse_output(&o.bytes(), 3).unwrap();
        assert_eq!(
            r,
            vec![
                RecordResult::Ok {
                    pieces: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")].into(),
                    keys: vec![("k".into(), "v".into())]
                },
                RecordResult::Dropped,
                RecordResult::Failed {
                    message: Some("bad".into())
                },
            ]
        );
    }

    fn error_of(o: &Out, count: usize) -> OutputError {
        parse_output(&o.bytes(), count).unwrap_err()
    }

    #[test]
    fn id_errors_are_reported_unknown_then_duplicated_then_missing() {
        let mut o = Out::default();
        o.result(0, 0, &[], &[]);
        o.result(0, 0, &[], &[]);
        o.result(9, 0, &[], &[]);
        assert_eq!(error_of(&o, 3), OutputError::UnknownId(9));
        assert_eq!(error_of(&o, 3).code(), "Lambda.JsonProcessingException");
        let mut o = Out::default();
        o.result(0, 0, &[], &[]);
        o.result(0, 0, &[], &[]);
        assert_eq!(error_of(&o, 3), OutputError::DuplicatedId(0));
        assert_eq!(error_of(&o, 3).code(), "Lambda.DuplicatedRecordId");
        let mut o = Out::default();
        o.result(0, 0, &[], &[]);
        o.result(2, 0, &[], &[]);
        assert_eq!(error_of(&o, 3), OutputError::MissingId(1));
        assert_eq!(error_of(&o, 3).code(), "Lambda.MissingRecordId");
    }

    #[test]
    fn shapes_and_limits_are_enforced_at_their_edges() {
        let name = "k".repeat(MAX_KEY_NAME);
        let value = "v".repeat(MAX_KEY_VALUE);
        let mut o = Out::default();
        o.result(0, 0, &[b"x"], &[(&name, &value), ("", "x")]);
        assert!(matches!(error_of(&o, 1), OutputError::Malformed(m) if m.contains("0 bytes")));
        let mut o = Out::default();
        o.result(0, 0, &[b"x"], &[(&name, &value), ("e", "")]);
        assert!(parse_output(&o.bytes(), 1).is_ok());
        let long_name = "k".repeat(MAX_KEY_NAME + 1);
        let mut o = Out::default();
        o.result(0, 0, &[], &[(&long_name, "v")]);
        assert!(matches!(error_of(&o, 1), OutputError::Malformed(_)));
        let long_value = "v".repeat(MAX_KEY_VALUE + 1);
        let mut o = Out::default();
        o.result(0, 0, &[], &[("k", &long_value)]);
        assert!(matches!(error_of(&o, 1), OutputError::Malformed(_)));
        let names: Vec<String> = (0..=MAX_KEYS).map(|i| format!("k{i}")).collect();
        let keys: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let mut o = Out::default();
        o.result(0, 0, &[], &keys[..MAX_KEYS]);
        assert!(parse_output(&o.bytes(), 1).is_ok());
        let mut o = Out::default();
        o.result(0, 0, &[], &keys);
        assert!(matches!(error_of(&o, 1), OutputError::Malformed(m) if m.contains("51")));
        let mut o = Out::default();
        o.result(0, 0, &[], &[("k", "a"), ("k", "b")]);
        assert!(matches!(error_of(&o, 1), OutputError::Malformed(m) if m.contains("twice")));
        for (result, pieces, keys) in [
            (1u8, &[&b"x"[..]][..], &[][..]),
            (1, &[][..], &[("k", "v")][..]),
            (2, &[&b"a"[..], &b"b"[..]][..], &[][..]),
            (2, &[][..], &[("k", "v")][..]),
            (3, &[][..], &[][..]),
        ] {
            let mut o = Out::default();
            o.result(0, result, pieces, keys);
            assert!(
                matches!(error_of(&o, 1), OutputError::Malformed(_)),
                "{result}"
            );
        }
    }

    #[test]
    fn framing_errors_are_caught_before_allocating() {
        let mut o = Out::default();
        o.result(0, 0, &[b"x"], &[]);
        let good = o.bytes();
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(parse_output(&Bytes::from(trailing), 1).is_err());
        let mut count = good.to_vec();
        count[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            matches!(parse_output(&Bytes::from(count), 1), Err(OutputError::Malformed(m)) if m.contains("cannot fit"))
        );
        let mut piece = good.to_vec();
        piece[21..25].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        assert!(parse_output(&Bytes::from(piece), 1).is_err());
        let mut magic = good.to_vec();
        magic[3] = b'2';
        assert!(parse_output(&Bytes::from(magic), 1).is_err());
        assert!(parse_output(&Bytes::from_static(b"SPR"), 1).is_err());
        let mut o = Out::default();
        let empty: Vec<&[u8]> = vec![b""; MAX_PIECES];
        o.result(0, 0, &empty, &[]);
        assert!(parse_output(&o.bytes(), 1).is_ok());
        o.result(1, 0, &[b""], &[]);
        assert!(
            matches!(parse_output(&o.bytes(), 2), Err(OutputError::Malformed(m)) if m.contains("100000"))
        );
        let big = Bytes::from(vec![0u8; MAX_OUTPUT_BYTES + 1]);
        assert!(
            matches!(parse_output(&big, 1), Err(OutputError::Malformed(m)) if m.contains("limit"))
        );
    }

    #[test]
    fn a_failure_message_is_cut_and_made_text() {
        let mut raw = vec![b'a'; MAX_ERROR_MESSAGE - 1];
        raw.extend_from_slice("é".as_bytes());
        raw.push(0xff);
        let mut o = Out::default();
        o.result(0, 2, &[&raw], &[]);
        let r = parse_output(&o.bytes(), 1).unwrap();
        let RecordResult::Failed { message: Some(m) } = &r[0] else {
            panic!("{r:?}")
        };
        assert!(m.len() <= MAX_ERROR_MESSAGE);
        assert!(m.starts_with(&"a".repeat(MAX_ERROR_MESSAGE - 1)));
    }

    proptest! {
        /// A batch written in place from its records is byte for byte what the staging writer
        /// builds.
        #[test]
        fn batches_written_in_place_match_the_writer(
            records in proptest::collection::vec((any::<i64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..20),
        ) {
            let mut w = BatchWriter::default();
            for (arrival, data) in &records {
                w.push(*arrival, data);
            }
            let mut out = vec![0xAA; w.encoded_len()];
            write_batch(records.iter().map(|(a, d)| (*a, &d[..])), &mut out);
            prop_assert_eq!(&out[..], w.bytes());
        }
    }

    proptest! {
        /// No byte string makes the parser panic, and whatever it accepts has one result per
        /// record.
        #[test]
        fn arbitrary_output_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), count in 0usize..4) {
            let mut with_magic = OUTPUT_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            for b in [Bytes::from(bytes), Bytes::from(with_magic)] {
                if let Ok(r) = parse_output(&b, count) {
                    prop_assert_eq!(r.len(), count);
                }
            }
        }

        /// What a well-behaved guest encodes, the host reads back unchanged, whatever the order
        /// of the results.
        #[test]
        fn encoded_results_round_trip(
            records in proptest::collection::vec(
                (0u8..3, proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..3),
                 proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,12}", 0..4)),
                0..8),
            rotate in 0usize..8,
        ) {
            let mut order: Vec<usize> = (0..records.len()).collect();
            if !order.is_empty() {
                let r = rotate % order.len();
                order.rotate_left(r);
            }
            let mut o = Out::default();
            let mut expected = Vec::new();
            for (result, pieces, keys) in &records {
                expected.push(match result {
                    0 => RecordResult::Ok {
                        pieces: pieces.iter().map(|p| Bytes::from(p.clone())).collect::<Vec<_>>().into(),
                        keys: keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    },
                    1 => RecordResult::Dropped,
                    _ => RecordResult::Failed { message: pieces.first().map(|m| message(m)) },
                });
            }
            for &i in &order {
                let (result, pieces, keys) = &records[i];
                let p: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
                let k: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                match result {
                    0 => o.result(i as u64, 0, &p, &k),
                    1 => o.result(i as u64, 1, &[], &[]),
                    _ => o.result(i as u64, 2, &p[..p.len().min(1)], &[]),
                }
            }
            prop_assert_eq!(parse_output(&o.bytes(), records.len()).unwrap(), expected);
        }
    }
}
