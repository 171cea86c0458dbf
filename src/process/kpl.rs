//! Kinesis Producer Library (KPL) aggregated records, as Firehose deaggregates them when reading
//! from a Kinesis data stream.
//!
//! Format: the magic `F3 89 9A C2`, a protobuf (proto2) `AggregatedRecord`, and the 16-byte MD5
//! of the protobuf bytes:
//!
//! ```text
//! message AggregatedRecord { repeated string partition_key_table = 1;
//!                            repeated string explicit_hash_key_table = 2;
//!                            repeated Record records = 3; }
//! message Record { required uint64 partition_key_index = 1; optional uint64 explicit_hash_key_index = 2;
//!                  required bytes data = 3; repeated Tag tags = 4; }
//! message Tag { required string key = 1; optional string value = 2; }
//! ```
//!
//! The protobuf decoder is hand-written and borrows: each record's data is a range of the input.

use std::ops::Range;

use md5::{Digest, Md5};

use super::ProcessError;

/// The four bytes that open a KPL aggregated record.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Length of the MD5 trailer.
const DIGEST_LEN: usize = 16;

/// One user record out of an aggregated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KplRecord {
    /// The user record's partition key (from the partition key table).
    pub partition_key: String,
    /// The user record's explicit hash key, if it has one.
    pub explicit_hash_key: Option<String>,
    /// Where the user record's data lies in the aggregated record passed to [`deaggregate`].
    pub data: Range<usize>,
}

/// Whether `data` is a KPL aggregated record: it opens with [`KPL_MAGIC`] and is long enough for
/// the MD5 trailer. Cheap; says nothing about the checksum or the protobuf, which [`deaggregate`]
/// checks. Firehose passes a record that is not aggregated on as it is.
pub fn is_aggregated(data: &[u8]) -> bool {
    data.len() >= KPL_MAGIC.len() + DIGEST_LEN && data.starts_with(&KPL_MAGIC)
}

/// The user records of the aggregated record `data`, in order (possibly none).
///
/// Errors: [`ProcessError::KplNotAggregated`] unless [`is_aggregated`];
/// [`ProcessError::KplChecksumMismatch`] when the MD5 trailer does not match;
/// [`ProcessError::KplMalformed`] for malformed protobuf: a truncated varint or field, a length
/// past its message, a wire type other than the schema's for a known field, a group (wire types
/// 3/4, which KPL never writes) or an invalid wire type, field number 0, a missing required
/// field, or a key index out of its table. Unknown fields of wire types 0, 1, 2 and 5 are
/// skipped; for a repeated non-repeated field the last one wins. Keys that are not UTF-8 are
/// decoded lossily (U+FFFD), as protobuf-java does for proto2 strings, rather than failing the
/// record.
pub fn deaggregate(data: &[u8]) -> Result<Vec<KplRecord>, ProcessError> {
    if !is_aggregated(data) {
        return Err(ProcessError::KplNotAggregated);
    }
    let body_end = data.len() - DIGEST_LEN;
    let body = &data[KPL_MAGIC.len()..body_end];
    if Md5::digest(body).as_slice() != &data[body_end..] {
        return Err(ProcessError::KplChecksumMismatch);
    }

    let mut pk_table = Vec::new();
    let mut ehk_table = Vec::new();
    let mut record_spans = Vec::new();
    let mut r = Reader::new(data, KPL_MAGIC.len(), body_end);
    while let Some((field, wire, at)) = r.key()? {
        match field {
            1 => pk_table.push(r.string(field, wire, at)?),
            2 => ehk_table.push(r.string(field, wire, at)?),
            3 => record_spans.push(r.len_delimited(field, wire, at)?),
            _ => r.skip(wire, at)?,
        }
    }

    record_spans
        .into_iter()
        .map(|span| parse_record(data, span, &pk_table, &ehk_table))
        .collect()
}

