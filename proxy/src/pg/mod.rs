//! The PostgreSQL backend (config `[store] backend = "postgres"`): every storage trait
//! of the proxy on one database that several proxy nodes share.
//!
//! I/O contract: each store owns one connection on its own thread ([`Db`]); the
//! synchronous trait methods send a job there and wait for its result, so they may be
//! called from anywhere (the engine's thread inside the tokio runtime, the group-commit
//! worker, the CLI) without nesting runtimes. The engine reads nothing from PostgreSQL
//! per message: locations, permits and credentials are served from memory, and what
//! other nodes change arrives through LISTEN/NOTIFY ([`listen`]) and the operator's
//! control queue. The schema is versioned in `proxy/migrations/postgres/` and applied
//! at start in one transaction ([`migrate`]).

pub mod items;
pub mod listen;
pub mod location;
pub mod permits;
pub mod users;

use std::fmt;
use std::str::FromStr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use items::PgItems;
pub use location::PgLocationStore;
pub use permits::PgPermitStore;
pub use users::{AnyUsers, PgUsers};

/// NOTIFY channels (payloads in [`listen`]).
pub const CHANNEL_BINDING: &str = "permit_binding";
pub const CHANNEL_PERMIT: &str = "permit_list";
pub const CHANNEL_USER: &str = "permit_user";

/// How long one statement may run before PostgreSQL cancels it: a stuck database
/// answers the waiting request with an error instead of holding the engine.
const STATEMENT_TIMEOUT: &str = "10s";
/// Connection attempts give up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock that serialises migrations of nodes starting together.
const MIGRATION_LOCK: i64 = 0x7065_726d_6974_0001;

/// The schema versions in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "item_claim",
        include_str!("../../migrations/postgres/0002_item_claim.sql"),
    ),
];

/// PostgreSQL failures are I/O faults: the request that needed the store gets a 5xx.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres: {0}")]
    Db(#[from] postgres::Error),
    /// The connection URL does not parse (the message names no secret).
    #[error("postgres: bad url: {0}")]
    Url(String),
    /// The last connection attempt failed a moment ago; not tried again yet.
    #[error("postgres: unavailable (reconnecting)")]
    Unavailable,
    /// The server closed the connection (the LISTEN task reconnects).
    #[error("postgres: the connection closed")]
    Closed,
    /// The store's connection thread is gone.
    #[error("postgres: the connection thread stopped")]
    Gone,
    /// The database holds a newer schema than this binary knows.
    #[error("postgres: schema version {found} is newer than this binary's {known}")]
    Newer { found: i32, known: i32 },
}

/// A connection URL (`postgres://user:password@host:port/db` or `key=value` form).
/// Its `Debug` and `Display` hide the password: it never reaches a log.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct PgUrl(String);

impl PgUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself (to connect; never to print).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The client configuration with this backend's defaults (connect timeout).
    pub fn config(&self) -> Result<postgres::Config, PgError> {
        let mut c = postgres::Config::from_str(&self.0).map_err(|e| {
            // The parser's message quotes no part of the URL; keep only its kind.
            PgError::Url(e.to_string())
        })?;
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(CONNECT_TIMEOUT);
        }
        c.keepalives(true);
        if c.get_application_name().is_none() {
            c.application_name("permit-proxy");
        }
        Ok(c)
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.redacted())
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `url` without its password (URL userinfo or a `password=` pair).
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => format!("{userinfo}@{host}"),
            },
            None => authority.to_owned(),
        };
        let tail = redact_pairs(tail, '&');
        return format!("{scheme}://{authority}{tail}");
    }
    redact_pairs(url, ' ')
}

/// Replaces the value of every `password=` pair separated by `sep`.
fn redact_pairs(s: &str, sep: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut first = true;
    for part in s.split(sep) {
        if !first {
            out.push(sep);
        }
        first = false;
        let key_at = part.rfind(['?', sep]).map_or(0, |i| i + 1);
        match part[key_at..].split_once('=') {
            Some((k, _)) if k.trim().eq_ignore_ascii_case("password") => {
                out.push_str(&part[..key_at]);
                out.push_str(k);
                out.push_str("=***");
            }
            _ => out.push_str(part),
        }
    }
    out
}

/// A random name of this process among the nodes, carried in NOTIFY payloads so a
/// node skips its own changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn random() -> Self {
        Self(format!("{:016x}", rand::random::<u64>()))
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// After a failed connection attempt, calls fail at once for this long instead of
/// each waiting for a new attempt: a database that is away costs the waiting request
/// its answer (5xx), not the engine its time.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The connection a store's thread holds; reconnects when it was lost.
struct Conn {
    config: postgres::Config,
    client: Option<postgres::Client>,
    /// No new attempt before this (after one failed).
    pause_until: Option<std::time::Instant>,
}

