//! The Authorization parser: spacing and folding variants, quoting, unknown and
//! duplicate parameters, missing fields, size limits, encoding, and random mutations.

use sip_core::digest::{Algorithm, Credentials, DigestError, MAX_CREDENTIALS_LEN, MAX_VALUE_LEN};
use sip_testkit::rand::Rng;
use sip_testkit::seeded_rng;

const BASE: &str = "Digest username=\"alice\", realm=\"example.com\", nonce=\"n0nce\", uri=\"sip:example.com\", response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5, cnonce=\"c\", qop=auth, nc=0000000a";

fn parse(s: &str) -> Result<Credentials<'_>, DigestError> {
    Credentials::parse(s.as_bytes())
}

fn malformed(s: &str) -> &'static str {
    match parse(s) {
        Err(DigestError::Malformed(why)) => why,
        other => panic!("expected Malformed for {s:?}, got {other:?}"),
    }
}

#[test]
fn the_base_header_parses() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.username, "alice");
    assert_eq!(c.realm, "example.com");
    assert_eq!(c.nonce, "n0nce");
    assert_eq!(c.uri, "sip:example.com");
    assert_eq!(c.algorithm, Algorithm::Md5);
    assert_eq!(c.cnonce.as_deref(), Some("c"));
    assert_eq!(c.qop.as_deref(), Some("auth"));
    assert_eq!(c.nc, Some(10));
    assert_eq!(c.opaque, None);
}

#[test]
fn spacing_and_folding_variants_parse_alike() {
    let reference = parse(BASE).unwrap();
    let variants = [
        BASE.replace(", ", ","),
        BASE.replace(", ", " ,\t"),
        BASE.replace(", ", ",\r\n "),
        BASE.replace(", ", "\r\n\t,\r\n   "),
        BASE.replace('=', " = "),
        BASE.replace('=', "\r\n =\r\n\t"),
        BASE.replace(", ", ",\n "),
        BASE.replace("Digest ", "  \t digest\r\n "),
        BASE.replace("Digest ", "DIGEST "),
        format!("  {BASE}  \r\n"),
        format!("{BASE},"),
        BASE.replace(", ", ", , ,"),
        BASE.replace("username", "UserName").replace("qop", "QOP"),
        BASE.replace("algorithm=MD5", "algorithm=md5"),
        BASE.replace("algorithm=MD5", "algorithm=\"MD5\""),
        BASE.replace("qop=auth", "qop=\"auth\""),
        BASE.replace("nc=0000000a", "nc=\"0000000a\""),
    ];
    for v in &variants {
        assert_eq!(parse(v).as_ref(), Ok(&reference), "{v:?}");
    }
}

#[test]
fn algorithm_defaults_to_md5_and_reads_sha256() {
    let without = BASE.replace(", algorithm=MD5", "");
    assert_eq!(parse(&without).unwrap().algorithm, Algorithm::Md5);
    let sha = BASE.replace("algorithm=MD5", "algorithm=SHA-256");
    assert_eq!(parse(&sha).unwrap().algorithm, Algorithm::Sha256);
    for other in ["MD5-sess", "SHA-512-256", "SHA-256-sess", "\"\"", "x"] {
        let h = BASE.replace("algorithm=MD5", &format!("algorithm={other}"));
        assert_eq!(parse(&h), Err(DigestError::UnsupportedAlgorithm), "{other}");
    }
}

