//! The Firehose operations: request parsing, limits, and response shapes (firehose-reference §1).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::error::{ApiError, ErrorKind};
use crate::config::StreamName;
use crate::log::{LogError, SequenceNumber, ShardId, StreamLog};

/// Largest record, in decoded bytes.
pub const MAX_RECORD_BYTES: usize = 1_024_000;
/// Most records in one PutRecordBatch.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Largest total of decoded record data in one PutRecordBatch.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// What DescribeDeliveryStream reports about a stream.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub created_ms: i64,
    /// The destination's entry of DescribeDeliveryStream's `Destinations` (e.g.
    /// `{"ExtendedS3DestinationDescription": {...}}`), without its id.
    pub destination: serde_json::Value,
}

/// A delivery stream as the endpoint sees it.
pub struct IngestStream {
    pub log: Arc<StreamLog>,
    pub info: StreamInfo,
}

/// All delivery streams, by name.
pub type Streams = BTreeMap<String, IngestStream>;

/// A Firehose operation named by `X-Amz-Target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    PutRecord,
    PutRecordBatch,
    ListDeliveryStreams,
    DescribeDeliveryStream,
}

impl Operation {
    /// Parses `Firehose_20150804.<Op>`.
    pub fn from_target(target: Option<&str>) -> Result<Operation, ApiError> {
        let unknown = |t: &str| {
            ApiError::new(
                ErrorKind::UnknownOperation,
                format!("Unknown operation {t:?}: expected X-Amz-Target Firehose_20150804.<PutRecord|PutRecordBatch|ListDeliveryStreams|DescribeDeliveryStream>"),
            )
        };
        let target = target.ok_or_else(|| unknown("<missing X-Amz-Target>"))?;
        match target.strip_prefix("Firehose_20150804.") {
            Some("PutRecord") => Ok(Operation::PutRecord),
            Some("PutRecordBatch") => Ok(Operation::PutRecordBatch),
            Some("ListDeliveryStreams") => Ok(Operation::ListDeliveryStreams),
            Some("DescribeDeliveryStream") => Ok(Operation::DescribeDeliveryStream),
            _ => Err(unknown(target)),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordIn<'a> {
    #[serde(borrow)]
    data: Base64<'a>,
}

/// A base64 blob as it appears in the JSON body, borrowed when it has no escapes. Read as raw bytes:
/// the base64 decoder rejects anything that is not base64, so UTF-8 validation would be wasted work.
struct Base64<'a>(Cow<'a, [u8]>);

impl<'de: 'a, 'a> Deserialize<'de> for Base64<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Base64<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64-encoded string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Base64(Cow::Borrowed(v)))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Base64(Cow::Borrowed(v.as_bytes())))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Base64(Cow::Owned(v.to_vec())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Base64(Cow::Owned(v.as_bytes().to_vec())))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordIn<'a> {
    #[serde(borrow)]
    delivery_stream_name: Cow<'a, str>,
    #[serde(borrow)]
    record: RecordIn<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordBatchIn<'a> {
    #[serde(borrow)]
    delivery_stream_name: Cow<'a, str>,
    #[serde(borrow)]
    records: Vec<RecordIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListIn {
    limit: Option<i64>,
    delivery_stream_type: Option<String>,
    exclusive_start_delivery_stream_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeIn {
    delivery_stream_name: String,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::Serialization,
            format!("Request body is not a valid request for this operation: {e}"),
        )
    })
}

fn stream_name(name: &str) -> Result<(), ApiError> {
    StreamName::parse(name).map(|_| ()).map_err(|reason| {
        ApiError::validation(
            "deliveryStreamName",
            &format!("Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+ with length 1 to 64 ({reason})"),
        )
    })
}

fn lookup<'s>(streams: &'s Streams, name: &str) -> Result<&'s IngestStream, ApiError> {
    streams.get(name).ok_or_else(|| {
        ApiError::new(
            ErrorKind::ResourceNotFound,
            format!("Firehose {name} under account 000000000000 not found."),
        )
    })
}

