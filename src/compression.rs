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
    /// The Snappy framing format (what Firehose calls `Snappy`).
    Snappy,
    Zstd,
}

impl Compression {
    /// The file extension Firehose gives objects of this format.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Snappy => ".snappy",
            Compression::Zstd => ".zst",
        }
    }

    /// Wraps `inner` in a streaming encoder of this format.
    pub fn encoder<W: Write>(self, inner: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Compression::None => Encoder::None(inner),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::default(),
            )),
            Compression::Snappy => Encoder::Snappy(Box::new(snap::write::FrameEncoder::new(inner))),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(inner, 3)?),
        })
    }
}

/// A streaming encoder; [`Encoder::finish`] writes the trailer and hands back the inner writer.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Snappy(Box<snap::write::FrameEncoder<W>>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Completes the compressed stream.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Snappy(e) => e.into_inner().map_err(|e| e.into_error()),
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
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.write_all(buf),
            Encoder::Gzip(e) => e.write_all(buf),
            Encoder::Snappy(e) => e.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Snappy(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
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
                let mut e = c.encoder(Vec::new()).unwrap();
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
}