#[test]
fn quoted_strings_unescape() {
    let h = BASE.replace("\"alice\"", r#""al\"ice\\ \x""#);
    assert_eq!(parse(&h).unwrap().username, r#"al"ice\ x"#);
    let h = BASE.replace("\"example.com\", nonce", "\"a,b=c d\", nonce");
    assert_eq!(parse(&h).unwrap().realm, "a,b=c d");
    let h = BASE.replace("\"alice\"", "\"ålice ünicode\"");
    assert_eq!(parse(&h).unwrap().username, "ålice ünicode");
    let h = BASE.replace("\"alice\"", "\"\"");
    assert_eq!(parse(&h).unwrap().username, "");
}

#[test]
fn bare_values_are_tolerated() {
    let h = BASE
        .replace("\"alice\"", "alice")
        .replace("\"sip:example.com\"", "sip:example.com;x=y");
    let c = parse(&h).unwrap();
    assert_eq!(c.username, "alice");
    assert_eq!(c.uri, "sip:example.com;x=y");
}

#[test]
fn unknown_parameters_are_ignored() {
    let reference = parse(BASE).unwrap();
    for extra in [
        ", foo=bar",
        ", foo=\"b,a\\\"r\"",
        ", Foo=1, foo=2",
        ", auth-param=\"x\"",
        ", userhash=false",
    ] {
        let h = format!("{BASE}{extra}");
        assert_eq!(parse(&h).as_ref(), Ok(&reference), "{h}");
    }
}

#[test]
fn duplicates_are_malformed() {
    for dup in [
        ", username=\"bob\"",
        ", REALM=x",
        ", nc=0000000b",
        ", algorithm=MD5",
    ] {
        assert_eq!(
            malformed(&format!("{BASE}{dup}")),
            "duplicate parameter",
            "{dup}"
        );
    }
}

#[test]
fn missing_fields_are_malformed() {
    for (param, why) in [
        ("username=\"alice\", ", "missing username"),
        ("realm=\"example.com\", ", "missing realm"),
        ("nonce=\"n0nce\", ", "missing nonce"),
        ("uri=\"sip:example.com\", ", "missing uri"),
        (
            "response=\"0123456789abcdef0123456789abcdef\", ",
            "missing response",
        ),
        ("cnonce=\"c\", ", "qop without cnonce"),
        (", nc=0000000a", "qop without nc"),
    ] {
        let h = BASE.replace(param, "");
        assert_ne!(h, BASE, "{param}");
        assert_eq!(malformed(&h), why);
    }
    assert_eq!(malformed("Digest"), "missing username");
    assert_eq!(malformed("Digest   "), "missing username");
    assert_eq!(malformed(""), "missing authorization scheme");
}

#[test]
fn syntax_errors_are_malformed() {
    for bad in [
        BASE.replace("username=", "username"),
        BASE.replace("username=\"alice\"", "username=\"alice"),
        BASE.replace("username=\"alice\"", "username="),
        BASE.replace(", realm", " realm"),
        BASE.replace(", realm", ",\r\nrealm"),
        BASE.replace(", realm", ",\rrealm"),
        BASE.replace("\"alice\"", "\"al\0ice\""),
        BASE.replace("\"alice\"", "\"al\r\nice\""),
        BASE.replace("Digest ", "Digest="),
        BASE.replace("nc=0000000a", "nc=0000000A"),
        BASE.replace("nc=0000000a", "nc=a"),
        format!("{BASE}, userhash=true"),
        format!("{BASE}, userhash=maybe"),
        format!("{BASE} junk"),
        format!("{BASE}, =x"),
    ] {
        malformed(&bad);
    }
}

#[test]
fn other_schemes_are_not_digest() {
    for h in [
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        "Bearer abc",
        "NTLM",
        " Digestx a=b",
    ] {
        assert_eq!(parse(h), Err(DigestError::NotDigest), "{h}");
    }
}

#[test]
fn size_limits() {
    let at_limit = "a".repeat(MAX_VALUE_LEN);
    let h = BASE.replace("\"alice\"", &format!("\"{at_limit}\""));
    assert_eq!(parse(&h).unwrap().username.len(), MAX_VALUE_LEN);
    let over = "a".repeat(MAX_VALUE_LEN + 1);
    for h in [
        BASE.replace("\"alice\"", &format!("\"{over}\"")),
        BASE.replace("\"alice\"", &over),
        format!("{BASE}, unknown=\"{over}\""),
    ] {
        assert_eq!(malformed(&h), "parameter value too long");
    }
    // Many small unknown parameters still add up to too much.
    let mut h = BASE.to_owned();
    while h.len() <= MAX_CREDENTIALS_LEN {
        h.push_str(", x=\"0123456789\"");
    }
    assert_eq!(malformed(&h), "credentials too long");
}

#[test]
fn non_utf8_is_malformed() {
    let mut bytes = BASE.as_bytes().to_vec();
    let at = BASE.find("alice").unwrap();
    bytes[at] = 0xff;
    assert_eq!(
        Credentials::parse(&bytes),
        Err(DigestError::Malformed("credentials not UTF-8"))
    );
    // An escape cannot smuggle a broken sequence either.
    let mut bytes = BASE.as_bytes().to_vec();
    bytes.splice(at..at, [b'\\', 0xc3]);
    assert!(matches!(
        Credentials::parse(&bytes),
        Err(DigestError::Malformed(_))
    ));
}

/// 10,000 seeded random mutations of the base header: the parser never panics, and
/// whatever it accepts survives print → parse unchanged.
#[test]
fn random_mutations_never_panic() {
    let alphabet: &[u8] = b" \t\r\n,=\"\\abcAZ09-_:;@/\0\x7f\xc3\xa9\xff";
    let mut rng = seeded_rng(0x5eed_d16e);
    let (mut accepted, mut refused) = (0u32, 0u32);
    for _ in 0..10_000 {
        let mut bytes = BASE.as_bytes().to_vec();
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..=bytes.len());
            match rng.random_range(0..5) {
                0 if at < bytes.len() => {
                    bytes.remove(at);
                }
                1 if at < bytes.len() => bytes[at] = alphabet[rng.random_range(0..alphabet.len())],
                2 => bytes.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                3 if !bytes.is_empty() => {
                    let from = rng.random_range(0..bytes.len());
                    let len = rng.random_range(0..20).min(bytes.len() - from);
                    let chunk = bytes[from..from + len].to_vec();
                    bytes.splice(at..at, chunk);
                }
                _ => bytes.truncate(at),
            }
        }
        match Credentials::parse(&bytes) {
            Ok(c) => {
                accepted += 1;
                let printed = c.to_string();
                assert_eq!(
                    parse(&printed).as_ref(),
                    Ok(&c),
                    "{:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            Err(_) => refused += 1,
        }
    }
    // The mutations must exercise both outcomes, or this test proves little.
    assert!(accepted > 500, "accepted {accepted}");
    assert!(refused > 500, "refused {refused}");
}
