//! The split and the join together, sans-IO, on the ffmpeg samples of
//! `sip-profiles/core/tests/data/media/`: which packet takes which path, what each
//! path carries (ciphertext or plaintext), and the stream rebuilt byte for byte with
//! the two paths interleaved out of order; and the SDP both ways.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::media::Class;
use sip_core::media::h264::H264Classifier;
use sip_core::permit::SrtpSuite;
use sip_testkit::seeded_rng;

use super::join::Joiner;
use super::sdp::{self, SplitMode};
use super::split::{Path, Splitter, video_key, video_keys};
use super::{Clip, Codec};
use crate::keys::{MediaKeys, random_keys};

const H264: &[u8] = include_bytes!("../../../sip-profiles/core/tests/data/media/bframes.h264");
const M2V: &[u8] = include_bytes!("../../../sip-profiles/core/tests/data/media/small.m2v");

fn sender() -> SocketAddr {
    "127.0.0.1:40100".parse().unwrap()
}
fn relay() -> SocketAddr {
    "127.0.0.1:40003".parse().unwrap()
}

fn keys() -> MediaKeys {
    let suite = SrtpSuite::AesCm128HmacSha1_80;
    MediaKeys {
        send: random_keys(&suite, &mut seeded_rng(1)),
        recv: random_keys(&suite, &mut seeded_rng(2)),
        from_secret: false,
    }
}

/// Splits `clip`; returns the datagrams with their paths and the splitter.
fn split(clip: &Clip, mode: SplitMode, keyed: bool) -> (Vec<(Path, Vec<u8>)>, Splitter) {
    let k = video_keys(&keys()).unwrap();
    let mut s = Splitter::new(
        clip.codec,
        clip.codec.payload_type(),
        clip.ticks_per_picture(),
        keyed.then_some(&k.send),
        mode,
        true,
        &mut seeded_rng(3),
    );
    let out = clip
        .payloads
        .iter()
        .map(|p| {
            let (path, d) = s.packet(p).unwrap();
            (path, d.to_vec())
        })
        .collect();
    (out, s)
}

/// Delivers the datagrams with every relay packet late by `lag` packets (the longer
/// path), and returns the joined stream.
fn join(
    clip: &Clip,
    sent: &[(Path, Vec<u8>)],
    mode: SplitMode,
    keyed: bool,
    lag: usize,
) -> Vec<u8> {
    let k = video_keys(&keys()).unwrap();
    let mut j = Joiner::new(
        clip.codec,
        clip.codec.payload_type(),
        keyed.then_some(&k.send),
        mode,
        sender(),
        Some(relay()),
    );
    let t0 = Instant::now();
    let mut order: Vec<(usize, usize)> = sent
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (if *p == Path::Relay { i + lag } else { i }, i))
        .collect();
    order.sort_unstable();
    for (n, (_, i)) in order.into_iter().enumerate() {
        let now = t0 + Duration::from_micros(n as u64 * 100);
        let from = if sent[i].0 == Path::Relay {
            relay()
        } else {
            sender()
        };
        j.handle_datagram(now, from, &sent[i].1);
    }
    let (stream, stats, reception) = j.finish(t0 + Duration::from_secs(5));
    assert_eq!(stats.refused, 0, "{stats:?}");
    assert_eq!(stats.lost, 0, "{stats:?}");
    // The report: each path's packets as sent, nothing missing or repeated.
    let relayed = sent.iter().filter(|(p, _)| *p == Path::Relay).count() as u64;
    assert_eq!(reception.relay.packets, relayed, "{reception:?}");
    assert_eq!(
        reception.direct.packets,
        sent.len() as u64 - relayed,
        "{reception:?}"
    );
    assert_eq!(
        (reception.expected, reception.received, reception.lost),
        (sent.len() as u64, sent.len() as u64, 0)
    );
    assert_eq!(reception.relay.duplicates + reception.direct.duplicates, 0);
    stream
}

#[test]
fn h264_i_packets_take_the_relay_and_the_stream_comes_back_byte_for_byte() {
    let clip = Clip::from_bytes(Codec::H264, H264).unwrap();
    let (sent, s) = split(&clip, SplitMode::Srtp, true);
    // The split decision is the classifier's, packet by packet.
    let mut c = H264Classifier::new();
    for (p, (path, _)) in clip.payloads.iter().zip(&sent) {
        let want = if c.classify(&p.data) == Class::Intra {
            Path::Relay
        } else {
            Path::Direct
        };
        assert_eq!(*path, want);
    }
    assert!(s.stats.relay > 0 && s.stats.direct > 0, "{:?}", s.stats);
    assert_eq!(s.stats.relay, s.stats.intra);
    assert_eq!(s.stats.plain, 0);
    // Every datagram is SRTP: no payload in the clear on either path.
    for ((_, d), p) in sent.iter().zip(&clip.payloads) {
        assert_eq!(
            d.len(),
            12 + p.data.len() + 10,
            "AES_CM_128_HMAC_SHA1_80 tag"
        );
        assert_ne!(&d[12..12 + p.data.len()], &p.data[..]);
    }
    for lag in [0, 3, 40] {
        assert_eq!(
            join(&clip, &sent, SplitMode::Srtp, true, lag),
            H264,
            "lag {lag}"
        );
    }
}

