//! DTLS-SRTP (RFC 5763 framework, RFC 5764 extension) for stock phones that key
//! their media on the media path (linphone with `media_encryption=dtls`): the SDP
//! attributes (`a=fingerprint`, RFC 8122 §5; `a=setup`, RFC 4145 §4), the role each
//! side plays in the handshake (RFC 5763 §5), the demultiplexing of DTLS and SRTP on
//! the one media port (RFC 5764 §5.1.2, updated by RFC 7983 §7) and the SRTP keys
//! taken from the handshake (RFC 5764 §4.2).
//!
//! This file is sans-IO (text and bytes in, values out). The handshake itself runs
//! in [`handshake`], the thin tokio shell around the `dtls` crate.

use sip_core::permit::{SrtpKeys, SrtpSuite};

use crate::keys::MediaKeys;

pub mod handshake;

/// A SHA-256 certificate fingerprint (RFC 8122 §5: `a=fingerprint:sha-256 AB:CD:…`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl Fingerprint {
    /// The fingerprint of a DER certificate (RFC 8122 §5: the hash of the DER form).
    pub fn of_der(der: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(der).into())
    }

    /// Upper-case hex pairs joined by colons (RFC 8122 §5 `fingerprint` ABNF).
    pub fn to_hex(&self) -> String {
        let pairs: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        pairs.join(":")
    }

    /// `sha-256 AB:CD:…`, the value of an `a=fingerprint` line.
    pub fn to_attr(&self) -> String {
        format!("sha-256 {}", self.to_hex())
    }

    /// The value of an `a=fingerprint` line; `None` unless the hash is SHA-256 and
    /// the digest 32 hex pairs (hash names are case-insensitive, RFC 8122 §5).
    pub fn parse_attr(value: &str) -> Option<Self> {
        let mut f = value.split_ascii_whitespace();
        let (hash, hex) = (f.next()?, f.next()?);
        if !hash.eq_ignore_ascii_case("sha-256") || f.next().is_some() {
            return None;
        }
        let mut out = [0u8; 32];
        let mut n = 0;
        for pair in hex.split(':') {
            if pair.len() != 2 || n == out.len() {
                return None;
            }
            out[n] = u8::from_str_radix(pair, 16).ok()?;
            n += 1;
        }
        (n == out.len()).then_some(Self(out))
    }
}

/// `a=setup` (RFC 4145 §4): who opens the connection; for DTLS, who is the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
    HoldConn,
}

impl Setup {
    fn parse(v: &str) -> Option<Self> {
        Some(match v.trim().to_ascii_lowercase().as_str() {
            "active" => Self::Active,
            "passive" => Self::Passive,
            "actpass" => Self::ActPass,
            "holdconn" => Self::HoldConn,
            _ => return None,
        })
    }
}

/// Our part in the DTLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `a=setup:active`: we send the ClientHello.
    Client,
    /// `a=setup:passive`: we wait for the peer's ClientHello.
    Server,
}

impl Role {
    /// The answerer's role for the offer's `a=setup` (RFC 5763 §5: an offer is
    /// `actpass`, and the answerer SHOULD then be `active`; RFC 4145 §4.1: an absent
    /// attribute means `active`). `holdconn` is no role at all.
    pub fn answering(offer: Option<Setup>) -> Option<Self> {
        match offer {
            Some(Setup::ActPass | Setup::Passive) => Some(Self::Client),
            Some(Setup::Active) | None => Some(Self::Server),
            Some(Setup::HoldConn) => None,
        }
    }

    /// Our `a=setup` value.
    pub fn setup_attr(self) -> &'static str {
        match self {
            Self::Client => "active",
            Self::Server => "passive",
        }
    }
}

/// What the peer's SDP says about DTLS for its first active audio stream:
/// media-level attributes override session-level ones (RFC 8122 §5, RFC 4145 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDtls {
    /// The peer's SHA-256 fingerprints (a certificate matching any one is the peer's).
    pub fingerprints: Vec<Fingerprint>,
    pub setup: Option<Setup>,
    /// The stream's transport protocol (`UDP/TLS/RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, or
    /// `RTP/SAVP` as some phones write it), echoed in our answer (RFC 3264 §6).
    pub proto: String,
}

