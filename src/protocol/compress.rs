//! The compressed client protocol (`CLIENT_COMPRESS`), as a stream wrapper.
//!
//! A client that sets `CLIENT_COMPRESS` in its handshake response speaks compressed
//! frames from its first command on: a 7-byte header (3-byte compressed length, 1-byte
//! compressed sequence id, 3-byte uncompressed length, 0 meaning "sent as is") and a
//! zlib stream (or the bytes themselves). The frames carry the ordinary packet stream:
//! one frame may hold several packets, one packet may span frames.
//!
//! What MariaDB 10.11 does, measured with a logging forwarder between `mariadb
//! --compress` and the server, and matched here:
//! - the whole login (greeting, handshake response, auth switch, the final OK or ERR)
//!   is uncompressed; compression starts with the client's first command;
//! - a command arrives with compressed sequence id 0; the answer's frames count on
//!   from the last frame read (1, 2, 3, ...), and a client that then sends more (the
//!   file of a LOAD DATA LOCAL) goes on from the server's last id: each side's next id
//!   is the last one it read plus one, and each frame it writes adds one;
//! - a frame carries at most 16 KiB of packet bytes; one under 50 bytes, or one that
//!   does not shrink, is sent as is (uncompressed length 0);
//! - a packet that does not fit in the frame it starts in ends in the next frame: when
//!   more than 16 KiB of it is left, that frame holds exactly its rest (so a packet
//!   spans at most two frames; mysql-connector-python relies on it: it reads one more
//!   frame for an unfinished packet, never two).
//!
//! [`MaybeCompressed`] sits between the packet codec and the (possibly TLS) socket, so
//! everything that writes to a client, the raw relay of backend answers included,
//! goes through it unchanged. Writes collect up to one frame's worth and are
//! compressed when it is full or on flush; reads inflate a frame at a time straight
//! into the caller's buffer, through a fixed 16 KiB input buffer: a frame announcing
//! 16 MiB costs nothing until its bytes arrive, and a frame that announces more than
//! `max_packet_size` (plus its header) is refused before any of it is read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Packet bytes per frame shardgate writes (MariaDB's `net_buffer_length` default).
pub const FRAME_PAYLOAD: usize = 16 * 1024;
/// Frames with fewer packet bytes than this are sent uncompressed (MariaDB's
/// `MIN_COMPRESS_LENGTH`).
pub const MIN_COMPRESS_LENGTH: usize = 50;
/// Frame header size.
const HEADER: usize = 7;
/// Size of the buffer compressed input is read into.
const INPUT_BUFFER: usize = 16 * 1024;
/// Largest length a 3-byte field can carry.
const MAX_FRAME: usize = 0xFF_FFFF;

/// Byte counts of one compressed connection, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompressionStats {
    /// Packet bytes written to the client (before compression).
    pub payload_out: u64,
    /// Frame bytes written to the client (headers included).
    pub wire_out: u64,
    /// Frame bytes read from the client (headers included).
    pub wire_in: u64,
    /// Packet bytes read from the client (after inflating).
    pub payload_in: u64,
}

/// Where the reader is in the frame stream.
#[derive(Debug, Clone, Copy)]
enum ReadState {
    /// Collecting a header: `have` of its 7 bytes so far.
    Header { hdr: [u8; HEADER], have: usize },
    /// A frame sent as is: `left` bytes of it to pass on.
    Raw { left: usize },
    /// A zlib frame: `cleft` compressed bytes to read, `uleft` packet bytes to produce;
    /// `ended` once the zlib stream said it is complete.
    Zlib {
        cleft: usize,
        uleft: usize,
        ended: bool,
    },
}

/// The compression state of one client connection.
pub struct Codec {
    // ---- reading ----
    state: ReadState,
    input: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    inflate: Decompress,
    /// Largest uncompressed length a frame may announce.
    max_frame: usize,
    /// Longest wait for the rest of a frame already begun.
    stall: Option<Duration>,
    stall_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    // ---- writing ----
    /// Packet bytes waiting to be framed (at most `frame_limit`).
    pending: Vec<u8>,
    /// Packet bytes the frame being collected takes: [`FRAME_PAYLOAD`], or the rest of
    /// a packet the previous frame cut (at most [`MAX_FRAME`]).
    frame_limit: usize,
    /// The header of the packet being written, as far as it came (`hdr_have` bytes).
    hdr: [u8; 4],
    hdr_have: usize,
    /// Bytes of the packet being written still to come after its header.
    packet_left: usize,
    /// Framed bytes waiting to be written, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    deflate: Compress,
    /// The next frame's sequence id.
    write_seq: u8,
    stats: CompressionStats,
}

