//! Framing. A packet is a 3-byte little-endian payload length, a sequence id, and the
//! payload. A payload of 16 MiB - 1 or more is split into full-length packets followed
//! by a shorter one (possibly empty); the reader joins them into one logical payload.
//!
//! Parsing is two-phase, as in mini-redis: [`logical_len`] checks that a whole logical
//! packet is buffered without allocating, then [`take_logical`] cuts it out.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload of one physical packet.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// Why reading a packet failed.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection (cleanly, between packets or mid-packet).
    Closed,
    /// The logical packet is larger than allowed; the stream cannot be resynchronised.
    TooLarge(usize),
    /// A socket error.
    Io(std::io::Error),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => write!(f, "connection closed"),
            ReadError::TooLarge(n) => write!(f, "packet larger than {n} bytes"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Length of one physical packet's payload at the start of `buf`, if its header is there.
#[inline]
pub fn physical_payload_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 {
        return None;
    }
    Some(buf[0] as usize | (buf[1] as usize) << 8 | (buf[2] as usize) << 16)
}

/// Checks whether `buf` starts with a whole logical packet. Returns
/// `Ok(Some((total_bytes_on_the_wire, payload_len)))`, `Ok(None)` if more bytes are
/// needed, or `Err(TooLarge)` as soon as the announced payload passes `limit`.
pub fn logical_len(buf: &[u8], limit: usize) -> Result<Option<(usize, usize)>, ReadError> {
    let mut at = 0usize;
    let mut payload = 0usize;
    loop {
        let Some(len) = physical_payload_len(&buf[at..]) else {
            return Ok(None);
        };
        payload += len;
        if payload > limit {
            return Err(ReadError::TooLarge(limit));
        }
        if buf.len() < at + 4 + len {
            return Ok(None);
        }
        at += 4 + len;
        if len < MAX_PAYLOAD {
            return Ok(Some((at, payload)));
        }
    }
}

/// Cuts a whole logical packet (checked by [`logical_len`]) off the front of `buf`.
/// Returns the sequence id of its last physical packet and the joined payload.
pub fn take_logical(buf: &mut BytesMut, wire_len: usize, payload_len: usize) -> (u8, Bytes) {
    let first_len = physical_payload_len(buf).unwrap_or(0);
    if first_len + 4 == wire_len {
        let seq = buf[3];
        let mut frame = buf.split_to(wire_len);
        frame.advance(4);
        return (seq, frame.freeze());
    }
    let mut out = BytesMut::with_capacity(payload_len);
    let mut frame = buf.split_to(wire_len);
    let mut seq = 0;
    while frame.len() >= 4 {
        let len = physical_payload_len(&frame).unwrap_or(0);
        seq = frame[3];
        frame.advance(4);
        out.extend_from_slice(&frame[..len]);
        frame.advance(len);
    }
    (seq, out.freeze())
}

/// Appends `payload` to `out` as one logical packet starting at sequence id `seq`,
/// split as the protocol requires. Returns the next sequence id.
pub fn put_packet(out: &mut BytesMut, mut seq: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD);
        out.reserve(4 + n);
        out.put_uint_le(n as u64, 3);
        out.put_u8(seq);
        out.put_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PAYLOAD {
            return seq;
        }
    }
}