/// The longest SDP read (as [`crate::sdp::parse_audio`]).
const MAX_SDP_LEN: usize = 16 * 1024;
/// At most this many fingerprints are kept (network input is bounded).
const MAX_FINGERPRINTS: usize = 8;

impl PeerDtls {
    /// `None` when the first active audio stream carries no SHA-256 fingerprint.
    pub fn of(body: &[u8]) -> Option<Self> {
        if body.len() > MAX_SDP_LEN {
            return None;
        }
        let text = std::str::from_utf8(body).ok()?;
        let (mut session_fp, mut session_setup) = (Vec::new(), None);
        let mut media: Option<(Vec<Fingerprint>, Option<Setup>, String)> = None;
        let mut in_audio = false;
        let mut seen_media = false;
        for line in text.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(m) = line.strip_prefix("m=") {
                if media.is_some() {
                    break; // the first active audio stream only
                }
                seen_media = true;
                let f: Vec<&str> = m.split_ascii_whitespace().collect();
                in_audio = f.first() == Some(&"audio") && f.get(1).is_some_and(|p| *p != "0");
                if in_audio {
                    media = Some((Vec::new(), None, f.get(2).unwrap_or(&"").to_string()));
                }
                continue;
            }
            let (fps, setup) = match (&mut media, seen_media) {
                (Some((fps, setup, _)), _) if in_audio => (fps, setup),
                (_, false) => (&mut session_fp, &mut session_setup),
                _ => continue,
            };
            if let Some(v) = line.strip_prefix("a=fingerprint:") {
                if let Some(fp) =
                    Fingerprint::parse_attr(v).filter(|_| fps.len() < MAX_FINGERPRINTS)
                {
                    fps.push(fp);
                }
            } else if let Some(v) = line.strip_prefix("a=setup:") {
                *setup = Setup::parse(v);
            }
        }
        let (fps, setup, proto) = media?;
        let fingerprints = if fps.is_empty() { session_fp } else { fps };
        (!fingerprints.is_empty()).then(|| Self {
            fingerprints,
            setup: setup.or(session_setup),
            proto,
        })
    }
}

/// A call keyed with DTLS-SRTP: what the engine agreed in SDP, what the media shell
/// needs for the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtlsCall {
    pub role: Role,
    pub peer: Vec<Fingerprint>,
    /// Our certificate's fingerprint (the one in our SDP).
    pub local: Fingerprint,
    /// The transport protocol of our `m=` line.
    pub proto: String,
}

impl DtlsCall {
    /// The answer to a peer that offered DTLS, or `None` when its `a=setup` leaves
    /// us no role.
    pub fn answering(peer: &PeerDtls, local: Fingerprint) -> Option<Self> {
        Some(Self {
            role: Role::answering(peer.setup)?,
            peer: peer.fingerprints.clone(),
            local,
            proto: peer.proto.clone(),
        })
    }

    /// The answer to our DTLS-SRTP offer (`a=setup:actpass`), or `None` when it does
    /// not take it: no SHA-256 fingerprint, or a setup that leaves no role (RFC 4145
    /// §4.1: an answer without `a=setup` is `passive`).
    pub fn answered(body: &[u8], local: Fingerprint) -> Option<Self> {
        let peer = PeerDtls::of(body)?;
        let role = match peer.setup {
            Some(Setup::Active) => Role::Server,
            Some(Setup::Passive) | None => Role::Client,
            Some(Setup::ActPass | Setup::HoldConn) => return None,
        };
        Some(Self {
            role,
            peer: peer.fingerprints,
            local,
            proto: peer.proto,
        })
    }

    /// Our SDP's DTLS lines (RFC 5763 §5: `a=setup` and `a=fingerprint` at media
    /// level), CRLF-terminated.
    pub fn sdp_lines(&self) -> String {
        format!(
            "a=setup:{}\r\na=fingerprint:{}\r\n",
            self.role.setup_attr(),
            self.local.to_attr()
        )
    }

    /// Whether a certificate (DER) the peer presented is one its SDP named (RFC 5763
    /// §5: otherwise the handshake fails with `bad_certificate`).
    pub fn accepts(&self, der: &[u8]) -> bool {
        self.peer.contains(&Fingerprint::of_der(der))
    }
}

