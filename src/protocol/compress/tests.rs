use std::io::Write as _;

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A frame as a client builds it: compressed when `compress`.
fn frame(seq: u8, payload: &[u8], compress: bool) -> Vec<u8> {
    let (body, ulen) = if compress {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(payload).unwrap();
        (z.finish().unwrap(), payload.len())
    } else {
        (payload.to_vec(), 0)
    };
    let mut f = Vec::new();
    f.extend_from_slice(&(body.len() as u32).to_le_bytes()[..3]);
    f.push(seq);
    f.extend_from_slice(&(ulen as u32).to_le_bytes()[..3]);
    f.extend_from_slice(&body);
    f
}

/// Reads frames off `wire` (a reference decoder): (seq, ulen, packet bytes) each.
fn parse_frames(mut wire: &[u8]) -> Vec<(u8, usize, Vec<u8>)> {
    let mut out = Vec::new();
    while wire.len() >= HEADER {
        let clen = u24(&wire[0..3]);
        let ulen = u24(&wire[4..7]);
        let body = &wire[HEADER..HEADER + clen];
        let data = if ulen == 0 {
            body.to_vec()
        } else {
            let mut d = flate2::read::ZlibDecoder::new(body);
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut d, &mut v).unwrap();
            assert_eq!(v.len(), ulen);
            v
        };
        out.push((wire[3], ulen, data));
        wire = &wire[HEADER + clen..];
    }
    assert!(wire.is_empty(), "a partial frame at the end");
    out
}

fn compressed_pair(
    max_packet: usize,
) -> (
    tokio::io::DuplexStream,
    MaybeCompressed<tokio::io::DuplexStream>,
) {
    let (peer, ours) = tokio::io::duplex(1 << 20);
    let mut s = MaybeCompressed::new(ours);
    s.start(Codec::new(max_packet, Some(Duration::from_secs(5))), &[])
        .unwrap();
    (peer, s)
}

#[tokio::test]
async fn writes_are_framed_like_mariadb_and_sequence_ids_follow_the_last_read() {
    let (mut peer, mut s) = compressed_pair(1 << 24);
    // The command arrives as frame 0: the answer's frames are 1, 2, ...
    peer.write_all(&frame(0, b"\x05\x00\x00\x00\x03abcd", false))
        .await
        .unwrap();
    let mut cmd = [0u8; 9];
    s.read_exact(&mut cmd).await.unwrap();
    assert_eq!(&cmd, b"\x05\x00\x00\x00\x03abcd");
    // A short answer: uncompressed.
    s.write_all(b"\x03\x00\x00\x01ok!").await.unwrap();
    s.flush().await.unwrap();
    // A long packet: compressed, 16 KiB in the first frame, its whole rest in the
    // next (a packet spans at most two frames, as MariaDB writes it); the packet after
    // it starts a frame of its own.
    let mut big: Vec<u8> = vec![0x3c, 0x9c, 0x00, 0x02]; // 39,996 bytes, seq 2
    big.extend((0..39_996u32).map(|i| b"abcdefgh"[i as usize % 8]));
    let small = b"\x03\x00\x00\x03end";
    let mut answer = big.clone();
    answer.extend_from_slice(small);
    s.write_all(&answer).await.unwrap();
    s.flush().await.unwrap();
    drop(s);
    let mut wire = Vec::new();
    peer.read_to_end(&mut wire).await.unwrap();
    let frames = parse_frames(&wire);
    assert_eq!(frames[0], (1, 0, b"\x03\x00\x00\x01ok!".to_vec()));
    let seqs: Vec<u8> = frames.iter().map(|f| f.0).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let sizes: Vec<usize> = frames.iter().map(|f| f.2.len()).collect();
    assert_eq!(sizes, [7, FRAME_PAYLOAD, 40_000 - FRAME_PAYLOAD, 7]);
    assert!(frames[1].1 > 0 && frames[2].1 > 0, "long frames compressed");
    assert_eq!(frames[3], (4, 0, small.to_vec()));
    let joined: Vec<u8> = frames[1..3].iter().flat_map(|f| f.2.clone()).collect();
    assert_eq!(joined, big);
    assert!(
        wire.len() < big.len() / 10,
        "compressed: {} bytes",
        wire.len()
    );
}

#[tokio::test]
async fn reads_join_packets_across_frames_and_split_frames_into_packets() {
    let (mut peer, mut s) = compressed_pair(1 << 24);
    let packet: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
    let mut stream = Vec::new();
    stream.extend_from_slice(&packet);
    stream.extend_from_slice(b"tail");
    let mut wire = frame(2, &stream[..10_000], true);
    wire.extend(frame(3, &stream[10_000..20_000], false));
    wire.extend(frame(4, &stream[20_000..], true));
    tokio::spawn(async move {
        // Byte by byte at first: headers and bodies arrive in pieces.
        for b in &wire[..40] {
            peer.write_all(&[*b]).await.unwrap();
        }
        peer.write_all(&wire[40..]).await.unwrap();
        let _ = peer.read(&mut [0u8; 1]).await;
    });
    let mut got = vec![0u8; stream.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, stream);
    // The next frame written follows the last one read.
    assert_eq!(s.codec.as_ref().unwrap().write_seq, 5);
}

