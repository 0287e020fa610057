//! Fuzzing on stable Rust, without a database: seeded random and mutated inputs for the
//! packet reader, the handshake and wire parsers, the response scanner and the planner,
//! each checked for panics and for the invariants the proxy relies on.
//!
//! The suite runs a bounded slice (20,000 inputs in all). `SHARDGATE_FUZZ_CASES` scales
//! it, `SHARDGATE_FUZZ_SEED` changes the seed, `SHARDGATE_FUZZ_CASE=n` replays one case
//! of each target. See `docs/fuzzing.md` for the long run:
//!
//! ```text
//! SHARDGATE_FUZZ_CASES=10000000 cargo test --release --test fuzz -- --nocapture
//! ```
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

use std::fmt;
use std::io;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use shardgate::planner::{self, ShardingSchema, StatementKind};
use shardgate::protocol::handshake::{
    build_auth_switch, build_greeting, build_handshake_response, is_ssl_request, parse_auth_switch,
    parse_greeting, parse_handshake_response, Greeting, HandshakeResponse,
};
use shardgate::protocol::packet::{
    physical_payload_len, put_packet, PacketConn, ReadError, MAX_PAYLOAD,
};
use shardgate::protocol::relay::{ResponseKind, ResponseScanner};
use shardgate::protocol::wire::{
    eof_payload, err_payload, get_lenenc_int, get_lenenc_str, get_nul_str, ok_payload,
    parse_eof_status, parse_err, parse_ok, put_lenenc_int, put_lenenc_str, ErrInfo, OkInfo,
};
use shardgate::protocol::{caps, status};

// ---- the harness ----

const DEFAULT_CASES: u64 = 20_000;
/// "SHARDGAT": fixed, so the suite's slice is the same on every run.
const DEFAULT_SEED: u64 = 0x5348_4152_4447_4154;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

/// Mixes the seed, the target and the case number into one case's own seed, so that any
/// case can be replayed alone.
fn case_seed(seed: u64, target: &str, case: u64) -> u64 {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in target.bytes().map(u64::from).chain([case]) {
        h = (h ^ b).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    h
}

/// Runs `share` thousandths of the cases on one target: `generate` makes an input from
/// the case's RNG, `check` feeds it to the code and asserts the invariants. A panic is
/// reported with the input and what replays it.
fn run<I: fmt::Debug>(
    target: &str,
    share_per_mille: u64,
    generate: impl Fn(&mut StdRng) -> I,
    mut check: impl FnMut(&I),
) {
    let total = env_u64("SHARDGATE_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let seed = env_u64("SHARDGATE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let cases: Range<u64> = match env_u64("SHARDGATE_FUZZ_CASE") {
        Some(only) => only..only + 1,
        None => 0..(total * share_per_mille / 1000).max(1),
    };
    let count = cases.end - cases.start;
    let started = Instant::now();
    for case in cases {
        let mut rng = StdRng::seed_from_u64(case_seed(seed, target, case));
        let input = generate(&mut rng);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            eprintln!(
                "fuzz {target}: case {case} failed; replay with SHARDGATE_FUZZ_SEED={seed:#x} \
                 SHARDGATE_FUZZ_CASE={case}\ninput: {input:?}"
            );
            resume_unwind(panic);
        }
    }
    println!(
        "fuzz {target}: {count} inputs, seed {seed:#x}, 0 panics, {:.2?}",
        started.elapsed()
    );
}

/// Bytes shown as an escaped byte string (and cut short when long).
struct Raw<'a>(&'a [u8]);

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 2048;
        let head = self.0.get(..SHOWN).unwrap_or(self.0);
        write!(f, "b\"{}\"", head.escape_ascii())?;
        if self.0.len() > SHOWN {
            write!(f, " ... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// 1 to `max_edits` random edits: flip, overwrite, insert, delete, truncate, duplicate.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>, max_edits: usize) {
    for _ in 0..rng.gen_range(1..=max_edits) {
        let len = bytes.len();
        let at = rng.gen_range(0..=len);
        match rng.gen_range(0..6) {
            0 if at < len => bytes[at] ^= 1 << rng.gen_range(0..8),
            1 if at < len => bytes[at] = rng.gen(),
            2 => bytes.insert(at, rng.gen()),
            3 if at < len => {
                bytes.remove(at);
            }
            4 => bytes.truncate(at),
            5 if at < len => {
                let end = rng.gen_range(at..=len.min(at + 16));
                let copy = bytes[at..end].to_vec();
                let to = rng.gen_range(0..=len);
                bytes.splice(to..to, copy);
            }
            _ => {}
        }
    }
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| rng.gen()).collect()
}

