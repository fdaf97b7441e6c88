//! `permit-ua`: wiring and CLI only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use permit_ua::PermitChange;
use permit_ua::commands::{self, AnswerOptions};
use permit_ua::inbox::fetch;
use permit_ua::inbox::seal::{self, Identity};
use permit_ua::media::codec::{Codec, OPUS_PT};
use permit_ua::outcome::exit;
use permit_ua::send;
use permit_ua::settings::{FileSettings, Overrides, Settings};
use permit_ua::shell::{self, Driver, Output};
use sip_core::transport::Transport;

/// Permit's SIP user agent: register, answer, call, and manage who may call you.
///
/// Exit codes: 0 connected / done, 1 other failure, 2 usage or configuration error,
/// 10 refused (403), 11 busy (486), 12 unavailable (480/408/404), 13 no answer from
/// the proxy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// TOML settings file; flags override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The proxy: udp|tcp|tls:HOST:PORT.
    #[arg(long, global = true)]
    proxy: Option<String>,
    /// Your user name.
    #[arg(long, global = true)]
    user: Option<String>,
    /// Your password (or the environment variable PERMIT_UA_PASSWORD).
    #[arg(long, global = true, allow_hyphen_values = true)]
    password: Option<String>,
    /// Your domain (default: the proxy's host).
    #[arg(long, global = true)]
    domain: Option<String>,
    /// Where to listen for SIP: udp|tcp|tls:IP:PORT (default: an ephemeral port; with
    /// a tls: proxy, tls: adds a listener that callers in direct mode connect to).
    #[arg(long, global = true)]
    listen: Option<String>,
    /// PEM file of the certificates trusted for TLS: the proxy's CA, and the
    /// certificates of callees called in direct mode.
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// Certificate of our TLS listener (generated, self-signed, if missing).
    #[arg(long, global = true)]
    tls_cert: Option<PathBuf>,
    /// Private key of our TLS listener.
    #[arg(long, global = true)]
    tls_key: Option<PathBuf>,
    /// One JSON object per line on stdout, for scripts.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Register and stay registered until SIGINT or SIGTERM (calls get 486).
    Register,
    /// Register and answer calls until SIGINT or SIGTERM.
    Answer {
        /// Calls at once; beyond, the proxy's load query and INVITEs get 486.
        #[arg(long, default_value_t = 1)]
        max_calls: usize,
        /// Write each call's received audio to DIR/call-<id>.wav.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Send this WAV (16-bit PCM, mono, 8, 16 or 48 kHz) in every call.
        #[arg(long)]
        play: Option<PathBuf>,
        /// Accept any INVITE, like a stock phone (default: only INVITEs with a permit
        /// token the proxy told us; others get 403).
        #[arg(long)]
        no_permit: bool,
        #[command(flatten)]
        inbox: InboxArgs,
    },
    /// Send a text or a file to AOR: straight to its UA when it is free, stored by
    /// the proxy when it is busy or offline; --secret seals it for the callee.
    Send(SendArgs),
    /// Items the proxy stores for you: list them, or fetch them into --inbox.
    Inbox {
        #[command(subcommand)]
        action: Option<InboxAction>,
        #[command(flatten)]
        inbox: InboxArgs,
    },
    /// Print your public key (creating your key pair first): senders of secret
    /// data seal it for this key (`send --secret --to-key`).
    Key {
        #[command(flatten)]
        inbox: InboxArgs,
    },
    /// Call AOR (`bob`, `bob@example.org` or a sip: URI).
    Call {
        aor: String,
        /// Send this WAV (16-bit PCM, mono, 8, 16 or 48 kHz).
        #[arg(long)]
        play: Option<PathBuf>,
        /// Write the received audio to DIR/call-<id>.wav (16-bit mono 8 kHz).
        #[arg(long)]
        record: Option<PathBuf>,
        /// Offer only this audio codec (default: opus, then pcmu).
        #[arg(long, value_parser = ["opus", "pcmu"])]
        codec: Option<String>,
        /// Hang up after S seconds (default: when the other side does, or Ctrl-C).
        #[arg(long)]
        duration: Option<f64>,
        /// Direct mode: ask the proxy for the callee's address (302 with a permit
        /// token) and send the INVITE straight to the callee.
        #[arg(long)]
        direct: bool,
        /// Offer DTLS-SRTP (RFC 5763: a=fingerprint, a=setup:actpass, no a=crypto),
        /// for stock phones that key media on the media path; the call fails (488)
        /// if the answer does not take it.
        #[arg(long, conflicts_with_all = ["direct", "video"])]
        dtls: bool,
        /// Send this video (H.264 Annex B .h264/.264, or MPEG-2 .m2v) with the I-frame
        /// split: I-packets SRTP through the proxy's media relay, the others direct.
        #[arg(long)]
        video: Option<PathBuf>,
        /// With --video: send as fast as the path allows (bounded), not at the frame rate.
        #[arg(long, requires = "video")]
        fast: bool,
        /// With --video: the direct path as plain RTP (only the I-packets encrypted).
        #[arg(long, requires = "video")]
        selective: bool,
    },
    /// Read or change your permit list: who may call you.
    Permit {
        #[command(subcommand)]
        action: PermitAction,
        /// Change only if the list's tag is still this one (else 412).
        #[arg(long, global = true)]
        if_match: Option<String>,
    },
}