async fn read_error(wire: Vec<u8>, max_packet: usize) -> io::Error {
    let (mut peer, mut s) = compressed_pair(max_packet);
    tokio::spawn(async move {
        peer.write_all(&wire).await.unwrap();
        let _ = peer.read(&mut [0u8; 1]).await;
    });
    let mut buf = vec![0u8; 1 << 16];
    let r = crate::timer::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => panic!("end of stream instead of an error"),
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    });
    r.await.expect("an error, not a hang")
}

#[tokio::test]
async fn lying_and_corrupt_frames_are_errors() {
    let payload = vec![b'x'; 1000];
    // Announces more than it inflates to.
    let mut short = frame(0, &payload, true);
    short[4..7].copy_from_slice(&2000u32.to_le_bytes()[..3]);
    let e = read_error(short, 1 << 24).await;
    assert!(e.to_string().contains("less than"), "{e}");
    // Announces less.
    let mut long = frame(0, &payload, true);
    long[4..7].copy_from_slice(&10u32.to_le_bytes()[..3]);
    let e = read_error(long, 1 << 24).await;
    assert!(e.to_string().contains("more than"), "{e}");
    // Garbage instead of zlib.
    let mut garbage = vec![20, 0, 0, 0, 100, 0, 0];
    garbage.extend_from_slice(&[0x55; 20]);
    let e = read_error(garbage, 1 << 24).await;
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    // A huge uncompressed length past max_packet_size: refused from the header.
    let e = read_error(vec![10, 0, 0, 0, 0xff, 0xff, 0xff, 1, 2, 3], 1 << 20).await;
    assert!(e.to_string().contains("max_packet_size"), "{e}");
    // Data announced, none sent.
    let e = read_error(vec![0, 0, 0, 0, 5, 0, 0], 1 << 20).await;
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

#[tokio::test]
async fn a_frame_that_stops_mid_way_ends_after_the_stall_timeout() {
    let (mut peer, ours) = tokio::io::duplex(1024);
    let mut s = MaybeCompressed::new(ours);
    s.start(Codec::new(1 << 20, Some(Duration::from_millis(300))), &[])
        .unwrap();
    peer.write_all(&[100, 0, 0, 0, 0, 0, 0, 1, 2])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    // The two bytes that came are passed on; then the rest never comes.
    assert_eq!(s.read(&mut buf).await.unwrap(), 2);
    let e = s.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    // Between frames, waiting is not a stall.
    let (mut peer, ours) = tokio::io::duplex(1024);
    let mut s = MaybeCompressed::new(ours);
    s.start(Codec::new(1 << 20, Some(Duration::from_millis(300))), &[])
        .unwrap();
    let r = crate::timer::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
    assert!(r.is_err(), "still waiting for a frame");
    peer.write_all(&frame(0, b"hi", false)).await.unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap(), 2);
}

#[tokio::test]
async fn bytes_read_before_the_switch_start_the_first_frame() {
    let (mut peer, ours) = tokio::io::duplex(1024);
    let mut s = MaybeCompressed::new(ours);
    let f = frame(0, b"hello world", false);
    s.start(Codec::new(1 << 20, None), &f[..5]).unwrap();
    peer.write_all(&f[5..]).await.unwrap();
    let mut got = [0u8; 11];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello world");
}

#[tokio::test]
async fn uncompressed_streams_pass_through() {
    let (mut peer, ours) = tokio::io::duplex(1024);
    let mut s = MaybeCompressed::new(ours);
    s.write_all(b"plain").await.unwrap();
    s.flush().await.unwrap();
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"plain");
    assert!(!s.is_compressed() && s.stats().is_none());
}

#[tokio::test]
async fn small_reads_drain_what_zlib_holds() {
    let (mut peer, mut s) = compressed_pair(1 << 24);
    let payload = vec![b'z'; 20_000];
    let mut wire = frame(0, &payload, true);
    wire.extend(frame(1, b"next", false));
    peer.write_all(&wire).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 100];
    while got.len() < payload.len() + 4 {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&got[..payload.len()], &payload[..]);
    assert_eq!(&got[payload.len()..], b"next");
}

#[tokio::test]
async fn random_bytes_end_in_an_error_or_the_end_never_a_panic_or_a_hang() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for round in 0..300 {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let mut s = MaybeCompressed::new(ours);
        s.start(Codec::new(1 << 20, Some(Duration::from_millis(50))), &[])
            .unwrap();
        let mut wire = if rng.gen_bool(0.5) {
            frame(
                rng.gen(),
                &(0..rng.gen_range(0..3000))
                    .map(|_| rng.gen())
                    .collect::<Vec<u8>>(),
                true,
            )
        } else {
            Vec::new()
        };
        let n = rng.gen_range(0..200);
        wire.extend((0..n).map(|_| rng.gen::<u8>()));
        for _ in 0..rng.gen_range(0..4) {
            if !wire.is_empty() {
                let at = rng.gen_range(0..wire.len());
                wire[at] = rng.gen();
            }
        }
        peer.write_all(&wire).await.unwrap();
        drop(peer);
        let mut buf = vec![0u8; rng.gen_range(1..5000)];
        let done = crate::timer::timeout(Duration::from_secs(5), async {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(done.is_ok(), "round {round} hung");
    }
}
