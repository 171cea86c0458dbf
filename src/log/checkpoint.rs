//! Durable per-consumer, per-shard checkpoints.
//!
//! A checkpoint says which sequence number a consumer reads next, and, while an object is being
//! delivered, exactly which records that object holds and under which key. After a crash the
//! consumer rebuilds that same object from the log, so the destination sees one object with one
//! content under one key, however often delivery is retried (exactly-once delivery).
//!
//! With dynamic partitioning several objects are open at once and close in any order, so the
//! checkpoint is a low-water mark (`next`: everything before it is delivered) plus the objects
//! above it ([`ObjectEntry`]): in flight, delivered, or diverted to the error output. A replay
//! from `next` skips what delivered objects hold and rebuilds the others exactly
//! (see `crate::pipeline`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{LogError, SequenceNumber, ShardId};

/// An object whose delivery started but was not yet confirmed, as checkpoints before dynamic
/// partitioning recorded it (read only: it becomes an [`ObjectEntry`] on load).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightObject {
    /// First and last sequence number in the object, inclusive.
    pub first: u64,
    pub last: u64,
    /// The keys it is being written under: the object, and the error object of records that
    /// failed conversion when there is one (an old checkpoint's single `key` reads as one key).
    #[serde(alias = "key", deserialize_with = "one_or_many")]
    pub keys: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Keys {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Keys::deserialize(d)? {
        Keys::One(k) => vec![k],
        Keys::Many(k) => k,
    })
}

/// An object of one partition above the checkpoint's low-water mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// The partition's identity ("" without dynamic partitioning).
    pub partition: String,
    /// First and last sequence number of the partition's records in the object, inclusive.
    pub first: u64,
    pub last: u64,
    /// The position (next sequence number to process) at which the object was closed: records of
    /// the partition from then on belong to later objects, and until then the partition counted
    /// as active.
    pub closed_at: u64,
    /// The keys it is written under (data object first, then its conversion error object).
    pub keys: Vec<String>,
    pub state: ObjectState,
}

/// Where an [`ObjectEntry`]'s delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectState {
    /// Being committed: a replay rebuilds it under the same keys.
    InFlight,
    /// Committed: a replay skips its records.
    Delivered,
    /// The store refused it for good: a replay writes its records as error documents instead.
    Diverted { code: String, message: String },
}

/// A consumer's durable position in one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The lowest sequence number not yet delivered: the low-water mark.
    pub next: u64,
    /// Only in checkpoints of older versions; [`CheckpointStore::load`] moves it into `objects`.
    #[serde(default, skip_serializing)]
    pub in_flight: Option<InFlightObject>,
    /// Objects at or above `next`, in the order they were closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectEntry>,
    /// A fingerprint of the configuration that decides which records go to which object; a
    /// replay under another one cannot trust `objects` (see `crate::pipeline`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub routing: String,
}

impl Checkpoint {
    pub fn next_sequence(&self) -> SequenceNumber {
        SequenceNumber(self.next)
    }
}

/// Where checkpoints live: `<root>/<consumer>/<stream>/<shard>.json`, written atomically.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: PathBuf,
}

impl CheckpointStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CheckpointStore { root: root.into() }
    }

    fn path(&self, consumer: &str, stream: &str, shard: ShardId) -> PathBuf {
        self.root
            .join(consumer)
            .join(stream)
            .join(format!("{shard}.json"))
    }

    /// The stored checkpoint, or `None` when the consumer never committed one for this shard.
    pub fn load(
        &self,
        consumer: &str,
        stream: &str,
        shard: ShardId,
    ) -> Result<Option<Checkpoint>, LogError> {
        let path = self.path(consumer, stream, shard);
        match std::fs::read(&path) {
            Ok(raw) => {
                let mut ck: Checkpoint =
                    serde_json::from_slice(&raw).map_err(|e| LogError::BadCheckpoint {
                        path,
                        reason: e.to_string(),
                    })?;
                if let Some(old) = ck.in_flight.take() {
                    ck.objects.push(ObjectEntry {
                        partition: String::new(),
                        first: old.first,
                        last: old.last,
                        closed_at: old.last + 1,
                        keys: old.keys,
                        state: ObjectState::InFlight,
                    });
                }
                Ok(Some(ck))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LogError::Io { path, source: e }),
        }
    }

    /// Replaces the checkpoint durably: temporary file, fsync, rename, fsync of the directory.
    pub fn save(
        &self,
        consumer: &str,
        stream: &str,
        shard: ShardId,
        checkpoint: &Checkpoint,
    ) -> Result<(), LogError> {
        let path = self.path(consumer, stream, shard);
        let dir = path.parent().expect("checkpoint path has a parent");
        super::create_dir_all(dir)?;
        let body = serde_json::to_vec(checkpoint).expect("checkpoint serializes");
        crate::fs::replace_synced(&path, &body).map_err(LogError::io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        assert_eq!(store.load("c", "s", ShardId(0)).unwrap(), None);
        let ck = Checkpoint {
            next: 42,
            objects: vec![
                ObjectEntry {
                    partition: "p".into(),
                    first: 42,
                    last: 99,
                    closed_at: 120,
                    keys: vec!["a/b".into(), "errors/c".into()],
                    state: ObjectState::InFlight,
                },
                ObjectEntry {
                    partition: "q".into(),
                    first: 40,
                    last: 50,
                    closed_at: 51,
                    keys: vec!["c/d".into()],
                    state: ObjectState::Diverted {
                        code: "S3.InvalidArgument".into(),
                        message: "no".into(),
                    },
                },
            ],
            routing: "abc".into(),
            ..Checkpoint::default()
        };
        store.save("c", "s", ShardId(0), &ck).unwrap();
        assert_eq!(store.load("c", "s", ShardId(0)).unwrap(), Some(ck));
        assert_eq!(store.load("other", "s", ShardId(0)).unwrap(), None);
    }

    #[test]
    fn a_checkpoint_with_one_key_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        let path = store.path("c", "s", ShardId(0));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            br#"{"next":5,"in_flight":{"first":5,"last":9,"key":"a/b"}}"#,
        )
        .unwrap();
        let ck = store.load("c", "s", ShardId(0)).unwrap().unwrap();
        assert_eq!(ck.in_flight, None);
        assert_eq!(
            ck.objects,
            vec![ObjectEntry {
                partition: String::new(),
                first: 5,
                last: 9,
                closed_at: 10,
                keys: vec!["a/b".to_string()],
                state: ObjectState::InFlight,
            }]
        );
    }

    #[test]
    fn garbage_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        let path = store.path("c", "s", ShardId(1));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        let err = store.load("c", "s", ShardId(1)).unwrap_err();
        assert!(matches!(err, LogError::BadCheckpoint { .. }), "{err}");
    }
}
