//! On-disk record framing for log segments.
//!
//! A frame is `body_len: u32 | crc32c(body): u32 | body`, little-endian, where the body is
//! `sequence: u64 | arrival_ms: i64 | key_len: u16 | key | data`. The CRC covers the whole body, so a
//! torn write or a flipped bit anywhere in a record is detected and the log truncates there on open.

use bytes::Bytes;

use super::{LogRecord, SequenceNumber};

/// Bytes before the body: length and checksum.
pub const HEADER_LEN: usize = 8;
/// Fixed part of the body: sequence, arrival time and key length.
const BODY_FIXED_LEN: usize = 18;
/// Frames larger than this are corruption: appends refuse records beyond these limits.
pub const MAX_BODY_LEN: usize = BODY_FIXED_LEN + super::MAX_KEY_BYTES + super::MAX_DATA_BYTES;

/// Appends one framed record to `buf`.
pub fn encode_into(
    buf: &mut Vec<u8>,
    seq: SequenceNumber,
    arrival_ms: i64,
    key: &[u8],
    data: &[u8],
) {
    debug_assert!(key.len() <= u16::MAX as usize);
    let body_len = BODY_FIXED_LEN + key.len() + data.len();
    let start = buf.len();
    buf.reserve(HEADER_LEN + body_len);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.0.to_le_bytes());
    buf.extend_from_slice(&arrival_ms.to_le_bytes());
    buf.extend_from_slice(&(key.len() as u16).to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(data);
    let crc = crc32c::crc32c(&buf[start + HEADER_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Length of the frame that would hold this record.
pub fn framed_len(key_len: usize, data_len: usize) -> usize {
    HEADER_LEN + BODY_FIXED_LEN + key_len + data_len
}

/// The outcome of decoding at the start of a byte slice.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid frame of `len` bytes.
    Frame { record: LogRecord, len: usize },
    /// The slice ends inside a frame; `needed` bytes would hold it whole.
    Incomplete { needed: usize },
    /// The bytes are not a valid frame (bad length or checksum).
    Corrupt,
}

/// Decodes the frame at the start of `buf`; record payloads are zero-copy slices of `buf`.
pub fn decode(buf: &Bytes) -> Decoded {
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete { needed: HEADER_LEN };
    }
    let body_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Decoded::Corrupt;
    }
    let len = HEADER_LEN + body_len;
    if buf.len() < len {
        return Decoded::Incomplete { needed: len };
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[HEADER_LEN..len];
    if crc32c::crc32c(body) != crc {
        return Decoded::Corrupt;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let arrival_ms = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let key_len = u16::from_le_bytes([body[16], body[17]]) as usize;
    if BODY_FIXED_LEN + key_len > body_len {
        return Decoded::Corrupt;
    }
    let key_start = HEADER_LEN + BODY_FIXED_LEN;
    let data_start = key_start + key_len;
    Decoded::Frame {
        record: LogRecord {
            sequence: SequenceNumber(seq),
            arrival_ms,
            partition_key: buf.slice(key_start..data_start),
            data: buf.slice(data_start..len),
        },
        len,
    }
}

/// The valid prefix of a segment's bytes: where the last whole frame ends and what it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPrefix {
    /// Bytes of whole, valid, in-sequence frames from the start.
    pub len: usize,
    /// Sequence number the next appended record gets.
    pub next_sequence: SequenceNumber,
    /// Records in the prefix.
    pub records: u64,
    /// Arrival time of the first and last record, if any.
    pub first_arrival_ms: Option<i64>,
    pub last_arrival_ms: Option<i64>,
}

/// Scans `buf` (a whole segment whose first record must carry `base`) and returns its valid prefix.
///
/// Scanning stops at the first incomplete frame, checksum failure or out-of-sequence record: on
/// recovery everything after that point is a torn tail that was never acknowledged.
pub fn valid_prefix(buf: &Bytes, base: SequenceNumber) -> ValidPrefix {
    let mut out = ValidPrefix {
        len: 0,
        next_sequence: base,
        records: 0,
        first_arrival_ms: None,
        last_arrival_ms: None,
    };
    loop {
        let rest = buf.slice(out.len..);
        match decode(&rest) {
            Decoded::Frame { record, len } if record.sequence == out.next_sequence => {
                out.len += len;
                out.next_sequence = SequenceNumber(record.sequence.0 + 1);
                out.records += 1;
                out.first_arrival_ms.get_or_insert(record.arrival_ms);
                out.last_arrival_ms = Some(record.arrival_ms);
            }
            _ => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(records: &[(Vec<u8>, Vec<u8>)], base: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for (i, (key, data)) in records.iter().enumerate() {
            encode_into(
                &mut buf,
                SequenceNumber(base + i as u64),
                1_000 + i as i64,
                key,
                data,
            );
        }
        buf
    }

    #[test]
    fn round_trip_keeps_fields() {
        let buf = Bytes::from(frames(&[(b"pk".to_vec(), b"hello".to_vec())], 7));
        match decode(&buf) {
            Decoded::Frame { record, len } => {
                assert_eq!(len, buf.len());
                assert_eq!(record.sequence, SequenceNumber(7));
                assert_eq!(record.arrival_ms, 1_000);
                assert_eq!(&record.partition_key[..], b"pk");
                assert_eq!(&record.data[..], b"hello");
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn flipped_bit_is_corrupt() {
        let mut raw = frames(&[(vec![], b"payload".to_vec())], 0);
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        assert_eq!(decode(&Bytes::from(raw)), Decoded::Corrupt);
    }

    #[test]
    fn absurd_length_is_corrupt_not_a_huge_read() {
        let mut raw = frames(&[(vec![], b"x".to_vec())], 0);
        raw[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&Bytes::from(raw)), Decoded::Corrupt);
    }

    #[test]
    fn out_of_sequence_frame_ends_the_valid_prefix() {
        let mut raw = frames(&[(vec![], b"a".to_vec())], 5);
        let first_len = raw.len();
        encode_into(&mut raw, SequenceNumber(9), 0, b"", b"b");
        let prefix = valid_prefix(&Bytes::from(raw), SequenceNumber(5));
        assert_eq!(prefix.len, first_len);
        assert_eq!(prefix.next_sequence, SequenceNumber(6));
    }

    proptest! {
        /// Truncating a segment at every byte offset keeps exactly the whole frames before the cut.
        #[test]
        fn truncation_at_any_offset_keeps_whole_frames(
            records in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..8), proptest::collection::vec(any::<u8>(), 0..64)),
                1..6),
        ) {
            let raw = frames(&records, 100);
            let mut ends = vec![0usize];
            for (key, data) in &records {
                ends.push(ends.last().unwrap() + framed_len(key.len(), data.len()));
            }
            for cut in 0..=raw.len() {
                let prefix = valid_prefix(&Bytes::copy_from_slice(&raw[..cut]), SequenceNumber(100));
                let whole = ends.iter().rposition(|&e| e <= cut).unwrap();
                prop_assert_eq!(prefix.len, ends[whole]);
                prop_assert_eq!(prefix.records, whole as u64);
                prop_assert_eq!(prefix.next_sequence, SequenceNumber(100 + whole as u64));
            }
        }

        /// Arbitrary garbage never panics the decoder.
        #[test]
        fn garbage_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = valid_prefix(&Bytes::from(raw), SequenceNumber(0));
        }
    }
}
