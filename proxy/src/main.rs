//! `permit-proxy`: wiring, configuration and signals only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use permit_proxy::config::{Config, Overrides};
use permit_proxy::engine::Proxy;
use permit_proxy::location::Location;
use permit_proxy::store::SqliteStore;
use sip_net::{NetConfig, Network};

/// Permit registrar and stateful SIP proxy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Listen address, `udp:IP:PORT` or `tcp:IP:PORT` (repeatable).
    #[arg(long, global = true)]
    listen: Vec<String>,
    /// Data directory (embedded SQLite).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// The SIP domain served by the registrar.
    #[arg(long, global = true)]
    domain: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registrar/proxy in the foreground until SIGINT or SIGTERM.
    Run,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PERMIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let overrides = Overrides {
        domain: cli.domain,
        data: cli.data,
        listen: cli.listen,
    };
    let cfg = match Config::load(cli.config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("permit-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run => run(&cfg),
    }
}

fn run(cfg: &Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("permit-proxy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let store = match SqliteStore::open(&cfg.data, cfg.durability) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let location = match Location::open(Box::new(store)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let net = match Network::bind(&cfg.listen, NetConfig::default()).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let seed = u64::from(std::process::id()) ^ unix.rotate_left(17);
        let mut proxy = Proxy::new(cfg.proxy_config(&net.bound), location, Instant::now(), unix, seed);
        let (aors, bindings) = proxy.location_counts();
        for l in &net.bound {
            tracing::info!(transport = ?l.transport, addr = %l.addr, "listening");
        }
        tracing::info!(domain = %cfg.domain, aors, bindings, "permit-proxy ready");
        let stats = net.sender.stats.clone();
        sip_net::run(&mut proxy, net, shutdown()).await;
        tracing::info!(stats = ?proxy.stats, net_dropped = stats.dropped_input.load(std::sync::atomic::Ordering::Relaxed), "permit-proxy stopped");
        ExitCode::SUCCESS
    })
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return ctrl_c.await.unwrap_or(());
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
