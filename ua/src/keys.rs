//! SRTP keys of a call's audio (RFC 3711), carried in SDP `a=crypto` (SDES,
//! RFC 4568): from the session secret the proxy issued (docs/profile.md "Session
//! key"), or ordinary SDES with our own random keys against a stock phone.
//!
//! Each side writes its *sending* key in its SDP (RFC 4568 §6.1). With a session
//! secret a side's sending key is the derivation for its direction
//! ([`SessionSecret::srtp_keys`], the caller being the side that sent the INVITE), so
//! the peer can check that the key it was given is the one only a holder of the secret
//! can write. Sans-IO: randomness comes from the caller.
//!
//! A peer that offers DTLS-SRTP (`a=fingerprint` and `a=setup`, RFC 5763 §5) and no
//! `a=crypto` we can use is answered with DTLS-SRTP ([`answer_offer`]): its keys come
//! from the handshake on the media path ([`crate::media::dtls`]).

use rand::{CryptoRng, RngCore};
use sip_core::permit::sdp::crypto_lines;
use sip_core::permit::{CryptoAttr, Direction, KeyParam, SessionSecret, SrtpKeys, SrtpSuite};

use crate::media::dtls::{DtlsCall, Fingerprint, PeerDtls};

/// The suites we offer, in our order of preference (RFC 4568 §6.2.1, RFC 7714 §14.2).
pub const OFFERED_SUITES: [SrtpSuite; 2] =
    [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AeadAes128Gcm];

/// The suites we accept in a peer's offer (all that webrtc-srtp implements with
/// these key sizes).
fn usable(suite: &SrtpSuite) -> bool {
    matches!(
        suite,
        SrtpSuite::AesCm128HmacSha1_80
            | SrtpSuite::AesCm128HmacSha1_32
            | SrtpSuite::AeadAes128Gcm
            | SrtpSuite::AeadAes256Gcm
    )
}

/// The keys of one call's audio, one per direction. `Debug` shows the suite only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaKeys {
    /// What we encrypt with (the key in our SDP).
    pub send: SrtpKeys,
    /// What the peer encrypts with (the key in its SDP).
    pub recv: SrtpKeys,
    /// The peer's key is the session secret's derivation for its direction: checked
    /// against the secret the proxy told us (only a holder of the secret writes it).
    pub from_secret: bool,
}

impl MediaKeys {
    pub fn suite(&self) -> &SrtpSuite {
        self.send.suite()
    }

    /// In words, for the user (no key material).
    pub fn describe(&self) -> String {
        let origin = if self.from_secret {
            "the peer's key is the proxy's session-key derivation"
        } else {
            "SDES keys"
        };
        format!("SRTP {} ({origin})", self.suite().name())
    }
}

/// Why a call's keys are refused: 488 Not Acceptable Here (RFC 3264 §6, RFC 4568
/// §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error("the peer's a=crypto is not the session secret's derivation")]
    Mismatch,
    #[error("no a=crypto with a suite and key we can use")]
    NoUsableCrypto,
    #[error("DTLS-SRTP offered with a=setup:holdconn")]
    NoDtlsRole,
    #[error("the answer does not take our DTLS-SRTP offer")]
    NoDtlsAnswer,
}

/// What a peer's SDP says about the keys of its first active audio stream.
#[derive(Debug, Clone, Default)]
pub struct PeerCrypto {
    /// The stream is `RTP/SAVP` or `RTP/SAVPF` (SRTP required).
    pub savp: bool,
    /// Its `a=crypto` lines that parsed, in the peer's order.
    pub attrs: Vec<CryptoAttr>,
    /// Its `a=fingerprint` (SHA-256) and `a=setup`, if it offers DTLS-SRTP.
    pub dtls: Option<PeerDtls>,
}

impl PeerCrypto {
    pub fn of(body: &[u8]) -> Self {
        let Ok(sections) = crypto_lines(body) else {
            return Self::default();
        };
        let Some(audio) = sections
            .into_iter()
            .find(|s| s.media == "audio" && s.port != 0)
        else {
            return Self::default();
        };
        Self {
            savp: audio.proto.contains("SAVP"),
            attrs: audio.attrs.into_iter().filter_map(Result::ok).collect(),
            dtls: PeerDtls::of(body),
        }
    }

