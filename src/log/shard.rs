//! One shard: its segment files, the group-commit writer and readers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::frame::{self, Decoded};
use super::{
    now_ms, sync_dir, LogError, LogOptions, LogRecord, SequenceNumber, ShardId, StartingPosition,
    MAX_DATA_BYTES, MAX_KEY_BYTES,
};

const SEGMENT_SUFFIX: &str = ".seg";

/// A segment file and what is known about it without reading it.
#[derive(Debug, Clone)]
struct Segment {
    base: SequenceNumber,
    path: PathBuf,
    /// Durable bytes (for the active segment, what has been fsynced).
    len: u64,
    /// Sequence number after the last record.
    end: SequenceNumber,
    /// Upper bound of the newest record's arrival time; `None` while empty.
    last_arrival_ms: Option<i64>,
}

/// What readers may see: the segments and the durable end of the log.
struct Tail {
    segments: Vec<Segment>,
    closed: bool,
}

impl Tail {
    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a shard always has an active segment")
    }
    fn durable_end(&self) -> SequenceNumber {
        self.active().end
    }
}

/// Records accepted but not yet on disk, and who waits for them.
struct Pending {
    buf: Vec<u8>,
    waiters: Vec<oneshot::Sender<Result<(), LogError>>>,
    next: SequenceNumber,
    last_arrival_ms: i64,
    closed: bool,
}

/// Bytes of segments a stream keeps on disk, shared by its shards, against its budget.
#[derive(Debug, Default)]
pub struct DiskUsage {
    used: std::sync::atomic::AtomicU64,
}

