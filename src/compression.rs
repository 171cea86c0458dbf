//! Object compression, applied as a stream while records are buffered (size hints count bytes
//! before compression, as Firehose does).

use std::io::{self, Write};

use serde::Deserialize;

/// Firehose `CompressionFormat`, plus zstd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    /// A ZIP archive with one deflated entry named like the object without `.zip`.
    Zip,
    /// The Snappy framing format (what Firehose calls `Snappy`).
    Snappy,
    /// Hadoop's block format (`HADOOP_SNAPPY`): per block of ≤ 256 KiB, the raw length and the
    /// compressed length as big-endian u32, then the raw Snappy block. Readable by Hadoop's
    /// `SnappyCodec` (Hive, Spark), hence Hadoop's `.snappy` extension.
    HadoopSnappy,
    Zstd,
}

impl Compression {
    /// The file extension Firehose gives objects of this format.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zip => ".zip",
            Compression::Snappy | Compression::HadoopSnappy => ".snappy",
            Compression::Zstd => ".zst",
        }
    }

    /// The name Firehose shows for this format (`CompressionFormat`).
    pub fn firehose_name(self) -> &'static str {
        match self {
            Compression::None => "UNCOMPRESSED",
            Compression::Gzip => "GZIP",
            Compression::Zip => "ZIP",
            Compression::Snappy => "Snappy",
            Compression::HadoopSnappy => "HADOOP_SNAPPY",
            Compression::Zstd => "ZSTD",
        }
    }

    /// The level to compress at: `requested`, checked against this format's range, or its default
    /// (gzip and zip 6, zstd 3); `None` for formats without levels.
    pub fn level(self, requested: Option<u32>) -> Result<Option<u32>, String> {
        let (max, default) = match self {
            Compression::Gzip | Compression::Zip => (9, 6),
            Compression::Zstd => (19, 3),
            _ => {
                return match requested {
                    None => Ok(None),
                    Some(_) => Err(format!(
                        "compression {} has no levels",
                        self.firehose_name()
                    )),
                }
            }
        };
        match requested {
            None => Ok(Some(default)),
            Some(l) if (1..=max).contains(&l) => Ok(Some(l)),
            Some(l) => Err(format!(
                "compression_level must be between 1 and {max} for {}, got {l}",
                self.firehose_name()
            )),
        }
    }

    /// Wraps `inner` in a streaming encoder of this format at `level` (see [`Compression::level`]);
    /// `entry_name` names the entry of a ZIP.
    pub fn encoder<W: Write>(
        self,
        inner: W,
        entry_name: &str,
        level: Option<u32>,
    ) -> io::Result<Encoder<W>> {
        let deflate_level = flate2::Compression::new(level.unwrap_or(6).clamp(1, 9));
        Ok(match self {
            Compression::None => Encoder::None(inner),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(inner, deflate_level)),
            Compression::Snappy => Encoder::Snappy(Box::new(snap::write::FrameEncoder::new(inner))),
            Compression::HadoopSnappy => Encoder::HadoopSnappy(Box::new(HadoopSnappy::new(inner))),
            Compression::Zip => {
                Encoder::Zip(Box::new(ZipEntry::new(inner, entry_name, deflate_level)?))
            }
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(
                inner,
                level.unwrap_or(3).clamp(1, 19) as i32,
            )?),
        })
    }
}