/// The DTLS lines of our offer (RFC 5763 §5: the offerer is `actpass`).
pub fn offer_lines(local: Fingerprint) -> String {
    format!("a=setup:actpass\r\na=fingerprint:{}\r\n", local.to_attr())
}

/// The SRTP protection profiles we offer in `use_srtp` (RFC 5764 §4.1.2), in order
/// of preference; each maps to an SDES suite of the same keys ([`suite_of`]).
pub const PROFILES: [u16; 3] = [0x0001, 0x0007, 0x0002];

/// The suite of an RFC 5764 §4.1.2 profile (AEAD ones: RFC 7714 §14.2).
pub fn suite_of(profile: u16) -> Option<SrtpSuite> {
    Some(match profile {
        0x0001 => SrtpSuite::AesCm128HmacSha1_80,
        0x0002 => SrtpSuite::AesCm128HmacSha1_32,
        0x0007 => SrtpSuite::AeadAes128Gcm,
        0x0008 => SrtpSuite::AeadAes256Gcm,
        _ => return None,
    })
}

/// The exporter label of RFC 5764 §4.2.
pub const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// How many bytes to export for `suite`: 2 × (key + salt), RFC 5764 §4.2.
pub fn material_len(suite: &SrtpSuite) -> Option<usize> {
    suite.key_salt_len().map(|(k, s)| 2 * (k + s))
}

/// Splits the exported material (RFC 5764 §4.2: client key, server key, client
/// salt, server salt) into our sending and receiving keys: the client sends with
/// the client's keys.
pub fn split_material(material: &[u8], suite: &SrtpSuite, role: Role) -> Option<MediaKeys> {
    let (k, s) = suite.key_salt_len()?;
    if material.len() != 2 * (k + s) {
        return None;
    }
    let (keys, salts) = material.split_at(2 * k);
    let mut client = keys[..k].to_vec();
    client.extend_from_slice(&salts[..s]);
    let mut server = keys[k..].to_vec();
    server.extend_from_slice(&salts[s..]);
    let client_keys = SrtpKeys::from_key_salt(suite.clone(), &client);
    let server_keys = SrtpKeys::from_key_salt(suite.clone(), &server);
    client.fill(0);
    server.fill(0);
    let (client_keys, server_keys) = (client_keys?, server_keys?);
    let (send, recv) = match role {
        Role::Client => (client_keys, server_keys),
        Role::Server => (server_keys, client_keys),
    };
    Some(MediaKeys {
        send,
        recv,
        from_secret: false,
    })
}