fn parse_record(
    data: &[u8],
    span: Range<usize>,
    pk_table: &[String],
    ehk_table: &[String],
) -> Result<KplRecord, ProcessError> {
    let start = span.start;
    let mut pk_index = None;
    let mut ehk_index = None;
    let mut payload = None;
    let mut r = Reader::new(data, span.start, span.end);
    while let Some((field, wire, at)) = r.key()? {
        match field {
            1 => pk_index = Some((r.uint64(field, wire, at)?, at)),
            2 => ehk_index = Some((r.uint64(field, wire, at)?, at)),
            3 => payload = Some(r.len_delimited(field, wire, at)?),
            4 => {
                let tag = r.len_delimited(field, wire, at)?;
                check_tag(data, tag)?;
            }
            _ => r.skip(wire, at)?,
        }
    }
    let (pk_index, pk_at) =
        pk_index.ok_or_else(|| malformed(start, "record without partition_key_index"))?;
    let data = payload.ok_or_else(|| malformed(start, "record without data"))?;
    let partition_key = lookup(pk_table, pk_index, pk_at, "partition_key_index")?.clone();
    let explicit_hash_key = match ehk_index {
        Some((i, at)) => Some(lookup(ehk_table, i, at, "explicit_hash_key_index")?.clone()),
        None => None,
    };
    Ok(KplRecord {
        partition_key,
        explicit_hash_key,
        data,
    })
}

/// Validates a `Tag` (tags are not passed on, but a malformed one makes the record malformed).
fn check_tag(data: &[u8], span: Range<usize>) -> Result<(), ProcessError> {
    let start = span.start;
    let mut has_key = false;
    let mut r = Reader::new(data, span.start, span.end);
    while let Some((field, wire, at)) = r.key()? {
        match field {
            1 => {
                r.string(field, wire, at)?;
                has_key = true;
            }
            2 => {
                r.string(field, wire, at)?;
            }
            _ => r.skip(wire, at)?,
        }
    }
    if has_key {
        Ok(())
    } else {
        Err(malformed(start, "tag without key"))
    }
}

fn lookup<'t>(
    table: &'t [String],
    index: u64,
    at: usize,
    what: &str,
) -> Result<&'t String, ProcessError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| table.get(i))
        .ok_or_else(|| {
            malformed(
                at,
                &format!("{what} {index} out of range (table has {})", table.len()),
            )
        })
}