#[derive(Args)]
struct InboxArgs {
    /// Where fetched items are written (default: ~/.local/share/permit-ua/USER@DOMAIN/inbox).
    #[arg(long, global = true)]
    inbox: Option<PathBuf>,
    /// Your X25519 key pair, which opens secret items (default: next to the inbox,
    /// x25519.key).
    #[arg(long, global = true)]
    identity: Option<PathBuf>,
}

#[derive(Args)]
struct SendArgs {
    aor: String,
    /// The text to send.
    #[arg(
        long,
        conflicts_with = "file",
        required_unless_present = "file",
        allow_hyphen_values = true
    )]
    text: Option<String>,
    /// The file to send.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Seal the data for the callee (end to end; through the proxy only, never direct).
    #[arg(long, requires = "to_key")]
    secret: bool,
    /// The callee's public key (`permit-ua key` prints it), or a file holding it.
    /// Keys are base64url, so one in 64 starts with `-`: taken as a value here.
    #[arg(long, allow_hyphen_values = true)]
    to_key: Option<String>,
    /// Through the proxy even when the callee is free (no direct mode).
    #[arg(long)]
    via_proxy: bool,
}

#[derive(Subcommand)]
enum InboxAction {
    /// List the waiting items (the default).
    List,
    /// Fetch waiting items (all, or the given ids), check, open and save them.
    Fetch { items: Vec<String> },
}

#[derive(Subcommand)]
enum PermitAction {
    /// Show the list and its tag.
    List,
    /// Add AORs (`alice@example.org`, or `*@example.org` for a whole domain).
    Add { entries: Vec<String> },
    /// Remove AORs.
    Remove { entries: Vec<String> },
    /// Replace the whole list.
    Set { entries: Vec<String> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PERMIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let g = &cli.global;
    let file = match g.config.as_deref().map(FileSettings::load).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return usage(&e.to_string()),
    };
    let flags = Overrides {
        proxy: g.proxy.clone(),
        user: g.user.clone(),
        password: g.password.clone(),
        domain: g.domain.clone(),
        listen: g.listen.clone(),
        tls_ca: g.tls_ca.clone(),
        tls_cert: g.tls_cert.clone(),
        tls_key: g.tls_key.clone(),
    };
    let settings = match Settings::merge(file, flags, std::env::var("PERMIT_UA_PASSWORD").ok()) {
        Ok(s) => s,
        Err(e) => return usage(&e.to_string()),
    };
    let out = Output { json: g.json };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("permit-ua: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    ExitCode::from(rt.block_on(run(cli.command, settings, out)))
}

fn usage(why: &str) -> ExitCode {
    eprintln!("permit-ua: {why}");
    ExitCode::from(exit::USAGE)
}

#[allow(clippy::too_many_lines)] // the CLI's dispatch: one arm per command
async fn run(command: Command, settings: Settings, out: Output) -> u8 {
    if let Command::Key { inbox } = &command {
        return run_key(&settings, inbox, out);
    }
    let max_calls = match &command {
        Command::Answer { max_calls, .. } => *max_calls,
        Command::Register => 0,
        _ => 1,
    };
    let play = match &command {
        Command::Answer { play, .. } | Command::Call { play, .. } => play.as_deref(),
        _ => None,
    };
    let play = match shell::load_play(play) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("permit-ua: {e}");
            return exit::USAGE;
        }
    };
    let permit = !matches!(
        &command,
        Command::Answer {
            no_permit: true,
            ..
        }
    );
    let mut driver = match Driver::start(&settings, max_calls, permit).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("permit-ua: {e}");
            return exit::FAILED;
        }
    };
    if let Some(cert) = &driver.generated_cert {
        out.say(
            "certificate",
            &format!(
                "TLS listener certificate: {} (self-signed; callers in direct mode must trust it)",
                cert.display()
            ),
            serde_json::json!({ "certificate": cert.display().to_string() }),
        );
    }
    // Over TLS the flow's address is learnt first (we have no listener to name).
    if settings.proxy.transport == Transport::Tls && !driver.probe().await {
        out.say(
            "failed",
            "no answer from the proxy",
            serde_json::json!({ "exit_code": exit::NO_ANSWER_FROM_PROXY }),
        );
        return exit::NO_ANSWER_FROM_PROXY;
    }
    match command {
        Command::Register => {
            let opts = AnswerOptions {
                answer: false,
                play: None,
                record: None,
                inbox: None,
            };
            commands::run_registered(driver, out, opts).await
        }
        Command::Answer { record, inbox, .. } => {
            let opts = AnswerOptions {
                answer: true,
                play,
                record,
                inbox: Some(inbox_context(&settings, &inbox)),
            };
            commands::run_registered(driver, out, opts).await
        }
        Command::Call {
            aor,
            record,
            duration,
            direct,
            video,
            fast,
            selective,
            codec,
            dtls,
            ..
        } => {
            driver.ua.set_offer_dtls(dtls);
            match codec.as_deref() {
                Some("pcmu") => driver.ua.set_audio_offer(vec![Codec::Pcmu]),
                Some(_) => driver.ua.set_audio_offer(vec![Codec::Opus { pt: OPUS_PT }]),
                None => {}
            }
            let duration = match duration {
                Some(s) if !(s.is_finite() && s > 0.0) => {
                    eprintln!("permit-ua: --duration must be a positive number of seconds");
                    return exit::USAGE;
                }
                s => s.map(Duration::from_secs_f64),
            };
            if let Some(path) = video {
                return permit_ua::video::command::run(
                    driver, out, &aor, play, duration, direct, &path, fast, selective,
                )
                .await;
            }
            commands::run_call(driver, out, &aor, play, record, duration, direct).await
        }
        Command::Permit { action, if_match } => {
            let change = match action {
                PermitAction::List => PermitChange::Read,
                PermitAction::Add { entries } => PermitChange::Add(entries),
                PermitAction::Remove { entries } => PermitChange::Remove(entries),
                PermitAction::Set { entries } => PermitChange::Replace(entries),
            };
            commands::run_permit(driver, out, &change, if_match.as_deref()).await
        }
        Command::Send(args) => run_send(driver, out, args).await,
        Command::Inbox { action, inbox } => {
            let ctx = inbox_context(&settings, &inbox);
            match action {
                None | Some(InboxAction::List) => fetch::run_list(driver, out).await,
                Some(InboxAction::Fetch { items }) => {
                    fetch::run_fetch(driver, out, &ctx, &items).await
                }
            }
        }
        Command::Key { .. } => exit::USAGE,
    }
}