/// Records decoded from base64 into one buffer: `ends[i]` is where record `i` ends.
#[derive(Debug)]
struct DecodedRecords {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl DecodedRecords {
    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let r = &self.data[start..end];
            start = end;
            (&[][..], r)
        })
    }
}

/// Decodes and checks every record before anything is written, so a rejected batch writes nothing.
fn decode_records(records: &[RecordIn<'_>], member: &str) -> Result<DecodedRecords, ApiError> {
    let engine = &base64_simd::STANDARD;
    let estimate: usize = records.iter().map(|r| r.data.0.len() / 4 * 3).sum();
    let mut data = Vec::with_capacity(estimate.min(MAX_BATCH_BYTES));
    let mut ends = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let name = || {
            if member == "record" {
                "record.data".to_string()
            } else {
                format!("records.{}.member.data", i + 1)
            }
        };
        let invalid = |e: base64_simd::Error| {
            ApiError::new(
                ErrorKind::Serialization,
                format!("Value at '{}' is not valid base64: {e}", name()),
            )
        };
        // The exact decoded length comes from the encoded length and padding: limits are checked
        // before any decoding work.
        let len = engine.decoded_length(&r.data.0).map_err(invalid)?;
        if len > MAX_RECORD_BYTES {
            return Err(ApiError::validation(
                &name(),
                &format!("Member must have length less than or equal to {MAX_RECORD_BYTES}"),
            ));
        }
        if data.len() + len > MAX_BATCH_BYTES {
            return Err(ApiError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "Records size exceeds 4 MB limit ({MAX_BATCH_BYTES} bytes of decoded data)"
                ),
            ));
        }
        engine
            .decode_append(&r.data.0, &mut data)
            .map_err(invalid)?;
        ends.push(data.len());
    }
    Ok(DecodedRecords { data, ends })
}

/// An opaque, unique record id derived from where the record is stored: 32 hex digits, the shard
/// then the sequence number.
fn record_id(out: &mut String, shard: ShardId, seq: SequenceNumber) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [b'0'; 32];
    let mut v = shard.0 as u128;
    v = (v << 96) | seq.0 as u128;
    for b in buf.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
    out.push_str(std::str::from_utf8(&buf).expect("hex is ASCII"));
}

fn log_error(e: LogError) -> ApiError {
    match e {
        LogError::Overloaded { .. }
        | LogError::Closed { .. }
        | LogError::WriteFailed { .. }
        | LogError::DiskBudget { .. } => ApiError::new(
            ErrorKind::ServiceUnavailable,
            format!("Slow down: {e}. Back off and retry."),
        ),
        other => ApiError::new(ErrorKind::InternalFailure, other.to_string()),
    }
}

/// Appends records durably to one shard and returns (shard, first sequence number, count).
async fn append(
    stream: &IngestStream,
    records: &DecodedRecords,
) -> Result<(ShardId, SequenceNumber, u64), ApiError> {
    let shard = stream.log.next_shard();
    let appended = shard.append(records.iter()).map_err(log_error)?;
    match appended.durable.await {
        Ok(Ok(())) => Ok((shard.id(), appended.first, appended.count)),
        Ok(Err(e)) => Err(log_error(e)),
        Err(_) => Err(ApiError::new(
            ErrorKind::ServiceUnavailable,
            "the log stopped before the records were durable; retry",
        )),
    }
}

