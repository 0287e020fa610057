//! Framing. A packet is a 3-byte little-endian payload length, a sequence id, and the
//! payload. A payload of 16 MiB - 1 or more is split into full-length packets followed
//! by a shorter one (possibly empty); the reader joins them into one logical payload.
//!
//! Parsing is two-phase, as in mini-redis: [`logical_len`] checks that a whole logical
//! packet is buffered without allocating, then [`take_logical`] cuts it out.
//!
//! A client connection's read buffer is bounded twice ([`ReadLimits`]): what it holds
//! beyond a small baseline is taken from one process-wide [`BufferBudget`] before the
//! buffer grows (the buffer grows as bytes arrive, never to the announced length up
//! front), and a packet whose bytes stop arriving mid-way ends the read after the
//! stall timeout. After a large packet the buffer is replaced by a small one, and its
//! budget goes back when the session comes for its next packet (by then the large
//! payload has been dropped).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// The buffer had to grow and the process-wide [`BufferBudget`] had no room.
    OutOfBudget,
    /// A packet's bytes stopped arriving for longer than the stall timeout.
    Stalled,
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
            ReadError::OutOfBudget => write!(f, "client buffer budget exhausted"),
            ReadError::Stalled => write!(f, "packet stalled"),
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

/// How many bytes on the wire the packet at the start of `buf` is known to need: up to
/// the end of the last physical packet whose header is buffered, plus room for the
/// next header when that packet announces a continuation. Never less than `buf.len()`.
pub fn expected_wire_len(buf: &[u8]) -> usize {
    let mut at = 0usize;
    loop {
        let Some(len) = physical_payload_len(&buf[at..]) else {
            return buf.len().max(at + 4);
        };
        let end = at.saturating_add(4).saturating_add(len);
        if len < MAX_PAYLOAD || buf.len() < end {
            let end = if len == MAX_PAYLOAD { end + 4 } else { end };
            return buf.len().max(end);
        }
        at = end;
    }
}

/// Capacity of a bounded read buffer after it is replaced by a small one.
const SMALL_BUFFER: usize = 4 * 1024;

