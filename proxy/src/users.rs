//! The credential store (RFC 3261 §22): one record per user with the HA1 hash for each
//! digest algorithm, never the password. Records live in the embedded SQLite file; the
//! proxy keeps a cache that it reloads when another process (the `user` CLI) changed the
//! table, so a change takes effect without a restart.
//!
//! The realm of every record is the domain the proxy serves, so the data directory
//! remembers that domain (the `meta` table) from its first use on: a later command
//! without `--domain` serves it, one with another domain is refused
//! ([`choose_domain`]).

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sip_core::digest::{Algorithm, ha1};

use crate::auth::UserDirectory;
use crate::store::StoreError;

/// A user's digest secrets for one realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub username: String,
    pub realm: String,
    /// Lowercase hex H(username:realm:password) per algorithm (RFC 7616 §3.4.2).
    pub ha1_md5: String,
    pub ha1_sha256: String,
}

impl UserRecord {
    /// Derives the hashes; the password is not kept.
    pub fn new(username: &str, realm: &str, password: &str) -> Self {
        Self {
            username: username.to_owned(),
            realm: realm.to_owned(),
            ha1_md5: ha1(Algorithm::Md5, username, realm, password),
            ha1_sha256: ha1(Algorithm::Sha256, username, realm, password),
        }
    }

    pub fn ha1(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }
}

/// Users in the data directory's SQLite file.
pub struct SqliteUsers {
    conn: Connection,
    cache: HashMap<String, UserRecord>,
    /// SQLite's `data_version` when the cache was filled (changes on writes by others).
    seen_version: Option<i64>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS user (
    username TEXT PRIMARY KEY,
    realm TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// The `meta` key of the served domain.
const DOMAIN_KEY: &str = "domain";

/// The domain a command serves, and whether the data directory must learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainChoice {
    pub domain: String,
    /// The data directory had no stored domain: store this one.
    pub store: bool,
}

/// The data directory belongs to another domain: an operator's error, the command
/// must not run (its users could never authenticate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainConflict {
    /// The stored domain is not the one asked for.
    Stored { stored: String, asked: String },
    /// A data directory without a stored domain (older versions) holds users of
    /// other realms only; `realms` is sorted and not empty.
    ForeignUsers { realms: Vec<String>, asked: String },
}

impl DomainConflict {
    /// One line that says what to do.
    pub fn message(&self, dir: &Path) -> String {
        let dir = dir.display();
        match self {
            Self::Stored { stored, asked } => format!(
                "the data directory {dir} serves domain {stored}, not {asked}; \
                 run with --domain {stored}, or use another --data directory"
            ),
            Self::ForeignUsers { realms, asked } => match realms.as_slice() {
                [realm] => format!(
                    "the data directory {dir} holds users of realm {realm} only, not of \
                     domain {asked}; run with --domain {realm}, or use another --data directory"
                ),
                _ => format!(
                    "the data directory {dir} holds users of realms {} only, not of domain \
                     {asked}; run with --domain and one of them, or use another --data directory",
                    realms.join(", ")
                ),
            },
        }
    }
}

/// Decides the served domain from the one asked for (`--domain` or the config file,
/// if any), the `fallback` (the embedded default), the data directory's `stored`
/// domain and the distinct `realms` of its users (sorted).
///
/// The stored domain wins over the fallback and must equal the asked one. A data
/// directory without one (new, or from an older version) serves the asked domain, else
/// its users' realm when they all share one, else the fallback; it is refused when it
/// has users and none of them is of that realm.
pub fn choose_domain(
    asked: Option<&str>,
    fallback: &str,
    stored: Option<&str>,
    realms: &[String],
) -> Result<DomainChoice, DomainConflict> {
    let (domain, store) = match (stored, asked) {
        (Some(stored), Some(asked)) if stored != asked => {
            return Err(DomainConflict::Stored {
                stored: stored.to_owned(),
                asked: asked.to_owned(),
            });
        }
        (Some(stored), _) => (stored, false),
        (None, Some(asked)) => (asked, true),
        (None, None) => match realms {
            [only] => (only.as_str(), true),
            _ => (fallback, true),
        },
    };
    if !realms.is_empty() && !realms.iter().any(|r| r == domain) {
        return Err(DomainConflict::ForeignUsers {
            realms: realms.to_vec(),
            asked: domain.to_owned(),
        });
    }
    Ok(DomainChoice {
        domain: domain.to_owned(),
        store,
    })
}

/// Why the served domain could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("the data directory serves another domain: {0:?}")]
    Conflict(DomainConflict),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for DomainError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