impl DiskUsage {
    /// Bytes currently held.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn add(&self, n: u64) {
        self.used.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn sub(&self, n: u64) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A shard of a stream: append with group commit, read from any position.
pub struct ShardLog {
    id: ShardId,
    dir: PathBuf,
    opts: LogOptions,
    disk: Arc<DiskUsage>,
    pending: Mutex<Pending>,
    pending_cv: Condvar,
    tail: Mutex<Tail>,
    tail_cv: Condvar,
    pins: Mutex<HashMap<String, SequenceNumber>>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

/// The result of an append: where the records landed, and a future that resolves once they are durable.
pub struct Appended {
    pub first: SequenceNumber,
    pub count: u64,
    pub durable: oneshot::Receiver<Result<(), LogError>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing that runs under these locks panics on data (appends check limits first), so a
    // poisoned lock still guards consistent state; serving on beats stopping.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn segment_path(dir: &Path, base: SequenceNumber) -> PathBuf {
    dir.join(format!("{:020}{SEGMENT_SUFFIX}", base.0))
}

impl ShardLog {
    /// Opens (or creates) the shard in `dir`, truncating a torn tail, and starts its committer thread.
    /// `disk` is the stream's shared usage counter; this shard's segments are added to it.
    pub fn open(
        id: ShardId,
        dir: PathBuf,
        opts: LogOptions,
        disk: Arc<DiskUsage>,
    ) -> Result<Arc<ShardLog>, LogError> {
        super::create_dir_all(&dir)?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(LogError::io(&dir))? {
            let entry = entry.map_err(LogError::io(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
                if let Ok(base) = stem.parse::<u64>() {
                    bases.push(SequenceNumber(base));
                }
            }
        }
        bases.sort();
        // An empty segment holds nothing, and one left by a roll that failed (or a crash right
        // after a roll) would claim a base its predecessor also covers: drop them, so that every
        // sealed segment ends exactly where its successor begins.
        if bases.len() > 1 {
            let mut kept = Vec::with_capacity(bases.len());
            for base in bases {
                let path = segment_path(&dir, base);
                let len = std::fs::metadata(&path).map_err(LogError::io(&path))?.len();
                if len == 0 {
                    std::fs::remove_file(&path).map_err(LogError::io(&path))?;
                } else {
                    kept.push(base);
                }
            }
            sync_dir(&dir)?;
            bases = kept;
        }
        let mut segments = Vec::with_capacity(bases.len() + 1);
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base);
            if i + 1 < bases.len() {
                // A sealed segment was fsynced whole before its successor was created.
                let meta = std::fs::metadata(&path).map_err(LogError::io(&path))?;
                let mtime_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64);
                segments.push(Segment {
                    base,
                    path,
                    len: meta.len(),
                    end: bases[i + 1],
                    last_arrival_ms: mtime_ms,
                });
            } else {
                segments.push(recover_active(&path, base)?);
            }
        }
        if segments.is_empty() {
            let path = segment_path(&dir, SequenceNumber(0));
            File::create(&path).map_err(LogError::io(&path))?;
            sync_dir(&dir)?;
            segments.push(Segment {
                base: SequenceNumber(0),
                path,
                len: 0,
                end: SequenceNumber(0),
                last_arrival_ms: None,
            });
        }
        disk.add(segments.iter().map(|s| s.len).sum());
        let active = segments.last().expect("just ensured").clone();
        let file = OpenOptions::new()
            .append(true)
            .open(&active.path)
            .map_err(LogError::io(&active.path))?;
        let shard = Arc::new(ShardLog {
            id,
            dir,
            opts,
            disk,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                waiters: Vec::new(),
                next: active.end,
                last_arrival_ms: active.last_arrival_ms.unwrap_or(i64::MIN),
                closed: false,
            }),
            pending_cv: Condvar::new(),
            tail: Mutex::new(Tail {
                segments,
                closed: false,
            }),
            tail_cv: Condvar::new(),
            pins: Mutex::new(HashMap::new()),
            committer: Mutex::new(None),
        });
        let worker = Arc::clone(&shard);
        let handle = std::thread::Builder::new()
            .name(format!("log-{}", id.0))
            .spawn(move || worker.run_committer(file))
            .map_err(LogError::io(&shard.dir))?;
        *lock(&shard.committer) = Some(handle);
        Ok(shard)
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Appends records (partition key, data) in order. Nothing is visible to readers, and the
    /// returned future does not resolve, until every one of them is fsynced.
    pub fn append<'a, I>(&self, records: I) -> Result<Appended, LogError>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    {
        let (tx, rx) = oneshot::channel();
        let mut p = lock(&self.pending);
        if p.closed {
            return Err(LogError::Closed { shard: self.id });
        }
        let used = self.disk.used() + p.buf.len() as u64;
        if used >= self.opts.max_disk_bytes {
            return Err(LogError::DiskBudget {
                used,
                budget: self.opts.max_disk_bytes,
            });
        }
        if p.buf.len() > self.opts.max_pending_bytes {
            return Err(LogError::Overloaded {
                shard: self.id,
                pending: p.buf.len(),
            });
        }
        // Arrival times never go backwards within a shard, so AT_TIMESTAMP and retention can rely on order.
        let arrival = now_ms().max(p.last_arrival_ms);
        let first = p.next;
        let mut next = first.0;
        let start_len = p.buf.len();
        for (index, (key, data)) in records.into_iter().enumerate() {
            if key.len() > MAX_KEY_BYTES || data.len() > MAX_DATA_BYTES {
                // Nothing of this append is kept: the frames before it are cut off again.
                p.buf.truncate(start_len);
                return Err(LogError::RecordTooLarge {
                    index,
                    key_len: key.len(),
                    data_len: data.len(),
                });
            }
            frame::encode_into(&mut p.buf, SequenceNumber(next), arrival, key, data);
            next += 1;
        }
        p.next = SequenceNumber(next);
        p.last_arrival_ms = arrival;
        p.waiters.push(tx);
        drop(p);
        self.pending_cv.notify_one();
        Ok(Appended {
            first,
            count: next - first.0,
            durable: rx,
        })
    }

    fn run_committer(self: Arc<Self>, mut file: File) {
        let mut spare: Vec<u8> = Vec::new();
        loop {
            let (mut buf, waiters, next, last_arrival) = {
                let mut p = lock(&self.pending);
                while p.buf.is_empty() && !p.closed {
                    p = self.pending_cv.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                if p.buf.is_empty() {
                    break;
                }
                let buf = std::mem::replace(&mut p.buf, std::mem::take(&mut spare));
                (
                    buf,
                    std::mem::take(&mut p.waiters),
                    p.next,
                    p.last_arrival_ms,
                )
            };
            let active_path = lock(&self.tail).active().path.clone();
            let written = file.write_all(&buf).and_then(|()| file.sync_data());
            match written {
                Ok(()) => {
                    let sealed = {
                        let mut tail = lock(&self.tail);
                        let seg = tail.segments.last_mut().expect("active segment");
                        seg.len += buf.len() as u64;
                        self.disk.add(buf.len() as u64);
                        seg.end = next;
                        seg.last_arrival_ms = Some(last_arrival);
                        seg.len >= self.opts.segment_bytes
                    };
                    self.tail_cv.notify_all();
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                    if sealed {
                        match self.roll(next) {
                            Ok(f) => file = f,
                            Err(e) => tracing::error!(shard = %self.id, error = %e,
                                "could not start a new segment; appending to the current one"),
                        }
                    }
                }
                Err(e) => {
                    let reason = format!("{}: {e}", active_path.display());
                    tracing::error!(shard = %self.id, %reason, "log write failed; rolling back");
                    self.roll_back(&mut file, waiters, &reason);
                }
            }
            buf.clear();
            spare = buf;
        }
        let _ = file.sync_data();
    }

    /// After a failed write: cut the file back to its durable length and fail every pending append, so
    /// sequence numbers stay contiguous on disk. If even that fails, the shard refuses further appends.
    fn roll_back(
        &self,
        file: &mut File,
        waiters: Vec<oneshot::Sender<Result<(), LogError>>>,
        reason: &str,
    ) {
        let (durable_len, durable_end) = {
            let tail = lock(&self.tail);
            (tail.active().len, tail.active().end)
        };
        let truncated = file.set_len(durable_len).and_then(|()| file.sync_data());
        let mut p = lock(&self.pending);
        let mut all = waiters;
        all.append(&mut p.waiters);
        p.buf.clear();
        p.next = durable_end;
        if let Err(e) = truncated {
            tracing::error!(shard = %self.id, error = %e, "could not roll back a failed write; closing the shard");
            p.closed = true;
        }
        drop(p);
        for w in all {
            let _ = w.send(Err(LogError::WriteFailed {
                shard: self.id,
                reason: reason.to_string(),
            }));
        }
    }

    /// Seals the active segment and starts a new one whose first record will be `base`.
    fn roll(&self, base: SequenceNumber) -> Result<File, LogError> {
        let path = segment_path(&self.dir, base);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(LogError::io(&path))?;
        if let Err(e) = sync_dir(&self.dir) {
            // Appends continue in the current segment; an empty file must not be left to claim
            // `base` (recovery also drops empty segments, in case this removal fails too).
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        lock(&self.tail).segments.push(Segment {
            base,
            path,
            len: 0,
            end: base,
            last_arrival_ms: None,
        });
        Ok(file)
    }

    /// Sequence number the next durable record will get; everything below it is readable.
    pub fn durable_end(&self) -> SequenceNumber {
        lock(&self.tail).durable_end()
    }

    /// Oldest retained sequence number.
    pub fn trim_horizon(&self) -> SequenceNumber {
        lock(&self.tail).segments[0].base
    }

    /// Blocks until records at or after `seq` are durable, the shard closes, or `timeout` passes.
    /// Returns whether such records exist.
    pub fn wait_for(&self, seq: SequenceNumber, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut tail = lock(&self.tail);
        loop {
            if tail.durable_end() > seq {
                return true;
            }
            let now = Instant::now();
            if tail.closed || now >= deadline {
                return false;
            }
            tail = self
                .tail_cv
                .wait_timeout(tail, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wakes every waiting reader, e.g. so that a draining pipeline notices the drain promptly.
    pub fn wake_readers(&self) {
        self.tail_cv.notify_all();
    }

    /// Records that `consumer` still needs every record from `next` on; retention keeps them.
    pub fn pin(&self, consumer: &str, next: SequenceNumber) {
        lock(&self.pins).insert(consumer.to_string(), next);
    }

    /// Whether the stream's log has reached its disk budget.
    pub fn over_disk_budget(&self) -> bool {
        self.disk.used() >= self.opts.max_disk_bytes
    }

    /// Deletes sealed segments that every pinned consumer has passed and whose newest record
    /// arrived before `now - retention` — or, while the stream is over its disk budget, regardless
    /// of age (delivered data goes first). Returns how many were deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        let floor = lock(&self.pins).values().min().copied();
        let cutoff = now_ms - self.opts.retention.as_millis() as i64;
        let pressed = self.over_disk_budget();
        let mut doomed = Vec::new();
        {
            let mut tail = lock(&self.tail);
            while tail.segments.len() > 1 {
                let seg = &tail.segments[0];
                let old = pressed || seg.last_arrival_ms.is_none_or(|t| t < cutoff);
                let consumed = floor.is_none_or(|f| seg.end <= f);
                if !(old && consumed) {
                    break;
                }
                let seg = tail.segments.remove(0);
                doomed.push((seg.path, seg.len));
            }
        }
        for (path, len) in &doomed {
            std::fs::remove_file(path).map_err(LogError::io(path))?;
            self.disk.sub(*len);
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }

    /// A reader positioned as requested.
    pub fn reader(self: &Arc<Self>, start: StartingPosition) -> ShardReader {
        let tail = lock(&self.tail);
        let (next, skip_before_ms) = match start {
            StartingPosition::TrimHorizon => (tail.segments[0].base, None),
            StartingPosition::Latest => (tail.durable_end(), None),
            StartingPosition::AtSequenceNumber(s) => (s, None),
            StartingPosition::AfterSequenceNumber(s) => (s.next(), None),
            StartingPosition::AtTimestamp(t) => {
                // Skip whole segments that ended before `t`, then scan.
                let first = tail
                    .segments
                    .iter()
                    .find(|s| s.last_arrival_ms.is_none_or(|a| a >= t))
                    .unwrap_or_else(|| tail.active());
                (first.base, Some(t))
            }
        };
        drop(tail);
        ShardReader {
            shard: Arc::clone(self),
            next,
            skip_before_ms,
            cursor: None,
            drop_behind: false,
        }
    }

    /// Stops accepting appends, writes what is pending, and stops the committer thread.
    pub fn close(&self) {
        lock(&self.pending).closed = true;
        self.pending_cv.notify_all();
        if let Some(handle) = lock(&self.committer).take() {
            let _ = handle.join();
        }
        lock(&self.tail).closed = true;
        self.tail_cv.notify_all();
    }
}

/// Scans the active segment frame by frame (streaming, so memory does not grow with the segment),
/// truncating a torn or corrupt tail.
fn recover_active(path: &Path, base: SequenceNumber) -> Result<Segment, LogError> {
    use std::io::{BufReader, Read};
    let file = File::open(path).map_err(LogError::io(path))?;
    let file_len = file.metadata().map_err(LogError::io(path))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (mut len, mut next, mut last_arrival) = (0u64, base, None);
    let mut frame_buf = Vec::new();
    loop {
        let mut header = [0u8; frame::HEADER_LEN];
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if body_len > frame::MAX_BODY_LEN {
            break;
        }
        frame_buf.clear();
        frame_buf.extend_from_slice(&header);
        frame_buf.resize(frame::HEADER_LEN + body_len, 0);
        if reader
            .read_exact(&mut frame_buf[frame::HEADER_LEN..])
            .is_err()
        {
            break;
        }
        match frame::decode(&Bytes::copy_from_slice(&frame_buf)) {
            Decoded::Frame { record, len: n } if record.sequence == next => {
                len += n as u64;
                next = record.sequence.next();
                last_arrival = Some(record.arrival_ms);
            }
            _ => break,
        }
    }
    if len < file_len {
        tracing::warn!(
            path = %path.display(),
            kept = len,
            dropped = file_len - len,
            "truncating torn tail of log segment"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(LogError::io(path))?;
        f.set_len(len)
            .and_then(|()| f.sync_all())
            .map_err(LogError::io(path))?;
    }
    Ok(Segment {
        base,
        path: path.to_path_buf(),
        len,
        end: next,
        last_arrival_ms: last_arrival,
    })
}

/// Where a reader is inside a segment file.
struct Cursor {
    base: SequenceNumber,
    file: File,
    offset: u64,
}

/// A position in one shard that reads forward, Kinesis-iterator style. Sees only durable records.
pub struct ShardReader {
    shard: Arc<ShardLog>,
    next: SequenceNumber,
    skip_before_ms: Option<i64>,
    cursor: Option<Cursor>,
    drop_behind: bool,
}

impl ShardReader {
    /// Sequence number of the next record this reader returns.
    pub fn position(&self) -> SequenceNumber {
        self.next
    }

    /// Asks the kernel to drop cached pages of what this reader has passed. For the one consumer that
    /// reads a shard as it is written (its delivery stream): the page cache then stays small and
    /// recycles warm pages instead of growing into memory that was never touched, which on virtual
    /// machines makes every appended byte several times more expensive to copy. Other readers of
    /// the same bytes fall back to the disk.
    pub fn drop_cache_behind(mut self) -> Self {
        self.drop_behind = true;
        self
    }

    /// Repositions the reader at `seq`.
    pub fn seek(&mut self, seq: SequenceNumber) {
        self.next = seq;
        self.skip_before_ms = None;
        self.cursor = None;
    }

    /// Blocks until a record is available to read, or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.shard.wait_for(self.next, timeout)
    }

    /// Returns up to `max_records` records and roughly `max_bytes` of data (at least one record when
    /// any is durable), in sequence order; an empty result means the reader is at the durable end.
    pub fn read(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let max_records = max_records.clamp(1, super::MAX_READ_RECORDS);
        let max_bytes = max_bytes.clamp(1, super::MAX_READ_BYTES);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_records && bytes < max_bytes {
            // Find the segment holding `next` and how far it may be read.
            let (limit, sealed_next) = {
                let tail = lock(&self.shard.tail);
                let oldest = tail.segments[0].base;
                if self.next < oldest {
                    return Err(LogError::Trimmed {
                        shard: self.shard.id,
                        requested: self.next,
                        oldest,
                    });
                }
                if self.next >= tail.durable_end() {
                    break;
                }
                let idx = tail.segments.partition_point(|s| s.base <= self.next) - 1;
                let seg = &tail.segments[idx];
                if self.cursor.as_ref().is_none_or(|c| c.base != seg.base) {
                    let file = File::open(&seg.path).map_err(LogError::io(&seg.path))?;
                    self.cursor = Some(Cursor {
                        base: seg.base,
                        file,
                        offset: 0,
                    });
                }
                let sealed_next = tail.segments.get(idx + 1).map(|s| s.base);
                (seg.len, sealed_next)
            };
            let cursor = self.cursor.as_mut().expect("cursor just set");
            if cursor.offset >= limit {
                match sealed_next {
                    Some(base) => {
                        // Finished a sealed segment: continue in the next one.
                        self.next = self.next.max(base);
                        self.cursor = None;
                        continue;
                    }
                    None => break,
                }
            }
            let want = (limit - cursor.offset).min((max_bytes - bytes).max(256 << 10) as u64);
            let chunk = read_chunk(cursor, want, limit, self.shard.dir.as_path())?;
            let mut at = 0usize;
            while at < chunk.len() && out.len() < max_records && bytes < max_bytes {
                match frame::decode(&chunk.slice(at..)) {
                    Decoded::Frame { record, len } => {
                        at += len;
                        if record.sequence < self.next {
                            continue;
                        }
                        if let Some(t) = self.skip_before_ms {
                            if record.arrival_ms < t {
                                self.next = record.sequence.next();
                                continue;
                            }
                            self.skip_before_ms = None;
                        }
                        self.next = record.sequence.next();
                        bytes += record.data.len();
                        out.push(record);
                    }
                    Decoded::Incomplete { .. } => break,
                    Decoded::Corrupt => {
                        return Err(LogError::Corrupt {
                            path: segment_path(&self.shard.dir, cursor.base),
                            offset: cursor.offset + at as u64,
                        })
                    }
                }
            }
            cursor.offset += at as u64;
            if self.drop_behind {
                crate::fs::drop_cached(&cursor.file, 0, cursor.offset & !4095);
            }
        }
        Ok(out)
    }
}

/// Reads at least one whole frame (growing the read if a frame is larger than `want`).
fn read_chunk(cursor: &mut Cursor, want: u64, limit: u64, dir: &Path) -> Result<Bytes, LogError> {
    let mut len = want;
    loop {
        let mut buf = vec![0u8; len as usize];
        cursor
            .file
            .read_exact_at(&mut buf, cursor.offset)
            .map_err(LogError::io(dir))?;
        let bytes = Bytes::from(buf);
        match frame::decode(&bytes) {
            Decoded::Incomplete { needed } if (needed as u64) > len => {
                if cursor.offset + needed as u64 > limit {
                    return Err(LogError::Corrupt {
                        path: segment_path(dir, cursor.base),
                        offset: cursor.offset,
                    });
                }
                len = needed as u64;
            }
            _ => return Ok(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts(segment_bytes: u64) -> LogOptions {
        LogOptions {
            segment_bytes,
            retention: Duration::from_secs(3600),
            max_pending_bytes: 64 << 20,
            max_disk_bytes: u64::MAX,
        }
    }

    fn open_shard(dir: impl Into<PathBuf>, opts: LogOptions) -> Arc<ShardLog> {
        ShardLog::open(ShardId(0), dir.into(), opts, Arc::default()).unwrap()
    }

    fn append_all(shard: &ShardLog, records: &[&[u8]]) -> SequenceNumber {
        let a = shard
            .append(records.iter().map(|r| (&b""[..], *r)))
            .unwrap();
        a.durable.blocking_recv().unwrap().unwrap();
        a.first
    }

    fn read_all(reader: &mut ShardReader) -> Vec<LogRecord> {
        let mut out = Vec::new();
        loop {
            let batch = reader.read(3, 1 << 20).unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }

    fn datas(records: &[LogRecord]) -> Vec<Vec<u8>> {
        records.iter().map(|r| r.data.to_vec()).collect()
    }

    #[test]
    fn appends_are_read_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open_shard(dir.path().join("s"), opts(100));
        let payloads: Vec<Vec<u8>> = (0..50u32)
            .map(|i| format!("record-{i}").into_bytes())
            .collect();
        for chunk in payloads.chunks(4) {
            let refs: Vec<&[u8]> = chunk.iter().map(|p| p.as_slice()).collect();
            append_all(&shard, &refs);
        }
        assert!(lock(&shard.tail).segments.len() > 3, "small segments roll");
        let mut reader = shard.reader(StartingPosition::TrimHorizon);
        let got = read_all(&mut reader);
        assert_eq!(datas(&got), payloads);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.sequence, SequenceNumber(i as u64));
        }
        assert_eq!(reader.position(), SequenceNumber(50));
        shard.close();

        // Reopening keeps everything and continues the sequence.
        let shard = open_shard(dir.path().join("s"), opts(100));
        assert_eq!(append_all(&shard, &[b"after"]), SequenceNumber(50));
        let got =
            read_all(&mut shard.reader(StartingPosition::AtSequenceNumber(SequenceNumber(49))));
        assert_eq!(datas(&got), vec![b"record-49".to_vec(), b"after".to_vec()]);
        shard.close();
    }

    #[test]
    fn iterator_positions() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open_shard(dir.path().to_path_buf(), opts(64));
        append_all(&shard, &[b"a", b"b", b"c"]);
        std::thread::sleep(Duration::from_millis(5));
        let t = now_ms();
        std::thread::sleep(Duration::from_millis(5));
        append_all(&shard, &[b"d", b"e"]);

        let read = |pos| datas(&read_all(&mut shard.reader(pos)));
        let bytes = |v: &[&[u8]]| v.iter().map(|b| b.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            read(StartingPosition::TrimHorizon),
            bytes(&[b"a", b"b", b"c", b"d", b"e"])
        );
        assert_eq!(
            read(StartingPosition::AtSequenceNumber(SequenceNumber(2))),
            bytes(&[b"c", b"d", b"e"])
        );
        assert_eq!(
            read(StartingPosition::AfterSequenceNumber(SequenceNumber(2))),
            bytes(&[b"d", b"e"])
        );
        assert_eq!(read(StartingPosition::AtTimestamp(t)), bytes(&[b"d", b"e"]));
        assert_eq!(read(StartingPosition::AtTimestamp(0)).len(), 5);
        assert!(read(StartingPosition::AtTimestamp(now_ms() + 1000)).is_empty());

        let mut latest = shard.reader(StartingPosition::Latest);
        assert!(latest.read(10, 1 << 20).unwrap().is_empty());
        assert!(!latest.wait(Duration::from_millis(10)));
        append_all(&shard, &[b"f"]);
        assert!(latest.wait(Duration::from_millis(10)));
        assert_eq!(datas(&latest.read(10, 1 << 20).unwrap()), bytes(&[b"f"]));
        shard.close();
    }

    #[test]
    fn read_limits_are_respected() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open_shard(dir.path().to_path_buf(), opts(1 << 20));
        let big = vec![7u8; 300_000];
        append_all(&shard, &[&big, &big, &big, b"x"]);
        let mut reader = shard.reader(StartingPosition::TrimHorizon);
        assert_eq!(reader.read(2, 10 << 20).unwrap().len(), 2, "record limit");
        assert_eq!(
            reader.read(10, 1).unwrap().len(),
            1,
            "at least one record even over the byte limit"
        );
        assert_eq!(reader.read(10, 10 << 20).unwrap().len(), 1);
        shard.close();
    }

    #[test]
    fn records_larger_than_a_read_chunk_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open_shard(dir.path().to_path_buf(), opts(64 << 20));
        let big = vec![9u8; 1_024_000];
        append_all(&shard, &[b"small", &big, b"tail"]);
        let got = read_all(&mut shard.reader(StartingPosition::TrimHorizon));
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].data.len(), 1_024_000);
        shard.close();
    }

    #[test]
    fn concurrent_appends_get_contiguous_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open_shard(dir.path().to_path_buf(), opts(1 << 16));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let shard = Arc::clone(&shard);
                std::thread::spawn(move || {
                    for i in 0..100u8 {
                        let data = [t, i];
                        append_all(&shard, &[&data, &data]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = read_all(&mut shard.reader(StartingPosition::TrimHorizon));
        assert_eq!(got.len(), 1600);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.sequence, SequenceNumber(i as u64));
        }
        // Each append's two records are adjacent and in order.
        for pair in got.chunks(2) {
            assert_eq!(pair[0].data, pair[1].data);
        }
        shard.close();
    }

    #[test]
    fn retention_deletes_old_consumed_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(50);
        o.retention = Duration::from_millis(1);
        let shard = open_shard(dir.path().to_path_buf(), o);
        for i in 0..10u8 {
            append_all(&shard, &[&[i; 40]]);
        }
        let segments = lock(&shard.tail).segments.len();
        assert!(segments >= 5, "{segments}");
        std::thread::sleep(Duration::from_millis(5));
        shard.pin("delivery", SequenceNumber(4));
        let deleted = shard.enforce_retention(now_ms()).unwrap();
        assert!(deleted > 0);
        // Nothing the pinned consumer still needs is gone.
        assert!(shard.trim_horizon() <= SequenceNumber(4));
        let mut reader = shard.reader(StartingPosition::AtSequenceNumber(SequenceNumber(4)));
        assert_eq!(read_all(&mut reader).len(), 6);
        // A reader before the horizon gets a clear error.
        let mut old = shard.reader(StartingPosition::AtSequenceNumber(SequenceNumber(0)));
        assert!(matches!(
            old.read(10, 1 << 20),
            Err(LogError::Trimmed { .. })
        ));
        // Once consumed, everything but the active segment may go.
        shard.pin("delivery", SequenceNumber(10));
        shard.enforce_retention(now_ms()).unwrap();
        assert_eq!(lock(&shard.tail).segments.len(), 1);
        assert_eq!(append_all(&shard, &[b"next"]), SequenceNumber(10));
        shard.close();
    }

    #[test]
    fn disk_budget_refuses_appends_and_frees_delivered_segments_early() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(100);
        o.max_disk_bytes = 500;
        let shard = open_shard(dir.path().to_path_buf(), o);
        let mut appended = 0;
        loop {
            match shard.append([(&b""[..], &[7u8; 80][..])]) {
                Ok(a) => {
                    a.durable.blocking_recv().unwrap().unwrap();
                    appended += 1;
                }
                Err(LogError::DiskBudget { used, budget }) => {
                    assert!(used >= budget);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(appended < 100, "the budget never stopped appends");
        }
        assert!(shard.over_disk_budget());
        // Young segments go early under pressure, but only once delivered.
        shard.pin("delivery", SequenceNumber(0));
        assert_eq!(shard.enforce_retention(now_ms()).unwrap(), 0);
        shard.pin("delivery", SequenceNumber(appended));
        assert!(shard.enforce_retention(now_ms()).unwrap() > 0);
        assert!(!shard.over_disk_budget());
        assert!(shard.append([(&b""[..], &b"again"[..])]).is_ok());
        shard.close();
    }

    #[test]
    fn young_segments_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open_shard(dir.path().to_path_buf(), opts(50));
        for i in 0..5u8 {
            append_all(&shard, &[&[i; 40]]);
        }
        assert_eq!(shard.enforce_retention(now_ms()).unwrap(), 0);
        shard.close();
    }

    #[test]
    fn appends_after_close_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open_shard(dir.path().to_path_buf(), opts(1 << 20));
        shard.close();
        assert!(matches!(
            shard.append([(&b""[..], &b"x"[..])]),
            Err(LogError::Closed { .. })
        ));
    }

    #[test]
    fn empty_segments_left_by_failed_rolls_are_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        {
            let shard = open_shard(path.clone(), opts(1 << 20));
            append_all(&shard, &[b"a", b"b"]);
            shard.close();
        }
        // A roll to base 1 created its file, failed, and records 1.. went on in segment 0.
        std::fs::write(segment_path(&path, SequenceNumber(1)), b"").unwrap();
        let shard = open_shard(path.clone(), opts(1 << 20));
        assert_eq!(
            append_all(&shard, &[b"c"]),
            SequenceNumber(2),
            "no sequence number reused"
        );
        let got = read_all(&mut shard.reader(StartingPosition::TrimHorizon));
        assert_eq!(
            datas(&got),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        shard.close();
    }

    #[test]
    fn oversize_records_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open_shard(dir.path().to_path_buf(), opts(1 << 20));
        let big = vec![0u8; MAX_DATA_BYTES + 1];
        let key = vec![b'k'; MAX_KEY_BYTES + 1];
        assert!(matches!(
            shard.append([(&b""[..], &b"ok"[..]), (&b""[..], &big[..])]),
            Err(LogError::RecordTooLarge { index: 1, .. })
        ));
        assert!(matches!(
            shard.append([(&key[..], &b"x"[..])]),
            Err(LogError::RecordTooLarge { index: 0, .. })
        ));
        let max = vec![1u8; MAX_DATA_BYTES];
        let max_key = vec![b'k'; MAX_KEY_BYTES];
        let a = shard.append([(&max_key[..], &max[..])]).unwrap();
        a.durable.blocking_recv().unwrap().unwrap();
        assert_eq!(
            a.first,
            SequenceNumber(0),
            "refused appends used no sequence numbers"
        );
        let got = read_all(&mut shard.reader(StartingPosition::TrimHorizon));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data.len(), MAX_DATA_BYTES);
        assert_eq!(got[0].partition_key.len(), MAX_KEY_BYTES);
        shard.close();
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segs.sort();
        segs.pop().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

        /// Cutting the last segment at every byte offset of its last record recovers exactly the
        /// records before it, and the next append reuses the lost record's sequence number.
        #[test]
        fn recovery_after_truncation_at_every_offset(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 2..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s");
            {
                let shard = open_shard(path.clone(), opts(1 << 20));
                for p in &payloads {
                    append_all(&shard, &[p]);
                }
                shard.close();
            }
            let seg = last_segment(&path);
            let full = std::fs::read(&seg).unwrap();
            let last = payloads.last().unwrap();
            let last_start = full.len() - frame::framed_len(0, last.len());
            for cut in last_start..full.len() {
                std::fs::write(&seg, &full[..cut]).unwrap();
                let shard = open_shard(path.clone(), opts(1 << 20));
                let got = read_all(&mut shard.reader(StartingPosition::TrimHorizon));
                prop_assert_eq!(datas(&got), payloads[..payloads.len() - 1].to_vec());
                prop_assert_eq!(std::fs::metadata(&seg).unwrap().len(), last_start as u64);
                let seq = append_all(&shard, &[b"again"]);
                prop_assert_eq!(seq, SequenceNumber(payloads.len() as u64 - 1));
                shard.close();
                std::fs::write(&seg, &full).unwrap();
            }
        }

        /// Garbage after the last record is cut off; the records survive.
        #[test]
        fn recovery_discards_trailing_garbage(garbage in proptest::collection::vec(any::<u8>(), 1..64)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s");
            {
                let shard = open_shard(path.clone(), opts(1 << 20));
                append_all(&shard, &[b"one", b"two"]);
                shard.close();
            }
            let seg = last_segment(&path);
            let mut raw = std::fs::read(&seg).unwrap();
            raw.extend_from_slice(&garbage);
            std::fs::write(&seg, &raw).unwrap();
            let shard = open_shard(path.clone(), opts(1 << 20));
            let got = read_all(&mut shard.reader(StartingPosition::TrimHorizon));
            prop_assert_eq!(datas(&got), vec![b"one".to_vec(), b"two".to_vec()]);
            shard.close();
        }
    }
}