impl Conn {
    fn client(&mut self) -> Result<&mut postgres::Client, PgError> {
        if self.client.as_ref().is_none_or(postgres::Client::is_closed) {
            self.client = None;
            let now = std::time::Instant::now();
            if self.pause_until.is_some_and(|t| now < t) {
                return Err(PgError::Unavailable);
            }
            match connect(&self.config) {
                Ok(c) => {
                    self.pause_until = None;
                    self.client = Some(c);
                    tracing::info!("postgres connection restored");
                }
                Err(e) => {
                    self.pause_until = Some(now + RECONNECT_PAUSE);
                    return Err(e);
                }
            }
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => Err(PgError::Gone),
        }
    }
}

fn connect(config: &postgres::Config) -> Result<postgres::Client, PgError> {
    let mut c = config.connect(postgres::NoTls)?;
    c.batch_execute(&format!(
        "SET statement_timeout = '{STATEMENT_TIMEOUT}'; SET TIME ZONE 'UTC'"
    ))?;
    Ok(c)
}

/// One connection on its own thread; [`Db::run`] executes a job there and waits.
pub struct Db {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Db {
    /// Connects (once now, so a wrong URL or an absent server is reported at start)
    /// and starts the connection's thread, named `name`.
    ///
    /// The connection is made on the new thread: the blocking client runs a runtime
    /// of its own, which may not start on a thread that drives the proxy's.
    pub fn open(url: &PgUrl, name: &str) -> Result<Self, PgError> {
        let config = url.config()?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let client = match connect(&config) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut conn = Conn {
                    config,
                    client: Some(client),
                    pause_until: None,
                };
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|_| PgError::Gone)?;
        let started = ready.recv().map_err(|_| PgError::Gone);
        let db = Self {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        started??;
        Ok(db)
    }

    /// Runs `f` on the connection (reconnecting first if it was lost) and returns its
    /// result.
    pub fn run<T, E>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<PgError> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn: &mut Conn| {
            let r = match conn.client() {
                Ok(c) => f(c),
                Err(e) => Err(E::from(e)),
            };
            let _ = tx.send(r);
        });
        let Some(jobs) = &self.jobs else {
            return Err(E::from(PgError::Gone));
        };
        jobs.send(job).map_err(|_| E::from(PgError::Gone))?;
        rx.recv().map_err(|_| E::from(PgError::Gone))?
    }

    /// Applies the migrations this database lacks; returns the schema version.
    pub fn migrate(&self) -> Result<i32, PgError> {
        self.run(migrate)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("postgres connection thread panicked");
        }
    }
}

/// Applies every migration newer than the database's `schema_version`, all in one
/// transaction under an advisory lock (two nodes starting at once apply each
/// migration once); returns the version now stored.
pub fn migrate(client: &mut postgres::Client) -> Result<i32, PgError> {
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let found: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .get(0);
    if found > known {
        return Err(PgError::Newer { found, known });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
            &[version, name],
        )?;
        tracing::info!(version, name, "postgres schema migrated");
    }
    tx.commit()?;
    Ok(found.max(known))
}

/// `u64` to PostgreSQL's BIGINT (saturating).
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// BIGINT to `u64` (negative: 0).
pub(crate) fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://permit:s3cret@db.example:5432/permit?sslmode=disable"),
            "postgres://permit:***@db.example:5432/permit?sslmode=disable"
        );
        assert_eq!(
            redact("postgresql://permit@localhost/permit?password=s3cret&port=5433"),
            "postgresql://permit@localhost/permit?password=***&port=5433"
        );
        assert_eq!(
            redact("host=/tmp port=5433 user=permit password=s3cret dbname=permit"),
            "host=/tmp port=5433 user=permit password=*** dbname=permit"
        );
        let url = PgUrl::new("postgres://u:topsecret@h/db");
        assert!(!format!("{url:?} {url}").contains("topsecret"));
        assert_eq!(url.expose(), "postgres://u:topsecret@h/db");
    }

    #[test]
    fn the_backend_is_chosen_in_the_store_section() {
        use crate::config::{Backend, Config, ConfigError, Overrides};
        let dir = std::env::temp_dir().join(format!("permit-pg-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let load = |toml: &str| {
            let path = dir.join("permit.toml");
            std::fs::write(&path, toml).unwrap();
            Config::load(Some(&path), Overrides::default())
        };
        assert_eq!(load("").unwrap().backend, Backend::Sqlite);
        let pg =
            load("[store]\nbackend = \"postgres\"\nurl = \"postgres://p:pw@db/permit\"\n").unwrap();
        assert_eq!(
            pg.backend,
            Backend::Postgres(PgUrl::new("postgres://p:pw@db/permit"))
        );
        assert!(
            !format!("{pg:?}").contains(":pw@"),
            "Debug hides the password"
        );
        assert!(matches!(
            load("[store]\nbackend = \"postgres\"\n"),
            Err(ConfigError::PostgresWithoutUrl)
        ));
        assert!(load("[store]\nbackend = \"mysql\"\n").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (v, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(*v).unwrap(), i + 1, "{name}");
            // Each file is named after its version: NNNN_name.sql.
            let file = format!("{v:04}_{name}.sql");
            let on_disk = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("migrations/postgres")
                    .join(&file),
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(&on_disk, sql, "{file}");
            assert!(sql.trim_end().ends_with(';'), "{file}");
        }
    }
}
