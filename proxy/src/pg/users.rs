//! Credentials in PostgreSQL (table `sip_user`, HA1 hashes only; RFC 3261 §22) and the
//! served domain (table `meta`), shared by every node.
//!
//! The proxy authenticates from a cache: [`UserDirectory::refresh`], called once per
//! authentication, costs one atomic load until the node's listener heard a NOTIFY on
//! [`super::CHANNEL_USER`]; then the table is read again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sip_core::digest::Algorithm;

use super::{CHANNEL_USER, Db, NodeId, PgError, PgUrl};
use crate::auth::UserDirectory;
use crate::store::StoreError;
use crate::users::{DomainError, UserRecord, choose_domain};

/// The `meta` key of the served domain.
const DOMAIN_KEY: &str = "domain";
/// The advisory lock under which the domain is claimed.
const DOMAIN_LOCK: i64 = 0x7065_726d_6974_0003;

/// Users in the shared database.
pub struct PgUsers {
    db: Db,
    node: NodeId,
    cache: HashMap<String, UserRecord>,
    heard: Arc<AtomicU64>,
    /// `heard` when the cache was filled; `None`: never filled.
    seen: Option<u64>,
}

impl From<PgError> for DomainError {
    fn from(e: PgError) -> Self {
        Self::Store(StoreError::Postgres(e))
    }
}

fn pg(e: postgres::Error) -> StoreError {
    StoreError::Postgres(PgError::Db(e))
}

impl PgUsers {
    /// Connects; `heard` is the counter the node's listener bumps on user changes.
    pub fn open(url: &PgUrl, node: NodeId, heard: Arc<AtomicU64>) -> Result<Self, PgError> {
        Ok(Self {
            db: Db::open(url, "permit-pg-users")?,
            node,
            cache: HashMap::new(),
            heard,
            seen: None,
        })
    }

