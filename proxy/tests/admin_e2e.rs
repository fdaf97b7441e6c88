//! End-to-end tests of the admin HTTP API and `/metrics` (docs/openapi.yaml): the
//! real `permit-proxy` with `[admin]` enabled on an ephemeral loopback port, driven
//! with `curl`, and SIPp for the traffic the counters must see.
//!
//! `curl` and SIPp must be on `PATH`. Without them a test prints a note and passes,
//! unless the environment variable `CI` is set: then it fails. Logs and SIPp files
//! stay in `target/tmp/admin-e2e/<test>/`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::proxy::{Bed, ProxyOptions};
use common::sipp::{RunningSipp, Sipp, sipp_available};
use common::{DOMAIN, HOST, Transport, free_port, program_available, proxy_cli, wait_until};

const TOKEN: &str = "e2e-admin-token-0123456789";
/// Calls SIPp makes while the counters are watched.
const CALLS: u64 = 20;

fn curl_available() -> bool {
    program_available("curl", "--version", " (apt-get install curl)", "admin API")
}

/// A proxy whose admin API listens on a fresh loopback port.
fn start(test: &str) -> (Bed, Api) {
    let port = free_port();
    let toml =
        format!("[admin]\nenabled = true\nlisten = \"{HOST}:{port}\"\ntoken = \"{TOKEN}\"\n");
    let bed = Bed::configured(test, &ProxyOptions::default(), Some(&toml));
    let api = Api {
        base: format!("http://{HOST}:{port}"),
    };
    wait_until(Duration::from_secs(10), "the admin API is ready", || {
        api.call("GET", "/readyz", None, None).0 == 200
    });
    (bed, api)
}

struct Api {
    base: String,
}

impl Api {
    /// `curl` one request; `(status, body)`. `token` goes in `Authorization: Bearer`.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        json: Option<&str>,
    ) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(body) = json {
            c.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        let out = c
            .arg(format!("{}{path}", self.base))
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    fn ok(&self, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
        let (status, body) = self.call(method, path, Some(TOKEN), json);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {body}"
        );
        (status, body)
    }

    /// One scrape of `/metrics`.
    fn metrics(&self) -> Metrics {
        Metrics(self.ok("GET", "/metrics", None).1)
    }
}

/// A `/metrics` text.
struct Metrics(String);

impl Metrics {
    /// The value of the sample `series` (`name` or `name{labels}`), 0 when absent.
    fn get(&self, series: &str) -> u64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok())?
            })
            .unwrap_or(0)
    }
}

fn user_names(api: &Api) -> String {
    api.ok("GET", "/users?limit=1000", None).1
}