    /// The first attribute we can use: a known suite and one inline key without an
    /// MKI or lifetime we would have to honour (webrtc-srtp takes neither).
    fn first_usable(&self, tags: Option<&[u32]>) -> Option<(&CryptoAttr, SrtpKeys)> {
        self.attrs.iter().find_map(|a| {
            if !usable(&a.suite) || tags.is_some_and(|t| !t.contains(&a.tag)) {
                return None;
            }
            let [
                KeyParam::Inline {
                    mki: None,
                    lifetime: _,
                    ..
                },
            ] = a.key_params.as_slice()
            else {
                return None;
            };
            a.srtp_keys().map(|k| (a, k))
        })
    }
}

/// Fresh random keys for `suite` (RFC 4568 §6.1: a new master key per session).
pub fn random_keys<R: RngCore + CryptoRng + ?Sized>(suite: &SrtpSuite, rng: &mut R) -> SrtpKeys {
    let (k, s) = suite.key_salt_len().unwrap_or((16, 14));
    let mut material = vec![0u8; k + s];
    rng.fill_bytes(&mut material);
    let keys = SrtpKeys::from_key_salt(suite.clone(), &material);
    material.fill(0);
    keys.expect("the length is the suite's")
}

/// The caller's offer: one `a=crypto` per suite of [`OFFERED_SUITES`] with our sending
/// key — the derivation for caller → callee when we hold the call's secret (direct
/// mode), else random keys.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub attrs: Vec<CryptoAttr>,
    /// Offer `RTP/SAVP` (SRTP required): only with a secret, when the callee is a
    /// permit UA that was told the same secret.
    pub savp: bool,
}

impl Offer {
    pub fn new<R: RngCore + CryptoRng + ?Sized>(
        secret: Option<&SessionSecret>,
        call_id: &str,
        rng: &mut R,
    ) -> Self {
        let attrs = OFFERED_SUITES
            .iter()
            .zip(1u32..)
            .map(|(suite, tag)| {
                let keys = secret
                    .and_then(|s| s.srtp_keys(call_id, Direction::CallerToCallee, suite))
                    .unwrap_or_else(|| random_keys(suite, rng));
                CryptoAttr::inline(tag, &keys)
            })
            .collect();
        Self {
            attrs,
            savp: secret.is_some(),
        }
    }

    /// No keys at all (plain RTP/AVP).
    pub fn plain() -> Self {
        Self::default()
    }
}

/// The callee's decision on an offer: our `a=crypto` answer line and the call's keys,
/// or plain RTP (`Ok(None)`), or 488.
///
/// - With the call's secret: the answer carries the callee → caller derivation. When
///   the offer's key is the caller → callee derivation, the keys are the secret's
///   (checked). A `direct` INVITE (it did not come through the proxy) must carry that
///   derivation: a caller the proxy sent straight to us holds the secret (it came with
///   the 302), so anything else is refused.
/// - Without one (a stock phone, or no TLS hop): ordinary SDES, our key random
///   (RFC 4568 §7.1.3), or plain RTP when the offer has no usable `a=crypto` and is
///   not `RTP/SAVP`.
pub fn answer<R: RngCore + CryptoRng + ?Sized>(
    peer: &PeerCrypto,
    secret: Option<&SessionSecret>,
    call_id: &str,
    direct: bool,
    rng: &mut R,
) -> Result<Option<(CryptoAttr, MediaKeys)>, KeyRefusal> {
    let Some((attr, recv)) = peer.first_usable(None) else {
        return if peer.savp || (direct && secret.is_some()) {
            Err(KeyRefusal::NoUsableCrypto)
        } else {
            Ok(None)
        };
    };
    let suite = attr.suite.clone();
    let (send, from_secret) = match secret {
        Some(s) => {
            let expected = s.srtp_keys(call_id, Direction::CallerToCallee, &suite);
            let checked = expected.as_ref() == Some(&recv);
            if direct && !checked {
                return Err(KeyRefusal::Mismatch);
            }
            let send = s
                .srtp_keys(call_id, Direction::CalleeToCaller, &suite)
                .ok_or(KeyRefusal::NoUsableCrypto)?;
            (send, checked)
        }
        None => (random_keys(&suite, rng), false),
    };
    let line = CryptoAttr::inline(attr.tag, &send);
    Ok(Some((
        line,
        MediaKeys {
            send,
            recv,
            from_secret,
        },
    )))
}

