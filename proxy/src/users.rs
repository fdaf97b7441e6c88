//! The credential store (RFC 3261 §22): one record per user with the HA1 hash for each
//! digest algorithm, never the password. Records live in the embedded SQLite file; the
//! proxy keeps a cache that it reloads when another process (the `user` CLI) changed the
//! table, so a change takes effect without a restart.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
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
";

impl SqliteUsers {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join("permit.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn,
            cache: HashMap::new(),
            seen_version: None,
        })
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
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
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