impl Codec {
    /// A codec that accepts frames of up to `max_packet` packet bytes (plus a header),
    /// and ends a frame whose bytes stop arriving for `stall`.
    pub fn new(max_packet: usize, stall: Option<Duration>) -> Codec {
        Codec {
            state: ReadState::Header {
                hdr: [0; HEADER],
                have: 0,
            },
            input: vec![0u8; INPUT_BUFFER].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            inflate: Decompress::new(true),
            max_frame: max_packet.saturating_add(4).min(MAX_FRAME),
            stall,
            stall_timer: None,
            pending: Vec::new(),
            frame_limit: FRAME_PAYLOAD,
            hdr: [0; 4],
            hdr_have: 0,
            packet_left: 0,
            out: Vec::new(),
            out_at: 0,
            deflate: Compress::new(flate2::Compression::fast(), true),
            write_seq: 0,
            stats: CompressionStats::default(),
        }
    }

    /// Byte counts so far.
    pub fn stats(&self) -> CompressionStats {
        self.stats
    }

    /// Puts bytes already read from the socket (and buffered above it) in front of
    /// what comes next.
    fn preload(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > self.input.len() {
            return Err(invalid("too many bytes before compression started"));
        }
        self.input[..bytes.len()].copy_from_slice(bytes);
        self.in_start = 0;
        self.in_end = bytes.len();
        Ok(())
    }

    /// Frames `pending` into `out`.
    fn frame_pending(&mut self) {
        let payload = std::mem::take(&mut self.pending);
        self.out.clear();
        self.out_at = 0;
        self.out.reserve(HEADER + payload.len());
        self.out.extend_from_slice(&[0; HEADER]);
        let mut ulen = 0usize;
        if payload.len() >= MIN_COMPRESS_LENGTH {
            self.deflate.reset();
            match self
                .deflate
                .compress_vec(&payload, &mut self.out, FlushCompress::Finish)
            {
                Ok(Status::StreamEnd) if self.out.len() - HEADER < payload.len() => {
                    ulen = payload.len();
                }
                _ => self.out.truncate(HEADER),
            }
        }
        if ulen == 0 {
            self.out.extend_from_slice(&payload);
        }
        let clen = self.out.len() - HEADER;
        self.out[0..3].copy_from_slice(&(clen as u32).to_le_bytes()[..3]);
        self.out[3] = self.write_seq;
        self.out[4..7].copy_from_slice(&(ulen as u32).to_le_bytes()[..3]);
        self.write_seq = self.write_seq.wrapping_add(1);
        self.stats.payload_out += payload.len() as u64;
        self.stats.wire_out += self.out.len() as u64;
        // Reuse the allocation for the next frame (not a big packet's).
        if payload.capacity() <= FRAME_PAYLOAD {
            self.pending = payload;
            self.pending.clear();
        }
        // A packet cut here with more than a frame's worth left: its rest goes in
        // one frame of its own, as MariaDB writes it.
        self.frame_limit = if self.hdr_have == 0 && self.packet_left > FRAME_PAYLOAD {
            self.packet_left.min(MAX_FRAME)
        } else {
            FRAME_PAYLOAD
        };
    }