    /// Settles the served domain with the database (`users::choose_domain`), storing
    /// it on first use; nodes starting together agree on one.
    pub fn claim_domain(
        &mut self,
        asked: Option<&str>,
        fallback: &str,
    ) -> Result<String, DomainError> {
        let asked = asked.map(str::to_owned);
        let fallback = fallback.to_owned();
        self.db.run(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DOMAIN_LOCK])
                .map_err(pg)?;
            let stored: Option<String> = tx
                .query_opt("SELECT value FROM meta WHERE key = $1", &[&DOMAIN_KEY])
                .map_err(pg)?
                .map(|r| r.get(0));
            let realms: Vec<String> = tx
                .query("SELECT DISTINCT realm FROM sip_user ORDER BY realm", &[])
                .map_err(pg)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let choice = choose_domain(asked.as_deref(), &fallback, stored.as_deref(), &realms)
                .map_err(DomainError::Conflict)?;
            if choice.store {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)",
                    &[&DOMAIN_KEY, &choice.domain],
                )
                .map_err(pg)?;
            }
            tx.commit().map_err(pg)?;
            Ok(choice.domain)
        })
    }

    /// The stored domain, if any.
    pub fn stored_domain(&self) -> Result<Option<String>, StoreError> {
        self.db.run(|c| {
            Ok(
                c.query_opt("SELECT value FROM meta WHERE key = $1", &[&DOMAIN_KEY])
                    .map_err(pg)?
                    .map(|r| r.get(0)),
            )
        })
    }

    /// Adds or replaces a user; the nodes reload their caches.
    pub fn put(&mut self, rec: &UserRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        let node = self.node.0.clone();
        self.db.run(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            tx.execute(
                "INSERT INTO sip_user (username, realm, ha1_md5, ha1_sha256) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (username) DO UPDATE SET realm = EXCLUDED.realm,
                     ha1_md5 = EXCLUDED.ha1_md5, ha1_sha256 = EXCLUDED.ha1_sha256",
                &[&rec.username, &rec.realm, &rec.ha1_md5, &rec.ha1_sha256],
            )
            .map_err(pg)?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL_USER, &node])
                .map_err(pg)?;
            tx.commit().map_err(pg)
        })?;
        self.seen = None;
        Ok(())
    }

    /// Removes a user; `false` if there was none.
    pub fn delete(&mut self, username: &str) -> Result<bool, StoreError> {
        let username = username.to_owned();
        let node = self.node.0.clone();
        let n = self.db.run(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            let n = tx
                .execute("DELETE FROM sip_user WHERE username = $1", &[&username])
                .map_err(pg)?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL_USER, &node])
                .map_err(pg)?;
            tx.commit().map_err(pg)?;
            Ok::<_, StoreError>(n)
        })?;
        self.seen = None;
        Ok(n > 0)
    }

    pub fn exists(&self, username: &str) -> Result<bool, StoreError> {
        let username = username.to_owned();
        self.db.run(move |c| {
            Ok(
                c.query_opt("SELECT 1 FROM sip_user WHERE username = $1", &[&username])
                    .map_err(pg)?
                    .is_some(),
            )
        })
    }

    /// Usernames with their realm, sorted.
    pub fn list(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.db.run(|c| {
            Ok(c.query(
                "SELECT username, realm FROM sip_user ORDER BY username",
                &[],
            )
            .map_err(pg)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
    }

    /// Number of users (for start-up logs).
    pub fn count(&self) -> Result<usize, StoreError> {
        self.db.run(|c| {
            let n: i64 = c
                .query_one("SELECT COUNT(*) FROM sip_user", &[])
                .map_err(pg)?
                .get(0);
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn reload_if_heard(&mut self) -> Result<(), StoreError> {
        let heard = self.heard.load(Ordering::Acquire);
        if self.seen == Some(heard) {
            return Ok(());
        }
        self.cache = self.db.run(|c| {
            let rows = c
                .query(
                    "SELECT username, realm, ha1_md5, ha1_sha256 FROM sip_user",
                    &[],
                )
                .map_err(pg)?;
            Ok::<_, StoreError>(
                rows.iter()
                    .map(|r| {
                        let u = UserRecord {
                            username: r.get(0),
                            realm: r.get(1),
                            ha1_md5: r.get(2),
                            ha1_sha256: r.get(3),
                        };
                        (u.username.clone(), u)
                    })
                    .collect(),
            )
        })?;
        self.seen = Some(heard);
        Ok(())
    }
}

impl UserDirectory for PgUsers {
    fn refresh(&mut self) {
        if let Err(e) = self.reload_if_heard() {
            tracing::warn!(error = %e, "credential cache not refreshed");
        }
    }

    fn ha1(&self, username: &str, realm: &str, alg: Algorithm) -> Option<String> {
        self.cache
            .get(username)
            .filter(|r| r.realm == realm)
            .map(|r| r.ha1(alg).to_owned())
    }
}

/// The credential store of either backend, for the operator's operations
/// (crate::ops).
pub enum AnyUsers {
    Sqlite(crate::users::SqliteUsers),
    Postgres(PgUsers),
}

impl AnyUsers {
    pub fn exists(&self, username: &str) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite(u) => u.exists(username),
            Self::Postgres(u) => u.exists(username),
        }
    }

    pub fn put(&mut self, rec: &UserRecord) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(u) => u.put(rec),
            Self::Postgres(u) => u.put(rec),
        }
    }

    pub fn delete(&mut self, username: &str) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite(u) => u.delete(username),
            Self::Postgres(u) => u.delete(username),
        }
    }

    pub fn list(&self) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            Self::Sqlite(u) => u.list(),
            Self::Postgres(u) => u.list(),
        }
    }

    pub fn count(&self) -> Result<usize, StoreError> {
        match self {
            Self::Sqlite(u) => u.count(),
            Self::Postgres(u) => u.count(),
        }
    }
}

impl From<PgError> for crate::ops::OpsError {
    fn from(e: PgError) -> Self {
        Self::Store(StoreError::Postgres(e))
    }
}
