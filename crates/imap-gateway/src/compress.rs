//! COMPRESS=DEFLATE (RFC 4978 §4): raw DEFLATE (RFC 1951, no zlib header)
//! in both directions, each write ended by a sync flush so the peer can
//! decode everything sent so far. Pure byte transforms; the driver applies them.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

#[derive(Debug, thiserror::Error)]
pub enum DeflateError {
    #[error("inflate: {0}")]
    Inflate(#[from] flate2::DecompressError),
    #[error("deflate: {0}")]
    Deflate(#[from] flate2::CompressError),
    #[error("decompressed data exceeds {0} octets")]
    TooLarge(usize),
}

pub struct Deflate {
    inflate: Decompress,
    deflate: Compress,
}

/// Output of one `inflate` call is bounded: a decompression bomb ends the connection.
const MAX_INFLATED: usize = 16 * 1024 * 1024;

impl Default for Deflate {
    fn default() -> Self {
        Deflate { inflate: Decompress::new(false), deflate: Compress::new(Compression::default(), false) }
    }
}

impl Deflate {
    /// Client bytes in, IMAP bytes out.
    pub fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, DeflateError> {
        let mut out = Vec::with_capacity(input.len().saturating_mul(4).max(256));
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(4096));
            }
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self.inflate.decompress_vec(input, &mut out, FlushDecompress::None)?;
            let consumed = (self.inflate.total_in() - in_before) as usize;
            let produced = self.inflate.total_out() - out_before;
            input = &input[consumed.min(input.len())..];
            if out.len() > MAX_INFLATED {
                return Err(DeflateError::TooLarge(MAX_INFLATED));
            }
            // Done when the input is used up and the output was not the limit.
            let stalled = consumed == 0 && produced == 0;
            if status == Status::StreamEnd || stalled || (input.is_empty() && out.len() < out.capacity()) {
                return Ok(out);
            }
        }
    }

    /// IMAP bytes in, compressed bytes out, sync-flushed (RFC 4978 §4).
    pub fn deflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, DeflateError> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before = self.deflate.total_in();
            self.deflate.compress_vec(input, &mut out, FlushCompress::Sync)?;
            let consumed = (self.deflate.total_in() - before) as usize;
            input = &input[consumed.min(input.len())..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let mut server = Deflate::default();
        let mut client = Deflate::default();
        let big: Vec<u8> =
            (0..200_000u32).flat_map(|i| format!("* {i} FETCH (FLAGS (\\Seen))\r\n").into_bytes()).collect();
        for msg in [&b"a1 NOOP\r\n"[..], &big, b"a2 LOGOUT\r\n"] {
            let wire = client.deflate(msg).unwrap();
            // Delivered in small reads, as TCP may do.
            let mut got = Vec::new();
            for piece in wire.chunks(7) {
                got.extend(server.inflate(piece).unwrap());
            }
            assert_eq!(got, msg);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut server = Deflate::default();
        assert!(server.inflate(&[0xff; 64]).is_err());
    }
}