// ---- the packet reader ----

/// An in-memory socket that hands out its bytes in the given chunk sizes (a read never
/// waits), and swallows writes.
struct ChunkedStream {
    data: Vec<u8>,
    at: usize,
    chunks: Vec<usize>,
    next_chunk: usize,
}

impl AsyncRead for ChunkedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let chunk = this.chunks.get(this.next_chunk % this.chunks.len().max(1));
        this.next_chunk += 1;
        let rest = this.data.get(this.at..).unwrap_or_default();
        let n = chunk
            .copied()
            .unwrap_or(usize::MAX)
            .max(1)
            .min(rest.len())
            .min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChunkedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct PacketCase {
    /// The logical packets written, with their first sequence id (empty when mutated).
    packets: Vec<(u8, Vec<u8>)>,
    stream: Vec<u8>,
    limit: usize,
    chunks: Vec<usize>,
}

impl fmt::Debug for PacketCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lens: Vec<usize> = self.packets.iter().map(|(_, p)| p.len()).collect();
        f.debug_struct("PacketCase")
            .field("payload_lens", &lens)
            .field("limit", &self.limit)
            .field("chunks", &self.chunks)
            .field("stream", &Raw(&self.stream))
            .finish()
    }
}

fn payload_len(rng: &mut StdRng, big: bool) -> usize {
    if big {
        return MAX_PAYLOAD - 1 + rng.gen_range(0..4);
    }
    match rng.gen_range(0..10) {
        0 => 0,
        1 => [250, 251, 252, 0xFFFF, 0x1_0000][rng.gen_range(0..5)],
        2 => rng.gen_range(0..5000),
        _ => rng.gen_range(1..100),
    }
}

fn generate_packets(rng: &mut StdRng, case_is_big: bool) -> PacketCase {
    let mut stream = BytesMut::new();
    let mut packets = Vec::new();
    for _ in 0..rng.gen_range(0..5) {
        let len = payload_len(rng, case_is_big && packets.is_empty());
        let mut payload = vec![0; len];
        rng.fill(payload.as_mut_slice());
        let seq = rng.gen();
        put_packet(&mut stream, seq, &payload);
        packets.push((seq, payload));
    }
    let mut stream = stream.to_vec();
    if rng.gen_bool(0.4) {
        mutate(rng, &mut stream, 5);
        packets.clear();
    }
    let limit = match rng.gen_range(0..4) {
        0 => rng.gen_range(0..300),
        1 => MAX_PAYLOAD - 1 + rng.gen_range(0..3),
        _ => 1 << 26,
    };
    let chunks = (0..rng.gen_range(1..4))
        .map(|_| [1, 3, 4, 5, 7, 1024, usize::MAX][rng.gen_range(0..7)])
        .collect();
    PacketCase {
        packets,
        stream,
        limit,
        chunks,
    }
}

fn check_packets(rt: &tokio::runtime::Runtime, c: &PacketCase) {
    for end in [0, 1, 3, 4, 5, c.stream.len()] {
        let head = c.stream.get(..end).unwrap_or(&c.stream);
        match physical_payload_len(head) {
            None => assert!(head.len() < 4),
            Some(n) => {
                assert!(head.len() >= 4 && n <= MAX_PAYLOAD);
                assert_eq!(
                    n,
                    usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16
                );
            }
        }
    }
    let io = ChunkedStream {
        data: c.stream.clone(),
        at: 0,
        chunks: c.chunks.clone(),
        next_chunk: 0,
    };
    let mut conn = PacketConn::with_capacity(io, 16, 0);
    rt.block_on(async {
        let mut expected = c.packets.iter();
        // Every packet takes at least its 4-byte header, so this many reads must end.
        for _ in 0..=c.stream.len() / 4 + 1 {
            let got = conn.read_packet(c.limit).await;
            if c.packets.is_empty() {
                match got {
                    Ok((_, payload)) => assert!(payload.len() <= c.limit),
                    Err(ReadError::Io(e)) => panic!("in-memory reads do not fail: {e}"),
                    Err(_) => return,
                }
                continue;
            }
            match (expected.next(), got) {
                (None, Err(ReadError::Closed)) => return,
                (Some((_, p)), Err(ReadError::TooLarge(n))) if p.len() > c.limit => {
                    assert_eq!(n, c.limit);
                    return;
                }
                (Some((seq, p)), Ok((got_seq, got))) if p.len() <= c.limit => {
                    assert_eq!(got.as_ref(), p.as_slice(), "payload");
                    let last = seq.wrapping_add((p.len() / MAX_PAYLOAD) as u8);
                    assert_eq!(got_seq, last, "sequence id of the last physical packet");
                }
                (want, got) => panic!(
                    "expected {:?}, read {:?}",
                    want.map(|(s, p)| (s, p.len())),
                    got.map(|(s, p)| (s, p.len()))
                ),
            }
        }
        panic!("the reader did not reach the end of the stream");
    });
}

