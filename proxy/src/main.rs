//! `permit-proxy`: wiring, configuration and signals only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use clap::{Parser, Subcommand};
use permit_proxy::auth::{Auth, UserDirectory};
use permit_proxy::commit::{DepositWorker, GroupCommit, GroupLimits, PermitWorker};
use permit_proxy::config::{Backend, Config, DEFAULT_DOMAIN, Overrides};
use permit_proxy::engine::Proxy;
use permit_proxy::location::Location;
use permit_proxy::ops::{Ops, OpsError, Page};
use permit_proxy::permits::{Aor, Permits};
use permit_proxy::pg;
use permit_proxy::relay::shell::SharedRelay;
use permit_proxy::store::{LocationStore, SqliteStore};
use permit_proxy::users::{DomainError, SqliteUsers};
use rand::RngCore;
use sip_net::{NetConfig, Network};

/// mimalloc, not glibc's malloc: 16 % less CPU per REGISTER, 9 % per call; 4 KiB pages
/// only (`no_thp`): with transparent huge pages a large table's growth faulted in 2 MiB
/// pages for long enough to stall the engine (docs/architecture.md, "Allocator").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// The SIP domain served by the registrar (also the digest realm).
    #[arg(long, global = true)]
    domain: Option<String>,
    /// Digest algorithms offered, in order: `md5,sha-256` (default) or `sha-256`.
    #[arg(long, global = true)]
    digest_algorithms: Option<String>,
    /// Accept requests without authentication (labs and load tests only).
    #[arg(long, global = true)]
    no_auth: bool,
    /// PEM certificate chain for `tls:` listeners.
    #[arg(long, global = true)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for `tls:` listeners.
    #[arg(long, global = true)]
    tls_key: Option<PathBuf>,
    /// Let every authenticated caller reach every callee (no permit lists).
    #[arg(long, global = true)]
    no_gate: bool,
    /// Engine shards, each a thread (`0`: one per core; default 1, `[proxy] shards`).
    #[arg(long, global = true)]
    shards: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registrar/proxy in the foreground until SIGINT or SIGTERM.
    Run,
    /// Manage the users who may authenticate (digest HA1 hashes; no passwords stored).
    #[command(subcommand)]
    User(UserCommand),
    /// TLS certificates for labs.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Manage permitted-terminal lists (who may reach a callee).
    #[command(subcommand)]
    Permit(PermitCommand),
    /// The configuration file: its reference, or a check of one.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every key of the configuration file with its default and meaning
    /// (Markdown; the reference in docs/operations.md).
    Reference,
    /// Print a configuration file with every key, its meaning and its default (keys
    /// without a default commented out, with an example).
    Example,
    /// Load the file given with --config (and the flags) as `run` would, and report
    /// the first error (exit code 2) or `configuration ok`.
    Check,
}