    /// Follows the packet stream through `bytes` (packet headers and lengths).
    fn observe(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            if self.packet_left > 0 {
                let k = self.packet_left.min(bytes.len() - i);
                self.packet_left -= k;
                i += k;
                continue;
            }
            self.hdr[self.hdr_have] = bytes[i];
            self.hdr_have += 1;
            i += 1;
            if self.hdr_have == 4 {
                self.packet_left = u24(&self.hdr[..3]);
                self.hdr_have = 0;
            }
        }
    }

    /// Writes what `out` holds to `inner`.
    fn poll_drain<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        if self.out.capacity() > 2 * FRAME_PAYLOAD {
            // A big packet's frame: give its memory back.
            self.out = Vec::new();
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads more compressed bytes from `inner` into the input buffer. Ready(Ok(0))
    /// at end of stream. A frame already begun whose bytes stop for the stall timeout
    /// is an error.
    fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        mid_frame: bool,
    ) -> Poll<io::Result<usize>> {
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        } else if self.in_end == self.input.len() {
            self.input.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        let mut rb = ReadBuf::new(&mut self.input[self.in_end..]);
        match Pin::new(inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.in_end += n;
                self.stats.wire_in += n as u64;
                self.stall_timer = None;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(stall) = self.stall.filter(|_| mid_frame) else {
                    self.stall_timer = None;
                    return Poll::Pending;
                };
                let timer = self
                    .stall_timer
                    .get_or_insert_with(|| Box::pin(crate::timer::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.stall_timer = None;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "compressed packet stalled",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// Fills `buf` with packet bytes from the frames `inner` delivers.
    fn poll_read_frames<S: AsyncRead + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let buffered = self.in_end - self.in_start;
            match self.state {
                ReadState::Header { mut hdr, mut have } => {
                    if buffered == 0 {
                        let n = ready!(self.poll_fill(inner, cx, have > 0))?;
                        if n == 0 {
                            if have == 0 {
                                return Poll::Ready(Ok(())); // end of stream
                            }
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                        }
                        continue;
                    }
                    let take = buffered.min(HEADER - have);
                    hdr[have..have + take]
                        .copy_from_slice(&self.input[self.in_start..self.in_start + take]);
                    self.in_start += take;
                    have += take;
                    if have < HEADER {
                        self.state = ReadState::Header { hdr, have };
                        continue;
                    }
                    let clen = u24(&hdr[0..3]);
                    let ulen = u24(&hdr[4..7]);
                    // The answer's frames count on from this one.
                    self.write_seq = hdr[3].wrapping_add(1);
                    self.state = self.start_frame(clen, ulen)?;
                }
                ReadState::Raw { left } => {
                    if left == 0 {
                        self.state = header_state();
                        continue;
                    }
                    if buffered == 0 {
                        let n = ready!(self.poll_fill(inner, cx, true))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                        }
                        continue;
                    }
                    let n = buffered.min(left).min(buf.remaining());
                    buf.put_slice(&self.input[self.in_start..self.in_start + n]);
                    self.in_start += n;
                    self.stats.payload_in += n as u64;
                    self.state = ReadState::Raw { left: left - n };
                    return Poll::Ready(Ok(()));
                }
                ReadState::Zlib {
                    cleft,
                    uleft,
                    ended,
                } => {
                    if cleft == 0 && uleft == 0 {
                        self.finish_frame(ended)?;
                        self.state = header_state();
                        continue;
                    }
                    if cleft > 0 && buffered == 0 {
                        let n = ready!(self.poll_fill(inner, cx, true))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                        }
                        continue;
                    }
                    // zlib may hold output for input it already took: it is drained
                    // with no new input once the frame's bytes are all in.
                    let avail = buffered.min(cleft);
                    let input = &self.input[self.in_start..self.in_start + avail];
                    let (before_in, before_out) =
                        (self.inflate.total_in(), self.inflate.total_out());
                    let mut spare = [0u8; 64];
                    let want = buf.remaining().min(uleft);
                    let out: &mut [u8] = if want > 0 {
                        buf.initialize_unfilled_to(want)
                    } else {
                        // Everything announced is out: only the zlib trailer may be left.
                        &mut spare
                    };
                    let status = self
                        .inflate
                        .decompress(input, out, FlushDecompress::None)
                        .map_err(|e| invalid(&format!("a compressed packet is corrupt: {e}")))?;
                    let consumed = (self.inflate.total_in() - before_in) as usize;
                    let produced = (self.inflate.total_out() - before_out) as usize;
                    if produced > uleft {
                        return Poll::Ready(Err(invalid(
                            "a compressed packet inflated to more than it announced",
                        )));
                    }
                    self.in_start += consumed;
                    let (cleft, uleft) = (cleft - consumed, uleft - produced);
                    let ended = ended || status == Status::StreamEnd;
                    self.state = ReadState::Zlib {
                        cleft,
                        uleft,
                        ended,
                    };
                    if ended && uleft > 0 && produced == 0 {
                        return Poll::Ready(Err(invalid(
                            "a compressed packet inflated to less than it announced",
                        )));
                    }
                    if ended && cleft > 0 {
                        return Poll::Ready(Err(invalid(
                            "a compressed packet has bytes past the end of its zlib stream",
                        )));
                    }
                    if produced > 0 {
                        buf.advance(produced);
                        self.stats.payload_in += produced as u64;
                        return Poll::Ready(Ok(()));
                    }
                    if consumed == 0 {
                        if cleft > avail {
                            // The rest of the frame is still to come.
                            let n = ready!(self.poll_fill(inner, cx, true))?;
                            if n == 0 {
                                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                            }
                            continue;
                        }
                        // All of the frame is here, and zlib can make nothing of it.
                        return Poll::Ready(Err(invalid(if uleft > 0 {
                            "a compressed packet inflated to less than it announced"
                        } else {
                            "a compressed packet is corrupt"
                        })));
                    }
                }
            }
        }
    }

    /// Checks, once a zlib frame's bytes are all in and all it announced is out, that
    /// zlib holds nothing more and saw the end of its stream.
    fn finish_frame(&mut self, ended: bool) -> io::Result<()> {
        if ended {
            return Ok(());
        }
        let mut spare = [0u8; 64];
        let before = self.inflate.total_out();
        let status = self
            .inflate
            .decompress(&[], &mut spare, FlushDecompress::Finish)
            .map_err(|e| invalid(&format!("a compressed packet is corrupt: {e}")))?;
        if self.inflate.total_out() > before {
            return Err(invalid(
                "a compressed packet inflated to more than it announced",
            ));
        }
        if status != Status::StreamEnd {
            return Err(invalid(
                "a compressed packet ends before its zlib stream does",
            ));
        }
        Ok(())
    }

    /// The state for a frame whose header announced `clen` and `ulen`.
    fn start_frame(&mut self, clen: usize, ulen: usize) -> io::Result<ReadState> {
        if ulen == 0 {
            if clen > self.max_frame {
                return Err(too_large(clen, self.max_frame));
            }
            return Ok(ReadState::Raw { left: clen });
        }
        if ulen > self.max_frame {
            return Err(too_large(ulen, self.max_frame));
        }
        if clen == 0 {
            return Err(invalid("a compressed packet announces data but has none"));
        }
        self.inflate.reset(true);
        Ok(ReadState::Zlib {
            cleft: clen,
            uleft: ulen,
            ended: false,
        })
    }
}

