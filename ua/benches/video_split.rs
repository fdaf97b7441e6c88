//! The video sender's CPU per stream: the I-frame split against a single SRTP path.
//!
//! One iteration sends a whole clip through the sender's per-packet work, without
//! sockets (the datagrams are built and dropped; a `send_to` costs the same on either
//! path and is left out):
//! - `single-path srtp`: what a sender without the split does, RTP header and
//!   SRTP protection (AES_CM_128_HMAC_SHA1_80, RFC 3711) of every packet, one
//!   destination, no classification;
//! - `split srtp`: `Splitter::packet` as `permit-ua call --video` runs it: the
//!   I-picture classification (RFC 6184 NAL and slice header), the RTP header, SRTP
//!   on both paths, the path of each datagram;
//! - `split selective`: the same with `--selective` (the direct path plain RTP);
//! - `classify only`: the classifier's share.
//!
//! Clips: `benches/data/clip-640x360.h264` (2 s, 30 fps, about 800 kbit/s, GOP 30;
//! `benches/data/README.md` says how it was made) and the media tests' small
//! `bframes.h264` (320x240, 2 s). Throughput is in packets; the CPU per second of
//! video is the time per iteration divided by the clip's length (printed below).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use permit_ua::keys::random_keys;
use permit_ua::video::sdp::SplitMode;
use permit_ua::video::split::{Path, Splitter, video_key};
use permit_ua::video::{Clip, Codec, H264_PT};
use sip_core::media::h264::H264Classifier;
use sip_core::permit::{SrtpKeys, SrtpSuite};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

const CLIPS: [(&str, &[u8]); 2] = [
    (
        "640x360",
        include_bytes!("data/clip-640x360.h264").as_slice(),
    ),
    (
        "320x240",
        include_bytes!("../../sip-profiles/core/tests/data/media/bframes.h264").as_slice(),
    ),
];

fn keys() -> SrtpKeys {
    let audio = random_keys(
        &SrtpSuite::AesCm128HmacSha1_80,
        &mut sip_testkit::seeded_rng(1),
    );
    video_key(&audio).expect("a video key")
}

fn splitter(clip: &Clip, keys: &SrtpKeys, mode: SplitMode) -> Splitter {
    Splitter::new(
        clip.codec,
        clip.codec.payload_type(),
        clip.ticks_per_picture(),
        Some(keys),
        mode,
        true,
        &mut sip_testkit::seeded_rng(2),
    )
}

/// A sender without the split: header, SRTP, one destination.
struct SinglePath {
    srtp: Context,
    seq: u16,
    ts_base: u32,
    ticks: u32,
}

impl SinglePath {
    fn new(clip: &Clip, keys: &SrtpKeys) -> SinglePath {
        SinglePath {
            srtp: Context::new(
                keys.master_key(),
                keys.master_salt(),
                ProtectionProfile::Aes128CmHmacSha1_80,
                None,
                None,
            )
            .expect("an SRTP context"),
            seq: 1,
            ts_base: 7,
            ticks: clip.ticks_per_picture(),
        }
    }

    fn packet(&mut self, unit: u64, marker: bool, data: &[u8]) -> bytes::Bytes {
        let ts = self
            .ts_base
            .wrapping_add((unit as u32).wrapping_mul(self.ticks));
        let mut rtp = Vec::with_capacity(12 + data.len());
        rtp.push(0x80);
        rtp.push((u8::from(marker) << 7) | H264_PT);
        rtp.extend_from_slice(&self.seq.to_be_bytes());
        rtp.extend_from_slice(&ts.to_be_bytes());
        rtp.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        rtp.extend_from_slice(data);
        self.seq = self.seq.wrapping_add(1);
        self.srtp.encrypt_rtp(&rtp).expect("protected")
    }
}

fn bench_sender(c: &mut Criterion) {
    let keys = keys();
    for (name, bytes) in CLIPS {
        let clip = Clip::from_bytes(Codec::H264, bytes).expect("an H.264 clip");
        let packets = clip.payloads.len() as u64;
        let pictures = clip.payloads.last().map_or(0, |p| p.unit + 1);
        #[allow(clippy::cast_precision_loss)] // a few hundred pictures
        let seconds = pictures as f64 / clip.fps;
        let mut probe = splitter(&clip, &keys, SplitMode::Srtp);
        let (mut relayed, mut relayed_bytes) = (0, 0);
        for p in &clip.payloads {
            if let Some((Path::Relay, _)) = probe.packet(p) {
                relayed += 1;
                relayed_bytes += p.data.len();
            }
        }
        let payload: usize = clip.payloads.iter().map(|p| p.data.len()).sum();
        println!(
            "clip {name}: {payload} bytes of payload in {packets} packets; I-packets: \
             {relayed} packets, {relayed_bytes} bytes; {pictures} pictures at {} fps = \
             {seconds:.3} s of video",
            clip.fps
        );

        let mut group = c.benchmark_group(format!("video_sender/{name}"));
        group.throughput(Throughput::Elements(packets));
        group.bench_function("single-path srtp", |b| {
            let mut s = SinglePath::new(&clip, &keys);
            b.iter(|| {
                for p in &clip.payloads {
                    black_box(s.packet(p.unit, p.marker, &p.data));
                }
            });
        });
        for (label, mode) in [
            ("split srtp", SplitMode::Srtp),
            ("split selective", SplitMode::Selective),
        ] {
            group.bench_function(label, |b| {
                let mut s = splitter(&clip, &keys, mode);
                b.iter(|| {
                    for p in &clip.payloads {
                        black_box(s.packet(p).expect("protected"));
                    }
                });
            });
        }
        group.bench_function("classify only", |b| {
            let mut c = H264Classifier::new();
            b.iter(|| {
                for p in &clip.payloads {
                    black_box(c.classify(black_box(&p.data)));
                }
            });
        });
        group.finish();
    }
}

criterion_group!(benches, bench_sender);
criterion_main!(benches);