/// Bytes that client read buffers may hold beyond their baselines, shared by every
/// session of the process.
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    /// A budget of `limit` bytes, none of it taken.
    pub fn new(limit: usize) -> BufferBudget {
        BufferBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `n` bytes if they are free; false (nothing taken) if not.
    pub fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken earlier.
    pub fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The budget's size.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The bounds on one client connection's reads: its share of the [`BufferBudget`]
/// (given back when dropped) and the stall timeout.
#[derive(Debug)]
pub struct ReadLimits {
    budget: Arc<BufferBudget>,
    /// Capacity the read buffer may have without taking budget.
    baseline: usize,
    /// Budget this connection holds now.
    held: usize,
    /// Longest wait for the next bytes of a packet already begun; None: no limit.
    stall: Option<Duration>,
    /// The buffer grew past the baseline since it was last replaced by a small one.
    grown: bool,
}

impl ReadLimits {
    /// Limits drawing on `budget`, free up to `baseline` bytes of buffer.
    pub fn new(budget: Arc<BufferBudget>, baseline: usize, stall: Option<Duration>) -> Self {
        ReadLimits {
            budget,
            baseline,
            held: 0,
            stall,
            grown: false,
        }
    }

    /// Budget this connection holds now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Holds exactly what a buffer of `capacity` bytes needs; false (holding what it
    /// held) when the budget cannot cover a growth.
    fn hold_for(&mut self, capacity: usize) -> bool {
        let want = capacity.saturating_sub(self.baseline);
        if want > self.held {
            if !self.budget.try_take(want - self.held) {
                return false;
            }
        } else {
            self.budget.give_back(self.held - want);
        }
        self.held = want;
        true
    }
}

impl Drop for ReadLimits {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
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
    /// Bounds on reading (client connections); None: unbounded (backends).
    pub limits: Option<ReadLimits>,
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
            limits: None,
        }
    }

    /// Reads one logical packet (joined), at most `limit` bytes of payload.
    pub async fn read_packet(&mut self, limit: usize) -> Result<(u8, Bytes), ReadError> {
        // The previous packet has been served: its memory goes back.
        self.settle();
        loop {
            if let Some((wire, payload)) = logical_len(&self.rbuf, limit)? {
                let packet = take_logical(&mut self.rbuf, wire, payload);
                self.shrink();
                return Ok(packet);
            }
            match self.limits.as_ref().and_then(|l| l.stall) {
                Some(stall) if !self.rbuf.is_empty() => {
                    crate::timer::timeout(stall, self.fill())
                        .await
                        .map_err(|_| ReadError::Stalled)??;
                }
                _ => {
                    self.fill().await?;
                }
            }
        }
    }

    /// A bounded read buffer that grew past its baseline is replaced by a small one
    /// holding what is left, so the large allocation is freed once the payload cut
    /// from it is dropped (a tail of it kept as `rbuf` would keep it all alive).
    fn shrink(&mut self) {
        let Some(l) = &mut self.limits else { return };
        if l.grown {
            let mut fresh = BytesMut::with_capacity(self.rbuf.len().max(SMALL_BUFFER));
            fresh.extend_from_slice(&self.rbuf);
            self.rbuf = fresh;
            l.grown = self.rbuf.capacity() > l.baseline;
        }
    }

    /// Holds just the budget the read buffer needs now.
    fn settle(&mut self) {
        self.shrink();
        let cap = self.rbuf.capacity();
        if let Some(l) = &mut self.limits {
            // Never more than held before (the buffer is not growing here).
            let _ = l.hold_for(cap.min(l.baseline + l.held));
        }
    }

    /// Reads more bytes into `rbuf`; `Closed` at end of stream, `OutOfBudget` when a
    /// bounded buffer must grow and the budget has no room.
    pub async fn fill(&mut self) -> Result<usize, ReadError> {
        if self.limits.is_some() {
            self.grow_bounded()?;
            let n = self.io.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(ReadError::Closed);
            }
            return Ok(n);
        }
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

    /// Makes room in a bounded buffer: doubles it, but never past what the packet
    /// being read is known to need (so a header announcing 60 MiB followed by a few
    /// bytes costs a few KiB), taking the growth from the budget first.
    fn grow_bounded(&mut self) -> Result<(), ReadError> {
        let (len, cap) = (self.rbuf.len(), self.rbuf.capacity());
        if cap - len >= 1024 {
            return Ok(());
        }
        let expected = expected_wire_len(&self.rbuf);
        let floor = len + 4 * 1024;
        let target = cap.saturating_mul(2).min(expected).max(floor);
        let Some(l) = &mut self.limits else {
            return Ok(());
        };
        if !l.hold_for(target) {
            return Err(ReadError::OutOfBudget);
        }
        l.grown |= target > l.baseline;
        // An exact allocation (BytesMut::reserve may round up past what was taken).
        let mut bigger = BytesMut::with_capacity(target);
        bigger.extend_from_slice(&self.rbuf);
        self.rbuf = bigger;
        Ok(())
    }

    /// Before closing a connection whose client is still sending (a refused packet):
    /// ends our side of the stream, then reads and drops what comes for at most `for_`,
    /// so the client reads the answer already sent instead of a connection reset.
    pub async fn discard_input(&mut self, for_: Duration) {
        self.rbuf = BytesMut::new();
        if let Some(l) = &mut self.limits {
            l.hold_for(0);
        }
        let _ = self.io.shutdown().await;
        let mut scratch = vec![0u8; 16 * 1024];
        let _ = crate::timer::timeout(for_, async {
            while let Ok(n) = self.io.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
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
    fn budget_takes_only_what_is_free_and_gets_it_back() {
        let b = BufferBudget::new(100);
        assert!(b.try_take(60));
        assert!(!b.try_take(41));
        assert_eq!(b.used(), 60);
        assert!(b.try_take(40));
        b.give_back(100);
        assert_eq!(b.used(), 0);
        let b = Arc::new(b);
        let mut l = ReadLimits::new(b.clone(), 10, None);
        assert!(l.hold_for(50));
        assert_eq!((l.held(), b.used()), (40, 40));
        assert!(!l.hold_for(200));
        assert_eq!((l.held(), b.used()), (40, 40));
        assert!(l.hold_for(5));
        assert_eq!(b.used(), 0);
        assert!(l.hold_for(70));
        drop(l);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn expected_len_follows_the_headers() {
        assert_eq!(expected_wire_len(&[]), 4);
        assert_eq!(expected_wire_len(&[0, 0, 0x10, 0, 1, 2]), 4 + (16 << 16));
        let mut full = vec![0xff, 0xff, 0xff, 0];
        full.resize(4 + MAX_PAYLOAD, 0);
        assert_eq!(expected_wire_len(&full), 8 + MAX_PAYLOAD);
    }

    #[tokio::test]
    async fn bounded_reads_grow_as_bytes_arrive_within_the_budget() {
        let budget = Arc::new(BufferBudget::new(1 << 20));
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let mut conn = PacketConn::with_capacity(ours, 2048, 0);
        conn.limits = Some(ReadLimits::new(budget.clone(), 64 * 1024, None));
        // A header announcing 8 MiB and a few bytes: the buffer stays small.
        peer.write_all(&[0, 0, 0x80, 0, 3, b'x']).await.unwrap();
        let r = crate::timer::timeout(Duration::from_millis(100), conn.read_packet(64 << 20)).await;
        assert!(r.is_err(), "still waiting");
        assert!(conn.rbuf.capacity() <= 8 * 1024, "{}", conn.rbuf.capacity());
        assert_eq!(budget.used(), 0);
        drop((peer, conn));
        // A 512 KiB packet fits the budget; the next read gives it back.
        let (mut peer2, ours2) = tokio::io::duplex(64 * 1024);
        let mut conn2 = PacketConn::with_capacity(ours2, 2048, 0);
        conn2.limits = Some(ReadLimits::new(budget.clone(), 64 * 1024, None));
        let payload = vec![b'y'; 512 * 1024];
        let mut wire = BytesMut::new();
        put_packet(&mut wire, 0, &payload);
        put_packet(&mut wire, 0, b"\x0e");
        tokio::spawn(async move { peer2.write_all(&wire).await.unwrap() });
        let (_, p) = conn2.read_packet(64 << 20).await.unwrap();
        assert_eq!(p.len(), payload.len());
        assert!(budget.used() > 0 && budget.used() <= 1 << 20);
        drop(p);
        let (_, p) = conn2.read_packet(64 << 20).await.unwrap();
        assert_eq!(&p[..], b"\x0e");
        assert_eq!(budget.used(), 0);
        assert!(conn2.rbuf.capacity() <= 64 * 1024);
        // Past the budget: refused.
        let (mut peer3, ours3) = tokio::io::duplex(64 * 1024);
        let mut conn3 = PacketConn::with_capacity(ours3, 2048, 0);
        conn3.limits = Some(ReadLimits::new(budget.clone(), 64 * 1024, None));
        let big = vec![b'z'; 2 << 20];
        let mut wire = BytesMut::new();
        put_packet(&mut wire, 0, &big);
        tokio::spawn(async move { peer3.write_all(&wire).await });
        assert!(matches!(
            conn3.read_packet(64 << 20).await,
            Err(ReadError::OutOfBudget)
        ));
        drop(conn3);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_stalled_packet_ends_the_read() {
        let budget = Arc::new(BufferBudget::new(1 << 20));
        let (mut peer, ours) = tokio::io::duplex(1024);
        let mut conn = PacketConn::with_capacity(ours, 2048, 0);
        let stall = Some(Duration::from_millis(50));
        conn.limits = Some(ReadLimits::new(budget, 64 * 1024, stall));
        peer.write_all(&[10, 0, 0, 0, 3]).await.unwrap();
        assert!(matches!(
            conn.read_packet(1024).await,
            Err(ReadError::Stalled)
        ));
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