fn malformed(offset: usize, reason: &str) -> ProcessError {
    ProcessError::KplMalformed {
        offset,
        reason: reason.to_string(),
    }
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// A cursor over one protobuf message, `data[pos..end]`; positions are absolute in `data`, so
/// that errors and ranges refer to the whole aggregated record.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], pos: usize, end: usize) -> Self {
        Reader {
            data,
            pos,
            end: end.min(data.len()),
        }
    }

    fn varint(&mut self) -> Result<u64, ProcessError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let b = match self.data.get(self.pos) {
                Some(&b) if self.pos < self.end => b,
                _ => return Err(malformed(start, "truncated varint")),
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(malformed(start, "varint overflows 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(start, "varint overflows 64 bits"))
    }

    /// The next field's number, wire type and offset; `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u64, u8, usize)>, ProcessError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > (1 << 29) - 1 {
            return Err(malformed(at, &format!("invalid field number {field}")));
        }
        Ok(Some((field, (key & 7) as u8, at)))
    }

    fn take(&mut self, len: u64, at: usize) -> Result<Range<usize>, ProcessError> {
        let left = self.end.saturating_sub(self.pos);
        match usize::try_from(len) {
            Ok(len) if len <= left => {
                let range = self.pos..self.pos + len;
                self.pos += len;
                Ok(range)
            }
            _ => Err(malformed(
                at,
                &format!("field of {len} bytes runs past its message"),
            )),
        }
    }

    fn expect_wire(field: u64, wire: u8, want: u8, at: usize) -> Result<(), ProcessError> {
        if wire == want {
            Ok(())
        } else {
            Err(malformed(
                at,
                &format!("field {field} has wire type {wire}, expected {want}"),
            ))
        }
    }

    fn uint64(&mut self, field: u64, wire: u8, at: usize) -> Result<u64, ProcessError> {
        Self::expect_wire(field, wire, WIRE_VARINT, at)?;
        self.varint()
    }

    fn len_delimited(
        &mut self,
        field: u64,
        wire: u8,
        at: usize,
    ) -> Result<Range<usize>, ProcessError> {
        Self::expect_wire(field, wire, WIRE_LEN, at)?;
        let len = self.varint()?;
        self.take(len, at)
    }

    /// A proto2 `string`, decoded lossily.
    fn string(&mut self, field: u64, wire: u8, at: usize) -> Result<String, ProcessError> {
        let range = self.len_delimited(field, wire, at)?;
        let bytes = self.data.get(range).unwrap_or_default();
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn skip(&mut self, wire: u8, at: usize) -> Result<(), ProcessError> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8, at).map(drop),
            WIRE_LEN => {
                let len = self.varint()?;
                self.take(len, at).map(drop)
            }
            WIRE_FIXED32 => self.take(4, at).map(drop),
            3 | 4 => Err(malformed(at, "groups are not supported")),
            _ => Err(malformed(at, &format!("invalid wire type {wire}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A minimal protobuf encoder, to build aggregated records.
    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn put_key(out: &mut Vec<u8>, field: u64, wire: u8) {
        put_varint(out, (field << 3) | u64::from(wire));
    }
    fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        put_key(out, field, WIRE_LEN);
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    fn put_uint(out: &mut Vec<u8>, field: u64, v: u64) {
        put_key(out, field, WIRE_VARINT);
        put_varint(out, v);
    }

    #[derive(Debug, Clone)]
    pub struct TestRecord {
        pub pk_index: u64,
        pub ehk_index: Option<u64>,
        pub data: Vec<u8>,
        pub tags: Vec<(String, Option<String>)>,
    }

    pub fn encode_record(r: &TestRecord) -> Vec<u8> {
        let mut out = Vec::new();
        put_uint(&mut out, 1, r.pk_index);
        if let Some(i) = r.ehk_index {
            put_uint(&mut out, 2, i);
        }
        put_bytes(&mut out, 3, &r.data);
        for (k, v) in &r.tags {
            let mut tag = Vec::new();
            put_bytes(&mut tag, 1, k.as_bytes());
            if let Some(v) = v {
                put_bytes(&mut tag, 2, v.as_bytes());
            }
            put_bytes(&mut out, 4, &tag);
        }
        out
    }

    pub fn encode_body(pks: &[String], ehks: &[String], records: &[TestRecord]) -> Vec<u8> {
        let mut body = Vec::new();
        for pk in pks {
            put_bytes(&mut body, 1, pk.as_bytes());
        }
        for ehk in ehks {
            put_bytes(&mut body, 2, ehk.as_bytes());
        }
        for r in records {
            put_bytes(&mut body, 3, &encode_record(r));
        }
        body
    }

    pub fn wrap(body: &[u8]) -> Vec<u8> {
        let mut out = KPL_MAGIC.to_vec();
        out.extend_from_slice(body);
        out.extend_from_slice(&Md5::digest(body));
        out
    }

    fn records_of(data: &[u8]) -> Vec<(String, Option<String>, Vec<u8>)> {
        deaggregate(data)
            .unwrap()
            .into_iter()
            .map(|r| (r.partition_key, r.explicit_hash_key, data[r.data].to_vec()))
            .collect()
    }

    fn rec(pk_index: u64, ehk_index: Option<u64>, data: &[u8]) -> TestRecord {
        TestRecord {
            pk_index,
            ehk_index,
            data: data.to_vec(),
            tags: vec![],
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn decodes_records_with_tables() {
        let body = encode_body(
            &strings(&["pk-a", "pk-b"]),
            &strings(&["12345"]),
            &[
                rec(0, None, b"one"),
                rec(1, Some(0), b"two"),
                rec(0, Some(0), b""),
            ],
        );
        let data = wrap(&body);
        assert!(is_aggregated(&data));
        assert_eq!(
            records_of(&data),
            vec![
                ("pk-a".into(), None, b"one".to_vec()),
                ("pk-b".into(), some("12345"), b"two".to_vec()),
                ("pk-a".into(), some("12345"), vec![]),
            ]
        );
    }

    #[test]
    fn empty_aggregate_has_no_records() {
        assert_eq!(deaggregate(&wrap(&[])), Ok(vec![]));
    }

    #[test]
    fn tables_after_records_and_unknown_fields() {
        let mut record = Vec::new();
        put_uint(&mut record, 9, 300); // unknown varint
        put_bytes(&mut record, 3, b"payload");
        put_key(&mut record, 10, WIRE_FIXED64);
        record.extend_from_slice(&[1; 8]);
        put_uint(&mut record, 1, 0);
        put_key(&mut record, 11, WIRE_FIXED32);
        record.extend_from_slice(&[2; 4]);
        put_bytes(&mut record, 12, b"unknown bytes");
        let mut tag = Vec::new();
        put_uint(&mut tag, 5, 1);
        put_bytes(&mut tag, 1, b"k");
        put_bytes(&mut record, 4, &tag);

        let mut body = Vec::new();
        put_bytes(&mut body, 3, &record);
        put_uint(&mut body, 1000, u64::MAX);
        put_bytes(&mut body, 1, b"late-pk");
        put_key(&mut body, (1 << 29) - 1, WIRE_FIXED32);
        body.extend_from_slice(&[0; 4]);
        assert_eq!(
            records_of(&wrap(&body)),
            vec![("late-pk".into(), None, b"payload".to_vec())]
        );
    }

    #[test]
    fn last_value_wins_for_singular_fields() {
        let mut record = Vec::new();
        put_uint(&mut record, 1, 5);
        put_bytes(&mut record, 3, b"old");
        put_uint(&mut record, 1, 1);
        put_bytes(&mut record, 3, b"new");
        let mut body = Vec::new();
        put_bytes(&mut body, 1, b"a");
        put_bytes(&mut body, 1, b"b");
        put_bytes(&mut body, 3, &record);
        assert_eq!(
            records_of(&wrap(&body)),
            vec![("b".into(), None, b"new".to_vec())]
        );
    }

    #[test]
    fn not_aggregated() {
        assert!(!is_aggregated(b""));
        assert!(!is_aggregated(&KPL_MAGIC));
        assert!(!is_aggregated(&[
            0xF3, 0x89, 0x9A, 0xC2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ]));
        assert!(is_aggregated(&wrap(&[])));
        assert!(!is_aggregated(b"{\"plain\":\"json record\"}"));
        assert_eq!(deaggregate(b"plain"), Err(ProcessError::KplNotAggregated));
    }

    #[test]
    fn checksum_mismatch() {
        let body = encode_body(&strings(&["pk"]), &[], &[rec(0, None, b"x")]);
        let mut data = wrap(&body);
        let last = data.len() - 1;
        data[last] ^= 0x40;
        let err = deaggregate(&data).unwrap_err();
        assert_eq!(err, ProcessError::KplChecksumMismatch);
        assert_eq!(err.code(), "KPL.ChecksumMismatch");
        assert_eq!(err.output_type(), super::super::PROCESSING_FAILED);
        data[last] ^= 0x40;
        data[5] ^= 1;
        assert_eq!(deaggregate(&data), Err(ProcessError::KplChecksumMismatch));
    }

    fn malformed_reason(body: &[u8]) -> String {
        match deaggregate(&wrap(body)) {
            Err(e @ ProcessError::KplMalformed { .. }) => {
                assert_eq!(e.code(), "KPL.MalformedRecord");
                e.to_string()
            }
            other => panic!("expected KplMalformed, got {other:?}"),
        }
    }

    #[test]
    fn malformed_protobuf() {
        let pk = {
            let mut b = Vec::new();
            put_bytes(&mut b, 1, b"pk");
            b
        };
        let with_record = |record: &[u8]| {
            let mut b = pk.clone();
            put_bytes(&mut b, 3, record);
            b
        };
        // Truncated varint (key, and value).
        assert!(malformed_reason(&[0x80]).contains("truncated varint"));
        assert!(malformed_reason(&[0x28, 0xff]).contains("truncated varint"));
        // Varint longer than 10 bytes / overflowing.
        assert!(malformed_reason(&[
            0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
        ])
        .contains("overflows"));
        // Length past the end.
        assert!(malformed_reason(&[0x0a, 0x05, b'a']).contains("runs past"));
        assert!(malformed_reason(&[
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ])
        .contains("runs past"));
        // A record's field may not run past the record, even if the body goes on.
        let mut inner = Vec::new();
        put_uint(&mut inner, 1, 0);
        inner.extend_from_slice(&[0x1a, 0x05, b'a']);
        let mut b = with_record(&inner);
        b.extend_from_slice(b"more");
        assert!(malformed_reason(&b).contains("runs past"));
        // Wrong wire type for known fields.
        assert!(malformed_reason(&[0x08, 0x01]).contains("wire type 0, expected 2"));
        let mut r = Vec::new();
        put_bytes(&mut r, 1, b"0");
        assert!(malformed_reason(&with_record(&r)).contains("field 1 has wire type 2"));
        // Invalid field number / wire types.
        assert!(malformed_reason(&[0x02, 0x00]).contains("invalid field number 0"));
        assert!(malformed_reason(&[0x7e]).contains("invalid wire type 6"));
        assert!(malformed_reason(&[0x7b]).contains("groups"));
        // Missing required fields.
        let mut r = Vec::new();
        put_bytes(&mut r, 3, b"x");
        assert!(malformed_reason(&with_record(&r)).contains("without partition_key_index"));
        let mut r = Vec::new();
        put_uint(&mut r, 1, 0);
        assert!(malformed_reason(&with_record(&r)).contains("without data"));
        // Index out of range.
        let r = encode_record(&rec(1, None, b"x"));
        assert!(malformed_reason(&with_record(&r)).contains("partition_key_index 1 out of range"));
        let r = encode_record(&rec(0, Some(0), b"x"));
        assert!(
            malformed_reason(&with_record(&r)).contains("explicit_hash_key_index 0 out of range")
        );
        let r = encode_record(&rec(u64::MAX, None, b"x"));
        assert!(malformed_reason(&with_record(&r)).contains("out of range"));
        // Tag without key.
        let mut r = encode_record(&rec(0, None, b"x"));
        let mut tag = Vec::new();
        put_bytes(&mut tag, 2, b"value only");
        put_bytes(&mut r, 4, &tag);
        assert!(malformed_reason(&with_record(&r)).contains("tag without key"));
    }

    #[test]
    fn non_utf8_keys_are_decoded_lossily() {
        let mut body = Vec::new();
        put_bytes(&mut body, 1, b"pk\xff");
        put_bytes(&mut body, 2, b"\xc3");
        put_bytes(&mut body, 3, &encode_record(&rec(0, Some(0), b"d")));
        assert_eq!(
            records_of(&wrap(&body)),
            vec![("pk\u{fffd}".into(), some("\u{fffd}"), b"d".to_vec())]
        );
    }

    /// Produced by aws-kinesis-agg 1.2.3 (Python): `RecordAggregator().add_user_record(...)` for
    /// ("pk-1", b"hello"), ("pk-2", b"world", ehk "123456789"), ("pk-1", b"") and
    /// ("pk-\u{e9}", b"\x00\xff binary"), then `clear_and_get().get_contents()[2]`.
    const PYTHON_FIXTURE: &str = "f3899ac20a04706b2d310a04706b2d320a05706b2dc3a912093132333435363738391a0908001a0568656c6c6f1a0b080110001a05776f726c641a0408001a001a0d08021a0900ff2062696e61727914eda1ab5bb8c4749f227999807f39fc";

    #[test]
    fn decodes_aws_kinesis_agg_output() {
        let data = hex(PYTHON_FIXTURE);
        assert_eq!(
            records_of(&data),
            vec![
                ("pk-1".into(), None, b"hello".to_vec()),
                ("pk-2".into(), some("123456789"), b"world".to_vec()),
                ("pk-1".into(), None, vec![]),
                ("pk-\u{e9}".into(), None, b"\x00\xff binary".to_vec()),
            ]
        );
    }

    fn arb_aggregate() -> impl Strategy<Value = (Vec<String>, Vec<String>, Vec<TestRecord>)> {
        (
            proptest::collection::vec(".{0,8}", 1..5),
            proptest::collection::vec("[0-9]{1,39}", 0..3),
        )
            .prop_flat_map(|(pks, ehks)| {
                let (np, ne) = (pks.len() as u64, ehks.len() as u64);
                let ehk_index = if ne == 0 {
                    Just(None).boxed()
                } else {
                    proptest::option::of(0..ne).boxed()
                };
                let record = (
                    0..np,
                    ehk_index,
                    proptest::collection::vec(any::<u8>(), 0..64),
                    proptest::collection::vec((".{0,4}", proptest::option::of(".{0,4}")), 0..2),
                )
                    .prop_map(|(pk_index, ehk_index, data, tags)| TestRecord {
                        pk_index,
                        ehk_index,
                        data,
                        tags,
                    });
                (
                    Just(pks),
                    Just(ehks),
                    proptest::collection::vec(record, 0..10),
                )
            })
    }

    proptest! {
        #[test]
        fn prop_round_trip((pks, ehks, records) in arb_aggregate()) {
            let data = wrap(&encode_body(&pks, &ehks, &records));
            prop_assert!(is_aggregated(&data));
            let got = deaggregate(&data).unwrap();
            prop_assert_eq!(got.len(), records.len());
            for (g, r) in got.iter().zip(&records) {
                prop_assert_eq!(&g.partition_key, &pks[r.pk_index as usize]);
                prop_assert_eq!(g.explicit_hash_key.as_ref(), r.ehk_index.map(|i| &ehks[i as usize]));
                prop_assert_eq!(&data[g.data.clone()], &r.data[..]);
            }
        }

        #[test]
        fn prop_byte_flip_never_panics(
            (pks, ehks, records) in arb_aggregate(),
            pos in any::<usize>(),
            flip in 1u8..=255,
            fix_checksum in any::<bool>(),
        ) {
            let body = encode_body(&pks, &ehks, &records);
            let mut data = wrap(&body);
            let i = KPL_MAGIC.len() + pos % (data.len() - KPL_MAGIC.len());
            data[i] ^= flip;
            if fix_checksum && i < data.len() - DIGEST_LEN {
                // Re-sign the corrupted body, so that the protobuf decoder sees it.
                let corrupted = data[KPL_MAGIC.len()..data.len() - DIGEST_LEN].to_vec();
                data = wrap(&corrupted);
            } else {
                prop_assert_eq!(deaggregate(&data), Err(ProcessError::KplChecksumMismatch));
            }
            if let Ok(got) = deaggregate(&data) {
                for g in got {
                    prop_assert!(g.data.start <= g.data.end && g.data.end <= data.len() - DIGEST_LEN);
                }
            }
        }

        #[test]
        fn prop_random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let data = wrap(&body);
            if let Ok(got) = deaggregate(&data) {
                for g in got {
                    prop_assert!(g.data.start >= KPL_MAGIC.len() && g.data.end <= data.len() - DIGEST_LEN);
                }
            }
        }
    }
}