#[test]
fn packet_reader_joins_what_was_written_and_survives_garbage() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // Payloads of 16 MiB - 1 and more are split: the first case always has one, later
    // cases rarely (they cost 16 MiB each).
    run(
        "packet",
        150,
        |rng| {
            let big = rng.gen_ratio(1, 20_000);
            generate_packets(rng, big)
        },
        |c| check_packets(&rt, c),
    );
    // Split packets every time: exactly 16 MiB - 1 (an empty packet follows), more
    // than 16 MiB, and a short one after them.
    let packets = vec![
        (250, vec![7; MAX_PAYLOAD]),
        (3, vec![8; MAX_PAYLOAD + 5]),
        (0, b"tail".to_vec()),
    ];
    let mut stream = BytesMut::new();
    for (seq, payload) in &packets {
        put_packet(&mut stream, *seq, payload);
    }
    for chunks in [vec![usize::MAX], vec![4096, 3, 1]] {
        for limit in [1 << 26, MAX_PAYLOAD] {
            let case = PacketCase {
                packets: packets.clone(),
                stream: stream.to_vec(),
                limit,
                chunks: chunks.clone(),
            };
            check_packets(&rt, &case);
        }
    }
}

// ---- handshake and wire parsers ----

#[derive(Debug)]
enum HandshakeCase {
    Greeting(Greeting),
    Response(HandshakeResponse),
    AuthSwitch(String, Vec<u8>),
    /// Mutated or random bytes: only "no panic" is asked.
    Bytes(Vec<u8>),
}

fn text_without_nul(rng: &mut StdRng, max: usize) -> String {
    let n = rng.gen_range(0..=max);
    (0..n)
        .map(|_| match rng.gen_range(0..4) {
            0 => 'é',
            _ => char::from(rng.gen_range(1u8..0x80)),
        })
        .collect()
}

fn generate_handshake(rng: &mut StdRng) -> HandshakeCase {
    let built = match rng.gen_range(0..3) {
        0 => {
            let capabilities = rng.gen::<u32>() | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH;
            HandshakeCase::Greeting(Greeting {
                server_version: text_without_nul(rng, 30),
                connection_id: rng.gen(),
                scramble: (0..20).map(|_| rng.gen_range(1..=255)).collect(),
                capabilities,
                collation: rng.gen(),
                status: rng.gen(),
                auth_plugin: text_without_nul(rng, 25),
                ext_capabilities: if capabilities & caps::LONG_PASSWORD == 0 {
                    rng.gen()
                } else {
                    0
                },
            })
        }
        1 => {
            let capabilities = rng.gen::<u32>() | caps::PROTOCOL_41 | caps::SECURE_CONNECTION;
            let has = |flag| capabilities & flag != 0;
            let auth_len = if has(caps::PLUGIN_AUTH_LENENC_CLIENT_DATA) {
                300
            } else {
                255
            };
            HandshakeCase::Response(HandshakeResponse {
                capabilities,
                max_packet: rng.gen(),
                collation: rng.gen(),
                user: text_without_nul(rng, 20),
                auth_response: random_bytes(rng, auth_len),
                database: has(caps::CONNECT_WITH_DB)
                    .then(|| format!("db{}", text_without_nul(rng, 10))),
                auth_plugin: has(caps::PLUGIN_AUTH).then(|| text_without_nul(rng, 25)),
                attributes: if has(caps::CONNECT_ATTRS) {
                    random_bytes(rng, 300)
                } else {
                    Vec::new()
                },
                ext_capabilities: if has(caps::LONG_PASSWORD) {
                    0
                } else {
                    rng.gen()
                },
            })
        }
        _ => {
            let mut data = random_bytes(rng, 40);
            data.retain(|&b| b != 0);
            HandshakeCase::AuthSwitch(text_without_nul(rng, 25), data)
        }
    };
    if rng.gen_bool(0.3) {
        return built;
    }
    let mut bytes = match (&built, rng.gen_range(0..8)) {
        (_, 0) => random_bytes(rng, 64),
        (HandshakeCase::Greeting(g), _) => build_greeting(g).to_vec(),
        (HandshakeCase::Response(r), _) => build_handshake_response(r).to_vec(),
        (HandshakeCase::AuthSwitch(p, d), _) => build_auth_switch(p, d).to_vec(),
        (HandshakeCase::Bytes(b), _) => b.clone(),
    };
    mutate(rng, &mut bytes, 4);
    HandshakeCase::Bytes(bytes)
}

