//! `permit-ua`: wiring and CLI only.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use sip_core::message::Message;
use sip_core::transaction::{ClientNonInvite, ResponseAction, TimerConfig, TransactionEvent};
use sip_core::transport::Transport;

/// Permit SIP user agent.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send OPTIONS over UDP and print the final status; exit 0 on 2xx.
    Options {
        /// Server address, e.g. 127.0.0.1:5060.
        server: SocketAddr,
        /// Request-URI (default `sip:SERVER`).
        #[arg(long)]
        uri: Option<String>,
    },
}

fn main() -> ExitCode {
    let Command::Options { server, uri } = Cli::parse().command;
    let uri = uri.unwrap_or_else(|| format!("sip:{server}"));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("permit-ua: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(options(server, &uri)) {
        Ok(status) if (200..300).contains(&status) => {
            println!("{status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("permit-ua: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs one non-INVITE client transaction (RFC 3261 §17.1.2) over UDP.
async fn options(server: SocketAddr, uri: &str) -> Result<u16, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| "bind")?;
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let mut rng = rand::rng();
    let req = permit_ua::options_request(uri, local, Transport::Udp, &mut rng);
    let mut tx = ClientNonInvite::new(Instant::now(), req, false, &TimerConfig::default());
    let mut buf = vec![0u8; 65_535];
    let mut final_status = None;
    loop {
        while let Some(d) = tx.poll_transmit() {
            sock.send(&d).await.map_err(|e| e.to_string())?;
        }
        match tx.poll_event() {
            Some(TransactionEvent::Timeout(_)) => return Err("no response (Timer F)".into()),
            Some(TransactionEvent::TransportError) => return Err("transport error".into()),
            Some(TransactionEvent::Terminated) => {
                return final_status.ok_or_else(|| "terminated".into());
            }
            None => {}
        }
        if let Some(s) = final_status {
            return Ok(s);
        }
        let wait = tx.poll_timeout().map_or(Duration::from_secs(1), |t| {
            t.saturating_duration_since(Instant::now())
        });
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let Ok(msg) = Message::parse(Bytes::copy_from_slice(&buf[..n])) else {
                    continue;
                };
                let Some(status) = msg.status() else { continue };
                if let Ok(ResponseAction::PassUp) = tx.handle_response(Instant::now(), status)
                    && status >= 200
                {
                    final_status = Some(status);
                }
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => tx.handle_timeout(Instant::now()),
        }
    }
}