/// A packet-level connection: the socket plus reusable read and write buffers.
pub struct PacketConn<S> {
    /// The socket.
    pub io: S,
    /// Bytes read but not yet consumed.
    pub rbuf: BytesMut,
    /// Bytes queued for the next flush.
    pub wbuf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketConn<S> {
    /// Wraps a socket with buffers sized for a backend connection (results stream in).
    pub fn new(io: S) -> Self {
        Self::with_capacity(io, 16 * 1024, 0)
    }

    /// Wraps a socket with the given initial buffer sizes. A client connection starts
    /// small (most statements are short; idle clients should cost little memory) and
    /// grows when a large packet arrives.
    pub fn with_capacity(io: S, read: usize, write: usize) -> Self {
        PacketConn {
            io,
            rbuf: BytesMut::with_capacity(read),
            wbuf: BytesMut::with_capacity(write),
        }
    }

    /// Reads one logical packet (joined), at most `limit` bytes of payload.
    pub async fn read_packet(&mut self, limit: usize) -> Result<(u8, Bytes), ReadError> {
        loop {
            if let Some((wire, payload)) = logical_len(&self.rbuf, limit)? {
                return Ok(take_logical(&mut self.rbuf, wire, payload));
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into `rbuf`; `Closed` at end of stream.
    pub async fn fill(&mut self) -> Result<usize, ReadError> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            // Grow with what is buffered, so a large packet needs few reads.
            let grow = self.rbuf.len().clamp(4 * 1024, 1 << 20);
            self.rbuf.reserve(grow);
        }
        let n = self.io.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        Ok(n)
    }

    /// Queues a logical packet; returns the next sequence id.
    pub fn queue(&mut self, seq: u8, payload: &[u8]) -> u8 {
        put_packet(&mut self.wbuf, seq, payload)
    }

    /// Writes everything queued. The stream's own flush is free on TCP and sends what
    /// a TLS stream still holds.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.io.flush().await?;
        }
        Ok(())
    }

    /// Queues and flushes one packet.
    pub async fn send(&mut self, seq: u8, payload: &[u8]) -> std::io::Result<u8> {
        let next = self.queue(seq, payload);
        self.flush().await?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_packet_roundtrip() {
        let mut buf = BytesMut::new();
        let next = put_packet(&mut buf, 7, b"hello");
        assert_eq!(next, 8);
        assert_eq!(&buf[..4], &[5, 0, 0, 7]);
        let (wire, payload) = logical_len(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!((wire, payload), (9, 5));
        let (seq, p) = take_logical(&mut buf, wire, payload);
        assert_eq!(seq, 7);
        assert_eq!(&p[..], b"hello");
        assert!(buf.is_empty());
    }

    #[test]
    fn payload_of_exactly_max_gets_an_empty_trailer() {
        let payload = vec![b'x'; MAX_PAYLOAD];
        let mut buf = BytesMut::new();
        let next = put_packet(&mut buf, 0, &payload);
        assert_eq!(next, 2);
        assert_eq!(buf.len(), 4 + MAX_PAYLOAD + 4);
        assert_eq!(&buf[4 + MAX_PAYLOAD..], &[0, 0, 0, 1]);
        let (wire, len) = logical_len(&buf, 64 << 20).unwrap().unwrap();
        assert_eq!(len, MAX_PAYLOAD);
        let (seq, p) = take_logical(&mut buf, wire, len);
        assert_eq!(seq, 1);
        assert_eq!(p.len(), MAX_PAYLOAD);
    }

    #[test]
    fn large_payload_is_split_and_joined() {
        let payload: Vec<u8> = (0..(MAX_PAYLOAD * 2 + 10)).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        put_packet(&mut buf, 3, &payload);
        // partial buffers are incomplete, never an error
        for cut in [
            0,
            3,
            4,
            100,
            MAX_PAYLOAD + 4,
            MAX_PAYLOAD + 8,
            buf.len() - 1,
        ] {
            assert!(logical_len(&buf[..cut], 64 << 20).unwrap().is_none());
        }
        let (wire, len) = logical_len(&buf, 64 << 20).unwrap().unwrap();
        let (seq, p) = take_logical(&mut buf, wire, len);
        assert_eq!(seq, 5);
        assert_eq!(&p[..], &payload[..]);
    }

    #[test]
    fn absurd_length_is_refused_before_buffering() {
        let buf = [0xff, 0xff, 0xff, 0, 1, 2, 3];
        assert!(matches!(
            logical_len(&buf, 1024),
            Err(ReadError::TooLarge(1024))
        ));
    }
}