#[test]
fn selective_mode_sends_the_direct_path_plain_and_no_idr_on_it() {
    let clip = Clip::from_bytes(Codec::H264, H264).unwrap();
    let (sent, s) = split(&clip, SplitMode::Selective, true);
    assert_eq!(s.stats.plain, s.stats.direct);
    for ((path, d), p) in sent.iter().zip(&clip.payloads) {
        let plain = d[12..] == p.data[..];
        assert_eq!(plain, *path == Path::Direct);
        if *path == Path::Direct {
            // Neither an IDR slice, a parameter set, nor a fragment/aggregate of one.
            let t = p.data[0] & 0x1f;
            let inner = if t == 28 { p.data[1] & 0x1f } else { t };
            assert!(
                !matches!(inner, 5 | 7 | 8),
                "type {inner} on the direct path"
            );
        }
    }
    assert_eq!(join(&clip, &sent, SplitMode::Selective, true, 5), H264);
}

#[test]
fn selective_without_a_relay_still_protects_the_i_packets() {
    let clip = Clip::from_bytes(Codec::H264, H264).unwrap();
    let k = video_keys(&keys()).unwrap();
    let mut s = Splitter::new(
        Codec::H264,
        96,
        clip.ticks_per_picture(),
        Some(&k.send),
        SplitMode::Selective,
        false,
        &mut seeded_rng(3),
    );
    let mut c = H264Classifier::new();
    for p in &clip.payloads {
        let intra = c.classify(&p.data) == Class::Intra;
        let (path, d) = s.packet(p).unwrap();
        assert_eq!(path, Path::Direct, "not relayed: everything direct");
        assert_eq!(
            d[12..] == p.data[..],
            !intra,
            "only non-intra packets plain"
        );
    }
    assert_eq!(s.stats.relay, 0);
    assert_eq!(s.stats.plain, s.stats.packets - s.stats.intra);
}

#[test]
fn the_receiver_refuses_plain_rtp_unless_selective_and_from_the_sender() {
    let clip = Clip::from_bytes(Codec::H264, H264).unwrap();
    let (sent, _) = split(&clip, SplitMode::Selective, true);
    let (path, plain) = sent.iter().find(|(p, _)| *p == Path::Direct).unwrap();
    assert_eq!(*path, Path::Direct);
    let k = video_keys(&keys()).unwrap();
    let t = Instant::now();
    let joiner = |mode| {
        Joiner::new(
            Codec::H264,
            96,
            Some(&k.send),
            mode,
            sender(),
            Some(relay()),
        )
    };
    let mut srtp_only = joiner(SplitMode::Srtp);
    srtp_only.handle_datagram(t, sender(), plain);
    assert_eq!(srtp_only.stats.refused, 1);
    let mut selective = joiner(SplitMode::Selective);
    selective.handle_datagram(t, "127.0.0.1:9".parse().unwrap(), plain);
    selective.handle_datagram(t, relay(), plain);
    assert_eq!(
        selective.stats.refused, 2,
        "a stranger, and plain from the relay"
    );
    selective.handle_datagram(t, sender(), plain);
    assert_eq!(selective.stats.direct_plain, 1);
    // SRTP under another key is refused.
    let other = random_keys(&SrtpSuite::AesCm128HmacSha1_80, &mut seeded_rng(9));
    let mut wrong = Joiner::new(
        Codec::H264,
        96,
        Some(&other),
        SplitMode::Srtp,
        sender(),
        None,
    );
    let (srtp, _) = split(&clip, SplitMode::Srtp, true);
    wrong.handle_datagram(t, sender(), &srtp[0].1);
    assert_eq!(wrong.stats.refused, 1);
}

#[test]
fn mpeg2_i_packets_take_the_relay_and_the_stream_comes_back_byte_for_byte() {
    let clip = Clip::from_bytes(Codec::Mpv, M2V).unwrap();
    assert!((clip.fps - 25.0).abs() < 1e-9, "{}", clip.fps);
    let (sent, s) = split(&clip, SplitMode::Srtp, true);
    for (p, (path, _)) in clip.payloads.iter().zip(&sent) {
        let intra = sip_core::media::mpeg2::classify(&p.data) == Class::Intra;
        assert_eq!(*path == Path::Relay, intra);
    }
    assert!(s.stats.relay > 0 && s.stats.direct > 0, "{:?}", s.stats);
    assert_eq!(join(&clip, &sent, SplitMode::Srtp, true, 7), M2V);
    // Without keys (no SRTP in the call) both paths are plain and still rejoin.
    let (plain, s) = split(&clip, SplitMode::Srtp, false);
    assert_eq!(s.stats.plain, s.stats.packets);
    assert_eq!(join(&clip, &plain, SplitMode::Srtp, false, 2), M2V);
}

