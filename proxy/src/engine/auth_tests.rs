//! Engine tests of digest authentication (RFC 3261 §22, RFC 8760). Responses are
//! computed here with md-5/sha2 directly, independently of `sip_core::digest`.

use std::fmt::Write as _;

use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::tests::{Harness, addr, status};
use crate::auth::AuthSettings;
use crate::users::{MemoryUsers, UserRecord};
use sip_core::digest::Algorithm;
use sip_core::message::{HeaderName, Message};

const ALICE: &str = "127.0.0.1:5070";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn h(alg: &str, data: &str) -> String {
    if alg == "SHA-256" {
        hex(&Sha256::digest(data.as_bytes()))
    } else {
        hex(&Md5::digest(data.as_bytes()))
    }
}

pub(super) fn users() -> MemoryUsers {
    let mut u = MemoryUsers::default();
    for (name, pw) in [("alice", "wonderland"), ("bob", "builder")] {
        u.users
            .insert(name.into(), UserRecord::new(name, "localhost", pw));
    }
    u
}

/// `(algorithm, nonce)` of each challenge in a 401/407, in order.
pub(super) fn challenges(resp: &Message, name: HeaderName) -> Vec<(String, String)> {
    resp.headers(name)
        .map(|v| {
            let v = String::from_utf8_lossy(v).into_owned();
            let field = |k: &str| {
                let start = v.find(&format!("{k}="))? + k.len() + 1;
                let value = v[start..].trim_start_matches('"');
                Some(value[..value.find(['"', ',']).unwrap_or(value.len())].to_owned())
            };
            (
                field("algorithm").unwrap_or_else(|| "MD5".into()),
                field("nonce").unwrap(),
            )
        })
        .collect()
}

pub(super) fn credentials(
    user: &str,
    pw: &str,
    alg: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let ha1 = h(alg, &format!("{user}:localhost:{pw}"));
    let ha2 = h(alg, &format!("{method}:{uri}"));
    let cnonce = "0a4f113b";
    let response = h(alg, &format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"localhost\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{response}\", algorithm={alg}, qop=auth, nc={nc:08x}, cnonce=\"{cnonce}\""
    )
}

pub(super) fn register(user: &str, cseq: u32, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKra{cseq}
From: <sip:{user}@localhost>;tag=r1
To: <sip:{user}@localhost>
Call-ID: auth-reg-{user}
CSeq: {cseq} REGISTER
Contact: <sip:{user}@{ALICE}>
{auth}Max-Forwards: 70
Content-Length: 0

"
    )
}

#[test]
fn register_is_challenged_md5_first_then_accepted() {
    let mut h = Harness::with_auth(AuthSettings::default(), users());
    let out = h.recv(ALICE, &register("alice", 1, None));
    assert_eq!(status(&out), vec![401]);
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    assert_eq!(
        ch.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        vec!["MD5", "SHA-256"]
    );
    let creds = credentials(
        "alice",
        "wonderland",
        "MD5",
        &ch[0].1,
        "REGISTER",
        "sip:localhost",
        1,
    );
    let out = h.recv(ALICE, &register("alice", 2, Some(&creds)));
    assert_eq!(status(&out), vec![200]);
    // The same Authorization again (same nonce, same nc) is a replay: no 2xx.
    let out = h.recv(ALICE, &register("alice", 3, Some(&creds)));
    assert_eq!(status(&out), vec![401]);
    // A higher nc with the same nonce is fine.
    let creds = credentials(
        "alice",
        "wonderland",
        "MD5",
        &ch[0].1,
        "REGISTER",
        "sip:localhost",
        2,
    );
    assert_eq!(
        status(&h.recv(ALICE, &register("alice", 4, Some(&creds)))),
        vec![200]
    );
}

#[test]
fn wrong_password_never_2xx_then_403() {
    let mut h = Harness::with_auth(AuthSettings::default(), users());
    let out = h.recv(ALICE, &register("alice", 1, None));
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    let bad = credentials(
        "alice",
        "guess",
        "SHA-256",
        &ch[1].1,
        "REGISTER",
        "sip:localhost",
        1,
    );
    assert_eq!(
        status(&h.recv(ALICE, &register("alice", 2, Some(&bad)))),
        vec![401]
    );
    let bad = credentials(
        "alice",
        "guess2",
        "SHA-256",
        &ch[1].1,
        "REGISTER",
        "sip:localhost",
        2,
    );
    assert_eq!(
        status(&h.recv(ALICE, &register("alice", 3, Some(&bad)))),
        vec![403]
    );
    // An unknown user is answered exactly like a wrong password.
    let mut h = Harness::with_auth(AuthSettings::default(), users());
    let out = h.recv(ALICE, &register("mallory", 1, None));
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    let unknown = credentials(
        "mallory",
        "x",
        "MD5",
        &ch[0].1,
        "REGISTER",
        "sip:localhost",
        1,
    );
    assert_eq!(
        status(&h.recv(ALICE, &register("mallory", 2, Some(&unknown)))),
        vec![401]
    );
}

