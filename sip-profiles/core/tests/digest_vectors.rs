//! Known-answer tests for Digest responses: the RFC 7616 §3.9.1 and RFC 2617 §3.5
//! examples, and a SIPp 3.6.1 Authorization captured on loopback, recomputed here
//! with the md-5 crate directly rather than with the module under test.

use std::fmt::Write as _;

use md5::{Digest, Md5};
use sip_core::digest::{Algorithm, Credentials, NonceKey, Verifier, ha1, response, verify};

/// RFC 7616 §3.9.1, MD5 answer (the RFC folds it over lines, as here).
const RFC_7616_MD5: &str = "Digest username=\"Mufasa\",\r\n    realm=\"http-auth@example.org\",\r\n    uri=\"/dir/index.html\",\r\n    algorithm=MD5,\r\n    nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n    nc=00000001,\r\n    cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\",\r\n    qop=auth,\r\n    response=\"8ca523f5e9506fed4657c9700eebdbec\",\r\n    opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";

/// RFC 7616 §3.9.1, SHA-256 answer.
const RFC_7616_SHA256: &str = "Digest username=\"Mufasa\",\r\n    realm=\"http-auth@example.org\",\r\n    uri=\"/dir/index.html\",\r\n    algorithm=SHA-256,\r\n    nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n    nc=00000001,\r\n    cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\",\r\n    qop=auth,\r\n    response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\",\r\n    opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";

/// RFC 7616 §3.9.1 password: lower-case "of" (erratum 4495), unlike RFC 2617's.
const RFC_7616_PASSWORD: &str = "Circle of Life";

/// RFC 2617 §3.5 (password "Circle Of Life").
const RFC_2617: &str = "Digest username=\"Mufasa\",\r\n                 realm=\"testrealm@host.com\",\r\n                 nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\r\n                 uri=\"/dir/index.html\",\r\n                 qop=auth,\r\n                 nc=00000001,\r\n                 cnonce=\"0a4f113b\",\r\n                 response=\"6629fae49393a05397450978507c4ef1\",\r\n                 opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";

/// What SIPp 3.6.1 sent for `[authentication username=alice password=secret]` after a
/// 401 from a loopback responder (realm "localhost", the nonce as challenged).
const SIPP_3_6_1: &str = "Digest username=\"alice\",realm=\"localhost\",cnonce=\"6b8b4567\",nc=00000001,qop=auth,uri=\"sip:127.0.0.1:5399\",nonce=\"AAAAAGVT8QAAAAAAAAAAKlu1l3VBcxI-pc2m0X3pdSA\",response=\"0842ed9f9df3e1d3c3653391d77a61b3\",algorithm=MD5";

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

#[test]
fn rfc_7616_sha256_example() {
    let c = Credentials::parse(RFC_7616_SHA256.as_bytes()).unwrap();
    assert_eq!(c.algorithm, Algorithm::Sha256);
    let h = ha1(
        Algorithm::Sha256,
        "Mufasa",
        "http-auth@example.org",
        RFC_7616_PASSWORD,
    );
    assert!(verify(&c, b"GET", &h));
    assert_eq!(
        response(&c, b"GET", &h).as_deref(),
        Some("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")
    );
    // Anything else changed must fail.
    assert!(!verify(&c, b"POST", &h));
    let wrong = ha1(
        Algorithm::Sha256,
        "Mufasa",
        "http-auth@example.org",
        "Circle Of Life",
    );
    assert!(!verify(&c, b"GET", &wrong));
    let md5_ha1 = ha1(
        Algorithm::Md5,
        "Mufasa",
        "http-auth@example.org",
        RFC_7616_PASSWORD,
    );
    assert!(!verify(&c, b"GET", &md5_ha1));
}

#[test]
fn rfc_7616_md5_example() {
    let c = Credentials::parse(RFC_7616_MD5.as_bytes()).unwrap();
    assert_eq!(c.algorithm, Algorithm::Md5);
    let h = ha1(
        Algorithm::Md5,
        "Mufasa",
        "http-auth@example.org",
        RFC_7616_PASSWORD,
    );
    assert!(verify(&c, b"GET", &h));
    assert_eq!(
        response(&c, b"GET", &h).as_deref(),
        Some("8ca523f5e9506fed4657c9700eebdbec")
    );
    let mut other_uri = c.clone();
    other_uri.uri = "/dir/other.html".into();
    assert!(!verify(&other_uri, b"GET", &h));
    let mut other_nc = c.clone();
    other_nc.nc = Some(2);
    assert!(!verify(&other_nc, b"GET", &h));
}