#[test]
fn video_keys_differ_from_the_audio_keys_and_per_direction() {
    let audio = keys();
    let v = video_keys(&audio).unwrap();
    assert_ne!(v.send.key_salt(), audio.send.key_salt());
    assert_ne!(v.send.key_salt(), v.recv.key_salt());
    assert_eq!(video_key(&audio.send).unwrap(), v.send, "deterministic");
    assert_eq!(v.send.suite(), audio.send.suite());
}

#[test]
fn offer_and_answer_sections_read_back() {
    let clip = Clip::from_bytes(Codec::H264, H264).unwrap();
    let section = sdp::offer_section(&clip, 40100, SplitMode::Selective);
    assert!(section.starts_with("m=video 40100 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"));
    assert!(
        section.contains("a=fmtp:96 packetization-mode=1;profile-level-id=4d"),
        "{section}"
    );
    assert!(section.contains(";sprop-parameter-sets=Z"), "{section}");
    assert!(section.contains("a=rtcp-mux\r\n"));
    // As the callee receives it: after the audio section, with the proxy's relay line.
    let body = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n{section}a=permit-relay:127.0.0.1 40003\r\n"
    );
    let offer = sdp::parse(body.as_bytes()).unwrap();
    assert_eq!(offer.addr, sender());
    assert_eq!((offer.codec, offer.payload_type), (Codec::H264, 96));
    assert_eq!(offer.relay, Some(relay()));
    assert_eq!(offer.mode, SplitMode::Selective);
    // The audio-only parser still finds the audio.
    assert_eq!(
        crate::sdp::parse_audio(body.as_bytes()).unwrap().addr,
        "127.0.0.1:40000".parse::<std::net::SocketAddr>().unwrap()
    );
    let answer = sdp::answer_section(&offer, 40200);
    let back = sdp::parse(format!("c=IN IP4 127.0.0.2\r\n{answer}").as_bytes()).unwrap();
    assert_eq!(
        back.addr,
        "127.0.0.2:40200".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(
        (back.codec, back.relay, back.mode),
        (Codec::H264, None, SplitMode::Srtp)
    );

    let m2v = Clip::from_bytes(Codec::Mpv, M2V).unwrap();
    let s = sdp::offer_section(&m2v, 5000, SplitMode::Srtp);
    assert!(
        s.starts_with("m=video 5000 RTP/AVP 32\r\na=rtpmap:32 MPV/90000\r\n"),
        "{s}"
    );
    let o = sdp::parse(format!("c=IN IP4 127.0.0.1\r\n{s}").as_bytes()).unwrap();
    assert_eq!((o.codec, o.payload_type), (Codec::Mpv, 32));
}

#[test]
fn unusable_video_sections_are_not_taken() {
    for body in [
        // Rejected (port 0), packetization-mode 0, an unknown codec, no c=.
        "c=IN IP4 1.2.3.4\r\nm=video 0 RTP/AVP 32\r\n",
        "c=IN IP4 1.2.3.4\r\nm=video 5 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=42e01f\r\n",
        "c=IN IP4 1.2.3.4\r\nm=video 5 RTP/AVP 97\r\na=rtpmap:97 VP8/90000\r\n",
        "m=video 5 RTP/AVP 32\r\n",
        "c=IN IP4 1.2.3.4\r\nm=audio 5 RTP/AVP 0\r\n",
    ] {
        assert_eq!(sdp::parse(body.as_bytes()), None, "{body}");
    }
    assert_eq!(sdp::parse(&[0xff, 0xfe]), None);
    assert!(
        Clip::from_bytes(Codec::H264, &[0, 0, 1, 0x65, 1, 2]).is_err(),
        "no SPS/PPS"
    );
}

#[test]
fn repeated_packets_are_duplicates_of_their_path_not_refusals() {
    let clip = Clip::from_bytes(Codec::H264, H264).unwrap();
    let (sent, _) = split(&clip, SplitMode::Srtp, true);
    let k = video_keys(&keys()).unwrap();
    let mut j = Joiner::new(
        Codec::H264,
        96,
        Some(&k.send),
        SplitMode::Srtp,
        sender(),
        Some(relay()),
    );
    let t = Instant::now();
    let first_relay = sent.iter().position(|(p, _)| *p == Path::Relay).unwrap();
    let first_direct = sent.iter().position(|(p, _)| *p == Path::Direct).unwrap();
    // The same SRTP packet twice on its path: the path's replay check refuses it.
    j.handle_datagram(t, relay(), &sent[first_relay].1);
    j.handle_datagram(t, relay(), &sent[first_relay].1);
    // A relay packet that also comes direct: the other path's context takes it, the
    // sequence number is not new.
    j.handle_datagram(t, sender(), &sent[first_relay].1);
    j.handle_datagram(t, sender(), &sent[first_direct].1);
    let r = j.reception();
    assert_eq!(j.stats.refused, 0, "{:?}", j.stats);
    assert_eq!((r.relay.packets, r.relay.duplicates), (1, 1), "{r:?}");
    assert_eq!((r.direct.packets, r.direct.duplicates), (2, 1), "{r:?}");
    assert_eq!(r.received, 2);
}