/// A datagram on the media port that is a DTLS record (RFC 5764 §5.1.2 as updated
/// by RFC 7983 §7: first byte 20..=63); RTP and RTCP start with 128..=191.
pub fn is_dtls(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(20..=63))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:\
DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08";

    fn linphone_offer(setup: &str) -> String {
        // The shape linphone 5 offers with media_encryption=dtls.
        format!(
            "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=Talk\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
a=fingerprint:{FP}\r\na=setup:{setup}\r\n\
m=audio 7078 UDP/TLS/RTP/SAVP 96 0 8 101\r\na=rtpmap:96 opus/48000/2\r\n\
a=rtcp-mux\r\n"
        )
    }

    #[test]
    fn fingerprints_parse_and_print_as_a_pair() {
        let fp = Fingerprint::parse_attr(FP).unwrap();
        assert_eq!(fp.to_attr(), FP);
        assert_eq!(Fingerprint::parse_attr(&FP.to_lowercase()), Some(fp));
        for bad in [
            "sha-1 6B:8B",
            "sha-256 6B:8B",
            "sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08:00",
            "sha-256 6B8B:F0",
            "sha-256",
            "",
        ] {
            assert_eq!(Fingerprint::parse_attr(bad), None, "{bad}");
        }
        assert_eq!(
            Fingerprint::of_der(b"abc").to_hex()[..8].to_string(),
            "BA:78:16",
            "SHA-256 of abc"
        );
    }

    #[test]
    fn reads_session_level_attributes_and_answers_actpass_as_client() {
        let p = PeerDtls::of(linphone_offer("actpass").as_bytes()).unwrap();
        assert_eq!(p.proto, "UDP/TLS/RTP/SAVP");
        assert_eq!(p.setup, Some(Setup::ActPass));
        assert_eq!(p.fingerprints, vec![Fingerprint::parse_attr(FP).unwrap()]);
        let call = DtlsCall::answering(&p, Fingerprint([7; 32])).unwrap();
        assert_eq!(call.role, Role::Client);
        assert!(
            call.sdp_lines()
                .starts_with("a=setup:active\r\na=fingerprint:sha-256 07:07")
        );
    }

    #[test]
    fn answers_to_our_offer_give_our_role() {
        let local = Fingerprint([3; 32]);
        let answer = |setup: &str| {
            format!(
                "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 7078 UDP/TLS/RTP/SAVP 0\r\n{setup}\
a=fingerprint:{FP}\r\n"
            )
        };
        let role =
            |setup: &str| DtlsCall::answered(answer(setup).as_bytes(), local).map(|d| d.role);
        assert_eq!(role("a=setup:active\r\n"), Some(Role::Server));
        assert_eq!(role("a=setup:passive\r\n"), Some(Role::Client));
        assert_eq!(role(""), Some(Role::Client), "RFC 4145 §4.1: passive");
        assert_eq!(role("a=setup:actpass\r\n"), None);
        let plain = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 7078 RTP/AVP 0\r\n";
        assert_eq!(DtlsCall::answered(plain.as_bytes(), local), None);
        assert_eq!(
            offer_lines(local),
            format!("a=setup:actpass\r\na=fingerprint:{}\r\n", local.to_attr())
        );
    }

    #[test]
    fn roles_follow_rfc_5763_and_4145() {
        assert_eq!(Role::answering(Some(Setup::Active)), Some(Role::Server));
        assert_eq!(Role::answering(Some(Setup::Passive)), Some(Role::Client));
        assert_eq!(Role::answering(None), Some(Role::Server));
        assert_eq!(Role::answering(Some(Setup::HoldConn)), None);
        let p = PeerDtls::of(linphone_offer("holdconn").as_bytes()).unwrap();
        assert_eq!(DtlsCall::answering(&p, Fingerprint([0; 32])), None);
    }

    #[test]
    fn media_level_overrides_and_other_sections_do_not_count() {
        let other = "sha-256 00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:\
00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01";
        let sdp = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\na=fingerprint:{other}\r\n\
m=video 5000 UDP/TLS/RTP/SAVP 96\r\na=setup:passive\r\n\
m=audio 4000 RTP/SAVP 0\r\na=fingerprint:{FP}\r\na=setup:active\r\n"
        );
        let p = PeerDtls::of(sdp.as_bytes()).unwrap();
        assert_eq!(p.fingerprints, vec![Fingerprint::parse_attr(FP).unwrap()]);
        assert_eq!(p.setup, Some(Setup::Active));
        assert_eq!(p.proto, "RTP/SAVP");
        let plain = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(PeerDtls::of(plain.as_bytes()), None);
        let rejected = linphone_offer("actpass").replace("m=audio 7078", "m=audio 0");
        assert_eq!(PeerDtls::of(rejected.as_bytes()), None);
    }

    #[test]
    fn key_material_splits_by_role() {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let material: Vec<u8> = (0..60).collect();
        assert_eq!(material_len(&suite), Some(60));
        let client = split_material(&material, &suite, Role::Client).unwrap();
        let server = split_material(&material, &suite, Role::Server).unwrap();
        assert_eq!(client.send, server.recv);
        assert_eq!(client.recv, server.send);
        assert_eq!(client.send.master_key(), &material[..16]);
        assert_eq!(client.send.master_salt(), &material[32..46]);
        assert_eq!(server.send.master_key(), &material[16..32]);
        assert_eq!(server.send.master_salt(), &material[46..60]);
        assert!(split_material(&material[..59], &suite, Role::Client).is_none());
        let gcm = SrtpSuite::AeadAes128Gcm;
        assert_eq!(material_len(&gcm), Some(56));
        assert!(split_material(&material[..56], &gcm, Role::Client).is_some());
    }

    #[test]
    fn demultiplexes_by_first_byte() {
        assert!(is_dtls(&[22, 254, 253]));
        assert!(is_dtls(&[20]) && is_dtls(&[63]));
        assert!(!is_dtls(&[0x80, 0]) && !is_dtls(&[0, 1]) && !is_dtls(&[]));
        assert_eq!(PROFILES.map(suite_of).iter().flatten().count(), 3);
    }
}