/// How the callee keys a call's audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerKeys {
    /// Plain RTP (the offer had no keys and did not require SRTP).
    Plain,
    /// SDES: our `a=crypto` answer line and the call's keys ([`answer`]).
    Sdes(CryptoAttr, MediaKeys),
    /// DTLS-SRTP (RFC 5763 §5): our role and the fingerprints; the keys come from the
    /// handshake on the media path.
    Dtls(DtlsCall),
}

/// The callee's decision on an offer, DTLS-SRTP included: SDES stays first (an
/// offer with a usable `a=crypto` is answered with [`answer`], as are direct INVITEs
/// that must carry the secret's derivation); an offer without one that carries a
/// SHA-256 `a=fingerprint` is answered with DTLS-SRTP when we have a certificate
/// (`local`, [`crate::media::dtls::handshake::local_fingerprint`]).
pub fn answer_offer<R: RngCore + CryptoRng + ?Sized>(
    peer: &PeerCrypto,
    secret: Option<&SessionSecret>,
    call_id: &str,
    direct: bool,
    local: Option<Fingerprint>,
    rng: &mut R,
) -> Result<AnswerKeys, KeyRefusal> {
    let must_carry_secret = direct && secret.is_some();
    if let (None, false, Some(local), Some(p)) = (
        peer.first_usable(None),
        must_carry_secret,
        local,
        peer.dtls.as_ref(),
    ) {
        return DtlsCall::answering(p, local)
            .map(AnswerKeys::Dtls)
            .ok_or(KeyRefusal::NoDtlsRole);
    }
    Ok(match answer(peer, secret, call_id, direct, rng)? {
        Some((line, keys)) => AnswerKeys::Sdes(line, keys),
        None => AnswerKeys::Plain,
    })
}

/// The caller's check of the answer to `offer`. The answer's `a=crypto` must name one
/// of our tags with the same suite (RFC 4568 §7.1.3); with the secret its key must be
/// the callee → caller derivation when `strict` (direct mode: no proxy vouches for the
/// peer), and is reported as checked when it is. No `a=crypto` in the answer: plain
/// RTP, unless we required SRTP.
pub fn check_answer(
    peer: &PeerCrypto,
    offer: &Offer,
    secret: Option<&SessionSecret>,
    call_id: &str,
    strict: bool,
) -> Result<Option<MediaKeys>, KeyRefusal> {
    let tags: Vec<u32> = offer.attrs.iter().map(|a| a.tag).collect();
    let Some((attr, recv)) = peer.first_usable(Some(&tags)) else {
        return if offer.savp || (strict && secret.is_some()) {
            Err(KeyRefusal::NoUsableCrypto)
        } else {
            Ok(None)
        };
    };
    let ours = offer
        .attrs
        .iter()
        .find(|a| a.tag == attr.tag && a.suite == attr.suite)
        .and_then(CryptoAttr::srtp_keys)
        .ok_or(KeyRefusal::NoUsableCrypto)?;
    let checked = secret
        .and_then(|s| s.srtp_keys(call_id, Direction::CalleeToCaller, &attr.suite))
        .is_some_and(|expected| expected == recv);
    if strict && secret.is_some() && !checked {
        return Err(KeyRefusal::Mismatch);
    }
    Ok(Some(MediaKeys {
        send: ours,
        recv,
        from_secret: checked,
    }))
}

#[cfg(test)]
mod tests {
    use sip_testkit::seeded_rng;

    use super::*;

    const CALL: &str = "a84b4c76e66710@pc33.atlanta.example.com";

    fn secret() -> SessionSecret {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        SessionSecret::from_bytes(b)
    }

    fn sdp(proto: &str, attrs: &[CryptoAttr]) -> Vec<u8> {
        let mut s = format!("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 {proto} 0\r\n");
        for a in attrs {
            s.push_str(&a.to_line());
            s.push_str("\r\n");
        }
        s.into_bytes()
    }

    #[test]
    fn derived_keys_match_the_profile_example() {
        // docs/profile.md "Session key" example.
        let s = secret();
        let o = Offer::new(Some(&s), CALL, &mut seeded_rng(1));
        assert!(o.savp);
        assert_eq!(
            o.attrs[0].to_line(),
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:JZj319igWfsReChGt7bDZGswtWQjNH+UdNZYQvt/"
        );
        assert_eq!(o.attrs[1].suite, SrtpSuite::AeadAes128Gcm);
    }

