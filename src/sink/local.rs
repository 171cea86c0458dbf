//! The embedded default store: a directory on the local filesystem.
//!
//! Objects are written to `<root>/.spillway-tmp/`, fsynced, and renamed into place (same filesystem,
//! so the rename is atomic); new directories and the rename are fsynced too. Files under dot-named
//! directories are not objects: Hive-style readers (DuckDB, Spark, Athena) skip them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use super::{check_key, ObjectStore, ObjectWriter, SinkError};
use crate::fs::{create_dir_all_synced, drop_cached, sync_dir};

const TMP_DIR: &str = ".spillway-tmp";

/// A directory acting as an object store.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens the store, creating the directory and clearing temporary files a crash left behind.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore, SinkError> {
        let root = root.into();
        let tmp = root.join(TMP_DIR);
        let io = |source| SinkError::Io {
            op: "create directory",
            key: tmp.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&tmp).map_err(io)?;
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(LocalStore { root })
    }
}

impl ObjectStore for LocalStore {
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, SinkError> {
        check_key(key)?;
        // One writer per key at a time; a hash keeps the name short whatever the key's length.
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(format!("{}.tmp", crate::fs::md5_hex(key.as_bytes())));
        let file = File::create(&tmp).map_err(|source| SinkError::Io {
            op: "create",
            key: key.to_string(),
            source,
        })?;
        Ok(Box::new(LocalObject {
            key: key.to_string(),
            root: self.root.clone(),
            tmp,
            out: Some(BufWriter::with_capacity(
                super::WRITE_BUFFER,
                WritebackFile::new(file),
            )),
        }))
    }

    fn delete(&self, key: &str) -> Result<(), SinkError> {
        check_key(key)?;
        let path = self.root.join(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(path.parent().unwrap_or(&self.root)).map_err(|source| SinkError::Io {
                    op: "delete",
                    key: key.to_string(),
                    source,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SinkError::Io {
                op: "delete",
                key: key.to_string(),
                source,
            }),
        }
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

struct LocalObject {
    key: String,
    root: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<WritebackFile>>,
}

impl LocalObject {
    fn finish(&mut self) -> io::Result<()> {
        let out = self.out.take().expect("commit runs once");
        let file = out.into_inner().map_err(|e| e.into_error())?.file;
        file.sync_all()?;
        // The object is durable and nobody here reads it again: free its pages now (see
        // `ShardReader::drop_cache_behind` for why that speeds up writing).
        drop_cached(&file, 0, 0);
        drop(file);
        let dest = self.root.join(&self.key);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        create_dir_all_synced(&parent)?;
        std::fs::rename(&self.tmp, &dest)?;
        sync_dir(&parent)
    }
}

impl Write for LocalObject {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.as_mut().expect("not committed").write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.as_mut().expect("not committed").write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().expect("not committed").flush()
    }
}

impl ObjectWriter for LocalObject {
    fn commit(mut self: Box<Self>) -> Result<(), SinkError> {
        self.finish().map_err(|source| SinkError::Io {
            op: "commit",
            key: self.key.clone(),
            source,
        })
    }
}

impl Drop for LocalObject {
    fn drop(&mut self) {
        if self.out.is_some() {
            // Not committed: discard.
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Bytes after which the written part of an object is handed to the disk.
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// A file that starts writeback of every [`WRITEBACK_CHUNK`] as it is written, then waits for the
/// chunk before and drops its pages. A large object thus never piles up as dirty pages that its
/// final fsync would push out at once, stalling the log's own fsyncs behind it (acknowledgement
/// latency), and the page cache it uses stays bounded. Durability still comes from the final fsync.
struct WritebackFile {
    file: File,
    written: u64,
    /// Writeback was started for `[..started)` and waited for up to `settled`.
    started: u64,
    settled: u64,
}

impl WritebackFile {
    fn new(file: File) -> Self {
        WritebackFile {
            file,
            written: 0,
            started: 0,
            settled: 0,
        }
    }

    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        if self.started > self.settled {
            // SAFETY: sync_file_range only reads its integer arguments; the fd is open.
            unsafe {
                libc::sync_file_range(
                    fd,
                    self.settled as libc::off64_t,
                    (self.started - self.settled) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            drop_cached(&self.file, self.settled, self.started - self.settled);
            self.settled = self.started;
        }
        // SAFETY: as above.
        unsafe {
            libc::sync_file_range(
                fd,
                self.started as libc::off64_t,
                (self.written - self.started) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started = self.written;
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_CHUNK {
            self.start_writeback();
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_makes_object_visible_and_drop_discards() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let mut w = store.create("a/b/c.txt").unwrap();
        w.write_all(b"hello").unwrap();
        assert!(
            !dir.path().join("a/b/c.txt").exists(),
            "visible before commit"
        );
        w.commit().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("a/b/c.txt")).unwrap(),
            b"hello"
        );

        let mut w = store.create("a/b/d.txt").unwrap();
        w.write_all(b"nope").unwrap();
        drop(w);
        assert!(!dir.path().join("a/b/d.txt").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(),
            0
        );

        // Replays overwrite.
        let mut w = store.create("a/b/c.txt").unwrap();
        w.write_all(b"again").unwrap();
        w.commit().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("a/b/c.txt")).unwrap(),
            b"again"
        );
        store.delete("a/b/c.txt").unwrap();
        store.delete("a/b/c.txt").unwrap();
        assert!(!dir.path().join("a/b/c.txt").exists());
    }

    #[test]
    fn long_keys_get_short_temporary_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let key = format!("{}/{}/x", "a".repeat(250), "b".repeat(250));
        let mut w = store.create(&key).unwrap();
        w.write_all(b"long").unwrap();
        w.commit().unwrap();
        assert_eq!(std::fs::read(dir.path().join(&key)).unwrap(), b"long");
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        for bad in ["../x", "/etc/x", "a//b", "a/./b", ""] {
            assert!(store.create(bad).is_err(), "{bad:?} accepted");
        }
    }
}
