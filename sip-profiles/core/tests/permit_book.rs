//! The callee's token book: one-time use, expiry, caller binding, bounded memory,
//! and a seeded random run against a plain model.

use std::collections::HashMap;

use sip_core::permit::{
    BookError, BookInsertError, KeyId, KeyRing, MAX_TOKEN_LEN, ProxyKey, Token, TokenBook,
    TokenClaims,
};
use sip_testkit::rand::Rng;

const NOW: u64 = 1_700_000_000;
const ALICE: &str = "sip:alice@example.org";

fn token(rng: &mut sip_testkit::StdRng, call_id: &str) -> String {
    let ring = KeyRing::new(KeyId(1), ProxyKey::from_bytes([3; 32]));
    Token::issue(
        &ring,
        &TokenClaims::new(ALICE, "sip:bob@example.org", call_id),
        NOW,
        30,
        rng,
    )
    .encode()
}

#[test]
fn accepted_once_then_used() {
    let mut rng = sip_testkit::seeded_rng(1);
    let mut book = TokenBook::new(16);
    let t = token(&mut rng, "call-1");
    book.insert(&t, ALICE, "call-1", NOW + 30, NOW).unwrap();
    assert_eq!(book.len(), 1);
    assert_eq!(book.accept(&t, ALICE, "call-1", NOW + 1), Ok(()));
    assert_eq!(
        book.accept(&t, ALICE, "call-1", NOW + 2),
        Err(BookError::Used)
    );
    // A retransmitted notification does not re-arm a used token.
    book.insert(&t, ALICE, "call-1", NOW + 30, NOW + 3).unwrap();
    assert_eq!(
        book.accept(&t, ALICE, "call-1", NOW + 4),
        Err(BookError::Used)
    );
    assert_eq!(book.len(), 1);
}

#[test]
fn unknown_wrong_caller_wrong_call_and_expired() {
    let mut rng = sip_testkit::seeded_rng(2);
    let mut book = TokenBook::new(16);
    let t = token(&mut rng, "call-1");
    let forged = token(&mut rng, "call-1");
    book.insert(&t, ALICE, "call-1", NOW + 30, NOW).unwrap();
    assert_eq!(
        book.accept(&forged, ALICE, "call-1", NOW),
        Err(BookError::Unknown)
    );
    assert_eq!(
        book.accept(&t[..t.len() - 1], ALICE, "call-1", NOW),
        Err(BookError::Unknown)
    );
    assert_eq!(
        book.accept("", ALICE, "call-1", NOW),
        Err(BookError::Unknown)
    );
    assert_eq!(
        book.accept(&t, ALICE, "call-2", NOW),
        Err(BookError::Unknown)
    );
    assert_eq!(
        book.accept(&t, "sip:mallory@example.org", "call-1", NOW),
        Err(BookError::WrongCaller)
    );
    // Refusals above did not consume it.
    assert_eq!(
        book.accept(&t, ALICE, "call-1", NOW + 30),
        Err(BookError::Expired)
    );
    // The expired entry is gone.
    assert_eq!(
        book.accept(&t, ALICE, "call-1", NOW + 31),
        Err(BookError::Unknown)
    );
    assert!(book.is_empty());
}

#[test]
fn insert_checks() {
    let mut book = TokenBook::new(4);
    let long = "x".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        book.insert(&long, ALICE, "c", NOW + 1, NOW),
        Err(BookInsertError::BadLength)
    );
    assert_eq!(
        book.insert("", ALICE, "c", NOW + 1, NOW),
        Err(BookInsertError::BadLength)
    );
    assert_eq!(
        book.insert("t", "", "c", NOW + 1, NOW),
        Err(BookInsertError::BadLength)
    );
    assert_eq!(
        book.insert("t", ALICE, &"c".repeat(2000), NOW + 1, NOW),
        Err(BookInsertError::BadLength)
    );
    assert_eq!(
        book.insert("t", ALICE, "c", NOW, NOW),
        Err(BookInsertError::Expired)
    );
    assert!(book.is_empty());
    assert_eq!(format!("{book:?}"), "TokenBook { len: 0, capacity: 4, .. }");
}