fn parse_everything(p: &[u8]) {
    let _ = parse_greeting(p);
    let _ = parse_handshake_response(p);
    let _ = parse_auth_switch(p);
    let flags = p
        .get(..4)
        .map(|c| c.iter().rev().fold(0u32, |acc, &b| acc << 8 | u32::from(b)));
    let ssl = p.len() == 32 && flags.is_some_and(|f| f & caps::SSL != 0);
    assert_eq!(is_ssl_request(p), ssl);
}

fn check_handshake(c: &HandshakeCase) {
    match c {
        HandshakeCase::Greeting(g) => {
            let p = build_greeting(g);
            assert_eq!(parse_greeting(&p).as_ref(), Some(g));
            parse_everything(&p);
        }
        HandshakeCase::Response(r) => {
            let p = build_handshake_response(r);
            assert_eq!(parse_handshake_response(&p).as_ref(), Some(r));
            parse_everything(&p);
        }
        HandshakeCase::AuthSwitch(plugin, data) => {
            let p = build_auth_switch(plugin, data);
            assert_eq!(parse_auth_switch(&p), Some((plugin.clone(), data.clone())));
            parse_everything(&p);
        }
        HandshakeCase::Bytes(b) => parse_everything(b),
    }
}

#[test]
fn handshake_parsers_read_what_was_built_and_survive_garbage() {
    run("handshake", 150, generate_handshake, check_handshake);
}

#[derive(Debug)]
struct WireCase {
    int: u64,
    text: Vec<u8>,
    ok: OkInfo,
    err: (u16, [u8; 5], String),
    eof_status: u16,
    bytes: Vec<u8>,
    at: usize,
}

fn generate_wire(rng: &mut StdRng) -> WireCase {
    let int = match rng.gen_range(0..4) {
        0 => [
            0,
            250,
            251,
            0xFFFF,
            0x1_0000,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ][rng.gen_range(0..8)],
        1 => rng.gen(),
        _ => rng.gen::<u64>() >> rng.gen_range(0..64),
    };
    let mut bytes = random_bytes(rng, 24);
    if let Some(first) = bytes.first_mut() {
        // Often a real header, so the parsers get past their first check.
        *first = [0x00, 0xfe, 0xff, 0xfc, 0xfd, *first][rng.gen_range(0..6)];
    }
    let at = rng.gen_range(0..=bytes.len() + 2);
    WireCase {
        int,
        text: random_bytes(rng, 300),
        ok: OkInfo {
            affected_rows: rng.gen::<u64>() >> rng.gen_range(0..64),
            last_insert_id: rng.gen::<u64>() >> rng.gen_range(0..64),
            status: rng.gen(),
            warnings: rng.gen(),
        },
        err: (
            rng.gen(),
            [b'4', b'2', b'S', b'0', rng.gen_range(b'0'..=b'9')],
            text_without_nul(rng, 40),
        ),
        eof_status: rng.gen(),
        bytes,
        at,
    }
}

