//! CloudWatch Logs subscription envelopes (after [`super::decompress::gunzip`]): Firehose's
//! message extraction, and dropping of `CONTROL_MESSAGE`s.
//!
//! An envelope is `{"messageType":"DATA_MESSAGE"|"CONTROL_MESSAGE","owner":..,"logGroup":..,
//! "logStream":..,"subscriptionFilters":[..],"logEvents":[{"id":..,"timestamp":..,"message":..}]}`.
//! Only `messageType` and `logEvents[].message` are read; other fields are ignored.

use serde::Deserialize;

use super::ProcessError;

/// What an envelope turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudWatchOutput {
    /// Only `CONTROL_MESSAGE`s (CloudWatch Logs' reachability checks): Firehose drops the record.
    Control,
    /// The `logEvents[].message` values of every `DATA_MESSAGE`, as UTF-8 bytes, in order.
    Messages(Vec<Vec<u8>>),
}

/// The `messageType` of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// `DATA_MESSAGE`: log events to deliver.
    Data,
    /// `CONTROL_MESSAGE`: a reachability check, to drop.
    Control,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "messageType")]
    message_type: String,
    #[serde(rename = "logEvents", default)]
    log_events: Option<Vec<LogEvent>>,
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "messageType")]
    message_type: String,
}

#[derive(Deserialize)]
struct LogEvent {
    message: String,
}

fn classify(message_type: &str) -> Result<MessageType, ProcessError> {
    match message_type {
        "DATA_MESSAGE" => Ok(MessageType::Data),
        "CONTROL_MESSAGE" => Ok(MessageType::Control),
        other => Err(ProcessError::CloudWatchUnknownType {
            message_type: other.to_string(),
        }),
    }
}

fn invalid(e: serde_json::Error) -> ProcessError {
    ProcessError::CloudWatchInvalid {
        reason: e.to_string(),
    }
}

/// Iterates over the envelopes in `data`: one, or several concatenated (whitespace between them
/// allowed), as a multi-member gzip of several envelopes decompresses to. Empty input is an error.
fn envelopes<'a, T: Deserialize<'a> + 'a>(
    data: &'a [u8],
) -> Result<impl Iterator<Item = Result<T, ProcessError>> + 'a, ProcessError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(ProcessError::CloudWatchInvalid {
            reason: "empty record".to_string(),
        });
    }
    Ok(serde_json::Deserializer::from_slice(data)
        .into_iter::<T>()
        .map(|r| r.map_err(invalid)))
}

/// Message extraction: the `message` of each log event of each `DATA_MESSAGE` envelope in
/// `envelope` (decompressed JSON, one envelope or several concatenated), in order; or
/// [`CloudWatchOutput::Control`] when every envelope is a `CONTROL_MESSAGE`.
///
/// Errors: [`ProcessError::CloudWatchInvalid`] for malformed JSON, a missing `messageType`, a
/// `DATA_MESSAGE` without a `logEvents` array, or an event without a string `message`;
/// [`ProcessError::CloudWatchUnknownType`] for any other `messageType`.
pub fn extract_messages(envelope: &[u8]) -> Result<CloudWatchOutput, ProcessError> {
    let mut messages = Vec::new();
    let mut any_data = false;
    for env in envelopes::<Envelope>(envelope)? {
        let env = env?;
        match classify(&env.message_type)? {
            MessageType::Control => {}
            MessageType::Data => {
                any_data = true;
                let events = env
                    .log_events
                    .ok_or_else(|| ProcessError::CloudWatchInvalid {
                        reason: "DATA_MESSAGE without logEvents".to_string(),
                    })?;
                messages.extend(events.into_iter().map(|e| e.message.into_bytes()));
            }
        }
    }
    Ok(if any_data {
        CloudWatchOutput::Messages(messages)
    } else {
        CloudWatchOutput::Control
    })
}

