//! The permit flow in the core's terms: the proxy issues a token and a session
//! secret, the callee books the token, both sides derive SRTP keys and key their SDP;
//! plus literal vectors computed outside this code (docs/profile.md examples) and a
//! seeded random run of the SDP edit.

use sip_core::permit::{
    CryptoAttr, Direction, KeyId, KeyRing, ProxyKey, SessionSecret, SrtpSuite, Token, TokenBook,
    TokenClaims, sdp,
};
use sip_testkit::rand::Rng;

const NOW: u64 = 1_700_000_000;
const CALLER: &str = "sip:alice@example.org";
const CALLEE: &str = "sip:bob@example.org";
const CALL_ID: &str = "a84b4c76e66710@pc33.atlanta.example.com";

/// The examples in docs/profile.md, computed with an independent HMAC/HKDF
/// implementation from the documented layout.
#[test]
fn documented_examples() {
    let ring = KeyRing::new(KeyId(1), ProxyKey::from_bytes([0x11; 32]));
    let wire = "v1.1.1700000060.paWlpaWlpaWlpaWlpaWlpQ.6dryj8mb4TB4-11Y12JDerPnQyn3buPrnijLw5Sf_DY";
    let token = Token::parse(wire).unwrap();
    let claims = TokenClaims::new(CALLER, CALLEE, CALL_ID);
    assert!(ring.verify(&token, &claims, NOW).is_ok());

    let secret_bytes: [u8; 32] = std::array::from_fn(|i| i as u8);
    let secret = SessionSecret::from_bytes(secret_bytes);
    assert_eq!(
        secret.encode(),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
    );
    let suite = SrtpSuite::AesCm128HmacSha1_80;
    let up = secret
        .srtp_keys(CALL_ID, Direction::CallerToCallee, &suite)
        .unwrap();
    let down = secret
        .srtp_keys(CALL_ID, Direction::CalleeToCaller, &suite)
        .unwrap();
    assert_eq!(
        up.inline_base64(),
        "JZj319igWfsReChGt7bDZGswtWQjNH+UdNZYQvt/"
    );
    assert_eq!(
        down.inline_base64(),
        "Wnmenas5VFKZCRT22MoEAFe+0uLkDU90vcStAzF9"
    );
    assert_eq!(
        CryptoAttr::inline(1, &up).to_line(),
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:JZj319igWfsReChGt7bDZGswtWQjNH+UdNZYQvt/"
    );
}

#[test]
fn proxy_caller_callee() {
    let mut proxy_rng = sip_testkit::seeded_rng(1);
    let ring = KeyRing::new(KeyId(4), ProxyKey::generate(&mut proxy_rng));
    let claims = TokenClaims::new(CALLER, CALLEE, CALL_ID);

    // Proxy: token and secret for the permitted pair, sent as strings.
    let token_wire = Token::issue(&ring, &claims, NOW, 32, &mut proxy_rng).encode();
    let secret_wire = SessionSecret::generate(&mut proxy_rng).encode();

    // Callee: the load query told it the token; it remembers it.
    let mut book = TokenBook::default();
    book.insert(&token_wire, CALLER, CALL_ID, NOW + 32, NOW)
        .unwrap();

    // Caller: keys its offer with its sending direction.
    let caller_secret = SessionSecret::parse(&secret_wire).unwrap();
    let suite = SrtpSuite::AesCm128HmacSha1_80;
    let caller_tx = caller_secret
        .srtp_keys(CALL_ID, Direction::CallerToCallee, &suite)
        .unwrap();
    let offer = "v=0\r\no=alice 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let offer = sdp::set_crypto_audio_video(offer.as_bytes(), &[CryptoAttr::inline(1, &caller_tx)])
        .unwrap();

    // The INVITE reaches the callee: token first, then the SDP check.
    let presented = Token::parse(&token_wire).unwrap().encode();
    assert_eq!(book.accept(&presented, CALLER, CALL_ID, NOW + 1), Ok(()));
    let callee_secret = SessionSecret::parse(&secret_wire).unwrap();
    let expected_rx = callee_secret
        .srtp_keys(CALL_ID, Direction::CallerToCallee, &suite)
        .unwrap();
    let sections = sdp::crypto_lines(&offer).unwrap();
    assert_eq!(sections[0].proto, "RTP/SAVP");
    let offered = sections[0].attrs[0].as_ref().unwrap().srtp_keys().unwrap();
    assert_eq!(offered, expected_rx);
    // The answer's keys are the other direction's, and differ.
    let callee_tx = callee_secret
        .srtp_keys(CALL_ID, Direction::CallerToCallee.reverse(), &suite)
        .unwrap();
    assert_ne!(callee_tx.key_salt(), expected_rx.key_salt());

    // The proxy can still check the token (e.g. on the INVITE it forwards).
    assert!(
        ring.verify(&Token::parse(&presented).unwrap(), &claims, NOW + 1)
            .is_ok()
    );
    // A replay of the same INVITE is refused by the callee.
    assert!(book.accept(&presented, CALLER, CALL_ID, NOW + 2).is_err());
}