#[derive(Subcommand)]
enum PermitCommand {
    /// Allow CALLER (`alice@example.org` or `*@example.org`) to reach CALLEE.
    Add { callee: String, caller: String },
    /// Remove CALLER from CALLEE's list.
    Remove { callee: String, caller: String },
    /// Print CALLEE's list and its entity-tag.
    List { callee: String },
    /// Add every `callee,caller` line of a CSV file (all or nothing).
    Import { file: PathBuf },
    /// Print every list as `callee,caller` lines (the import format).
    Export,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed `cert.pem` and `key.pem` (lab use: phones must be told to
    /// trust it). Names default to localhost, 127.0.0.1 and ::1.
    SelfSigned {
        #[arg(long)]
        out: PathBuf,
        /// DNS name or IP address to put in the certificate (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (the password is read from stdin when --password is not given).
    Add {
        name: String,
        #[arg(long, allow_hyphen_values = true)]
        password: Option<String>,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        #[arg(long, allow_hyphen_values = true)]
        password: Option<String>,
    },
    /// Delete a user.
    Del { name: String },
    /// List users with their realm.
    List,
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
    match cli.command {
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", permit_proxy::config::reference_markdown());
            return ExitCode::SUCCESS;
        }
        Command::Config(ConfigCommand::Example) => {
            print!("{}", permit_proxy::config::example_file());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let overrides = Overrides {
        domain: cli.domain,
        data: cli.data,
        listen: cli.listen,
        digest_algorithms: cli.digest_algorithms,
        no_auth: cli.no_auth,
        tls_cert: cli.tls_cert,
        tls_key: cli.tls_key,
        no_gate: cli.no_gate,
        shards: cli.shards,
    };
    let mut cfg = match Config::load(cli.config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("permit-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(
        cli.command,
        Command::Run | Command::User(_) | Command::Permit(_)
    ) && let Err(code) = settle_domain(&mut cfg)
    {
        return code;
    }
    match cli.command {
        Command::Run => run(&cfg),
        Command::Config(_) => {
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Command::Cert(CertCommand::SelfSigned { out, names }) => {
            match sip_net::self_signed(&out, &names) {
                Ok((cert, key)) => {
                    println!("certificate {}\nkey {}", cert.display(), key.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("permit-proxy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Permit(cmd) => match permit(&cfg, cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::User(cmd) => match user(&cfg, cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Every command that opens the data directory serves its domain: the stored one, or
/// the one given (or the embedded default), which a new data directory then stores.
/// A data directory of another domain is the operator's error (exit code 2): its
/// users could never authenticate.
fn settle_domain(cfg: &mut Config) -> Result<(), ExitCode> {
    let asked = cfg.domain_given.then_some(cfg.domain.as_str());
    let claimed = match &cfg.backend {
        Backend::Sqlite => SqliteUsers::open(&cfg.data)
            .map_err(DomainError::Store)
            .and_then(|mut users| users.claim_domain(asked, DEFAULT_DOMAIN)),
        Backend::Postgres(url) => pg_domain(url, asked),
    };
    match claimed {
        Ok(domain) => {
            cfg.domain = domain;
            Ok(())
        }
        Err(DomainError::Conflict(c)) => {
            eprintln!("permit-proxy: {}", c.message(&cfg.data));
            Err(ExitCode::from(2))
        }
        Err(DomainError::Store(e)) => {
            eprintln!("permit-proxy: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Migrates the PostgreSQL schema (one transaction; nodes starting together apply
/// each migration once) and settles the served domain there.
fn pg_domain(url: &pg::PgUrl, asked: Option<&str>) -> Result<String, DomainError> {
    let store = |e: pg::PgError| DomainError::Store(e.into());
    let db = pg::Db::open(url, "permit-pg-migrate").map_err(store)?;
    let version = db.migrate().map_err(store)?;
    tracing::debug!(url = %url, "postgres schema migrated");
    tracing::info!(version, "postgres schema ready");
    drop(db);
    let mut users = pg::PgUsers::open(url, pg::NodeId::random(), Arc::default()).map_err(store)?;
    users.claim_domain(asked, DEFAULT_DOMAIN)
}

/// The operator's operations on the configured backend.
fn open_ops(cfg: &Config) -> Result<Ops, OpsError> {
    match &cfg.backend {
        Backend::Sqlite => Ops::open(&cfg.data, &cfg.domain, cfg.durability),
        Backend::Postgres(url) => Ops::open_postgres(url, &cfg.data, &cfg.domain, cfg.durability),
    }
}

/// The password from the flag, or the first line of stdin.
fn password(flag: Option<String>) -> Result<String, OpsError> {
    if let Some(p) = flag {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| OpsError::BadInput(format!("reading the password: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn permit(cfg: &Config, cmd: PermitCommand) -> Result<(), OpsError> {
    let mut ops = open_ops(cfg)?;
    match cmd {
        PermitCommand::Add { callee, caller } => {
            let w = ops.add_permit(&callee, &caller)?;
            println!(
                "{} {caller} to {callee} (etag {})",
                if w.changed { "added" } else { "already had" },
                w.etag
            );
        }
        PermitCommand::Remove { callee, caller } => {
            let w = ops.remove_permit(&callee, &caller)?;
            println!(
                "{} {caller} from {callee} (etag {})",
                if w.changed { "removed" } else { "did not have" },
                w.etag
            );
        }
        PermitCommand::List { callee } => match ops.permit_list(&callee)? {
            Some(l) => {
                println!("# {} etag {}", l.callee, l.etag);
                for e in l.entries {
                    println!("{e}");
                }
            }
            None => println!(
                "# {} has no list: nobody may reach it",
                Aor::parse(&callee)?
            ),
        },
        PermitCommand::Import { file } => {
            let n = ops.import_permit_file(&file)?;
            println!("imported {} entries for {} callees", n.lines, n.callees);
        }
        PermitCommand::Export => {
            let mut out = std::io::stdout().lock();
            ops.export_permits(&mut out)?;
        }
    }
    Ok(())
}

fn user(cfg: &Config, cmd: UserCommand) -> Result<(), OpsError> {
    let mut ops = open_ops(cfg)?;
    match cmd {
        UserCommand::Add { name, password: pw } => {
            let aor = ops.add_user(&name, || password(pw))?;
            println!("added {aor}");
        }
        UserCommand::Passwd { name, password: pw } => {
            ops.set_password(&name, || password(pw))?;
            println!("password of {name} changed");
        }
        UserCommand::Del { name } => {
            ops.remove_user(&name)?;
            println!("deleted {name}");
        }
        UserCommand::List => {
            for u in ops.list_users(Page::ALL)?.items {
                println!("{}@{}", u.name, u.realm);
            }
        }
    }
    Ok(())
}

/// One thread for the engine and the sockets: measured against two socket workers, it
/// carries the same 8,000 CPS with less than half the CPU per call
/// (docs/benchmarks.md, runs of 14:38 and 14:48); bursts wait in the 8 MiB UDP buffers.
/// The engine's long-lived keys from the data directory: the dialog seal's route key
/// (dialogs set up before a restart keep working after it), the permit-token ring, and
/// the store of deposited items (`mailbox.sqlite`, store-and-forward).
fn engine_keys(
    cfg: &Config,
    node: &pg::NodeId,
) -> Result<
    (
        permit_proxy::engine::dialog::RouteKeys,
        sip_core::permit::KeyRing,
        permit_proxy::mailbox::Mailbox,
    ),
    String,
> {
    let route = permit_proxy::keys::load_or_create(&cfg.data, "route.key", |k| {
        rand::rng().fill_bytes(k);
    })
    .map_err(|e| format!("route key: {e}"))?;
    let tokens = permit_proxy::keys::token_ring(&cfg.data, |k| rand::rng().fill_bytes(k))
        .map_err(|e| format!("token key: {e}"))?;
    let mut mailbox = open_mailbox(cfg, node)?;
    mailbox.uploads = start_uploads(cfg)?;
    Ok((
        permit_proxy::engine::dialog::RouteKeys::new(1, route),
        tokens,
        mailbox,
    ))
}

/// A connection to the store of deposited items, with the configured quotas: the
/// engine's, and the deposit writer's own.
fn open_mailbox(cfg: &Config, node: &pg::NodeId) -> Result<permit_proxy::mailbox::Mailbox, String> {
    let items: Box<dyn permit_proxy::mailbox::StoredItems> = match &cfg.backend {
        Backend::Sqlite => Box::new(
            permit_proxy::mailbox::SqliteItems::open(&cfg.data, cfg.store.max_file_bytes)
                .map_err(|e| e.to_string())?,
        ),
        Backend::Postgres(url) => {
            Box::new(pg::PgItems::open(url, &cfg.data, node.clone()).map_err(|e| e.to_string())?)
        }
    };
    Ok(permit_proxy::mailbox::Mailbox::new(items, cfg.store.quotas))
}

/// The HTTP listener for large uploads when `[store] http_listen` is set (a task on
/// the running runtime); the engine's URL signer and upload window.
fn start_uploads(cfg: &Config) -> Result<Option<(permit_proxy::upload::Tokens, u64)>, String> {
    let Some(addr) = cfg.store.http_listen else {
        return Ok(None);
    };
    let key = permit_proxy::keys::load_or_create(&cfg.data, "upload.key", |k| {
        rand::rng().fill_bytes(k);
    })
    .map_err(|e| format!("upload key: {e}"))?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| format!("upload listener {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let base = cfg
        .store
        .http_base
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    let tokens = permit_proxy::upload::Tokens::new(key, base);
    let uploads = permit_proxy::upload::http::Uploads::new(
        tokens.clone(),
        cfg.data.clone(),
        cfg.store.quotas.expiry_secs,
    );
    tokio::spawn(permit_proxy::upload::http::serve(listener, uploads));
    tracing::info!(addr = %bound, "upload listener ready");
    Ok(Some((tokens, cfg.store.upload_window_secs)))
}

/// The admin API and `/metrics` when `[admin]` enables them: the same operations as
/// the CLI, plus the engine's state through its control queue. Called last before
/// the engine runs, so it reports ready at once.
async fn start_admin(
    cfg: &Config,
    control: permit_proxy::control::Control,
    net: Arc<sip_net::NetStats>,
) -> Result<(), String> {
    use permit_proxy::admin::{self, Admin};
    let (true, Some(token)) = (cfg.admin.enabled, cfg.admin.token.clone()) else {
        return Ok(());
    };
    let ops = open_ops(cfg).map_err(|e| e.to_string())?;
    let state = Admin::new(ops, token, Some(control), Some(net));
    let bound = admin::start(cfg.admin.listen, state.clone())
        .await
        .map_err(|e| format!("admin listener {}: {e}", cfg.admin.listen))?;
    tracing::info!(addr = %bound, "admin API ready");
    state.set_ready(true);
    Ok(())
}

/// The media relay, when `[relay]` enables it: every port of the range bound now, the
/// relay thread started, and the engine handed the shared table.
fn start_relay(cfg: &Config, seed: u64) -> Result<Option<(SharedRelay, bool)>, String> {
    use permit_proxy::relay::{RelayTable, shell};
    let Some(rc) = &cfg.relay else {
        return Ok(None);
    };
    let started = Instant::now();
    let sockets = shell::bind(&rc.settings).map_err(|e| e.to_string())?;
    let bind_us = started.elapsed().as_micros();
    let table = shell::SharedRelay::new(RelayTable::new(rc.settings.clone(), seed.rotate_left(29)));
    shell::spawn(table.clone(), sockets).map_err(|e| format!("relay thread: {e}"))?;
    let (first, last) = rc.settings.ports;
    tracing::info!(address = %rc.settings.address, first, last, audio = rc.audio, bind_us, "media relay ready");
    Ok(Some((table, rc.audio)))
}

/// The engine shards other than the first, each on a thread of its own with a
/// current-thread runtime, its share of the sockets and its wake signal; they stop
/// when `stop` changes. Each returns its engine when it ends (for the final counters).
fn start_shards(
    shards: Vec<(Proxy, sip_net::ShardNet, Arc<Notify>)>,
    stop: &tokio::sync::watch::Sender<bool>,
) -> Result<Vec<std::thread::JoinHandle<Proxy>>, String> {
    let mut threads = Vec::new();
    for (mut proxy, net, wake) in shards {
        let mut stopped = stop.subscribe();
        let name = format!("permit-shard-{}", proxy.shard_index());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime of {name}: {e}"))?;
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                rt.block_on(async {
                    match net.start() {
                        Ok(net) => {
                            let stop = async move {
                                let _ = stopped.wait_for(|s| *s).await;
                            };
                            sip_net::run_woken(&mut proxy, net, stop, Some(wake)).await;
                        }
                        Err(e) => tracing::error!(error = %e, "engine shard not started"),
                    }
                });
                proxy.report();
                proxy
            })
            .map_err(|e| format!("thread {name}: {e}"))?;
        threads.push(thread);
    }
    Ok(threads)
}

/// The location service on the embedded store, its writes in the store worker.
fn open_location(
    cfg: &Config,
    wakes: &[Arc<Notify>],
    node: &pg::NodeId,
) -> Result<Location, String> {
    let mut store: Box<dyn LocationStore> = match &cfg.backend {
        Backend::Sqlite => {
            Box::new(SqliteStore::open(&cfg.data, cfg.durability).map_err(|e| e.to_string())?)
        }
        Backend::Postgres(url) => {
            Box::new(pg::PgLocationStore::open(url, node.clone()).map_err(|e| e.to_string())?)
        }
    };
    let loaded = store.load_all().map_err(|e| e.to_string())?;
    let worker = GroupCommit::spawn(store, GroupLimits::default(), wakes.to_vec())
        .map_err(|e| format!("store thread: {e}"))?;
    Ok(Location::open_behind(loaded, Box::new(worker)))
}

/// The engine's control queue: the operator's commands and, with PostgreSQL, what
/// other nodes change (the LISTEN task, started here).
fn start_control(
    cfg: &Config,
    proxy: &mut Proxy,
    wake: &Arc<Notify>,
    (node, heard): (pg::NodeId, pg::listen::Heard),
    started_unix: u64,
) -> permit_proxy::control::Control {
    let control = permit_proxy::control::Control::new(wake.clone());
    proxy.set_control(control.clone());
    if let Backend::Postgres(url) = &cfg.backend {
        pg::listen::spawn(pg::listen::Listener {
            url: url.clone(),
            node,
            heard,
            control: control.clone(),
            since_unix: i64::try_from(started_unix).unwrap_or(0),
        });
    }
    control
}

/// The credential store of the configured backend and its user count.
fn open_users(
    cfg: &Config,
    node: &pg::NodeId,
    heard: &pg::listen::Heard,
) -> Result<(Box<dyn UserDirectory>, usize), String> {
    Ok(match &cfg.backend {
        Backend::Sqlite => {
            let u = SqliteUsers::open(&cfg.data).map_err(|e| e.to_string())?;
            let n = u.count().unwrap_or(0);
            (Box::new(u), n)
        }
        Backend::Postgres(url) => {
            let u = pg::PgUsers::open(url, node.clone(), heard.users.clone())
                .map_err(|e| e.to_string())?;
            let n = u.count().unwrap_or(0);
            (Box::new(u), n)
        }
    })
}

/// The permit table, loaded from the configured backend.
fn open_permits(
    cfg: &Config,
    node: &pg::NodeId,
    heard: &pg::listen::Heard,
) -> Result<Permits, String> {
    match &cfg.backend {
        Backend::Sqlite => Permits::open(&cfg.data, cfg.durability).map_err(|e| e.to_string()),
        Backend::Postgres(url) => {
            use rand::SeedableRng;
            let store = pg::PgPermitStore::open(url, node.clone(), heard.permits.clone())
                .map_err(|e| e.to_string())?;
            Permits::with_store(Box::new(store), rand::rngs::StdRng::from_os_rng())
                .map_err(|e| e.to_string())
        }
    }
}

/// The permit writer: list changes from management PUBLISH are written on its own
/// thread and connection (administration mode, as the CLI's), off the engine shards.
fn start_permit_writer(
    cfg: &Config,
    node: &pg::NodeId,
    heard: &pg::listen::Heard,
) -> Result<PermitWorker, String> {
    let permits = match &cfg.backend {
        Backend::Sqlite => {
            Permits::open_admin(&cfg.data, cfg.durability).map_err(|e| e.to_string())?
        }
        Backend::Postgres(url) => {
            let store = pg::PgPermitStore::open(url, node.clone(), heard.permits.clone())
                .map_err(|e| e.to_string())?;
            Permits::admin_with_store(Box::new(store))
        }
    };
    PermitWorker::spawn(permits).map_err(|e| format!("permit writer thread: {e}"))
}

/// The TLS listeners' certificate and peer checks, when configured.
fn tls_settings(cfg: &Config) -> Result<Option<sip_net::TlsSettings>, String> {
    let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) else {
        return Ok(None);
    };
    let mut t = sip_net::load_tls(cert, key).map_err(|e| e.to_string())?;
    t.verify_peer = cfg.tls.verify_peer;
    t.ca.clone_from(&cfg.tls.ca);
    Ok(Some(t))
}

// The start-up sequence reads best in one place; each step is a call or a match.
#[allow(clippy::too_many_lines)]
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
        let shard_count = cfg.shard_count();
        let wakes: Vec<Arc<Notify>> = (0..shard_count).map(|_| Arc::new(Notify::new())).collect();
        let wake = wakes[0].clone();
        let (node, heard) = (pg::NodeId::random(), pg::listen::Heard::default());
        let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let location = match open_location(cfg, &wakes, &node) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (users, user_count) = match open_users(cfg, &node, &heard) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        if !cfg.auth.enabled {
            tracing::warn!("authentication is OFF: anyone may register any address-of-record");
        } else if user_count == 0 {
            tracing::warn!("no users: every REGISTER and call will be refused; add one with `permit-proxy user add`");
        }
        let tls = match tls_settings(cfg) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let net_cfg = NetConfig { tls, ..NetConfig::default() };
        let steering = permit_proxy::shard::Steering::new(shard_count);
        let steer: sip_net::Steer = Arc::new(move |data: &[u8]| steering.shard_of(data));
        let (net, shard_nets) = match Network::bind_sharded(&cfg.listen, net_cfg, shard_count, Some(steer)).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let seed = u64::from(std::process::id()) ^ unix.rotate_left(17);
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let auth = Auth::new(cfg.auth.clone(), cfg.domain.clone(), users, secret);
        let permits = match open_permits(cfg, &node, &heard) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        if !cfg.gate.enabled {
            tracing::warn!("the gate is OFF: every caller reaches every callee, without a load query");
        }
        let (route_keys, token_keys, mailbox) = match engine_keys(cfg, &node) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        if cfg.gate.insecure_keys {
            tracing::warn!("insecure_keys is ON: session secrets are sent on hops that are not TLS (labs only)");
        }
        let mut proxy_cfg = cfg.proxy_config(&net.bound);
        proxy_cfg.route_keys = Some(route_keys);
        proxy_cfg.token_keys = Some(token_keys);
        let permit_writer = match start_permit_writer(cfg, &node, &heard) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut proxy = Proxy::new(proxy_cfg, location, auth, permits, Instant::now(), unix, seed);
        proxy.set_mailbox(mailbox, cfg.store.enabled);
        proxy.set_permit_writer(Box::new(permit_writer.handle(wake.clone())));
        let deposit_writer = match open_mailbox(cfg, &node).and_then(|m| {
            DepositWorker::spawn(m).map_err(|e| format!("deposit writer thread: {e}"))
        }) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        proxy.set_deposit_writer(Box::new(deposit_writer.handle(wake.clone())));
        let relay = match start_relay(cfg, seed) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some((table, audio)) = &relay {
            proxy.set_relay(Box::new(table.clone()), *audio);
        }
        let now = Instant::now();
        let shards: Vec<(Proxy, sip_net::ShardNet, Arc<Notify>)> = shard_nets
            .into_iter()
            .zip(wakes.iter().skip(1))
            .enumerate()
            .map(|(i, (net, wake))| {
                let index = u8::try_from(i + 1).unwrap_or(u8::MAX);
                let mut shard = proxy.new_shard(index, now, seed.rotate_left(7) ^ (i as u64 + 1));
                shard.set_permit_writer(Box::new(permit_writer.handle(wake.clone())));
                shard.set_deposit_writer(Box::new(deposit_writer.handle(wake.clone())));
                if let Some((table, audio)) = &relay {
                    shard.set_relay(Box::new(table.clone()), *audio);
                }
                (shard, net, wake.clone())
            })
            .collect();
        let (aors, bindings) = proxy.location_counts();
        for l in &net.bound {
            tracing::info!(transport = ?l.transport, addr = %l.addr, "listening");
        }
        let (stop, _) = tokio::sync::watch::channel(false);
        let threads = match start_shards(shards, &stop) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("permit-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(domain = %cfg.domain, aors, bindings, users = user_count, auth = cfg.auth.enabled, shards = shard_count, "permit-proxy ready");
        let stats = net.sender.stats.clone();
        let control = start_control(cfg, &mut proxy, &wake, (node, heard), started_unix);
        if let Err(e) = start_admin(cfg, control, stats.clone()).await {
            eprintln!("permit-proxy: {e}");
            return ExitCode::FAILURE;
        }
        sip_net::run_woken(&mut proxy, net, shutdown(), Some(wake)).await;
        let _ = stop.send(true);
        for t in threads {
            if let Ok(shard) = t.join()
                && let Some((_, hook)) = shard.relay_stats()
            {
                tracing::info!(shard = shard.shard_index(), ?hook, "media relay hook");
            }
        }
        if let Some((relay, hook)) = proxy.relay_stats() {
            tracing::info!(?relay, ?hook, "media relay");
        }
        tracing::info!(stats = ?proxy.snapshot_all().stats, net_dropped = stats.dropped_input.load(std::sync::atomic::Ordering::Relaxed), "permit-proxy stopped");
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

#[cfg(test)]
mod tests {
    use super::{Cli, Command, ConfigCommand};
    use clap::Parser;

    /// The systemd unit's command lines are ones this binary accepts (a renamed flag
    /// or subcommand would otherwise surface as a service that does not start).
    #[test]
    fn the_systemd_unit_runs_commands_that_parse() {
        let unit = include_str!("../../packaging/systemd/permit-proxy.service");
        let lines: Vec<&str> = unit
            .lines()
            .filter_map(|l| {
                l.strip_prefix("ExecStart=")
                    .or(l.strip_prefix("ExecStartPre="))
            })
            .collect();
        assert_eq!(lines.len(), 2, "ExecStartPre and ExecStart");
        for line in lines {
            let cli = Cli::try_parse_from(line.split_whitespace())
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                cli.config.as_deref(),
                Some(std::path::Path::new("/etc/permit/proxy.toml"))
            );
            assert_eq!(
                cli.data.as_deref(),
                Some(std::path::Path::new("/var/lib/permit"))
            );
            assert!(matches!(
                cli.command,
                Command::Run | Command::Config(ConfigCommand::Check)
            ));
        }
    }
}
