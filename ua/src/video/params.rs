//! What the SDP says about a clip, read from the stream itself: the H.264 sequence
//! parameter set's profile, level and VUI frame rate (ITU-T H.264 §7.3.2.1.1, Annex E
//! §E.1.1), and the MPEG-2 sequence header's `frame_rate_code` (ISO/IEC 13818-2
//! §6.3.3, Table 6-4).

use sip_core::media::bits::{BitReader, Truncated, rbsp_prefix};

/// What an SPS tells the SDP and the sender's pacing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpsInfo {
    /// `profile_idc`, the constraint flags and `level_idc`: RFC 6184 §8.1
    /// `profile-level-id` (three octets, hex).
    pub profile_level_id: [u8; 3],
    /// Frames per second from the VUI timing (`time_scale / (2 * num_units_in_tick)`),
    /// when present.
    pub fps: Option<f64>,
}

fn se(r: &mut BitReader<'_>) -> Result<i64, Truncated> {
    let k = i64::from(r.ue()?);
    Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
}

/// `scaling_list()` (H.264 §7.3.2.1.1.1): read and dropped.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), Truncated> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + se(r)? + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Reads a sequence parameter set NAL unit (header byte included).
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, Truncated> {
    if nal.len() < 4 || nal[0] & 0x1f != 7 {
        return Err(Truncated);
    }
    let profile_level_id = [nal[1], nal[2], nal[3]];
    let rbsp = rbsp_prefix(&nal[1..], 512);
    let mut r = BitReader::new(&rbsp);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, reserved bits, level_idc
    r.ue()?; // seq_parameter_set_id
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        let chroma = r.ue()?;
        if chroma == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            // seq_scaling_matrix_present_flag
            let lists = if chroma == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?; // delta_pic_order_always_zero_flag
            se(&mut r)?; // offset_for_non_ref_pic
            se(&mut r)?; // offset_for_top_to_bottom_field
            for _ in 0..r.ue()?.min(255) {
                se(&mut r)?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    r.ue()?; // pic_width_in_mbs_minus1
    r.ue()?; // pic_height_in_map_units_minus1
    if r.bit()? == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    if r.bit()? == 1 {
        for _ in 0..4 {
            r.ue()?; // frame_crop_*_offset
        }
    }
    let mut fps = None;
    if r.bit()? == 1 {
        // vui_parameters() (Annex E §E.1.1)
        if r.bit()? == 1 && r.bits(8)? == 255 {
            r.bits(32)?; // sar_width, sar_height
        }
        if r.bit()? == 1 {
            r.bit()?; // overscan_appropriate_flag
        }
        if r.bit()? == 1 {
            r.bits(4)?; // video_format, video_full_range_flag
            if r.bit()? == 1 {
                r.bits(24)?; // colour primaries, transfer, matrix
            }
        }
        if r.bit()? == 1 {
            r.ue()?;
            r.ue()?; // chroma_sample_loc_type_*
        }
        if r.bit()? == 1 {
            let units = r.bits(32)?;
            let scale = r.bits(32)?;
            if units > 0 && scale > 0 {
                fps = Some(f64::from(scale) / (2.0 * f64::from(units)));
            }
        }
    }
    Ok(SpsInfo {
        profile_level_id,
        fps,
    })
}

/// Frames per second of an MPEG-1/2 video sequence header (`00 00 01 B3`, then 12 bits
/// width, 12 bits height, 4 bits aspect ratio, 4 bits `frame_rate_code`).
pub fn mpeg2_fps(es: &[u8]) -> Option<f64> {
    let at = es.windows(4).position(|w| w == [0, 0, 1, 0xb3])?;
    let code = es.get(at + 7)? & 0x0f;
    Some(match code {
        1 => 24000.0 / 1001.0,
        2 => 24.0,
        3 => 25.0,
        4 => 30000.0 / 1001.0,
        5 => 30.0,
        6 => 50.0,
        7 => 60000.0 / 1001.0,
        8 => 60.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &[u8] = include_bytes!("../../../sip-profiles/core/tests/data/media/small.h264");
    const BFRAMES: &[u8] =
        include_bytes!("../../../sip-profiles/core/tests/data/media/bframes.h264");
    const M2V: &[u8] = include_bytes!("../../../sip-profiles/core/tests/data/media/small.m2v");

    fn sps(stream: &[u8]) -> &[u8] {
        sip_core::media::annexb::nal_units(stream)
            .into_iter()
            .find(|n| n[0] & 0x1f == 7)
            .unwrap()
    }

    #[test]
    fn x264_streams_name_profile_level_and_frame_rate() {
        // ffmpeg's testsrc at 30 fps, x264 baseline and main (ffprobe: 30 fps).
        let s = parse_sps(sps(SMALL)).unwrap();
        assert_eq!(s.profile_level_id[0], 66, "baseline");
        assert_eq!(s.fps, Some(30.0));
        let b = parse_sps(sps(BFRAMES)).unwrap();
        assert_eq!(b.profile_level_id[0], 77, "main");
        assert_eq!(b.fps, Some(30.0));
        assert!(parse_sps(&[0x67, 1]).is_err());
        assert!(
            parse_sps(&[0x68, 1, 2, 3, 4]).is_err(),
            "a PPS is not an SPS"
        );
    }

    #[test]
    fn mpeg2_sequence_header_frame_rate() {
        assert_eq!(mpeg2_fps(M2V), Some(25.0));
        assert_eq!(mpeg2_fps(&[0, 0, 1, 0xb3, 0, 0, 0, 0x10]), None);
        assert_eq!(mpeg2_fps(&[1, 2, 3]), None);
    }
}