fn inbox_context(settings: &Settings, args: &InboxArgs) -> fetch::InboxContext {
    let home = fetch::default_home(&settings.user, &settings.domain);
    fetch::InboxContext {
        dir: args.inbox.clone().unwrap_or_else(|| home.join("inbox")),
        identity: args
            .identity
            .clone()
            .unwrap_or_else(|| home.join("x25519.key")),
    }
}

/// `permit-ua key`: needs no proxy.
fn run_key(settings: &Settings, args: &InboxArgs, out: Output) -> u8 {
    let ctx = inbox_context(settings, args);
    match Identity::load_or_create(&ctx.identity, rand::random()) {
        Ok(id) => {
            out.say(
                "key",
                &id.public_text(),
                serde_json::json!({ "public_key": id.public_text(),
                                    "identity": ctx.identity.display().to_string() }),
            );
            exit::CONNECTED
        }
        Err(e) => {
            eprintln!("permit-ua: {e}");
            exit::FAILED
        }
    }
}

async fn run_send(driver: Driver, out: Output, args: SendArgs) -> u8 {
    let payload = match (&args.text, &args.file) {
        (Some(t), _) => send::Payload::text(t),
        (None, Some(f)) => match send::Payload::file(f) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("permit-ua: {}: {e}", f.display());
                return exit::USAGE;
            }
        },
        (None, None) => return exit::USAGE,
    };
    let secret_for = match (args.secret, &args.to_key) {
        (true, Some(k)) => {
            let text = std::fs::read_to_string(k).unwrap_or_else(|_| k.clone());
            match seal::parse_public(&text) {
                Ok(key) => Some(key),
                Err(e) => {
                    eprintln!("permit-ua: --to-key: {e}");
                    return exit::USAGE;
                }
            }
        }
        _ => None,
    };
    let opts = send::SendOptions {
        secret_for,
        via_proxy: args.via_proxy,
        ephemeral: rand::random(),
    };
    send::run_send(driver, out, &args.aor, payload, opts).await
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command};
    use clap::Parser;

    /// Values that start with `-` are values, not flags: a base64url public key
    /// does one time in 64, and a password or a text may.
    #[test]
    fn values_that_start_with_a_dash_parse() {
        let key = "-iXb1kTqN0p3J5cQm2Yd7s8uVwA4eR6tFgHjKlZxC9o";
        let cli = Cli::try_parse_from([
            "permit-ua",
            "--password",
            "-pw",
            "send",
            "bob",
            "--text",
            "-- a note",
            "--secret",
            "--to-key",
            key,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.global.password.as_deref(), Some("-pw"));
        let Command::Send(args) = cli.command else {
            panic!("not send")
        };
        assert_eq!(args.to_key.as_deref(), Some(key));
        assert_eq!(args.text.as_deref(), Some("-- a note"));
        assert!(args.secret);
    }
}
