//! Gzip decompression of incoming records (Firehose's CloudWatch Logs decompression), with the
//! output bounded so that a gzip bomb fails cleanly instead of exhausting memory.

use std::io::Read;

use flate2::bufread::MultiGzDecoder;

use super::ProcessError;

/// Size of the read buffer, and of the first allocation of the output.
const CHUNK: usize = 64 * 1024;

/// Decompresses gzip `data`, one or more concatenated members (as `gzip -d` and CloudWatch Logs
/// producers that concatenate do), into at most `max_out` bytes.
///
/// Errors with [`ProcessError::DecompressInvalid`] when `data` is not gzip (it must begin with the
/// gzip magic; empty input is invalid), is truncated, fails its CRC, or has anything but a further
/// gzip member after a member; with [`ProcessError::DecompressTooLarge`] as soon as the output
/// would exceed `max_out`. Memory used stays within about twice `max_out` whatever the input.
pub fn gunzip(data: &[u8], max_out: usize) -> Result<Vec<u8>, ProcessError> {
    if !data.starts_with(&[0x1f, 0x8b]) {
        return Err(ProcessError::DecompressInvalid {
            reason: "not gzip data (missing gzip magic)".to_string(),
        });
    }
    let mut decoder = MultiGzDecoder::new(data);
    // Start small: a record's declared size says nothing trustworthy about its output.
    let mut out = Vec::with_capacity(CHUNK.min(max_out.saturating_add(1)));
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ProcessError::DecompressInvalid {
                    reason: e.to_string(),
                })
            }
        };
        if n > max_out - out.len() {
            return Err(ProcessError::DecompressTooLarge { limit: max_out });
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use proptest::prelude::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        assert_eq!(gunzip(&gzip(b"hello world"), 100).unwrap(), b"hello world");
        assert_eq!(gunzip(&gzip(b""), 0).unwrap(), b"");
    }

    #[test]
    fn multi_member() {
        let mut data = gzip(b"hello ");
        data.extend(gzip(b""));
        data.extend(gzip(b"world"));
        assert_eq!(gunzip(&data, 100).unwrap(), b"hello world");
    }

    #[test]
    fn limit_is_inclusive() {
        let data = gzip(&[7u8; 1000]);
        assert_eq!(gunzip(&data, 1000).unwrap().len(), 1000);
        let err = gunzip(&data, 999).unwrap_err();
        assert_eq!(err, ProcessError::DecompressTooLarge { limit: 999 });
        assert_eq!(err.code(), "Decompression.TooLarge");
        assert_eq!(err.output_type(), super::super::DECOMPRESSION_FAILED);
    }

    #[test]
    fn gzip_bomb_fails_cleanly() {
        // 64 MiB of zeros compresses to ~64 KiB; the limit stops it after ~1 MiB of output.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 200_000);
        assert_eq!(
            gunzip(&bomb, 1 << 20),
            Err(ProcessError::DecompressTooLarge { limit: 1 << 20 })
        );
    }

    #[test]
    fn invalid_inputs() {
        for bad in [
            &b""[..],
            b"\x1f",
            b"not gzip at all",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff garbage",
        ] {
            let err = gunzip(bad, 100).unwrap_err();
            assert_eq!(err.code(), "Decompression.InvalidData", "{bad:?}");
        }
        let good = gzip(b"some data that is long enough");
        // Truncated.
        assert!(matches!(
            gunzip(&good[..good.len() - 3], 100),
            Err(ProcessError::DecompressInvalid { .. })
        ));
        // CRC mismatch.
        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert!(matches!(
            gunzip(&bad_crc, 100),
            Err(ProcessError::DecompressInvalid { .. })
        ));
        // Trailing garbage after a member.
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"xyz");
        assert!(matches!(
            gunzip(&trailing, 100),
            Err(ProcessError::DecompressInvalid { .. })
        ));
    }

    proptest! {
        #[test]
        fn prop_round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000), split in any::<usize>()) {
            let at = if data.is_empty() { 0 } else { split % data.len() };
            let mut gz = gzip(&data[..at]);
            gz.extend(gzip(&data[at..]));
            prop_assert_eq!(gunzip(&gz, data.len()).unwrap(), data.clone());
            if !data.is_empty() {
                prop_assert_eq!(
                    gunzip(&gz, data.len() - 1),
                    Err(ProcessError::DecompressTooLarge { limit: data.len() - 1 })
                );
            }
        }

        #[test]
        fn prop_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..1000) {
            let _ = gunzip(&data, max);
        }

        #[test]
        fn prop_corruption_never_panics(data in proptest::collection::vec(any::<u8>(), 0..500), pos in any::<usize>(), bit in 0u8..8) {
            let mut gz = gzip(&data);
            let i = pos % gz.len();
            gz[i] ^= 1 << bit;
            if let Ok(out) = gunzip(&gz, 1000) {
                prop_assert!(out.len() <= 1000);
            }
        }
    }
}