impl SqliteUsers {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join("permit.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Users and the served domain are rare operator writes: each one synced to disk.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn,
            cache: HashMap::new(),
            seen_version: None,
        })
    }

    /// Settles the served domain with the data directory ([`choose_domain`]), storing
    /// it on first use. One immediate transaction: two commands starting at once on a
    /// new data directory agree on one domain.
    pub fn claim_domain(
        &mut self,
        asked: Option<&str>,
        fallback: &str,
    ) -> Result<String, DomainError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [DOMAIN_KEY], |r| {
                r.get(0)
            })
            .optional()?;
        let realms: Vec<String> = tx
            .prepare("SELECT DISTINCT realm FROM user ORDER BY realm")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let choice = choose_domain(asked, fallback, stored.as_deref(), &realms)
            .map_err(DomainError::Conflict)?;
        if choice.store {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![DOMAIN_KEY, choice.domain],
            )?;
        }
        tx.commit()?;
        Ok(choice.domain)
    }

    /// The stored domain, if the data directory has one.
    pub fn stored_domain(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [DOMAIN_KEY], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Adds or replaces a user.
    pub fn put(&mut self, rec: &UserRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO user (username, realm, ha1_md5, ha1_sha256) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(username) DO UPDATE SET realm = ?2, ha1_md5 = ?3, ha1_sha256 = ?4",
            params![rec.username, rec.realm, rec.ha1_md5, rec.ha1_sha256],
        )?;
        self.seen_version = None;
        Ok(())
    }

    /// Removes a user; `false` if there was none.
    pub fn delete(&mut self, username: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM user WHERE username = ?1", [username])?;
        self.seen_version = None;
        Ok(n > 0)
    }

    pub fn exists(&self, username: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM user WHERE username = ?1", [username], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Usernames with their realm, sorted.
    pub fn list(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT username, realm FROM user ORDER BY username")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Reloads the cache if the table changed since it was filled (SQLite's
    /// `data_version` moves on writes by other connections: one cheap pragma read).
    fn reload_if_changed(&mut self) -> Result<(), StoreError> {
        let version = crate::store::data_version(&self.conn)?;
        if self.seen_version == Some(version) {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT username, realm, ha1_md5, ha1_sha256 FROM user")?;
        let rows = stmt.query_map([], |r| {
            Ok(UserRecord {
                username: r.get(0)?,
                realm: r.get(1)?,
                ha1_md5: r.get(2)?,
                ha1_sha256: r.get(3)?,
            })
        })?;
        self.cache = rows
            .map(|r| r.map(|u| (u.username.clone(), u)))
            .collect::<Result<_, _>>()?;
        self.seen_version = Some(version);
        Ok(())
    }

    /// Number of users (for start-up logs).
    pub fn count(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM user", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

impl UserDirectory for SqliteUsers {
    fn refresh(&mut self) {
        if let Err(e) = self.reload_if_changed() {
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

/// The in-memory directory: reference implementation and engine-test double.
#[derive(Debug, Default)]
pub struct MemoryUsers {
    pub users: HashMap<String, UserRecord>,
}

impl UserDirectory for MemoryUsers {
    fn refresh(&mut self) {}

    fn ha1(&self, username: &str, realm: &str, alg: Algorithm) -> Option<String> {
        self.users
            .get(username)
            .filter(|r| r.realm == realm)
            .map(|r| r.ha1(alg).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SqliteUsers {
        fn fresh_ha1(&mut self, user: &str, realm: &str, alg: Algorithm) -> Option<String> {
            self.refresh();
            UserDirectory::ha1(self, user, realm, alg)
        }
    }

    fn realms(r: &[&str]) -> Vec<String> {
        r.iter().map(|&s| s.to_owned()).collect()
    }

    fn chosen(domain: &str, store: bool) -> DomainChoice {
        DomainChoice {
            domain: domain.into(),
            store,
        }
    }

    #[test]
    fn a_new_data_directory_learns_the_asked_or_default_domain() {
        assert_eq!(
            choose_domain(None, "localhost", None, &[]),
            Ok(chosen("localhost", true))
        );
        assert_eq!(
            choose_domain(Some("example.org"), "localhost", None, &[]),
            Ok(chosen("example.org", true))
        );
    }

    #[test]
    fn the_stored_domain_wins_over_the_default_and_refuses_another() {
        let stored = Some("example.org");
        let users = realms(&["example.org"]);
        assert_eq!(
            choose_domain(None, "localhost", stored, &users),
            Ok(chosen("example.org", false))
        );
        assert_eq!(
            choose_domain(Some("example.org"), "localhost", stored, &users),
            Ok(chosen("example.org", false))
        );
        assert_eq!(
            choose_domain(Some("localhost"), "localhost", stored, &[]),
            Err(DomainConflict::Stored {
                stored: "example.org".into(),
                asked: "localhost".into()
            })
        );
        // Users of another realm under a stored domain (written by an older binary).
        assert_eq!(
            choose_domain(None, "localhost", stored, &realms(&["other.org"])),
            Err(DomainConflict::ForeignUsers {
                realms: realms(&["other.org"]),
                asked: "example.org".into()
            })
        );
    }

    #[test]
    fn an_older_data_directory_is_judged_by_its_users_realms() {
        let old = realms(&["127.0.0.1"]);
        assert_eq!(
            choose_domain(None, "localhost", None, &old),
            Ok(chosen("127.0.0.1", true))
        );
        assert_eq!(
            choose_domain(Some("127.0.0.1"), "localhost", None, &old),
            Ok(chosen("127.0.0.1", true))
        );
        assert_eq!(
            choose_domain(Some("example.org"), "localhost", None, &old),
            Err(DomainConflict::ForeignUsers {
                realms: old.clone(),
                asked: "example.org".into()
            })
        );
        let mixed = realms(&["a.org", "b.org"]);
        assert_eq!(
            choose_domain(Some("b.org"), "localhost", None, &mixed),
            Ok(chosen("b.org", true))
        );
        assert_eq!(
            choose_domain(None, "localhost", None, &mixed),
            Err(DomainConflict::ForeignUsers {
                realms: mixed.clone(),
                asked: "localhost".into()
            })
        );
        assert_eq!(
            choose_domain(None, "localhost", None, &realms(&["localhost", "x.org"])),
            Ok(chosen("localhost", true))
        );
    }

    #[test]
    fn conflict_messages_say_what_to_do() {
        let dir = Path::new("./permit-data");
        let m = DomainConflict::Stored {
            stored: "localhost".into(),
            asked: "127.0.0.1".into(),
        }
        .message(dir);
        assert_eq!(
            m,
            "the data directory ./permit-data serves domain localhost, not 127.0.0.1; \
             run with --domain localhost, or use another --data directory"
        );
        let m = DomainConflict::ForeignUsers {
            realms: realms(&["a.org", "b.org"]),
            asked: "localhost".into(),
        }
        .message(dir);
        assert!(m.contains("realms a.org, b.org only"), "{m}");
        assert!(m.contains("--domain"), "{m}");
    }

    #[test]
    fn the_domain_is_stored_once_and_checked_after() {
        let dir = std::env::temp_dir().join(format!("permit-domain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut first = SqliteUsers::open(&dir).unwrap();
        assert_eq!(first.stored_domain().unwrap(), None);
        assert_eq!(
            first
                .claim_domain(Some("example.org"), "localhost")
                .unwrap(),
            "example.org"
        );
        drop(first);
        let mut again = SqliteUsers::open(&dir).unwrap();
        assert_eq!(
            again.stored_domain().unwrap().as_deref(),
            Some("example.org")
        );
        assert_eq!(
            again.claim_domain(None, "localhost").unwrap(),
            "example.org"
        );
        assert!(matches!(
            again.claim_domain(Some("localhost"), "localhost"),
            Err(DomainError::Conflict(DomainConflict::Stored { .. }))
        ));
        assert_eq!(
            again.stored_domain().unwrap().as_deref(),
            Some("example.org")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_older_data_directory_learns_its_users_realm() {
        let dir = std::env::temp_dir().join(format!("permit-domain-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut users = SqliteUsers::open(&dir).unwrap();
        users
            .put(&UserRecord::new("bob", "127.0.0.1", "x"))
            .unwrap();
        assert!(matches!(
            users.claim_domain(Some("localhost"), "localhost"),
            Err(DomainError::Conflict(DomainConflict::ForeignUsers { .. }))
        ));
        assert_eq!(users.stored_domain().unwrap(), None);
        assert_eq!(users.claim_domain(None, "localhost").unwrap(), "127.0.0.1");
        assert_eq!(users.stored_domain().unwrap().as_deref(), Some("127.0.0.1"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn another_writer_is_seen_without_restart() {
        let dir = std::env::temp_dir().join(format!("permit-users-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut proxy_side = SqliteUsers::open(&dir).unwrap();
        assert_eq!(
            proxy_side.fresh_ha1("alice", "localhost", Algorithm::Md5),
            None
        );
        let mut cli_side = SqliteUsers::open(&dir).unwrap();
        let rec = UserRecord::new("alice", "localhost", "secret");
        cli_side.put(&rec).unwrap();
        assert_eq!(
            proxy_side
                .fresh_ha1("alice", "localhost", Algorithm::Sha256)
                .as_deref(),
            Some(rec.ha1_sha256.as_str())
        );
        assert_eq!(
            proxy_side.fresh_ha1("alice", "other.realm", Algorithm::Md5),
            None
        );
        cli_side
            .put(&UserRecord::new("alice", "localhost", "changed"))
            .unwrap();
        assert_ne!(
            proxy_side
                .fresh_ha1("alice", "localhost", Algorithm::Md5)
                .as_deref(),
            Some(rec.ha1_md5.as_str())
        );
        assert!(cli_side.delete("alice").unwrap());
        assert!(!cli_side.delete("alice").unwrap());
        assert_eq!(
            proxy_side.fresh_ha1("alice", "localhost", Algorithm::Md5),
            None
        );
        // The password itself is stored nowhere.
        for file in std::fs::read_dir(&dir).unwrap() {
            let raw = std::fs::read(file.unwrap().path()).unwrap();
            assert!(!raw.windows(7).any(|w| w == b"changed"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