fn check_wire(c: &WireCase) {
    let mut out = BytesMut::new();
    put_lenenc_int(&mut out, c.int);
    let mut at = 0;
    assert_eq!(get_lenenc_int(&out, &mut at), Some(c.int));
    assert_eq!(at, out.len());
    let mut out = BytesMut::new();
    put_lenenc_str(&mut out, &c.text);
    let mut at = 0;
    assert_eq!(get_lenenc_str(&out, &mut at), Some(c.text.as_slice()));
    assert_eq!(at, out.len());

    assert_eq!(parse_ok(&ok_payload(&c.ok)), Some(c.ok));
    let (code, sqlstate, message) = &c.err;
    let err = parse_err(&err_payload(*code, sqlstate, message));
    assert_eq!(
        err,
        Some(ErrInfo {
            code: *code,
            sqlstate: String::from_utf8_lossy(sqlstate).into_owned(),
            message: message.clone(),
        })
    );
    assert_eq!(
        parse_eof_status(&eof_payload(c.eof_status)),
        Some(c.eof_status)
    );

    let b = &c.bytes;
    for parse in [get_lenenc_int_len, get_lenenc_str_len, get_nul_str_len] {
        let mut at = c.at;
        if let Some(n) = parse(b, &mut at) {
            assert!(at <= b.len() && at > c.at, "advanced inside the buffer");
            assert!(n < at - c.at || n == 0, "read more than it advanced");
        }
    }
    let _ = parse_ok(b);
    let _ = parse_err(b);
    let _ = parse_eof_status(b);
}

fn get_lenenc_int_len(b: &[u8], at: &mut usize) -> Option<usize> {
    get_lenenc_int(b, at).map(|_| 0)
}
fn get_lenenc_str_len(b: &[u8], at: &mut usize) -> Option<usize> {
    get_lenenc_str(b, at).map(<[u8]>::len)
}
fn get_nul_str_len(b: &[u8], at: &mut usize) -> Option<usize> {
    get_nul_str(b, at).map(<[u8]>::len)
}

#[test]
fn wire_fields_read_what_was_written_and_survive_garbage() {
    run("wire", 100, generate_wire, check_wire);
}

// ---- the response scanner ----

struct ScanCase {
    stream: Vec<u8>,
    kind: ResponseKind,
    deprecate_eof: bool,
    /// For an unmutated response: its result sets and whether it ends in ERR.
    expect: Option<(u32, bool)>,
    steps: Vec<usize>,
}

impl fmt::Debug for ScanCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanCase")
            .field("kind", &self.kind)
            .field("deprecate_eof", &self.deprecate_eof)
            .field("expect", &self.expect)
            .field("steps", &self.steps)
            .field("stream", &Raw(&self.stream))
            .finish()
    }
}

fn ok_like(rng: &mut StdRng, header: u8, more: bool) -> Vec<u8> {
    let mut st = rng.gen::<u16>() & !status::MORE_RESULTS_EXISTS;
    if more {
        st |= status::MORE_RESULTS_EXISTS;
    }
    let mut ok = ok_payload(&OkInfo {
        affected_rows: rng.gen::<u64>() >> rng.gen_range(0..64),
        last_insert_id: rng.gen::<u64>() >> rng.gen_range(0..64),
        status: st,
        warnings: rng.gen(),
    });
    ok[0] = header;
    ok.to_vec()
}

