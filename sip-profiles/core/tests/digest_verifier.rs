//! The whole server-side check: challenges, every failure the Verifier reports, and
//! the nonce-count replay rule. Responses are computed here with md-5 and sha2
//! directly, not with the module under test.

use std::fmt::Write as _;

use md5::Md5;
use sha2::{Digest, Sha256};
use sip_core::digest::{
    Algorithm, AuthFailure, Authenticated, NonceKey, NonceState, Verifier, ha1,
};

const NOW: u64 = 1_750_000_000;
const TTL: u64 = 300;
const REALM: &str = "example.com";
const URI: &str = "sip:example.com";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn h(alg: Algorithm, s: &str) -> String {
    match alg {
        Algorithm::Md5 => hex(&Md5::digest(s.as_bytes())),
        Algorithm::Sha256 => hex(&Sha256::digest(s.as_bytes())),
    }
}

fn verifier(allowed: Vec<Algorithm>) -> Verifier {
    Verifier::new(REALM.into(), NonceKey::new([9; 32]), TTL, allowed)
}

fn nonce_of(challenge: &str) -> String {
    challenge
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned()
}

/// An Authorization value as a UAC would build it for `password`.
fn answer(alg: Algorithm, user: &str, realm: &str, password: &str, nonce: &str, nc: u32) -> String {
    let ha1 = h(alg, &format!("{user}:{realm}:{password}"));
    let ha2 = h(alg, &format!("REGISTER:{URI}"));
    let resp = h(alg, &format!("{ha1}:{nonce}:{nc:08x}:0a4f113b:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{URI}\", response=\"{resp}\", algorithm={}, cnonce=\"0a4f113b\", qop=auth, nc={nc:08x}",
        alg.token()
    )
}

/// The credential store: alice/secret.
fn store(user: &str, alg: Algorithm) -> Option<String> {
    (user == "alice").then(|| ha1(alg, "alice", REALM, "secret"))
}

fn check(v: &mut Verifier, at: u64, header: &str) -> Result<Authenticated, AuthFailure> {
    v.authenticate(at, b"REGISTER", &[header.as_bytes()], store)
}

#[test]
fn challenges_follow_the_configured_order_with_one_nonce() {
    let v = verifier(vec![Algorithm::Sha256, Algorithm::Md5, Algorithm::Sha256]);
    let c = v.challenges(NOW, 1, false);
    assert_eq!(c.len(), 2, "duplicates dropped: {c:?}");
    assert!(c[0].contains("algorithm=SHA-256"), "{}", c[0]);
    assert!(c[1].contains("algorithm=MD5"), "{}", c[1]);
    assert_eq!(nonce_of(&c[0]), nonce_of(&c[1]));
    assert!(
        c.iter()
            .all(|x| x.starts_with("Digest realm=\"example.com\"") && x.contains("qop=\"auth\""))
    );
    assert!(c.iter().all(|x| !x.contains("stale")));
    assert!(
        v.challenges(NOW, 1, true)
            .iter()
            .all(|x| x.ends_with(", stale=true"))
    );
    assert_ne!(nonce_of(&c[0]), nonce_of(&v.challenges(NOW, 2, false)[0]));
    let key = NonceKey::new([9; 32]);
    assert_eq!(key.check(&nonce_of(&c[0]), NOW, TTL), NonceState::Fresh);
}

#[test]
fn right_password_authenticates_with_either_offered_algorithm() {
    for alg in [Algorithm::Md5, Algorithm::Sha256] {
        let mut v = verifier(vec![Algorithm::Sha256, Algorithm::Md5]);
        let nonce = nonce_of(&v.challenges(NOW, 7, false)[0]);
        let proof = check(
            &mut v,
            NOW + 5,
            &answer(alg, "alice", REALM, "secret", &nonce, 1),
        )
        .unwrap();
        assert_eq!(
            (proof.username.as_str(), proof.realm.as_str()),
            ("alice", REALM)
        );
        assert_eq!(proof.algorithm, alg);
        assert_eq!(proof.uri, URI);
    }
}

#[test]
fn wrong_password_is_bad_response_and_unknown_user_is_unknown_user() {
    let mut v = verifier(vec![Algorithm::Md5]);
    let nonce = nonce_of(&v.challenges(NOW, 7, false)[0]);
    let wrong = answer(Algorithm::Md5, "alice", REALM, "Secret", &nonce, 1);
    assert_eq!(check(&mut v, NOW, &wrong), Err(AuthFailure::BadResponse));
    let nobody = answer(Algorithm::Md5, "mallory", REALM, "secret", &nonce, 1);
    assert_eq!(check(&mut v, NOW, &nobody), Err(AuthFailure::UnknownUser));
    // Neither burned alice's count: her first answer with nc=1 still works.
    let right = answer(Algorithm::Md5, "alice", REALM, "secret", &nonce, 1);
    assert!(check(&mut v, NOW, &right).is_ok());
}

#[test]
fn stale_only_for_the_right_password() {
    let mut v = verifier(vec![Algorithm::Md5]);
    let nonce = nonce_of(&v.challenges(NOW, 7, false)[0]);
    let right = answer(Algorithm::Md5, "alice", REALM, "secret", &nonce, 1);
    assert!(
        check(&mut v, NOW + TTL, &right).is_ok(),
        "still fresh at the TTL"
    );
    let right2 = answer(Algorithm::Md5, "alice", REALM, "secret", &nonce, 2);
    assert_eq!(
        check(&mut v, NOW + TTL + 1, &right2),
        Err(AuthFailure::Stale)
    );
    assert!(AuthFailure::Stale.stale());
    let wrong = answer(Algorithm::Md5, "alice", REALM, "Secret", &nonce, 3);
    assert_eq!(
        check(&mut v, NOW + TTL + 1, &wrong),
        Err(AuthFailure::BadResponse)
    );
}

#[test]
fn forged_and_future_nonces_are_bad_nonces() {
    let mut v = verifier(vec![Algorithm::Md5]);
    let forged = NonceKey::new([1; 32]).issue(NOW, 7);
    let h = answer(Algorithm::Md5, "alice", REALM, "secret", &forged, 1);
    assert_eq!(check(&mut v, NOW, &h), Err(AuthFailure::BadNonce));
    let future = nonce_of(&v.challenges(NOW + 3600, 7, false)[0]);
    let h = answer(Algorithm::Md5, "alice", REALM, "secret", &future, 1);
    assert_eq!(check(&mut v, NOW, &h), Err(AuthFailure::BadNonce));
    let h = answer(Algorithm::Md5, "alice", REALM, "secret", "garbage", 1);
    assert_eq!(check(&mut v, NOW, &h), Err(AuthFailure::BadNonce));
}

#[test]
fn algorithm_not_offered() {
    let mut v = verifier(vec![Algorithm::Sha256]);
    let nonce = nonce_of(&v.challenges(NOW, 7, false)[0]);
    let md5 = answer(Algorithm::Md5, "alice", REALM, "secret", &nonce, 1);
    assert_eq!(
        check(&mut v, NOW, &md5),
        Err(AuthFailure::AlgorithmNotOffered)
    );
    let unknown = md5.replace("algorithm=MD5", "algorithm=SHA-512-256");
    assert_eq!(
        check(&mut v, NOW, &unknown),
        Err(AuthFailure::AlgorithmNotOffered)
    );
}

#[test]
fn realms_select_the_credentials() {
    let mut v = verifier(vec![Algorithm::Md5]);
    let nonce = nonce_of(&v.challenges(NOW, 7, false)[0]);
    let other = answer(Algorithm::Md5, "alice", "other.org", "secret", &nonce, 1);
    assert_eq!(check(&mut v, NOW, &other), Err(AuthFailure::WrongRealm));
    let case = answer(Algorithm::Md5, "alice", "Example.com", "secret", &nonce, 1);
    assert_eq!(
        check(&mut v, NOW, &case),
        Err(AuthFailure::WrongRealm),
        "realms are case-sensitive"
    );
    // Several headers (RFC 3261 §22.3): ours is found among others.
    let ours = answer(Algorithm::Md5, "alice", REALM, "secret", &nonce, 1);
    let values: [&[u8]; 3] = [b"Basic YWxhZGRpbjpvcGVu", other.as_bytes(), ours.as_bytes()];
    assert!(v.authenticate(NOW, b"REGISTER", &values, store).is_ok());
}

#[test]
fn missing_and_malformed() {
    let mut v = verifier(vec![Algorithm::Md5]);
    assert_eq!(
        v.authenticate(NOW, b"REGISTER", &[], store),
        Err(AuthFailure::Missing)
    );
    assert_eq!(
        check(&mut v, NOW, "Basic YWxhZGRpbjpvcGVu"),
        Err(AuthFailure::Missing)
    );
    let failure = check(&mut v, NOW, "Digest username=\"alice\"");
    assert_eq!(failure, Err(AuthFailure::Malformed("missing realm")));
    assert!(failure.unwrap_err().is_bad_request());
    // Malformed outranks WrongRealm when nothing is for us.
    let nonce = nonce_of(&v.challenges(NOW, 7, false)[0]);
    let other = answer(Algorithm::Md5, "alice", "other.org", "secret", &nonce, 1);
    let values: [&[u8]; 2] = [other.as_bytes(), b"Digest ,="];
    assert!(matches!(
        v.authenticate(NOW, b"REGISTER", &values, store),
        Err(AuthFailure::Malformed(_))
    ));
}

#[test]
fn qop_auth_is_required() {
    let mut v = verifier(vec![Algorithm::Md5]);
    let nonce = nonce_of(&v.challenges(NOW, 7, false)[0]);
    // A correct RFC 2069 answer (no qop) is still refused: we offered qop=auth.
    let ha1 = h(Algorithm::Md5, &format!("alice:{REALM}:secret"));
    let ha2 = h(Algorithm::Md5, &format!("REGISTER:{URI}"));
    let resp = h(Algorithm::Md5, &format!("{ha1}:{nonce}:{ha2}"));
    let rfc2069 = format!(
        "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", response=\"{resp}\""
    );
    assert_eq!(
        check(&mut v, NOW, &rfc2069),
        Err(AuthFailure::Malformed("qop=auth required"))
    );
    let auth_int = answer(Algorithm::Md5, "alice", REALM, "secret", &nonce, 1)
        .replace("qop=auth", "qop=auth-int");
    assert_eq!(
        check(&mut v, NOW, &auth_int),
        Err(AuthFailure::Malformed("qop other than auth"))
    );
}

#[test]
fn replayed_nonce_counts_are_refused() {
    let mut v = verifier(vec![Algorithm::Md5]);
    let nonce = nonce_of(&v.challenges(NOW, 7, false)[0]);
    let first = answer(Algorithm::Md5, "alice", REALM, "secret", &nonce, 1);
    assert!(check(&mut v, NOW, &first).is_ok());
    assert_eq!(check(&mut v, NOW + 1, &first), Err(AuthFailure::Replay));
    let third = answer(Algorithm::Md5, "alice", REALM, "secret", &nonce, 3);
    assert!(check(&mut v, NOW + 2, &third).is_ok());
    let second = answer(Algorithm::Md5, "alice", REALM, "secret", &nonce, 2);
    assert_eq!(check(&mut v, NOW + 3, &second), Err(AuthFailure::Replay));
}

#[test]
fn replay_table_capacity_evicts_the_oldest_nonce() {
    let mut v = verifier(vec![Algorithm::Md5]).with_nonce_count_capacity(2);
    let nonces: Vec<String> = (0..3)
        .map(|salt| nonce_of(&v.challenges(NOW, salt, false)[0]))
        .collect();
    for n in &nonces[..2] {
        assert!(
            check(
                &mut v,
                NOW,
                &answer(Algorithm::Md5, "alice", REALM, "secret", n, 1)
            )
            .is_ok()
        );
    }
    let replay_second = answer(Algorithm::Md5, "alice", REALM, "secret", &nonces[1], 1);
    assert_eq!(check(&mut v, NOW, &replay_second), Err(AuthFailure::Replay));
    assert!(
        check(
            &mut v,
            NOW,
            &answer(Algorithm::Md5, "alice", REALM, "secret", &nonces[2], 1)
        )
        .is_ok()
    );
    // The first nonce was evicted; the second is still remembered.
    assert_eq!(check(&mut v, NOW, &replay_second), Err(AuthFailure::Replay));
    let replay_first = answer(Algorithm::Md5, "alice", REALM, "secret", &nonces[0], 1);
    assert!(
        check(&mut v, NOW, &replay_first).is_ok(),
        "forgotten after eviction (documented bound)"
    );
}

#[test]
#[should_panic(expected = "at least one algorithm")]
fn a_verifier_without_algorithms_is_a_caller_bug() {
    let _ = verifier(vec![]);
}
