//! Permit token and session key costs: issue, parse + verify, the callee's book,
//! and the per-direction SRTP key derivation. One element per iteration, so
//! criterion's throughput line reads as operations per second.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sip_core::permit::{
    CryptoAttr, Direction, KeyId, KeyRing, ProxyKey, SessionSecret, SrtpSuite, Token, TokenBook,
    TokenClaims,
};

const NOW: u64 = 1_700_000_000;

fn bench_token(c: &mut Criterion) {
    let mut rng = sip_testkit::seeded_rng(1);
    let ring = KeyRing::new(KeyId(1), ProxyKey::generate(&mut rng));
    let claims = TokenClaims::new(
        "sip:alice@example.org",
        "sip:bob@example.org",
        "a84b4c76e66710@pc33.atlanta.example.com",
    );
    let wire = Token::issue(&ring, &claims, NOW, 60, &mut rng).encode();
    let mut group = c.benchmark_group("permit_token");
    group.throughput(Throughput::Elements(1));
    group.bench_function("issue+encode", |b| {
        b.iter(|| Token::issue(&ring, black_box(&claims), NOW, 60, &mut rng).encode());
    });
    group.bench_function("parse+verify", |b| {
        b.iter(|| {
            let token = Token::parse(black_box(&wire)).expect("parses");
            ring.verify(&token, black_box(&claims), NOW + 1)
                .expect("verifies")
        });
    });
    group.bench_function("book insert+accept (4096 held)", |b| {
        let mut book = TokenBook::new(4096);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let call_id = format!("call-{i}");
            book.insert(&wire, "sip:alice@example.org", &call_id, NOW + 60, NOW)
                .expect("stored");
            book.accept(black_box(&wire), "sip:alice@example.org", &call_id, NOW + 1)
                .expect("accepted");
        });
    });
    group.finish();
}

fn bench_session_key(c: &mut Criterion) {
    let mut rng = sip_testkit::seeded_rng(2);
    let secret = SessionSecret::generate(&mut rng);
    let mut group = c.benchmark_group("permit_session_key");
    group.throughput(Throughput::Elements(1));
    group.bench_function("derive both directions + a=crypto", |b| {
        b.iter(|| {
            let suite = SrtpSuite::AesCm128HmacSha1_80;
            let tx = secret
                .srtp_keys(black_box("call-1"), Direction::CallerToCallee, &suite)
                .expect("known suite");
            let rx = secret
                .srtp_keys(black_box("call-1"), Direction::CalleeToCaller, &suite)
                .expect("known suite");
            (CryptoAttr::inline(1, &tx).to_line(), rx)
        });
    });
    group.finish();
}

criterion_group!(benches, bench_token, bench_session_key);
criterion_main!(benches);