fn generate_scan(rng: &mut StdRng) -> ScanCase {
    let deprecate_eof: bool = rng.gen();
    let mut b = BytesMut::new();
    let mut seq = rng.gen();
    let mut result_sets = 0;
    let mut error = false;
    let kind = if rng.gen_ratio(1, 10) {
        ResponseKind::FieldList
    } else {
        ResponseKind::Query
    };
    let column = |rng: &mut StdRng| {
        let mut def = b"\x03def".to_vec();
        def.extend(random_bytes(rng, 40));
        def
    };
    if kind == ResponseKind::FieldList {
        for _ in 0..rng.gen_range(0..4) {
            seq = put_packet(&mut b, seq, &column(rng));
        }
        put_packet(
            &mut b,
            seq,
            &eof_payload(rng.gen::<u16>() & !status::MORE_RESULTS_EXISTS),
        );
    } else {
        let units = rng.gen_range(1..4);
        for unit in 0..units {
            let more = unit + 1 < units;
            match rng.gen_range(0..5) {
                0 if !more => {
                    put_packet(&mut b, seq, &err_payload(rng.gen(), b"HY000", "no"));
                    error = true;
                }
                0 | 1 => seq = put_packet(&mut b, seq, &ok_like(rng, 0x00, more)),
                _ => {
                    result_sets += 1;
                    let columns = rng.gen_range(1..300u64);
                    let mut count = BytesMut::new();
                    put_lenenc_int(&mut count, columns);
                    seq = put_packet(&mut b, seq, &count);
                    for _ in 0..columns.min(4) {
                        seq = put_packet(&mut b, seq, &column(rng));
                    }
                    for _ in 4..columns {
                        seq = put_packet(&mut b, seq, b"\x03def");
                    }
                    if !deprecate_eof {
                        seq = put_packet(&mut b, seq, &eof_payload(2));
                    }
                    for _ in 0..rng.gen_range(0..5) {
                        // A row starts with a length-encoded value or NULL (0xfb).
                        let mut row = vec![rng.gen_range(0..=0xfb)];
                        row.extend(random_bytes(rng, 30));
                        seq = put_packet(&mut b, seq, &row);
                    }
                    let end = if deprecate_eof {
                        ok_like(rng, 0xfe, more)
                    } else {
                        let st = if more { status::MORE_RESULTS_EXISTS } else { 0 };
                        eof_payload(rng.gen::<u16>() & !status::MORE_RESULTS_EXISTS | st).to_vec()
                    };
                    seq = put_packet(&mut b, seq, &end);
                }
            }
        }
    }
    let mut stream = b.to_vec();
    let mut expect = Some((result_sets, error));
    if rng.gen_bool(0.5) {
        mutate(rng, &mut stream, 5);
        expect = None;
    } else if rng.gen_bool(0.2) {
        // Bytes after the response belong to nobody yet: the scanner must stop before them.
        stream.extend(random_bytes(rng, 20));
        expect = None;
    }
    let steps = (0..rng.gen_range(1..4))
        .map(|_| rng.gen_range(1..40))
        .collect();
    ScanCase {
        stream,
        kind,
        deprecate_eof,
        expect,
        steps,
    }
}

/// The end of each whole physical packet at the start of `buf`.
fn packet_ends(buf: &[u8]) -> Vec<usize> {
    let mut ends = vec![0];
    let mut at = 0;
    while let Some(len) = buf.get(at..).and_then(physical_payload_len) {
        if buf.len() < at + 4 + len {
            break;
        }
        at += 4 + len;
        ends.push(at);
    }
    ends
}

fn check_scan(c: &ScanCase) {
    let mut whole = ResponseScanner::new(c.kind, c.deprecate_eof);
    let whole_result = whole.scan(&c.stream);
    if let Ok(n) = whole_result {
        assert!(
            packet_ends(&c.stream).contains(&n),
            "stopped inside a packet at {n}"
        );
    }
    if let Some((result_sets, error)) = c.expect {
        assert_eq!(whole_result, Ok(c.stream.len()));
        assert!(whole.is_done());
        assert_eq!(whole.outcome().result_sets, result_sets);
        assert_eq!(whole.outcome().error, error);
    }
    // The same stream arriving in pieces scans to the same place and outcome.
    let mut pieces = ResponseScanner::new(c.kind, c.deprecate_eof);
    let mut consumed = 0;
    let mut end = 0;
    let mut step = c.steps.iter().cycle();
    let pieces_result = loop {
        end = (end + step.next().copied().unwrap_or(1)).min(c.stream.len());
        match pieces.scan(&c.stream[consumed..end]) {
            Ok(n) => consumed += n,
            Err(e) => break Err(e),
        }
        if end == c.stream.len() || pieces.is_done() {
            break Ok(consumed);
        }
    };
    assert_eq!(whole_result, pieces_result);
    assert_eq!(whole.is_done(), pieces.is_done());
    assert_eq!(whole.outcome(), pieces.outcome());
}

#[test]
fn response_scanner_finds_the_end_in_whole_and_in_pieces() {
    run("relay", 200, generate_scan, check_scan);
}

// ---- the planner ----

struct FuzzSchema {
    sharded: bool,
}

impl ShardingSchema for FuzzSchema {
    fn is_sharded(&self) -> bool {
        self.sharded
    }
    fn sharding_column(&self, table: &str) -> Option<&str> {
        match table {
            "messages" | "channels" => Some("workspace_id"),
            "accounts" => Some("ws"),
            _ => None,
        }
    }
    fn is_reference(&self, table: &str) -> bool {
        table == "plans"
    }
    fn is_listed(&self, table: &str) -> bool {
        matches!(table, "messages" | "channels" | "accounts" | "plans")
    }
}