#[test]
fn registering_someone_elses_aor_is_403() {
    let mut h = Harness::with_auth(AuthSettings::default(), users());
    let out = h.recv(ALICE, &register("bob", 1, None));
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    let alices = credentials(
        "alice",
        "wonderland",
        "MD5",
        &ch[0].1,
        "REGISTER",
        "sip:localhost",
        1,
    );
    assert_eq!(
        status(&h.recv(ALICE, &register("bob", 2, Some(&alices)))),
        vec![403]
    );
}

#[test]
fn sha256_only_mode_refuses_md5() {
    let settings = AuthSettings {
        algorithms: vec![Algorithm::Sha256],
        ..AuthSettings::default()
    };
    let mut h = Harness::with_auth(settings, users());
    let out = h.recv(ALICE, &register("alice", 1, None));
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].0, "SHA-256");
    let md5 = credentials(
        "alice",
        "wonderland",
        "MD5",
        &ch[0].1,
        "REGISTER",
        "sip:localhost",
        1,
    );
    assert_eq!(
        status(&h.recv(ALICE, &register("alice", 2, Some(&md5)))),
        vec![401]
    );
    let sha = credentials(
        "alice",
        "wonderland",
        "SHA-256",
        &ch[0].1,
        "REGISTER",
        "sip:localhost",
        2,
    );
    assert_eq!(
        status(&h.recv(ALICE, &register("alice", 3, Some(&sha)))),
        vec![200]
    );
}

#[test]
fn invite_is_challenged_before_any_lookup_and_credentials_are_consumed() {
    let mut h = Harness::with_auth(AuthSettings::default(), users());
    // Bob registers (authenticated) so he can be called.
    let out = h.recv(
        "127.0.0.1:5080",
        &register("bob", 1, None).replace(ALICE, "127.0.0.1:5080"),
    );
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    let creds = credentials(
        "bob",
        "builder",
        "MD5",
        &ch[0].1,
        "REGISTER",
        "sip:localhost",
        1,
    );
    let out = h.recv(
        "127.0.0.1:5080",
        &register("bob", 2, Some(&creds)).replace(ALICE, "127.0.0.1:5080"),
    );
    assert_eq!(status(&out), vec![200]);

    let invite = |to: &str, branch: &str, auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Proxy-Authorization: {a}\n"))
            .unwrap_or_default();
        format!(
            "INVITE sip:{to}@localhost SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch={branch}
From: <sip:alice@localhost>;tag=a1
To: <sip:{to}@localhost>
Call-ID: call-auth-{to}
CSeq: 1 INVITE
{auth}Max-Forwards: 70
Content-Length: 0

"
        )
    };
    // Known and unknown callees get the same 407: nothing is looked up before auth.
    let out_known = h.recv(ALICE, &invite("bob", "z9hG4bKi1", None));
    let out_unknown = h.recv(ALICE, &invite("nobody", "z9hG4bKi2", None));
    assert_eq!(status(&out_known), vec![100, 407]);
    assert_eq!(status(&out_unknown), vec![100, 407]);
    let ch = challenges(&out_known[1].1, HeaderName::ProxyAuthenticate);
    let creds = credentials(
        "alice",
        "wonderland",
        "MD5",
        &ch[0].1,
        "INVITE",
        "sip:bob@localhost",
        1,
    );
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKi3", Some(&creds)));
    let fwd = out
        .iter()
        .find(|(d, m)| *d == addr("127.0.0.1:5080") && m.is_request())
        .expect("INVITE forwarded");
    assert_eq!(
        fwd.1.header(HeaderName::ProxyAuthorization),
        None,
        "credentials consumed"
    );
}

#[test]
fn malformed_credentials_never_pass() {
    let mut h = Harness::with_auth(AuthSettings::default(), users());
    for (i, junk) in [
        "Digest",
        "Digest username=",
        "Basic YWxpY2U6eA==",
        "Digest realm=\"localhost\", nonce=\"x\"",
        &"A".repeat(4000),
    ]
    .iter()
    .enumerate()
    {
        let cseq = u32::try_from(i).unwrap() + 1;
        let out = h.recv(ALICE, &register("alice", cseq, Some(junk)));
        let st = status(&out);
        assert_eq!(st.len(), 1, "{junk}");
        assert!(matches!(st[0], 400 | 401 | 403 | 503), "{junk}: {st:?}");
    }
}
