//! Permit token: literal vectors, the documented MAC layout, tampering with every
//! field, key rotation, and seeded random claims.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sip_core::permit::{
    KeyId, KeyIdInUse, KeyRing, MAX_TOKEN_LEN, ProxyKey, Token, TokenClaims, TokenError,
};
use sip_testkit::rand::Rng;

const NOW: u64 = 1_700_000_000;
const CALLER: &str = "sip:alice@example.org";
const CALLEE: &str = "sip:bob@example.org";
const CALL_ID: &str = "a84b4c76e66710@pc33.atlanta.example.com";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn ring() -> KeyRing {
    KeyRing::new(KeyId(1), ProxyKey::from_bytes([0x11; 32]))
}

fn claims() -> TokenClaims<'static> {
    TokenClaims::new(CALLER, CALLEE, CALL_ID)
}

/// RFC 4231 §4.2 and §4.3 (test cases 1 and 2): the HMAC-SHA256 the token uses.
#[test]
fn rfc4231_hmac_sha256_vectors() {
    assert_eq!(
        hmac_sha256(&[0x0b; 20], &[b"Hi There"]),
        hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    );
    assert_eq!(
        hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
        hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
}

/// The MAC is HMAC-SHA256 over exactly the layout docs/profile.md gives.
#[test]
fn mac_follows_the_documented_layout() {
    let mut rng = sip_testkit::seeded_rng(7);
    let token = Token::issue(&ring(), &claims(), NOW, 30, &mut rng);
    let wire = token.encode();
    let fields: Vec<&str> = wire.split('.').collect();
    assert_eq!(fields.len(), 5);
    assert_eq!(fields[0], "v1");
    assert_eq!(fields[1], "1");
    assert_eq!(fields[2], (NOW + 30).to_string());
    assert_eq!(fields[3], b64url(token.nonce()));
    let mut input: Vec<u8> = b"permit token v1\0".to_vec();
    input.extend_from_slice(&1u32.to_be_bytes());
    input.extend_from_slice(&(NOW + 30).to_be_bytes());
    input.extend_from_slice(token.nonce());
    for field in [CALLER, CALLEE, CALL_ID] {
        input.extend_from_slice(&(field.len() as u64).to_be_bytes());
        input.extend_from_slice(field.as_bytes());
    }
    assert_eq!(fields[4], b64url(&hmac_sha256(&[0x11; 32], &[&input])));
}

/// A fixed token for a fixed key, nonce and claims: the format does not drift.
#[test]
fn literal_token_verifies() {
    let nonce = [0xa5u8; 16];
    let mut input: Vec<u8> = b"permit token v1\0".to_vec();
    input.extend_from_slice(&1u32.to_be_bytes());
    input.extend_from_slice(&1_700_000_060u64.to_be_bytes());
    input.extend_from_slice(&nonce);
    for field in [CALLER, CALLEE, CALL_ID] {
        input.extend_from_slice(&(field.len() as u64).to_be_bytes());
        input.extend_from_slice(field.as_bytes());
    }
    let wire = format!(
        "v1.1.1700000060.{}.{}",
        b64url(&nonce),
        b64url(&hmac_sha256(&[0x11; 32], &[&input]))
    );
    assert_eq!(&wire[..39], "v1.1.1700000060.paWlpaWlpaWlpaWlpaWlpQ.");
    let token = Token::parse(&wire).unwrap();
    assert_eq!(token.encode(), wire);
    let verified = ring().verify(&token, &claims(), NOW).unwrap();
    assert_eq!(verified.key_id(), KeyId(1));
    assert_eq!(verified.expires(), 1_700_000_060);
    assert_eq!(verified.nonce(), &nonce);
    assert!(!verified.by_previous_key());
}

/// Every field of the wire form changed, one at a time, gives its own fault.
#[test]
fn tampering_with_each_field() {
    let mut rng = sip_testkit::seeded_rng(8);
    let wire = Token::issue(&ring(), &claims(), NOW, 60, &mut rng).encode();
    let fields: Vec<String> = wire.split('.').map(str::to_owned).collect();
    let with = |i: usize, value: &str| {
        let mut f = fields.clone();
        f[i] = value.to_owned();
        f.join(".")
    };
    let check = |text: &str| Token::parse(text).and_then(|t| ring().verify(&t, &claims(), NOW));
    assert!(check(&wire).is_ok());
    // version
    assert_eq!(check(&with(0, "v2")), Err(TokenError::Malformed));
    // key id: unknown, or malformed
    assert_eq!(check(&with(1, "2")), Err(TokenError::UnknownKey));
    assert_eq!(check(&with(1, "x")), Err(TokenError::Malformed));
    // expiry: extending (or shortening) it breaks the MAC
    assert_eq!(
        check(&with(2, &(NOW + 3600).to_string())),
        Err(TokenError::BadMac)
    );
    assert_eq!(check(&with(2, "1")), Err(TokenError::BadMac));
    // nonce and MAC: one character changed each
    for i in [3, 4] {
        let mut bytes = fields[i].clone().into_bytes();
        bytes[0] = if bytes[0] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(bytes).unwrap();
        assert_eq!(
            check(&with(i, &changed)),
            Err(TokenError::BadMac),
            "field {i}"
        );
        assert_eq!(
            check(&with(i, &fields[i][1..])),
            Err(TokenError::Malformed),
            "field {i} shortened"
        );
    }
    // structure
    assert_eq!(check(&format!("{wire}.")), Err(TokenError::Malformed));
    assert_eq!(check(&wire[..wire.len() - 1]), Err(TokenError::Malformed));
    assert_eq!(check(""), Err(TokenError::Malformed));
    assert_eq!(check(&"v1.".repeat(100)), Err(TokenError::Malformed));
}

/// The token binds every claim; length prefixes keep shifted boundaries apart.
#[test]
fn every_claim_is_bound() {
    let mut rng = sip_testkit::seeded_rng(9);
    let token = Token::issue(&ring(), &claims(), NOW, 60, &mut rng);
    for other in [
        TokenClaims::new("sip:mallory@example.org", CALLEE, CALL_ID),
        TokenClaims::new(CALLER, "sip:carol@example.org", CALL_ID),
        TokenClaims::new(CALLER, CALLEE, "another-call"),
        TokenClaims::new(CALLEE, CALLER, CALL_ID),
    ] {
        assert_eq!(ring().verify(&token, &other, NOW), Err(TokenError::BadMac));
    }
    let split = TokenClaims::new("ab", "c", "d");
    let token = Token::issue(&ring(), &split, NOW, 60, &mut rng);
    assert!(ring().verify(&token, &split, NOW).is_ok());
    assert_eq!(
        ring().verify(&token, &TokenClaims::new("a", "bc", "d"), NOW),
        Err(TokenError::BadMac)
    );
}

#[test]
fn expiry_boundary() {
    let mut rng = sip_testkit::seeded_rng(10);
    let token = Token::issue(&ring(), &claims(), NOW, 60, &mut rng);
    assert!(ring().verify(&token, &claims(), NOW + 59).is_ok());
    assert_eq!(
        ring().verify(&token, &claims(), NOW + 60),
        Err(TokenError::Expired)
    );
    assert_eq!(
        ring().verify(&token, &claims(), u64::MAX),
        Err(TokenError::Expired)
    );
    // A forged token past its expiry reports the forgery, not the expiry.
    let other = KeyRing::new(KeyId(1), ProxyKey::from_bytes([0x22; 32]));
    assert_eq!(
        other.verify(&token, &claims(), NOW + 600),
        Err(TokenError::BadMac)
    );
}

#[test]
fn rotation_keeps_calls_in_flight() {
    let mut rng = sip_testkit::seeded_rng(11);
    let mut ring = KeyRing::new(KeyId(1), ProxyKey::generate(&mut rng));
    let old = Token::issue(&ring, &claims(), NOW, 60, &mut rng);
    assert_eq!(
        ring.rotate(KeyId(1), ProxyKey::generate(&mut rng)),
        Err(KeyIdInUse(KeyId(1)))
    );
    ring.rotate(KeyId(2), ProxyKey::generate(&mut rng)).unwrap();
    assert_eq!(ring.current_id(), KeyId(2));
    assert_eq!(ring.previous_id(), Some(KeyId(1)));
    let verified = ring.verify(&old, &claims(), NOW + 1).unwrap();
    assert!(verified.by_previous_key());
    let new = Token::issue(&ring, &claims(), NOW + 1, 60, &mut rng);
    assert_eq!(new.key_id(), KeyId(2));
    assert!(
        !ring
            .verify(&new, &claims(), NOW + 2)
            .unwrap()
            .by_previous_key()
    );
    // A second rotation pushes key 1 out.
    ring.rotate(KeyId(3), ProxyKey::generate(&mut rng)).unwrap();
    assert_eq!(
        ring.verify(&old, &claims(), NOW + 2),
        Err(TokenError::UnknownKey)
    );
    assert!(ring.verify(&new, &claims(), NOW + 2).is_ok());
    ring.drop_previous();
    assert_eq!(ring.previous_id(), None);
    assert_eq!(
        ring.verify(&new, &claims(), NOW + 2),
        Err(TokenError::UnknownKey)
    );
    // A previous key read back from configuration.
    let a = ProxyKey::from_bytes([1; 32]);
    let b = ProxyKey::from_bytes([2; 32]);
    assert!(KeyRing::with_previous((KeyId(5), a.clone()), (KeyId(5), b.clone())).is_err());
    let restored = KeyRing::with_previous((KeyId(6), b), (KeyId(5), a.clone())).unwrap();
    let under_a = Token::issue(&KeyRing::new(KeyId(5), a), &claims(), NOW, 60, &mut rng);
    assert!(
        restored
            .verify(&under_a, &claims(), NOW)
            .unwrap()
            .by_previous_key()
    );
}

#[test]
fn proxy_key_text_form_and_redaction() {
    let key = ProxyKey::generate(&mut sip_testkit::seeded_rng(12));
    let text = key.to_base64url();
    assert_eq!(text.len(), 43);
    let back = ProxyKey::from_base64url(&format!(" {text}\n")).unwrap();
    assert_eq!(back.to_base64url(), text);
    assert_eq!(format!("{key:?}"), "ProxyKey(..)");
    assert!(!format!("{:?}", KeyRing::new(KeyId(1), key)).contains(&text));
    assert!(ProxyKey::from_base64url(&text[1..]).is_err());
    assert!(ProxyKey::from_base64url(&format!("{}=", &text[..42])).is_err());
}

/// Seeded random claims and times: issue then verify succeeds; any single changed
/// character of the wire form is refused; other claims are refused.
#[test]
fn random_claims_round_trip_and_single_character_changes_fail() {
    let mut rng = sip_testkit::seeded_rng(0x5eed);
    let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789@.:-_;=%~ äöü"
        .chars()
        .collect();
    let word = |rng: &mut sip_testkit::StdRng, max: usize| -> String {
        let len = rng.random_range(0..=max);
        (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect()
    };
    let ring = KeyRing::new(
        KeyId(rng.random_range(0..=u32::MAX)),
        ProxyKey::generate(&mut rng),
    );
    for _ in 0..300 {
        let (caller, callee, call_id) =
            (word(&mut rng, 40), word(&mut rng, 40), word(&mut rng, 60));
        let claims = TokenClaims::new(&caller, &callee, &call_id);
        let now = rng.random_range(0..u64::MAX / 2);
        let ttl = rng.random_range(1..100_000);
        let token = Token::issue(&ring, &claims, now, ttl, &mut rng);
        let wire = token.encode();
        assert!(wire.len() <= MAX_TOKEN_LEN);
        let parsed = Token::parse(&wire).unwrap();
        assert_eq!(parsed, token);
        assert!(ring.verify(&parsed, &claims, now + ttl - 1).is_ok());
        assert_eq!(
            ring.verify(&parsed, &claims, now + ttl),
            Err(TokenError::Expired)
        );
        // One character replaced by another from the wire alphabet.
        let mut bytes = wire.clone().into_bytes();
        let at = rng.random_range(0..bytes.len());
        let pool = b"v0123456789.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";
        let replacement = loop {
            let c = pool[rng.random_range(0..pool.len())];
            if c != bytes[at] {
                break c;
            }
        };
        bytes[at] = replacement;
        let changed = String::from_utf8(bytes).unwrap();
        let outcome = Token::parse(&changed).and_then(|t| ring.verify(&t, &claims, now));
        assert!(outcome.is_err(), "{changed} accepted");
        // Other claims.
        let other_call = format!("{call_id}x");
        let other = TokenClaims::new(&caller, &callee, &other_call);
        assert_eq!(ring.verify(&parsed, &other, now), Err(TokenError::BadMac));
    }
}
