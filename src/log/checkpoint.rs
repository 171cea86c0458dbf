//! Durable per-consumer, per-shard checkpoints.
//!
//! A checkpoint says which sequence number a consumer reads next, and, while an object is being
//! delivered, exactly which records that object holds and under which key. After a crash the
//! consumer rebuilds that same object from the log, so the destination sees one object with one
//! content under one key, however often delivery is retried (exactly-once delivery).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{sync_dir, LogError, SequenceNumber, ShardId};

/// An object whose delivery started but was not yet confirmed.
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

/// A consumer's durable position in one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The lowest sequence number not yet delivered.
    pub next: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<InFlightObject>,
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
                serde_json::from_slice(&raw)
                    .map(Some)
                    .map_err(|e| LogError::BadCheckpoint {
                        path,
                        reason: e.to_string(),
                    })
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
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(checkpoint).expect("checkpoint serializes");
        write_synced(&tmp, &body)?;
        std::fs::rename(&tmp, &path).map_err(LogError::io(&path))?;
        sync_dir(dir)
    }
}

fn write_synced(path: &Path, body: &[u8]) -> Result<(), LogError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(LogError::io(path))?;
    f.write_all(body)
        .and_then(|()| f.sync_all())
        .map_err(LogError::io(path))
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
            in_flight: Some(InFlightObject {
                first: 42,
                last: 99,
                keys: vec!["a/b".into(), "errors/c".into()],
            }),
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
        assert_eq!(ck.in_flight.unwrap().keys, vec!["a/b".to_string()]);
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
