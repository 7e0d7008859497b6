//! Length-prefixed framing for byte-stream transports (TCP, TLS, Unix
//! sockets): every frame is preceded by its length as a 24-bit big-endian
//! integer.
//!
//! [`FrameCodec`] implements tokio-util's [`Decoder`] (yielding the bytes of
//! one frame, prefix stripped, as a zero-copy [`Bytes`]) and [`Encoder`] for
//! [`Frame`] (writing prefix and frame straight into the output buffer, with
//! no intermediate copy). A length above the configured maximum is an error
//! before anything of that size is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{Frame, HEADER_LEN, MAX_FRAME_LEN};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 3;

/// Errors of the length-prefix codec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer announced a frame larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Announced or encoded length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The peer announced a frame too short to hold a header.
    #[error("frame of {0} bytes is shorter than the 6-byte header")]
    FrameTooShort(usize),
    /// The underlying I/O failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The 24-bit length-prefix codec.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_len: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec accepting frames up to 16,777,215 bytes.
    pub fn new() -> Self {
        Self {
            max_frame_len: MAX_FRAME_LEN,
        }
    }

    /// A codec with a lower maximum frame size; values above 16,777,215 are
    /// capped to it, values below 6 (a frame header) raised to 6.
    pub fn with_max_frame_len(max: usize) -> Self {
        Self {
            max_frame_len: max.clamp(HEADER_LEN, MAX_FRAME_LEN),
        }
    }

    /// The configured maximum frame length (prefix excluded).
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Refuses a frame longer than the maximum.
    pub(crate) fn check(&self, len: usize) -> Result<(), CodecError> {
        if len > self.max_frame_len {
            Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            })
        } else {
            Ok(())
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let Some(len) = crate::frame::get_u24(src) else {
            return Ok(None);
        };
        self.check(len)?;
        if len < HEADER_LEN {
            return Err(CodecError::FrameTooShort(len));
        }
        let total = LENGTH_PREFIX_LEN + len;
        if src.len() < total {
            // Reserve room for the rest of this frame only: `len` has been
            // checked against the maximum above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        // One split of the buffer; skipping the prefix of the frozen frame
        // is a pointer bump (`BytesMut::advance` would cost as much again).
        let mut frame = src.split_to(total).freeze();
        frame.advance(LENGTH_PREFIX_LEN);
        Ok(Some(frame))
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = frame.encoded_len();
        self.check(len)?;
        dst.reserve(LENGTH_PREFIX_LEN + len);
        frame.encode_prefixed(len, dst);
        Ok(())
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Frame>::encode(self, &frame, dst)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = CodecError;

    /// Writes an already encoded frame behind its length prefix.
    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.check(frame.len())?;
        dst.reserve(LENGTH_PREFIX_LEN + frame.len());
        crate::frame::put_u24(dst, frame.len());
        dst.put_slice(&frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maximum_frame_size_is_kept_between_a_header_and_2_pow_24_minus_1() {
        assert_eq!(
            FrameCodec::with_max_frame_len(0).max_frame_len(),
            HEADER_LEN
        );
        assert_eq!(FrameCodec::with_max_frame_len(100).max_frame_len(), 100);
        assert_eq!(
            FrameCodec::with_max_frame_len(usize::MAX).max_frame_len(),
            16_777_215
        );
        // At the lowest maximum a bare header still passes; one byte more
        // does not.
        let mut codec = FrameCodec::with_max_frame_len(0);
        let mut header = BytesMut::from(&[0, 0, 6, 0, 0, 0, 0, 0x24, 0][..]);
        assert!(matches!(codec.decode(&mut header), Ok(Some(f)) if f.len() == 6));
        let mut longer = BytesMut::from(&[0, 0, 7][..]);
        assert!(codec.decode(&mut longer).is_err());
    }
}