/// The token alphabet of random SQL-ish text.
const PIECES: &[&[u8]] = &[
    b"SELECT",
    b"INSERT",
    b"REPLACE",
    b"INTO",
    b"UPDATE",
    b"DELETE",
    b"FROM",
    b"WHERE",
    b"AND",
    b"OR",
    b"NOT",
    b"SET",
    b"VALUES",
    b"VALUE",
    b"ON",
    b"DUPLICATE",
    b"KEY",
    b"IN (",
    b"BETWEEN",
    b"JOIN",
    b"UNION",
    b"WITH",
    b"AS",
    b"USE",
    b"BEGIN",
    b"COMMIT",
    b"ROLLBACK",
    b"TO",
    b"CREATE",
    b"TEMPORARY",
    b"TABLE",
    b"DROP",
    b"ALTER",
    b"EXPLAIN",
    b"SHOW",
    b"LOCK",
    b"GET_LOCK(",
    b"LIMIT",
    b"ORDER BY",
    b"PARTITION",
    b"GLOBAL",
    b"SESSION",
    b"TRANSACTION",
    b"autocommit",
    b"NULL",
    b"messages",
    b"channels",
    b"accounts",
    b"plans",
    b"app.",
    b"t",
    b"workspace_id",
    b"ws",
    b"id",
    b"body",
    b"(",
    b")",
    b",",
    b".",
    b"=",
    b"<=>",
    b":=",
    b"@",
    b"@@",
    b"+",
    b"-",
    b"*",
    b"/",
    b";",
    b";",
    b";",
    b"'",
    b"\"",
    b"`",
    b"\\",
    b"'x''y'",
    b"'42'",
    b"\"s\"",
    b"`t``q`",
    b"/*",
    b"*/",
    b"/*!",
    b"/*!40101",
    b"/*M!",
    b"#",
    b"-- ",
    b"--",
    b"\n",
    b"\t",
    b"\x0b",
    b"\r\n",
    b"/*workspace_id:5*/",
    b"/*workspace_id:7*/",
    b"/*application='a',workspace_id='9'*/",
    b"0",
    b"1",
    b"42",
    b"4.2",
    b"1e3",
    b"-7",
    b"18446744073709551615",
    b"99999999999999999999",
    b"\xc3\xa9",
    b"\xe6\x97\xa5",
    b"\xf0\x9f\x99\x82",
    b"\xc2\xa0",
    b"\xe9",
    b"\xff",
    b"\x80",
    b"\xf0\x9f",
    b"\xc0\x80",
    b"\0",
];

/// Statements the planner understands, to be mutated into ones it almost does.
const TEMPLATES: &[&[u8]] = &[
    b"SELECT * FROM messages WHERE workspace_id = 42 AND id IN (1, 2)",
    b"SELECT m.body FROM messages m JOIN channels c ON c.id = m.channel_id \
      WHERE m.workspace_id IN (1, 2) AND c.workspace_id IN (2, 1)",
    b"INSERT INTO messages (workspace_id, body) VALUES (1, 'a'), (2, 'b\\'c'), (1, \"d\") \
      ON DUPLICATE KEY UPDATE body = VALUES(body)",
    b"INSERT INTO app.accounts SET ws = '7', name = 'x'",
    b"REPLACE INTO plans VALUES (1, 'free')",
    b"UPDATE messages SET body = 'x' WHERE workspace_id = 3; DELETE FROM channels WHERE \
      workspace_id = 3",
    b"/*workspace_id:5*/ SELECT * FROM messages; SET @a = 'caf\xe9'; SET autocommit = 0",
    b"/*!40101 SET NAMES utf8mb4 */; BEGIN; INSERT INTO messages VALUES (9, 'x'); COMMIT",
    b"WITH w AS (SELECT * FROM messages WHERE workspace_id = 1) SELECT * FROM w",
    b"SELECT GET_LOCK('a', 1), @v := 1 FROM channels WHERE workspace_id = 2 # done",
    b"CREATE TEMPORARY TABLE tmp (id INT); LOCK TABLES messages READ; USE app",
];

fn generate_sql(rng: &mut StdRng) -> Vec<u8> {
    let mut sql = Vec::new();
    if rng.gen_bool(0.5) {
        for _ in 0..rng.gen_range(0..40) {
            sql.extend_from_slice(PIECES[rng.gen_range(0..PIECES.len())]);
            if rng.gen_bool(0.7) {
                sql.push(b' ');
            }
        }
    } else {
        sql.extend_from_slice(TEMPLATES[rng.gen_range(0..TEMPLATES.len())]);
        for _ in 0..rng.gen_range(0..4) {
            let at = rng.gen_range(0..=sql.len());
            let piece = PIECES[rng.gen_range(0..PIECES.len())];
            sql.splice(at..at, piece.iter().copied());
        }
        if rng.gen_bool(0.5) {
            mutate(rng, &mut sql, 3);
        }
    }
    sql
}