/// The message type of `envelope`, for decompression without message extraction, where the
/// envelope is delivered as is but `CONTROL_MESSAGE`s are still dropped. With several
/// concatenated envelopes: [`MessageType::Data`] if any is a `DATA_MESSAGE`. Errors as
/// [`extract_messages`] does for the envelope's JSON and `messageType` (`logEvents` is not read).
pub fn message_type(envelope: &[u8]) -> Result<MessageType, ProcessError> {
    let mut kind = MessageType::Control;
    for env in envelopes::<TypeOnly>(envelope)? {
        if classify(&env?.message_type)? == MessageType::Data {
            kind = MessageType::Data;
        }
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data_envelope(messages: &[&str]) -> String {
        let events: Vec<_> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| serde_json::json!({"id": i.to_string(), "timestamp": 1_700_000_000_000u64 + i as u64, "message": m}))
            .collect();
        serde_json::json!({
            "messageType": "DATA_MESSAGE",
            "owner": "123456789012",
            "logGroup": "/aws/lambda/f",
            "logStream": "2024/01/01/[$LATEST]abc",
            "subscriptionFilters": ["f"],
            "logEvents": events,
        })
        .to_string()
    }

    const CONTROL: &str = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1432826855105,"message":"CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}"#;

    #[test]
    fn extracts_messages_in_order() {
        let env = data_envelope(&["first", "sec\"ond \u{e9}\n", ""]);
        assert_eq!(
            extract_messages(env.as_bytes()).unwrap(),
            CloudWatchOutput::Messages(vec![
                b"first".to_vec(),
                "sec\"ond \u{e9}\n".as_bytes().to_vec(),
                vec![]
            ])
        );
        assert_eq!(message_type(env.as_bytes()).unwrap(), MessageType::Data);
    }

    #[test]
    fn control_message_is_dropped() {
        assert_eq!(
            extract_messages(CONTROL.as_bytes()).unwrap(),
            CloudWatchOutput::Control
        );
        assert_eq!(
            message_type(CONTROL.as_bytes()).unwrap(),
            MessageType::Control
        );
    }

    #[test]
    fn concatenated_envelopes() {
        let both = format!(
            "{}\n{}{}",
            data_envelope(&["a"]),
            CONTROL,
            data_envelope(&["b", "c"])
        );
        assert_eq!(
            extract_messages(both.as_bytes()).unwrap(),
            CloudWatchOutput::Messages(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        );
        let controls = format!("{CONTROL}{CONTROL}");
        assert_eq!(
            extract_messages(controls.as_bytes()).unwrap(),
            CloudWatchOutput::Control
        );
    }

    #[test]
    fn errors() {
        let cases: &[(&str, &str)] = &[
            ("", "CloudWatchLogs.InvalidEnvelope"),
            ("  \n", "CloudWatchLogs.InvalidEnvelope"),
            ("{", "CloudWatchLogs.InvalidEnvelope"),
            ("[]", "CloudWatchLogs.InvalidEnvelope"),
            (r#"{"logEvents":[]}"#, "CloudWatchLogs.InvalidEnvelope"),
            (
                r#"{"messageType":"DATA_MESSAGE"}"#,
                "CloudWatchLogs.InvalidEnvelope",
            ),
            (
                r#"{"messageType":"DATA_MESSAGE","logEvents":[{"id":"1"}]}"#,
                "CloudWatchLogs.InvalidEnvelope",
            ),
            (
                r#"{"messageType":"DATA_MESSAGE","logEvents":[{"message":5}]}"#,
                "CloudWatchLogs.InvalidEnvelope",
            ),
            (
                r#"{"messageType":"OTHER","logEvents":[]}"#,
                "CloudWatchLogs.UnknownMessageType",
            ),
            (
                r#"{"messageType":"CONTROL_MESSAGE"} x"#,
                "CloudWatchLogs.InvalidEnvelope",
            ),
        ];
        for (input, code) in cases {
            let err = extract_messages(input.as_bytes()).unwrap_err();
            assert_eq!(err.code(), *code, "{input}");
            assert_eq!(err.output_type(), super::super::PROCESSING_FAILED);
        }
        assert!(message_type(b"{}").is_err());
    }

    proptest! {
        #[test]
        fn prop_messages_round_trip(msgs in proptest::collection::vec(".*", 0..20)) {
            let refs: Vec<&str> = msgs.iter().map(String::as_str).collect();
            let env = data_envelope(&refs);
            let want: Vec<Vec<u8>> = msgs.iter().map(|m| m.as_bytes().to_vec()).collect();
            prop_assert_eq!(extract_messages(env.as_bytes()).unwrap(), CloudWatchOutput::Messages(want));
        }

        #[test]
        fn prop_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = extract_messages(&data);
            let _ = message_type(&data);
        }
    }
}