    #[test]
    fn both_permit_sides_derive_and_check_each_other() {
        let s = secret();
        let offer = Offer::new(Some(&s), CALL, &mut seeded_rng(1));
        let peer = PeerCrypto::of(&sdp("RTP/SAVP", &offer.attrs));
        assert!(peer.savp);
        let (line, callee) = answer(&peer, Some(&s), CALL, true, &mut seeded_rng(2))
            .unwrap()
            .unwrap();
        assert_eq!(
            line.to_line(),
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:Wnmenas5VFKZCRT22MoEAFe+0uLkDU90vcStAzF9"
        );
        assert!(callee.from_secret);
        let back = PeerCrypto::of(&sdp("RTP/SAVP", &[line]));
        let caller = check_answer(&back, &offer, Some(&s), CALL, true)
            .unwrap()
            .unwrap();
        assert!(caller.from_secret);
        assert_eq!(caller.send, callee.recv);
        assert_eq!(caller.recv, callee.send);
        assert!(
            !format!("{caller:?}").contains("inline"),
            "Debug hides keys"
        );
    }

    #[test]
    fn direct_invite_with_foreign_keys_is_refused() {
        let s = secret();
        let other = Offer::new(None, CALL, &mut seeded_rng(3));
        let peer = PeerCrypto::of(&sdp("RTP/AVP", &other.attrs));
        assert_eq!(
            answer(&peer, Some(&s), CALL, true, &mut seeded_rng(2)).unwrap_err(),
            KeyRefusal::Mismatch
        );
        // Another call's derivation is another key.
        let wrong_call = Offer::new(Some(&s), "other-call", &mut seeded_rng(3));
        let peer = PeerCrypto::of(&sdp("RTP/SAVP", &wrong_call.attrs));
        assert_eq!(
            answer(&peer, Some(&s), CALL, true, &mut seeded_rng(2)).unwrap_err(),
            KeyRefusal::Mismatch
        );
        let plain = PeerCrypto::of(&sdp("RTP/AVP", &[]));
        assert_eq!(
            answer(&plain, Some(&s), CALL, true, &mut seeded_rng(2)).unwrap_err(),
            KeyRefusal::NoUsableCrypto
        );
        // Routed: the caller could not know the secret when it offered; its own key
        // is used, ours is the derivation (the caller checks it).
        let peer = PeerCrypto::of(&sdp("RTP/AVP", &other.attrs));
        let (_, k) = answer(&peer, Some(&s), CALL, false, &mut seeded_rng(2))
            .unwrap()
            .unwrap();
        assert!(!k.from_secret);
        assert_eq!(
            Some(k.send),
            s.srtp_keys(
                CALL,
                Direction::CalleeToCaller,
                &SrtpSuite::AesCm128HmacSha1_80
            )
        );
    }

    /// linphone with `media_encryption=dtls` offers `UDP/TLS/RTP/SAVP` with a
    /// fingerprint and no `a=crypto`: without DTLS that is a 488, with a certificate
    /// it is answered with DTLS-SRTP; an `a=crypto` beside the fingerprint keeps SDES.
    #[test]
    fn dtls_offers_are_answered_with_dtls_and_sdes_stays_first() {
        let fp = "a=fingerprint:sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:\
DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\na=setup:actpass\r\n";
        let offer = format!("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 UDP/TLS/RTP/SAVP 0\r\n{fp}");
        let peer = PeerCrypto::of(offer.as_bytes());
        let local = Some(Fingerprint([1; 32]));
        let rng = &mut seeded_rng(4);
        assert_eq!(
            answer_offer(&peer, None, CALL, false, None, rng),
            Err(KeyRefusal::NoUsableCrypto)
        );
        let Ok(AnswerKeys::Dtls(d)) = answer_offer(&peer, None, CALL, false, local, rng) else {
            panic!("DTLS expected");
        };
        assert_eq!(d.role, crate::media::dtls::Role::Client);
        assert_eq!(d.proto, "UDP/TLS/RTP/SAVP");
        // A routed call with a secret from the proxy: the phone keys with DTLS.
        let s = secret();
        assert!(matches!(
            answer_offer(&peer, Some(&s), CALL, false, local, rng),
            Ok(AnswerKeys::Dtls(_))
        ));
        // A direct INVITE must carry the secret's derivation.
        assert_eq!(
            answer_offer(&peer, Some(&s), CALL, true, local, rng),
            Err(KeyRefusal::NoUsableCrypto)
        );
        let with_crypto = format!(
            "{offer}a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj\r\n"
        );
        let peer = PeerCrypto::of(with_crypto.as_bytes());
        assert!(matches!(
            answer_offer(&peer, None, CALL, false, local, rng),
            Ok(AnswerKeys::Sdes(..))
        ));
        let hold = offer.replace("actpass", "holdconn");
        assert_eq!(
            answer_offer(
                &PeerCrypto::of(hold.as_bytes()),
                None,
                CALL,
                false,
                local,
                rng
            ),
            Err(KeyRefusal::NoDtlsRole)
        );
        let plain = PeerCrypto::of(&sdp("RTP/AVP", &[]));
        assert_eq!(
            answer_offer(&plain, None, CALL, false, local, rng),
            Ok(AnswerKeys::Plain)
        );
    }