/// PutRecord: one record.
pub async fn put_record(streams: &Streams, body: &[u8]) -> Result<String, ApiError> {
    let req: PutRecordIn = parse(body)?;
    stream_name(&req.delivery_stream_name)?;
    let records = decode_records(std::slice::from_ref(&req.record), "record")?;
    let stream = lookup(streams, &req.delivery_stream_name)?;
    let (shard, first, _) = append(stream, &records).await?;
    let mut id = String::new();
    record_id(&mut id, shard, first);
    Ok(format!(r#"{{"RecordId":"{id}","Encrypted":false}}"#))
}

/// PutRecordBatch: 1–500 records, ≤ 4 MiB, all or nothing.
pub async fn put_record_batch(streams: &Streams, body: &[u8]) -> Result<String, ApiError> {
    let req: PutRecordBatchIn = parse(body)?;
    stream_name(&req.delivery_stream_name)?;
    if req.records.is_empty() {
        return Err(ApiError::validation(
            "records",
            "Member must have length greater than or equal to 1",
        ));
    }
    if req.records.len() > MAX_BATCH_RECORDS {
        return Err(ApiError::validation(
            "records",
            &format!("Member must have length less than or equal to {MAX_BATCH_RECORDS}"),
        ));
    }
    let records = decode_records(&req.records, "records")?;
    let stream = lookup(streams, &req.delivery_stream_name)?;
    let (shard, first, count) = append(stream, &records).await?;
    let mut out = String::with_capacity(64 + count as usize * 50);
    out.push_str(r#"{"FailedPutCount":0,"Encrypted":false,"RequestResponses":["#);
    for i in 0..count {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"RecordId":""#);
        record_id(&mut out, shard, SequenceNumber(first.0 + i));
        out.push_str(r#""}"#);
    }
    out.push_str("]}");
    Ok(out)
}

/// ListDeliveryStreams with Limit (1–10,000, default 10), type filter and exclusive start.
pub fn list_delivery_streams(streams: &Streams, body: &[u8]) -> Result<String, ApiError> {
    let req: ListIn = if body.iter().all(u8::is_ascii_whitespace) {
        ListIn {
            limit: None,
            delivery_stream_type: None,
            exclusive_start_delivery_stream_name: None,
        }
    } else {
        parse(body)?
    };
    let limit = req.limit.unwrap_or(10);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            "Member must have value between 1 and 10000",
        ));
    }
    let names: Vec<&String> = match req.delivery_stream_type.as_deref() {
        None | Some("DirectPut") => streams
            .keys()
            .filter(|n| {
                req.exclusive_start_delivery_stream_name
                    .as_ref()
                    .is_none_or(|start| n.as_str() > start.as_str())
            })
            .collect(),
        Some("KinesisStreamAsSource" | "MSKAsSource" | "DatabaseAsSource") => Vec::new(),
        Some(other) => {
            return Err(ApiError::validation(
                "deliveryStreamType",
                &format!("Member must satisfy enum value set: [DirectPut, KinesisStreamAsSource, MSKAsSource, DatabaseAsSource] (got {other:?})"),
            ))
        }
    };
    let more = names.len() > limit as usize;
    let page: Vec<&String> = names.into_iter().take(limit as usize).collect();
    Ok(
        serde_json::json!({"DeliveryStreamNames": page, "HasMoreDeliveryStreams": more})
            .to_string(),
    )
}

/// DescribeDeliveryStream.
pub fn describe_delivery_stream(streams: &Streams, body: &[u8]) -> Result<String, ApiError> {
    let req: DescribeIn = parse(body)?;
    stream_name(&req.delivery_stream_name)?;
    let stream = lookup(streams, &req.delivery_stream_name)?;
    let name = &req.delivery_stream_name;
    let mut destination = stream.info.destination.clone();
    destination["DestinationId"] = "destinationId-000000000001".into();
    Ok(serde_json::json!({
        "DeliveryStreamDescription": {
            "DeliveryStreamName": name,
            "DeliveryStreamARN": format!("arn:aws:firehose:local:000000000000:deliverystream/{name}"),
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamType": "DirectPut",
            "VersionId": "1",
            "CreateTimestamp": stream.info.created_ms as f64 / 1000.0,
            "DeliveryStreamEncryptionConfiguration": {"Status": "DISABLED"},
            "Destinations": [destination],
            "HasMoreDestinations": false,
        }
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(data: &[u8]) -> String {
        base64_simd::STANDARD.encode_to_string(data)
    }

    fn batch(records: &[Vec<u8>]) -> Vec<u8> {
        let recs: Vec<_> = records
            .iter()
            .map(|r| serde_json::json!({"Data": b64(r)}))
            .collect();
        serde_json::json!({"DeliveryStreamName": "s", "Records": recs})
            .to_string()
            .into_bytes()
    }

    fn decode_batch(body: &[u8]) -> Result<DecodedRecords, ApiError> {
        let req: PutRecordBatchIn = parse(body)?;
        decode_records(&req.records, "records")
    }

    #[test]
    fn record_size_edge() {
        assert!(decode_batch(&batch(&[vec![7; MAX_RECORD_BYTES]])).is_ok());
        let err = decode_batch(&batch(&[vec![7; MAX_RECORD_BYTES + 1]])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(
            err.message.contains("records.1.member.data"),
            "{}",
            err.message
        );
        assert!(
            decode_batch(&batch(&[vec![]])).is_ok(),
            "empty records are allowed"
        );
    }

    #[test]
    fn batch_size_edge() {
        let full: Vec<Vec<u8>> = (0..4)
            .map(|_| vec![1; MAX_RECORD_BYTES])
            .chain(std::iter::once(vec![
                1;
                MAX_BATCH_BYTES - 4 * MAX_RECORD_BYTES
            ]))
            .collect();
        let d = decode_batch(&batch(&full)).unwrap();
        assert_eq!(d.data.len(), MAX_BATCH_BYTES);
        let mut over = full.clone();
        over.push(vec![1]);
        let err = decode_batch(&batch(&over)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(err.message.contains("4 MB"), "{}", err.message);
    }

    #[test]
    fn escaped_slashes_in_base64_are_accepted() {
        // JSON allows "\/" for "/", and base64 uses '/'.
        let body = br#"{"DeliveryStreamName":"s","Records":[{"Data":"\/\/\/\/"}]}"#;
        let d = decode_batch(body).unwrap();
        assert_eq!(d.data, vec![0xff, 0xff, 0xff]);
    }

    #[test]
    fn decoded_records_keep_boundaries() {
        let d = decode_batch(&batch(&[b"a".to_vec(), vec![], b"xyz".to_vec()])).unwrap();
        let got: Vec<&[u8]> = d.iter().map(|(_, r)| r).collect();
        assert_eq!(got, vec![&b"a"[..], &b""[..], &b"xyz"[..]]);
    }

    #[test]
    fn malformed_bodies_are_serialization_errors() {
        for body in [
            &b"{not json"[..],
            br#"{"DeliveryStreamName":"s","Records":[{"Data":"@@@"}]}"#,
            br#"{"DeliveryStreamName":"s","Records":[{"Data":"aGVsbG8"}]}"#,
            br#"{"DeliveryStreamName":"s","Records":[{"Data":"aGVs bG8="}]}"#,
            br#"{"DeliveryStreamName":"s","Records":[{"Data":5}]}"#,
            br#"{"DeliveryStreamName":"s"}"#,
            br#"[]"#,
        ] {
            let err = decode_batch(body).map(|_| ()).unwrap_err();
            assert_eq!(
                err.kind,
                ErrorKind::Serialization,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn record_ids_are_shard_then_sequence_in_hex() {
        let mut s = String::new();
        record_id(&mut s, ShardId(3), SequenceNumber(0xabc));
        assert_eq!(s, "00000003000000000000000000000abc");
    }

    #[test]
    fn targets() {
        assert_eq!(
            Operation::from_target(Some("Firehose_20150804.PutRecordBatch")).unwrap(),
            Operation::PutRecordBatch
        );
        for bad in [
            None,
            Some("Firehose_20150804.Nope"),
            Some("Kinesis_20131202.PutRecord"),
        ] {
            assert_eq!(
                Operation::from_target(bad).unwrap_err().kind,
                ErrorKind::UnknownOperation
            );
        }
    }
}