/// `curl` manages users and permits end to end; the CLI on the same data directory
/// sees the same state; a wrong or missing token gets 401 and changes nothing.
#[test]
fn curl_manages_users_and_permits_and_a_wrong_token_changes_nothing() {
    if !curl_available() {
        return;
    }
    let (bed, api) = start("users_permits");
    let data = bed.dir.join("data");
    assert_eq!(api.call("GET", "/healthz", None, None).0, 200);

    let (status, body) = api.ok(
        "POST",
        "/users",
        Some(r#"{"name":"alice","password":"s3cret"}"#),
    );
    assert_eq!(status, 201);
    assert!(body.contains(&format!("alice@{DOMAIN}")), "{body}");
    api.ok("POST", "/users", Some(r#"{"name":"bob","password":"pw"}"#));
    let (status, _) = api.call(
        "POST",
        "/users",
        Some(TOKEN),
        Some(r#"{"name":"bob","password":"x"}"#),
    );
    assert_eq!(status, 409, "a second bob");
    let listed = user_names(&api);
    assert!(
        listed.contains(r#""name":"alice""#) && listed.contains(r#""total":2"#),
        "{listed}"
    );
    let page = api.ok("GET", "/users?offset=1&limit=1", None).1;
    assert!(
        page.contains(r#""name":"bob""#) && page.contains(r#""next":null"#),
        "{page}"
    );
    // The CLI reads the same store.
    assert_eq!(
        proxy_cli(&data, &["user", "list"]),
        format!("alice@{DOMAIN}\nbob@{DOMAIN}\n")
    );

    let callee = format!("/permits/alice@{DOMAIN}");
    let caller = format!(r#"{{"caller":"bob@{DOMAIN}"}}"#);
    assert_eq!(api.ok("POST", &callee, Some(&caller)).0, 201);
    let list = api.ok("GET", &callee, None).1;
    assert!(
        list.contains(&format!(r#""entries":["bob@{DOMAIN}"]"#)),
        "{list}"
    );
    let cli = proxy_cli(&data, &["permit", "list", &format!("alice@{DOMAIN}")]);
    assert!(cli.ends_with(&format!("\nbob@{DOMAIN}\n")), "{cli}");
    let all = api.ok("GET", "/permits", None).1;
    assert!(all.contains(r#""total":1"#), "{all}");

    // Wrong, missing and malformed tokens: 401 for every kind of request.
    let users_before = user_names(&api);
    let list_before = api.ok("GET", &callee, None).1;
    let attempts: [(&str, String, Option<&str>); 5] = [
        (
            "POST",
            "/users".into(),
            Some(r#"{"name":"mallory","password":"x"}"#),
        ),
        ("DELETE", "/users/alice".into(), None),
        (
            "PUT",
            "/users/alice/password".into(),
            Some(r#"{"password":"owned"}"#),
        ),
        ("DELETE", format!("{callee}/bob@{DOMAIN}"), None),
        (
            "POST",
            callee.clone(),
            Some(r#"{"caller":"*@evil.example"}"#),
        ),
    ];
    for token in [Some("e2e-admin-token-0123456789x"), Some("wrong"), None] {
        for (method, path, body) in &attempts {
            let (status, answer) = api.call(method, path, token, *body);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
        }
    }
    assert_eq!(user_names(&api), users_before, "users unchanged");
    assert_eq!(
        api.ok("GET", &callee, None).1,
        list_before,
        "list and etag unchanged"
    );

    let removed = api.ok("DELETE", &format!("{callee}/bob@{DOMAIN}"), None).1;
    assert!(removed.contains(r#""changed":true"#), "{removed}");
    let empty = api.ok("GET", &callee, None).1;
    assert!(empty.contains(r#""entries":[]"#), "{empty}");
    assert_eq!(api.ok("DELETE", "/users/alice", None).0, 204);
    assert_eq!(api.call("DELETE", "/users/alice", Some(TOKEN), None).0, 404);
    assert_eq!(
        proxy_cli(&data, &["user", "list"]),
        format!("bob@{DOMAIN}\n")
    );
    bed.proxy.stop_gracefully("TERM");
}

/// SIPp UAS registered through the proxy, called by a SIPp UAC; returns the UAS.
fn register(bed: &Bed, user: &str, calls: u64) -> RunningSipp {
    let dir: &Path = &bed.dir;
    let uas = Sipp::new(dir, "uas", "uas.xml", Transport::Udp, None)
        .arg(&["-m", &calls.to_string()])
        .timeout(60)
        .spawn()
        .wait_listening();
    Sipp::new(
        dir,
        &format!("register-{user}"),
        "register.xml",
        Transport::Udp,
        Some(bed.proxy.ports.udp),
    )
    .arg(&["-s", user, "-m", "1", "-auth_uri", DOMAIN])
    .key("contact_host", HOST)
    .key("contact_port", &uas.sipp.port.to_string())
    .key("contact_transport", "udp")
    .key("expires", "3600")
    .run_ok(1);
    uas
}

/// `/metrics` scraped before and after SIPp traffic: the counters move by at least
/// what SIPp sent; registrations are listed and one is expired through the API.
#[test]
fn metrics_move_with_sipp_traffic_and_registrations_are_managed() {
    if !curl_available() || !sipp_available() {
        return;
    }
    let (bed, api) = start("metrics");
    let before = api.metrics();
    assert_eq!(before.get("permit_engine_up"), 1, "{}", before.0);
    assert_eq!(before.get("permit_registered_bindings"), 0);

    let uas = register(&bed, "carol", CALLS);
    let uas_port = uas.sipp.port;
    Sipp::new(
        &bed.dir,
        "uac",
        "uac.xml",
        Transport::Udp,
        Some(bed.proxy.ports.udp),
    )
    .arg(&[
        "-s",
        "carol",
        "-m",
        &CALLS.to_string(),
        "-r",
        "20",
        "-l",
        "20",
    ])
    .arg(&["-d", "100", "-pause_msg_ign"])
    .timeout(60)
    .run_ok(CALLS);
    uas.finish_ok(CALLS);

    let after = api.metrics();
    let moved = |series: &str| after.get(series).saturating_sub(before.get(series));
    assert!(moved("permit_sip_registrations_total") >= 1, "{}", after.0);
    assert!(moved("permit_sip_requests_total{method=\"REGISTER\"}") >= 1);
    assert!(moved("permit_sip_requests_total{method=\"INVITE\"}") >= CALLS);
    assert!(moved("permit_sip_requests_total{method=\"BYE\"}") >= CALLS);
    assert!(moved("permit_sip_responses_total{code=\"200\"}") >= 2 * CALLS);
    assert!(moved("permit_sip_sessions_established_total") >= CALLS);
    assert!(moved("permit_sip_forwarded_requests_total") >= 2 * CALLS);
    assert_eq!(after.get("permit_registered_bindings"), 1);
    assert_eq!(after.get("permit_registered_aors"), 1);

    // The engine's registrations: listed, then one expired by the operator.
    let aor = format!("/registrations/carol@{DOMAIN}");
    let listed = api.ok("GET", &aor, None).1;
    let contact = format!("sip:carol@{HOST}:{uas_port};transport=udp");
    assert!(listed.contains(&contact), "{listed}");
    let (status, _) = api.call(
        "POST",
        &format!("{aor}/expire"),
        Some("bad-token"),
        Some("{}"),
    );
    assert_eq!(status, 401);
    let expire = format!(r#"{{"contact":"{contact}"}}"#);
    assert_eq!(
        api.ok("POST", &format!("{aor}/expire"), Some(&expire)).0,
        204
    );
    assert_eq!(api.call("GET", &aor, Some(TOKEN), None).0, 404);
    wait_until(Duration::from_secs(5), "the binding gauge drops", || {
        api.metrics().get("permit_registered_bindings") == 0
    });
    bed.proxy.stop_gracefully("TERM");
}