#[test]
fn bounded_oldest_evicted_expired_purged() {
    let mut rng = sip_testkit::seeded_rng(3);
    let mut book = TokenBook::new(3);
    let tokens: Vec<String> = (0..5).map(|i| token(&mut rng, &format!("c{i}"))).collect();
    for (i, t) in tokens.iter().enumerate() {
        book.insert(t, ALICE, &format!("c{i}"), NOW + 100, NOW)
            .unwrap();
        assert!(book.len() <= 3);
    }
    assert_eq!(book.len(), 3);
    assert_eq!(
        book.accept(&tokens[0], ALICE, "c0", NOW),
        Err(BookError::Unknown)
    );
    assert_eq!(
        book.accept(&tokens[1], ALICE, "c1", NOW),
        Err(BookError::Unknown)
    );
    assert_eq!(book.accept(&tokens[4], ALICE, "c4", NOW), Ok(()));

    // Expired entries go before live ones when room is needed.
    let mut book = TokenBook::new(3);
    book.insert(&tokens[0], ALICE, "c0", NOW + 100, NOW)
        .unwrap();
    book.insert(&tokens[1], ALICE, "c1", NOW + 5, NOW).unwrap();
    book.insert(&tokens[2], ALICE, "c2", NOW + 100, NOW)
        .unwrap();
    book.insert(&tokens[3], ALICE, "c3", NOW + 100, NOW + 10)
        .unwrap();
    assert_eq!(book.len(), 3);
    assert_eq!(book.accept(&tokens[0], ALICE, "c0", NOW + 10), Ok(()));
    book.purge_expired(NOW + 100);
    assert!(book.is_empty());
}

#[test]
fn several_tokens_for_one_call() {
    let mut rng = sip_testkit::seeded_rng(4);
    let mut book = TokenBook::new(8);
    let a = token(&mut rng, "c");
    let b = token(&mut rng, "c");
    book.insert(&a, ALICE, "c", NOW + 30, NOW).unwrap();
    book.insert(&b, ALICE, "c", NOW + 30, NOW).unwrap();
    assert_eq!(book.accept(&b, ALICE, "c", NOW), Ok(()));
    assert_eq!(book.accept(&a, ALICE, "c", NOW), Ok(()));
    assert_eq!(book.accept(&a, ALICE, "c", NOW), Err(BookError::Used));
}

/// Seeded random inserts and accepts against a map that never forgets (large
/// capacity so no eviction): the book agrees with the model on every answer.
#[test]
fn random_operations_match_a_model() {
    #[derive(Clone)]
    struct Model {
        caller: String,
        expires: u64,
        used: bool,
    }
    let mut rng = sip_testkit::seeded_rng(0xb00c);
    let mut book = TokenBook::new(100_000);
    let mut model: HashMap<(String, String), Model> = HashMap::new();
    let mut issued: Vec<(String, String)> = Vec::new();
    let callers = ["sip:a@x", "sip:b@x", "sip:c@x"];
    let mut now = NOW;
    for _ in 0..3000 {
        now += rng.random_range(0..3);
        if issued.is_empty() || rng.random_bool(0.4) {
            let call_id = format!("call-{}", rng.random_range(0..50));
            let t = token(&mut rng, &call_id);
            let caller = callers[rng.random_range(0..callers.len())];
            let expires = now + rng.random_range(1..20);
            book.insert(&t, caller, &call_id, expires, now).unwrap();
            model.insert(
                (t.clone(), call_id.clone()),
                Model {
                    caller: caller.to_owned(),
                    expires,
                    used: false,
                },
            );
            issued.push((t, call_id));
        } else {
            let (t, mut call_id) = issued[rng.random_range(0..issued.len())].clone();
            if rng.random_bool(0.1) {
                call_id = format!("call-{}", rng.random_range(0..50));
            }
            let caller = callers[rng.random_range(0..callers.len())];
            let expected = match model.get_mut(&(t.clone(), call_id.clone())) {
                None => Err(BookError::Unknown),
                // Expired entries are purged: Expired only when still held.
                Some(m) if now >= m.expires => Err(BookError::Expired),
                Some(m) if m.caller != caller => Err(BookError::WrongCaller),
                Some(m) if m.used => Err(BookError::Used),
                Some(m) => {
                    m.used = true;
                    Ok(())
                }
            };
            let got = book.accept(&t, caller, &call_id, now);
            match (expected, got) {
                // The book may have purged an expired entry before it was asked.
                (Err(BookError::Expired), Err(BookError::Expired | BookError::Unknown)) => {
                    model.remove(&(t, call_id));
                }
                (expected, got) => assert_eq!(got, expected),
            }
        }
    }
}

/// The same token told for two callers (not something the proxy does): each caller
/// gets its own entry.
#[test]
fn same_token_two_callers() {
    let mut rng = sip_testkit::seeded_rng(5);
    let mut book = TokenBook::new(8);
    let t = token(&mut rng, "c");
    book.insert(&t, "sip:x@x", "c", NOW + 30, NOW).unwrap();
    book.insert(&t, ALICE, "c", NOW + 30, NOW).unwrap();
    assert_eq!(book.len(), 2);
    assert_eq!(book.accept(&t, ALICE, "c", NOW), Ok(()));
    assert_eq!(book.accept(&t, ALICE, "c", NOW), Err(BookError::Used));
    assert_eq!(
        book.accept(&t, "sip:y@y", "c", NOW),
        Err(BookError::WrongCaller)
    );
}