/// A streaming encoder; [`Encoder::finish`] writes the trailer and hands back the inner writer.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Snappy(Box<snap::write::FrameEncoder<W>>),
    HadoopSnappy(Box<HadoopSnappy<W>>),
    Zip(Box<ZipEntry<W>>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Completes the compressed stream.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Snappy(e) => e.into_inner().map_err(|e| e.into_error()),
            Encoder::HadoopSnappy(e) => e.finish(),
            Encoder::Zip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Snappy(e) => e.write(buf),
            Encoder::HadoopSnappy(e) => e.write(buf),
            Encoder::Zip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.write_all(buf),
            Encoder::Gzip(e) => e.write_all(buf),
            Encoder::Snappy(e) => e.write_all(buf),
            Encoder::HadoopSnappy(e) => e.write_all(buf),
            Encoder::Zip(e) => e.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Snappy(e) => e.flush(),
            Encoder::HadoopSnappy(e) => e.flush(),
            Encoder::Zip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// Raw bytes per Hadoop Snappy block (Hadoop's default `io.compression.codec.snappy.buffersize`).
const HADOOP_BLOCK: usize = 256 << 10;

/// Hadoop's `BlockCompressorStream` framing around raw Snappy blocks.
pub struct HadoopSnappy<W: Write> {
    inner: W,
    block: Vec<u8>,
    encoder: snap::raw::Encoder,
}

impl<W: Write> HadoopSnappy<W> {
    fn new(inner: W) -> Self {
        HadoopSnappy {
            inner,
            block: Vec::with_capacity(HADOOP_BLOCK),
            encoder: snap::raw::Encoder::new(),
        }
    }

    fn emit_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let compressed = self
            .encoder
            .compress_vec(&self.block)
            .map_err(io::Error::other)?;
        self.inner
            .write_all(&(self.block.len() as u32).to_be_bytes())?;
        self.inner
            .write_all(&(compressed.len() as u32).to_be_bytes())?;
        self.inner.write_all(&compressed)?;
        self.block.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.emit_block()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for HadoopSnappy<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(HADOOP_BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == HADOOP_BLOCK {
            self.emit_block()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts the bytes written through it.
struct Counting<W: Write> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A ZIP archive holding one deflated entry, written as a stream: the local header carries no sizes
/// (general-purpose flag bit 3) and a data descriptor follows the data. The entry's timestamp is fixed
/// (1980-01-01) so that a replayed object is byte-identical. Objects stay far below 4 GiB, so no ZIP64.
pub struct ZipEntry<W: Write> {
    deflate: flate2::write::DeflateEncoder<Counting<W>>,
    name: Vec<u8>,
    crc: crc32fast::Hasher,
    raw_len: u64,
    header_len: u64,
}

const ZIP_DOS_DATE_1980_01_01: u16 = 0x0021;

impl<W: Write> ZipEntry<W> {
    fn new(mut inner: W, name: &str, level: flate2::Compression) -> io::Result<Self> {
        let name = name.as_bytes().to_vec();
        let mut h = Vec::with_capacity(30 + name.len());
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes()); // local file header
        h.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
        h.extend_from_slice(&0x0008u16.to_le_bytes()); // sizes in the data descriptor
        h.extend_from_slice(&8u16.to_le_bytes()); // deflate
        h.extend_from_slice(&0u16.to_le_bytes()); // time
        h.extend_from_slice(&ZIP_DOS_DATE_1980_01_01.to_le_bytes());
        h.extend_from_slice(&[0; 12]); // crc, compressed and raw size: in the descriptor
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        h.extend_from_slice(&name);
        inner.write_all(&h)?;
        Ok(ZipEntry {
            deflate: flate2::write::DeflateEncoder::new(Counting { inner, count: 0 }, level),
            name,
            crc: crc32fast::Hasher::new(),
            raw_len: 0,
            header_len: h.len() as u64,
        })
    }

    fn finish(self) -> io::Result<W> {
        let ZipEntry {
            deflate,
            name,
            crc,
            raw_len,
            header_len,
        } = self;
        let Counting {
            inner: mut out,
            count: compressed,
        } = deflate.finish()?;
        let crc = crc.finalize();
        let too_big = |what| io::Error::other(format!("ZIP {what} over 4 GiB"));
        let compressed = u32::try_from(compressed).map_err(|_| too_big("entry"))?;
        let raw = u32::try_from(raw_len).map_err(|_| too_big("entry"))?;
        let mut t = Vec::with_capacity(16 + 46 + name.len() + 22);
        t.extend_from_slice(&0x0807_4b50u32.to_le_bytes()); // data descriptor
        t.extend_from_slice(&crc.to_le_bytes());
        t.extend_from_slice(&compressed.to_le_bytes());
        t.extend_from_slice(&raw.to_le_bytes());
        let directory_at = header_len + u64::from(compressed) + 16;
        let directory_at = u32::try_from(directory_at).map_err(|_| too_big("archive"))?;
        t.extend_from_slice(&0x0201_4b50u32.to_le_bytes()); // central directory header
        t.extend_from_slice(&20u16.to_le_bytes()); // made by: 2.0
        t.extend_from_slice(&20u16.to_le_bytes()); // needed: 2.0
        t.extend_from_slice(&0x0008u16.to_le_bytes());
        t.extend_from_slice(&8u16.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&ZIP_DOS_DATE_1980_01_01.to_le_bytes());
        t.extend_from_slice(&crc.to_le_bytes());
        t.extend_from_slice(&compressed.to_le_bytes());
        t.extend_from_slice(&raw.to_le_bytes());
        t.extend_from_slice(&(name.len() as u16).to_le_bytes());
        t.extend_from_slice(&[0; 12]); // extra, comment, disk, internal attrs; then external attrs
        t.extend_from_slice(&0u32.to_le_bytes()); // local header offset
        t.extend_from_slice(&name);
        let directory_len = (46 + name.len()) as u32;
        t.extend_from_slice(&0x0605_4b50u32.to_le_bytes()); // end of central directory
        t.extend_from_slice(&[0; 4]); // this disk, directory's disk
        t.extend_from_slice(&1u16.to_le_bytes());
        t.extend_from_slice(&1u16.to_le_bytes());
        t.extend_from_slice(&directory_len.to_le_bytes());
        t.extend_from_slice(&directory_at.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes()); // comment length
        out.write_all(&t)?;
        Ok(out)
    }
}

impl<W: Write> Write for ZipEntry<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.deflate.write(buf)?;
        self.crc.update(&buf[..n]);
        self.raw_len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.deflate.flush()
    }
}

/// Bytes a [`LazyEncoder`] holds before it starts its compressor.
pub const LAZY_START_BYTES: usize = 64 << 10;

/// An encoder that starts its compressor only once it has [`LAZY_START_BYTES`] to compress (or at
/// [`LazyEncoder::finish`]). A compressor's state is a few hundred KiB (zlib's window and hash
/// tables, zstd's context), which with dynamic partitioning would be paid by every open partition;
/// this way a partition that receives little costs only its bytes. The output decodes to what was
/// written and is a pure function of the writes (so a replayed object is byte-identical).
pub struct LazyEncoder<W: Write> {
    state: Lazy<W>,
}

enum Lazy<W: Write> {
    Pending {
        inner: W,
        compression: Compression,
        entry_name: String,
        level: Option<u32>,
        bytes: Vec<u8>,
    },
    Started(Encoder<W>),
    /// Only while switching from `Pending` to `Started`.
    Switching,
}

impl<W: Write> LazyEncoder<W> {
    /// An encoder for `compression` over `inner`; uncompressed output starts at once.
    pub fn new(
        compression: Compression,
        inner: W,
        entry_name: &str,
        level: Option<u32>,
    ) -> io::Result<LazyEncoder<W>> {
        let state = if compression == Compression::None {
            Lazy::Started(compression.encoder(inner, entry_name, level)?)
        } else {
            Lazy::Pending {
                inner,
                compression,
                entry_name: entry_name.to_string(),
                level,
                bytes: Vec::new(),
            }
        };
        Ok(LazyEncoder { state })
    }

    fn start(&mut self) -> io::Result<&mut Encoder<W>> {
        if let Lazy::Pending { .. } = self.state {
            let Lazy::Pending {
                inner,
                compression,
                entry_name,
                level,
                bytes,
            } = std::mem::replace(&mut self.state, Lazy::Switching)
            else {
                unreachable!("checked to be pending");
            };
            let mut encoder = compression.encoder(inner, &entry_name, level)?;
            encoder.write_all(&bytes)?;
            self.state = Lazy::Started(encoder);
        }
        match &mut self.state {
            Lazy::Started(e) => Ok(e),
            _ => Err(io::Error::other("compressor failed to start earlier")),
        }
    }

    /// Completes the compressed stream.
    pub fn finish(mut self) -> io::Result<W> {
        self.start()?;
        match self.state {
            Lazy::Started(e) => e.finish(),
            _ => Err(io::Error::other("compressor failed to start")),
        }
    }
}

impl<W: Write> Write for LazyEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Lazy::Pending { bytes, .. } = &mut self.state {
            if bytes.len() + buf.len() <= LAZY_START_BYTES {
                bytes.extend_from_slice(buf);
                return Ok(());
            }
        }
        self.start()?.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.state {
            Lazy::Started(e) => e.flush(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match c {
            Compression::None => out.extend_from_slice(data),
            Compression::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Snappy => {
                snap::read::FrameDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Zstd => out = zstd::decode_all(data).unwrap(),
            Compression::HadoopSnappy => {
                let mut rest = data;
                while !rest.is_empty() {
                    let raw = u32::from_be_bytes(rest[0..4].try_into().unwrap()) as usize;
                    let len = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
                    let block = snap::raw::Decoder::new()
                        .decompress_vec(&rest[8..8 + len])
                        .unwrap();
                    assert_eq!(block.len(), raw);
                    assert!(raw <= HADOOP_BLOCK);
                    out.extend(block);
                    rest = &rest[8 + len..];
                }
            }
            Compression::Zip => {
                // Local header, deflate data, data descriptor; checked against the central directory.
                assert_eq!(&data[0..4], &[0x50, 0x4b, 0x03, 0x04]);
                let name_len = u16::from_le_bytes([data[26], data[27]]) as usize;
                assert_eq!(&data[30..30 + name_len], b"entry");
                let mut d = flate2::read::DeflateDecoder::new(&data[30 + name_len..]);
                d.read_to_end(&mut out).unwrap();
                let eocd = &data[data.len() - 22..];
                assert_eq!(&eocd[0..4], &[0x50, 0x4b, 0x05, 0x06]);
                let dir_at = u32::from_le_bytes(eocd[16..20].try_into().unwrap()) as usize;
                let dir = &data[dir_at..];
                assert_eq!(&dir[0..4], &[0x50, 0x4b, 0x01, 0x02]);
                let crc = u32::from_le_bytes(dir[16..20].try_into().unwrap());
                let raw = u32::from_le_bytes(dir[24..28].try_into().unwrap());
                assert_eq!(raw as usize, out.len());
                assert_eq!(crc, crc32fast::hash(&out));
            }
        }
        out
    }

    #[test]
    fn every_format_round_trips_and_is_deterministic() {
        let payload: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Zstd,
        ] {
            let encode = || {
                let mut e = c
                    .encoder(Vec::new(), "entry", c.level(None).unwrap())
                    .unwrap();
                for chunk in payload.chunks(777) {
                    e.write_all(chunk).unwrap();
                }
                e.finish().unwrap()
            };
            let a = encode();
            assert_eq!(
                a,
                encode(),
                "{c:?} output must be deterministic for exactly-once replays"
            );
            assert_eq!(decode(c, &a), payload, "{c:?}");
        }
    }

    #[test]
    fn lazy_encoders_round_trip_deterministically() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::HadoopSnappy,
            Compression::Zip,
            Compression::Zstd,
        ] {
            for len in [
                0,
                10,
                LAZY_START_BYTES - 1,
                LAZY_START_BYTES,
                LAZY_START_BYTES + 1,
                300_000,
            ] {
                let encode = || {
                    let mut lazy = LazyEncoder::new(c, Vec::new(), "entry", None).unwrap();
                    // Uneven writes, as records are.
                    for chunk in data[..len].chunks(977) {
                        lazy.write_all(chunk).unwrap();
                    }
                    lazy.finish().unwrap()
                };
                let out = encode();
                assert_eq!(decode(c, &out), &data[..len], "{c:?} {len}");
                assert_eq!(
                    out,
                    encode(),
                    "{c:?} {len}: the same writes, the same bytes"
                );
            }
        }
    }
}