#[test]
fn rfc_2617_md5_example() {
    let c = Credentials::parse(RFC_2617.as_bytes()).unwrap();
    let h = ha1(
        Algorithm::Md5,
        "Mufasa",
        "testrealm@host.com",
        "Circle Of Life",
    );
    assert_eq!(h, md5_hex("Mufasa:testrealm@host.com:Circle Of Life"));
    assert!(verify(&c, b"GET", &h));
    // The stored hash may be upper case; the response may be too.
    assert!(verify(&c, b"GET", &h.to_ascii_uppercase()));
    let mut upper = c.clone();
    upper.response = c.response.to_ascii_uppercase().into();
    assert!(verify(&upper, b"GET", &h));
    // Truncated or non-hex responses never verify.
    let mut short = c.clone();
    short.response = c.response[..30].to_owned().into();
    assert!(!verify(&short, b"GET", &h));
    let mut junk = c;
    junk.response = "zz29fae49393a05397450978507c4ef1".into();
    assert!(!verify(&junk, b"GET", &h));
}

#[test]
fn rfc_2069_form_without_qop() {
    // RFC 2069 / RFC 2617 §3.2.2.1 without qop: KD(HA1, nonce:HA2), computed here by hand.
    let ha1 = md5_hex("bob:example.com:pw");
    let ha2 = md5_hex("INVITE:sip:carol@example.com");
    let expected = md5_hex(&format!("{ha1}:abc:{ha2}"));
    let header = format!(
        "Digest username=\"bob\", realm=\"example.com\", nonce=\"abc\", uri=\"sip:carol@example.com\", response=\"{expected}\""
    );
    let c = Credentials::parse(header.as_bytes()).unwrap();
    assert_eq!(c.qop, None);
    assert!(verify(&c, b"INVITE", &ha1));
    assert!(!verify(&c, b"REGISTER", &ha1));
}

#[test]
fn captured_sipp_authorization_verifies() {
    let c = Credentials::parse(SIPP_3_6_1.as_bytes()).unwrap();
    assert_eq!(c.username, "alice");
    assert_eq!(c.cnonce.as_deref(), Some("6b8b4567"));
    // Independent computation with md-5 directly.
    let ha1 = md5_hex("alice:localhost:secret");
    let ha2 = md5_hex("REGISTER:sip:127.0.0.1:5399");
    let expected = md5_hex(&format!(
        "{ha1}:AAAAAGVT8QAAAAAAAAAAKlu1l3VBcxI-pc2m0X3pdSA:00000001:6b8b4567:auth:{ha2}"
    ));
    assert_eq!(c.response, expected);
    assert!(verify(&c, b"REGISTER", &ha1));
    assert!(!verify(&c, b"REGISTER", &md5_hex("alice:localhost:Secret")));
}

#[test]
fn sipp_style_answer_to_our_own_challenge_authenticates() {
    const NOW: u64 = 1_750_000_000;
    let mut v = Verifier::new(
        "localhost".into(),
        NonceKey::new([3; 32]),
        300,
        vec![Algorithm::Md5],
    );
    let challenge = &v.challenges(NOW, 0x6b8b_4567, false)[0];
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    // What SIPp would compute, with md-5 directly.
    let ha1 = md5_hex("alice:localhost:secret");
    let ha2 = md5_hex("REGISTER:sip:127.0.0.1:5060");
    let resp = md5_hex(&format!("{ha1}:{nonce}:00000001:6b8b4567:auth:{ha2}"));
    let header = format!(
        "Digest username=\"alice\",realm=\"localhost\",cnonce=\"6b8b4567\",nc=00000001,qop=auth,uri=\"sip:127.0.0.1:5060\",nonce=\"{nonce}\",response=\"{resp}\",algorithm=MD5"
    );
    let store = |user: &str, alg: Algorithm| {
        (user == "alice" && alg == Algorithm::Md5).then(|| ha1.clone())
    };
    let proof = v
        .authenticate(NOW + 1, b"REGISTER", &[header.as_bytes()], store)
        .unwrap();
    assert_eq!(proof.username, "alice");
    assert_eq!(proof.realm, "localhost");
    assert_eq!(proof.algorithm, Algorithm::Md5);
    assert_eq!(proof.uri, "sip:127.0.0.1:5060");
}