fn header_state() -> ReadState {
    ReadState::Header {
        hdr: [0; HEADER],
        have: 0,
    }
}

fn u24(b: &[u8]) -> usize {
    b[0] as usize | (b[1] as usize) << 8 | (b[2] as usize) << 16
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn too_large(n: usize, limit: usize) -> io::Error {
    invalid(&format!(
        "a compressed packet announces {n} bytes, more than max_packet_size allows ({limit})"
    ))
}

/// A stream that speaks the compressed protocol once [`MaybeCompressed::start`] is
/// called, and passes bytes through unchanged before that.
pub struct MaybeCompressed<S> {
    /// The socket underneath (plain or TLS).
    pub inner: S,
    codec: Option<Box<Codec>>,
}

impl<S> MaybeCompressed<S> {
    /// `inner`, uncompressed.
    pub fn new(inner: S) -> Self {
        MaybeCompressed { inner, codec: None }
    }

    /// Whether the compressed protocol is on.
    pub fn is_compressed(&self) -> bool {
        self.codec.is_some()
    }

    /// Turns the compressed protocol on. `already_read` holds bytes read from the
    /// socket but not consumed (they are the start of the first frame).
    pub fn start(&mut self, mut codec: Codec, already_read: &[u8]) -> io::Result<()> {
        codec.preload(already_read)?;
        self.codec = Some(Box::new(codec));
        Ok(())
    }

    /// Byte counts of the compressed protocol, if it is on.
    pub fn stats(&self) -> Option<CompressionStats> {
        self.codec.as_ref().map(|c| c.stats())
    }
}

impl<T> MaybeCompressed<super::stream::MaybeTls<T>> {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MaybeCompressed<S> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.codec {
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
            Some(codec) => codec.poll_read_frames(&mut this.inner, cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MaybeCompressed<S> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(codec) = &mut this.codec else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if codec.pending.len() >= codec.frame_limit {
            ready!(codec.poll_drain(&mut this.inner, cx))?;
            codec.frame_pending();
        }
        ready!(codec.poll_drain(&mut this.inner, cx))?;
        let room = codec.frame_limit.saturating_sub(codec.pending.len());
        let n = buf.len().min(room);
        if codec.pending.capacity() < codec.pending.len() + n {
            codec.pending.reserve_exact(room);
        }
        codec.pending.extend_from_slice(&buf[..n]);
        codec.observe(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.codec {
            None => self.inner.is_write_vectored(),
            Some(_) => false,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.codec.is_none() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, first)
    }

    /// Frames what is pending (the end of an answer), writes it, and flushes below.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(codec) = &mut this.codec {
            loop {
                ready!(codec.poll_drain(&mut this.inner, cx))?;
                if codec.pending.is_empty() {
                    break;
                }
                codec.frame_pending();
            }
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut *this).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