    #[test]
    fn stock_phones_get_sdes_or_plain_rtp() {
        let stock = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\n\
a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32\r\n\
a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj\r\n";
        let peer = PeerCrypto::of(stock.as_bytes());
        let (line, k) = answer(&peer, None, CALL, false, &mut seeded_rng(4))
            .unwrap()
            .unwrap();
        assert_eq!(line.tag, 7, "the MKI line is skipped");
        assert_eq!(k.recv.master_key().len(), 16);
        assert_ne!(k.send, k.recv);
        let plain = PeerCrypto::of(&sdp("RTP/AVP", &[]));
        assert_eq!(
            answer(&plain, None, CALL, false, &mut seeded_rng(4)),
            Ok(None)
        );
        let savp_only = PeerCrypto::of(&sdp("RTP/SAVP", &[]));
        assert!(answer(&savp_only, None, CALL, false, &mut seeded_rng(4)).is_err());
    }

    #[test]
    fn caller_refuses_a_wrong_key_in_direct_mode_only() {
        let s = secret();
        let offer = Offer::new(Some(&s), CALL, &mut seeded_rng(1));
        let forged = CryptoAttr::inline(
            1,
            &random_keys(&SrtpSuite::AesCm128HmacSha1_80, &mut seeded_rng(9)),
        );
        let back = PeerCrypto::of(&sdp("RTP/SAVP", std::slice::from_ref(&forged)));
        assert_eq!(
            check_answer(&back, &offer, Some(&s), CALL, true),
            Err(KeyRefusal::Mismatch)
        );
        let routed = Offer::new(None, CALL, &mut seeded_rng(1));
        let k = check_answer(&back, &routed, Some(&s), CALL, false)
            .unwrap()
            .unwrap();
        assert!(!k.from_secret);
        // Routed: our key was random (no secret yet when we offered); the callee's is
        // the derivation, and checked.
        let derived = CryptoAttr::inline(
            2,
            &s.srtp_keys(CALL, Direction::CalleeToCaller, &SrtpSuite::AeadAes128Gcm)
                .unwrap(),
        );
        let back = PeerCrypto::of(&sdp("RTP/AVP", &[derived]));
        let k = check_answer(&back, &routed, Some(&s), CALL, false)
            .unwrap()
            .unwrap();
        assert!(k.from_secret);
        assert_eq!(k.suite(), &SrtpSuite::AeadAes128Gcm);
        assert_eq!(Some(&k.send), routed.attrs[1].srtp_keys().as_ref());
        let plain = PeerCrypto::of(&sdp("RTP/AVP", &[]));
        assert_eq!(check_answer(&plain, &routed, None, CALL, false), Ok(None));
        assert!(check_answer(&plain, &offer, Some(&s), CALL, true).is_err());
        // A tag we did not offer is not an answer to our offer.
        let other_tag = CryptoAttr::inline(
            9,
            &random_keys(&SrtpSuite::AesCm128HmacSha1_80, &mut seeded_rng(9)),
        );
        let back = PeerCrypto::of(&sdp("RTP/AVP", &[other_tag]));
        assert_eq!(check_answer(&back, &routed, None, CALL, false), Ok(None));
    }
}