fn check_range(what: &str, r: &Range<usize>, within: &Range<usize>) {
    assert!(
        within.start <= r.start && r.start <= r.end && r.end <= within.end,
        "{what} {r:?} is not within {within:?}"
    );
}

fn check_plan(raw: &[u8], sharded: bool) {
    let text = planner::sql_text(raw);
    assert_eq!(text.len(), raw.len(), "sql_text keeps the length");
    if let Ok(valid) = std::str::from_utf8(raw) {
        assert!(matches!(text, std::borrow::Cow::Borrowed(t) if t == valid));
    }
    let plan = planner::plan(&text, &FuzzSchema { sharded });
    let all = 0..raw.len();
    assert!(!plan.statements.is_empty());
    if let [only] = plan.statements.as_slice() {
        assert_eq!(only.span, all, "a lone statement owns the whole text");
    }
    let mut previous_end = 0;
    for (i, s) in plan.statements.iter().enumerate() {
        check_range("statement", &s.span, &all);
        assert!(
            text.get(s.span.clone()).is_some(),
            "span on a char boundary"
        );
        if i > 0 {
            assert!(
                previous_end <= s.span.start,
                "statements overlap or are out of order"
            );
            let gap = &raw[previous_end..s.span.start];
            assert!(gap.contains(&b';'), "no `;` between two statements");
            assert!(
                !s.span.is_empty(),
                "an empty statement in a multi-statement plan"
            );
        }
        previous_end = s.span.end;
        if plan.statements.len() > 1 {
            // A statement is planned as it is written, not from its neighbours: its own
            // bytes up to its `;`, planned alone, are the same kind of statement. (With
            // the `;`: `BEGIN--;` is not `BEGIN -- comment`, for MySQL either.)
            let terminator = match plan.statements.get(i + 1) {
                Some(_) => raw[s.span.end..]
                    .iter()
                    .position(|&b| b == b';')
                    .map_or(0, |p| p + 1),
                None => 0,
            };
            let own = &raw[s.span.start..s.span.end + terminator];
            let alone = planner::plan(&planner::sql_text(own), &FuzzSchema { sharded });
            assert_eq!(alone.statements.len(), 1, "statement {i} alone: {alone:?}");
            assert_eq!(
                std::mem::discriminant(&alone.statements[0].kind),
                std::mem::discriminant(&s.kind),
                "statement {i} {:?} alone is {:?}, in the query {:?}",
                Raw(own),
                alone.statements[0].kind,
                s.kind
            );
        }
        let StatementKind::Insert(shape) = &s.kind else {
            continue;
        };
        check_range("prefix", &shape.prefix, &s.span);
        check_range("suffix", &shape.suffix, &s.span);
        assert_eq!(shape.prefix.start, s.span.start);
        assert_eq!(shape.suffix.end, s.span.end);
        let mut at = shape.prefix.end;
        for (n, (row, _)) in shape.rows.iter().enumerate() {
            check_range("row", row, &s.span);
            if n == 0 {
                assert_eq!(
                    row.start, shape.prefix.end,
                    "the prefix runs to the first row"
                );
            }
            assert!(at <= row.start, "rows overlap or are out of order");
            let bytes = &raw[row.clone()];
            assert!(
                bytes.starts_with(b"(") && bytes.ends_with(b")"),
                "a row is `( ... )`"
            );
            at = row.end;
        }
        if !shape.rows.is_empty() {
            assert_eq!(
                shape.suffix.start, at,
                "the suffix starts after the last row"
            );
        }
    }
}

struct PlanCase {
    sql: Vec<u8>,
    sharded: bool,
}

impl fmt::Debug for PlanCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanCase")
            .field("sharded", &self.sharded)
            .field("sql", &Raw(&self.sql))
            .finish()
    }
}

#[test]
fn planner_spans_stay_inside_the_raw_bytes() {
    run(
        "planner",
        400,
        |rng| PlanCase {
            sql: generate_sql(rng),
            sharded: rng.gen_ratio(9, 10),
        },
        |c| check_plan(&c.sql, c.sharded),
    );
}
