//! A stream: its shards, and how records are routed to them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use md5::{Digest, Md5};

use super::{DiskUsage, LogError, LogOptions, ShardId, ShardLog};

/// A named stream of shards stored under `<data_dir>/streams/<name>/`.
pub struct StreamLog {
    name: String,
    shards: Vec<Arc<ShardLog>>,
    /// Shards that take new appends; shards beyond it (left by a larger earlier config) are only read.
    writable: usize,
    round_robin: AtomicUsize,
}

impl StreamLog {
    /// Opens the stream with `shards` writable shards. Shards already on disk beyond that number stay
    /// open for reading so that nothing they hold is stranded.
    pub fn open(
        data_dir: &std::path::Path,
        name: &str,
        shards: u32,
        opts: &LogOptions,
    ) -> Result<StreamLog, LogError> {
        let dir: PathBuf = data_dir.join("streams").join(name);
        super::create_dir_all(&dir)?;
        let mut count = shards.max(1);
        for entry in std::fs::read_dir(&dir).map_err(LogError::io(&dir))? {
            let entry = entry.map_err(LogError::io(&dir))?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.strip_prefix("shardId-"))
                .and_then(|s| s.parse::<u32>().ok())
            {
                count = count.max(n + 1);
            }
        }
        let disk = Arc::new(DiskUsage::default());
        let shards_vec = (0..count)
            .map(|i| {
                let id = ShardId(i);
                ShardLog::open(
                    id,
                    dir.join(id.to_string()),
                    opts.clone(),
                    Arc::clone(&disk),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StreamLog {
            name: name.to_string(),
            shards: shards_vec,
            writable: shards.max(1) as usize,
            round_robin: AtomicUsize::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every shard, including read-only ones.
    pub fn shards(&self) -> &[Arc<ShardLog>] {
        &self.shards
    }

    /// The shard owning `partition_key`: MD5 of the key as a 128-bit integer, mapped onto equal
    /// contiguous hash-key ranges, one per writable shard (as Kinesis does).
    pub fn shard_for_key(&self, partition_key: &[u8]) -> &Arc<ShardLog> {
        let digest = Md5::digest(partition_key);
        let hash = u128::from_be_bytes(digest.into());
        &self.shards[hash_key_to_index(hash, self.writable)]
    }

    /// The shard for a record without a partition key (Direct PUT): round robin, so every shard is
    /// used while one request's records stay together and in order.
    pub fn next_shard(&self) -> &Arc<ShardLog> {
        let i = self.round_robin.fetch_add(1, Ordering::Relaxed) % self.writable;
        &self.shards[i]
    }

    /// Stops every shard's writer after writing what is pending.
    pub fn close(&self) {
        for shard in &self.shards {
            shard.close();
        }
    }
}

/// Maps a 128-bit hash key to one of `n` equal ranges: shard `i` owns `[i·2¹²⁸/n, (i+1)·2¹²⁸/n)`.
fn hash_key_to_index(hash: u128, n: usize) -> usize {
    // hash·n / 2¹²⁸, computed without overflow by splitting the product into 64-bit halves.
    let n = n as u128;
    let hi = (hash >> 64) * n;
    let lo = (hash & u64::MAX as u128) * n;
    ((hi + (lo >> 64)) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ranges_cover_every_shard_at_their_edges() {
        for n in 1..=7usize {
            assert_eq!(hash_key_to_index(0, n), 0);
            assert_eq!(hash_key_to_index(u128::MAX, n), n - 1);
            for i in 0..n {
                // Starting hash key of shard i is ceil(i·2¹²⁸/n).
                let start = if i == 0 {
                    0
                } else {
                    (u128::MAX / n as u128) * i as u128
                        + ((u128::MAX % n as u128 + 1) * i as u128).div_ceil(n as u128)
                };
                assert_eq!(hash_key_to_index(start, n), i, "n={n} i={i}");
                if i > 0 {
                    assert_eq!(hash_key_to_index(start - 1, n), i - 1, "n={n} i={i}");
                }
            }
        }
    }
}
