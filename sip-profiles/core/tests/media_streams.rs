//! Real streams made with ffmpeg/x264 (tests/data/media/README.md): RTP packetization
//! (RFC 6184, RFC 2250), I-packet classification checked against an independent reading
//! of the NAL units / picture headers, the split into two paths with a random interleave,
//! and the merge back into the exact original bytes.

use std::time::Duration;

use sip_core::media::{
    Class, Merger, h264::H264Classifier, h264::nal_is_intra, mpeg2, rfc2250, rfc6184,
};
use sip_testkit::VirtualClock;

/// Each stream with ffprobe's picture types in decode order (the oracle; README.md).
const H264: &[(&str, &[u8], &str)] = &[
    (
        "small.h264",
        include_bytes!("data/media/small.h264"),
        include_str!("data/media/small.h264.types"),
    ),
    (
        "bframes.h264",
        include_bytes!("data/media/bframes.h264"),
        include_str!("data/media/bframes.h264.types"),
    ),
];
const M2V: &[u8] = include_bytes!("data/media/small.m2v");
const M2V_TYPES: &str = include_str!("data/media/small.m2v.types");

/// The NAL units a payload carries (whole, or the one it is a fragment of, given the
/// fragment start seen before).
fn nals_of(payload: &[u8], fragment: &mut Option<Vec<u8>>) -> Vec<Vec<u8>> {
    match payload[0] & 0x1f {
        24 => {
            let mut out = vec![];
            let mut rest = &payload[1..];
            while rest.len() >= 2 {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                out.push(rest[2..2 + n].to_vec());
                rest = &rest[2 + n..];
            }
            out
        }
        28 => {
            if payload[1] & 0x80 != 0 {
                let mut nal = vec![(payload[0] & 0xe0) | (payload[1] & 0x1f)];
                nal.extend_from_slice(&payload[2..]);
                *fragment = Some(nal);
            }
            vec![fragment.clone().expect("fragment start")]
        }
        _ => vec![payload.to_vec()],
    }
}

/// Splits payloads by class, delivers the two paths interleaved at random, merges.
fn split_and_merge(payloads: &[(u16, Class)], seed: u32) -> Vec<u16> {
    let clock = VirtualClock::new();
    let now = clock.now();
    let relay: Vec<u16> = payloads
        .iter()
        .filter(|p| p.1 == Class::Intra)
        .map(|p| p.0)
        .collect();
    let direct: Vec<u16> = payloads
        .iter()
        .filter(|p| p.1 == Class::Inter)
        .map(|p| p.0)
        .collect();
    let mut m = Merger::new(Duration::from_millis(200), 4096);
    let mut x = seed;
    let (mut i, mut j, mut out) = (0, 0, vec![]);
    while i < relay.len() || j < direct.len() {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let from_relay = j >= direct.len() || (i < relay.len() && (x >> 24).is_multiple_of(4));
        let seq = if from_relay {
            i += 1;
            relay[i - 1]
        } else {
            j += 1;
            direct[j - 1]
        };
        m.push(now, seq, seq);
        out.extend(std::iter::from_fn(|| m.poll(now)));
    }
    out.extend(std::iter::from_fn(|| m.poll(now + Duration::from_secs(1))));
    out
}

#[test]
fn h264_packets_classified_split_merged_and_rebuilt_byte_for_byte() {
    for (name, stream, types) in H264 {
        let types = types.as_bytes();
        let payloads = rfc6184::packetize(stream, 1200);
        assert!(payloads.iter().all(|p| p.data.len() <= 1200), "{name}");
        let mut classifier = H264Classifier::new();
        let mut fragment = None;
        let mut classes = vec![];
        let (mut intra, mut idr_units) = (0, std::collections::BTreeSet::new());
        for p in &payloads {
            let class = classifier.classify(&p.data);
            let nals = nals_of(&p.data, &mut fragment);
            // ffprobe says which pictures are I; a packet of one is an I-packet unless
            // it holds only SEI (no picture data).
            let picture = types[usize::try_from(p.unit).unwrap()];
            let only_sei = nals.iter().all(|n| n[0] & 0x1f == 6);
            let expected = picture == b'I' && !only_sei;
            assert_eq!(
                class == Class::Intra,
                expected,
                "{name}: unit {} ({})",
                p.unit,
                picture as char
            );
            assert_eq!(expected, nals.iter().any(|n| nal_is_intra(n)));
            if nals.iter().any(|n| n[0] & 0x1f == 5) {
                idr_units.insert(p.unit);
                assert_eq!(class, Class::Intra);
            }
            intra += usize::from(class == Class::Intra);
            classes.push(class);
        }
        // GOP 30 over 2 s at 30 fps: IDR pictures at 0 and 30.
        assert_eq!(idr_units.len(), 2, "{name}");
        assert!(
            intra > 0 && intra < payloads.len(),
            "{name}: {intra} of {}",
            payloads.len()
        );
        // The P/B slices are not intra: most packets go direct.
        let seqs: Vec<(u16, Class)> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (60_000u16.wrapping_add(i as u16), *c))
            .collect();
        for seed in [1, 2, 3] {
            let order = split_and_merge(&seqs, seed);
            assert_eq!(
                order,
                seqs.iter().map(|s| s.0).collect::<Vec<_>>(),
                "{name}"
            );
        }
        let mut d = rfc6184::Depacketizer::new();
        for p in &payloads {
            d.push(p.unit, &p.data).unwrap();
        }
        assert!(d.finish() == *stream, "{name}: rebuilt stream differs");
    }
}

#[test]
fn mpeg2_packets_classified_by_picture_type_and_rebuilt() {
    let payloads = rfc2250::packetize(M2V, 1200);
    assert!(payloads.iter().all(|p| p.data.len() <= 1200));
    let mut i_units = std::collections::BTreeSet::new();
    for p in &payloads {
        let picture_type = p.data[2] & 7;
        assert!(
            (1..=3).contains(&picture_type),
            "a picture type on every packet"
        );
        let class = mpeg2::classify(&p.data);
        let sequence = p.data[2] & 0x20 != 0;
        assert_eq!(class == Class::Intra, picture_type == 1 || sequence);
        let oracle = M2V_TYPES.as_bytes()[usize::try_from(p.unit).unwrap()];
        assert_eq!(
            picture_type,
            match oracle {
                b'I' => 1,
                b'P' => 2,
                _ => 3,
            },
            "unit {}",
            p.unit
        );
        if picture_type == 1 {
            i_units.insert(p.unit);
        }
    }
    // GOP 25 over 2 s at 25 fps: two I pictures; B pictures exist too.
    assert_eq!(i_units.len(), 2);
    assert!(payloads.iter().any(|p| p.data[2] & 7 == 3), "B pictures");
    assert_eq!(
        payloads.iter().filter(|p| p.marker).count(),
        50,
        "one marker per picture"
    );
    let rebuilt: Vec<u8> = payloads
        .iter()
        .flat_map(|p| rfc2250::depacketize(&p.data).unwrap().to_vec())
        .collect();
    assert!(rebuilt == M2V, "rebuilt elementary stream differs");
}