/// Seeded random SDP bodies: after `set_crypto_audio_video`, every active audio/video
/// section carries exactly our lines, every other line is kept in order, and
/// `crypto_lines` reads ours back.
#[test]
fn random_sdp_edits_keep_other_lines() {
    let mut rng = sip_testkit::seeded_rng(0x5d9);
    let keys = SessionSecret::generate(&mut rng)
        .srtp_keys(
            "c",
            Direction::CallerToCallee,
            &SrtpSuite::AesCm128HmacSha1_80,
        )
        .unwrap();
    let ours = CryptoAttr::inline(7, &keys);
    let theirs = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32";
    let other_lines = [
        "a=rtpmap:0 PCMU/8000",
        "a=sendrecv",
        "b=AS:64",
        "c=IN IP4 198.51.100.1",
        "a=crypto-not:1",
        "a=fmtp:96 x=1",
    ];
    for _ in 0..200 {
        let eol = if rng.random_bool(0.5) { "\r\n" } else { "\n" };
        let mut lines = vec![
            "v=0".to_owned(),
            "o=- 1 1 IN IP4 0.0.0.0".to_owned(),
            "s=-".to_owned(),
            "t=0 0".to_owned(),
        ];
        let mut expect_keyed = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            let media = ["audio", "video", "application"][rng.random_range(0..3)];
            let port = if rng.random_bool(0.2) { 0 } else { 5000 };
            let proto = ["RTP/AVP", "RTP/SAVP", "UDP/BFCP"][rng.random_range(0..3)];
            lines.push(format!("m={media} {port} {proto} 0"));
            for _ in 0..rng.random_range(0..4) {
                if rng.random_bool(0.3) {
                    lines.push(theirs.to_owned());
                } else {
                    lines.push(other_lines[rng.random_range(0..other_lines.len())].to_owned());
                }
            }
            expect_keyed.push(matches!(media, "audio" | "video") && port != 0);
        }
        let mut body = lines.join(eol);
        if rng.random_bool(0.7) {
            body.push_str(eol);
        }
        let edited =
            sdp::set_crypto_audio_video(body.as_bytes(), std::slice::from_ref(&ours)).unwrap();
        let edited_text = String::from_utf8(edited.clone()).unwrap();
        let found = sdp::crypto_lines(&edited).unwrap();
        assert_eq!(found.len(), expect_keyed.len());
        for (section, keyed) in found.iter().zip(&expect_keyed) {
            if *keyed {
                assert_eq!(section.attrs, vec![Ok(ours.clone())], "{edited_text}");
                assert_ne!(section.proto, "RTP/AVP");
            }
        }
        // Lines other than a=crypto, with m= lines' proto normalised, are kept in order.
        let strip = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with("a=crypto:"))
                .map(|l| l.replace("RTP/SAVP", "RTP/AVP"))
                .collect()
        };
        assert_eq!(strip(&edited_text), strip(&body));
        // Every line of the edit uses the body's line ending.
        if eol == "\r\n" {
            assert!(!edited_text.replace("\r\n", "").contains('\n'));
        } else {
            assert!(!edited_text.contains('\r'));
        }
    }
}
