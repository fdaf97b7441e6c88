//! Storage behind traits (STYLE.md rule 9): the in-memory reference implementation and
//! the embedded SQLite default. SQLite runs in WAL mode; `synchronous=NORMAL` keeps every
//! committed write across a process crash (kill -9), `full` also across power loss.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, Transaction, params};
use sip_core::transport::Transport;

use crate::location::{Binding, CallIdHash, Source};

/// Storage failures are I/O faults: the request that needed the write gets a 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage: {0}")]
    Postgres(#[from] crate::pg::PgError),
    #[error("storage: cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

/// Durable bindings by AOR.
pub trait LocationStore: Send {
    /// Every AOR ever registered with its stored bindings (possibly none).
    fn load_all(&mut self) -> Result<Vec<(String, Vec<Binding>)>, StoreError>;
    /// Replaces the bindings of `aor` atomically.
    fn put(&mut self, aor: &str, bindings: &[Binding]) -> Result<(), StoreError>;
    /// Deletes the bindings of `aors` that lapsed at or before `unix_now`. The location
    /// service names the AORs where it found lapsed bindings, so the embedded store needs
    /// no index on the expiry (that index was 40 % of the store thread's time per
    /// REGISTER). A store may delete lapsed bindings of other AORs too (PostgreSQL
    /// deletes every lapsed binding in one statement).
    fn purge_expired(&mut self, unix_now: u64, aors: &[Arc<str>]) -> Result<(), StoreError>;
    /// Applies `writes` in order, all or none: one transaction for the whole group
    /// (group commit; the write-behind worker calls it with what queued up while the
    /// previous group committed).
    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        for w in writes {
            match w {
                Write::Put { aor, bindings, .. } => self.put(aor, bindings)?,
                Write::PurgeExpired { unix_now, aors } => self.purge_expired(*unix_now, aors)?,
            }
        }
        Ok(())
    }
}

/// One durable change of the location service, as the write-behind worker applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// The bindings of `aor` become exactly `bindings`.
    Put {
        aor: Arc<str>,
        bindings: Box<[Binding]>,
        /// A refresh: the stored bindings of `aor` have exactly these Contacts, so a
        /// store may update its rows in place (SQLite does, and rewrites them if a row
        /// is missing). A hint only: the result is the same either way.
        in_place: bool,
    },
    /// The bindings of `aors` that lapsed at or before `unix_now` go.
    PurgeExpired {
        unix_now: u64,
        aors: Box<[Arc<str>]>,
    },
}

/// The reference implementation and engine-test double.
#[derive(Debug, Default)]
pub struct MemoryStore {
    aors: HashMap<String, Vec<Binding>>,
}

impl LocationStore for MemoryStore {
    fn load_all(&mut self) -> Result<Vec<(String, Vec<Binding>)>, StoreError> {
        Ok(self
            .aors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn put(&mut self, aor: &str, bindings: &[Binding]) -> Result<(), StoreError> {
        self.aors.insert(aor.to_owned(), bindings.to_vec());
        Ok(())
    }
    fn purge_expired(&mut self, unix_now: u64, aors: &[Arc<str>]) -> Result<(), StoreError> {
        for aor in aors {
            if let Some(v) = self.aors.get_mut(&**aor) {
                v.retain(|b| b.expires_at > unix_now);
            }
        }
        Ok(())
    }
}

/// How hard SQLite syncs a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Survives a process crash (kill -9); the OS may lose the last commits on power loss.
    Normal,
    /// fsync on every commit: survives power loss, costs a disk flush per REGISTER.
    Full,
}

/// The embedded default store: one SQLite file in the data directory.
pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS aor (aor TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS binding (
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    q INTEGER NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    path TEXT NOT NULL,
    source TEXT,
    max_calls INTEGER,
    load_query INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (aor, contact)
) WITHOUT ROWID;
-- Purges go by AOR (the location service names them), so no index on expires_at:
-- keeping one up to date was 40 % of the store thread's time per REGISTER.
DROP INDEX IF EXISTS binding_expiry;
";

impl SqliteStore {
    /// Opens (or creates) `DIR/permit.sqlite`.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join("permit.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.execute_batch(SCHEMA)?;
        // Data directories from before the gate lack the two binding columns.
        let has_max_calls: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('binding') WHERE name = 'max_calls'")?
            .exists([])?;
        if !has_max_calls {
            conn.execute_batch(
                "ALTER TABLE binding ADD COLUMN max_calls INTEGER;
                 ALTER TABLE binding ADD COLUMN load_query INTEGER NOT NULL DEFAULT 1;",
            )?;
        }
        Ok(Self { conn })
    }
}

/// `UDP 192.0.2.1:5060`. An IPv4 address is written by hand: `format!` was a tenth of
/// the store thread's time under REGISTER load (with the Call-ID hash's text).
pub(crate) fn source_to_text(s: Option<Source>) -> Option<String> {
    let (t, a) = s?.get();
    let SocketAddr::V4(v4) = a else {
        return Some(format!("{} {a}", t.via_token()));
    };
    let mut num = itoa::Buffer::new();
    let mut out = String::with_capacity(25);
    out.push_str(t.via_token());
    out.push(' ');
    for (i, o) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(num.format(o));
    }
    out.push(':');
    out.push_str(num.format(v4.port()));
    Some(out)
}

pub(crate) fn source_from_text(s: Option<String>) -> Option<Source> {
    let s = s?;
    let (t, a) = s.split_once(' ')?;
    let a: SocketAddr = a.parse().ok()?;
    Some((Transport::from_token(t.as_bytes())?, a).into())
}

impl LocationStore for SqliteStore {
    fn load_all(&mut self) -> Result<Vec<(String, Vec<Binding>)>, StoreError> {
        let mut out: HashMap<String, Vec<Binding>> = HashMap::new();
        let mut aors = self.conn.prepare("SELECT aor FROM aor")?;
        for aor in aors.query_map([], |r| r.get::<_, String>(0))? {
            out.entry(aor?).or_default();
        }
        let mut stmt = self.conn.prepare(
            "SELECT aor, contact, expires_at, q, call_id, cseq, path, source, max_calls, load_query FROM binding",
        )?;
        let rows = stmt.query_map([], |r| {
            let path: String = r.get(6)?;
            Ok((
                r.get::<_, String>(0)?,
                Binding {
                    contact: r.get(1)?,
                    expires_at: r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                    q: r.get::<_, i64>(3)?.try_into().unwrap_or(1000),
                    call_id: CallIdHash::from_text(&r.get::<_, String>(4)?),
                    cseq: r.get::<_, i64>(5)?.try_into().unwrap_or(0),
                    path: path.lines().map(str::to_owned).collect(),
                    source: source_from_text(r.get(7)?),
                    max_calls: r
                        .get::<_, Option<i64>>(8)?
                        .and_then(|n| u32::try_from(n).ok()),
                    load_query: r.get::<_, i64>(9)? != 0,
                },
            ))
        })?;
        for row in rows {
            let (aor, b) = row?;
            out.entry(aor).or_default().push(b);
        }
        Ok(out.into_iter().collect())
    }

    fn put(&mut self, aor: &str, bindings: &[Binding]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        put_in(&tx, aor, bindings)?;
        tx.commit()?;
        Ok(())
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for w in writes {
            match w {
                Write::Put {
                    aor,
                    bindings,
                    in_place,
                } => {
                    if !(*in_place && update_in(&tx, aor, bindings)?) {
                        put_in(&tx, aor, bindings)?;
                    }
                }
                Write::PurgeExpired { unix_now, aors } => purge_in(&tx, *unix_now, aors)?,
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn purge_expired(&mut self, unix_now: u64, aors: &[Arc<str>]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        purge_in(&tx, unix_now, aors)?;
        tx.commit()?;
        Ok(())
    }
}

/// SQLite's `data_version` of `conn`'s database file: it moves when another connection
/// commits (this connection's own commits leave it), so a cache kept beside a
/// connection (users, permit lists, owners with items) knows when to read again.
pub(crate) fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

/// Replaces the bindings of `aor` inside `tx`.
fn put_in(tx: &Transaction<'_>, aor: &str, bindings: &[Binding]) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT OR IGNORE INTO aor (aor) VALUES (?1)")?
        .execute([aor])?;
    tx.prepare_cached("DELETE FROM binding WHERE aor = ?1")?
        .execute([aor])?;
    let mut ins = tx.prepare_cached(
        "INSERT INTO binding (aor, contact, expires_at, q, call_id, cseq, path, source, max_calls, load_query)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for b in bindings {
        execute_row(&mut ins, aor, b)?;
    }
    Ok(())
}

/// Runs `stmt` with a binding's row: `?1` the AOR, `?2` the Contact, then expires_at,
/// q, call_id, cseq, path, source, max_calls, load_query.
fn execute_row(
    stmt: &mut rusqlite::CachedStatement<'_>,
    aor: &str,
    b: &Binding,
) -> rusqlite::Result<usize> {
    stmt.execute(params![
        aor,
        b.contact,
        i64::try_from(b.expires_at).unwrap_or(i64::MAX),
        i64::from(b.q),
        b.call_id.to_text(),
        i64::from(b.cseq),
        b.path.join("\n"),
        source_to_text(b.source),
        b.max_calls.map(i64::from),
        i64::from(b.load_query),
    ])
}

/// Updates the rows of a refresh in place: one statement per binding instead of the
/// AOR's insert, delete and inserts (at 30,000 REGISTER/s the store thread's CPU per
/// REGISTER went from 3.3–3.8 to 2.8–3.0 µs). `false` (and maybe some rows updated,
/// which [`put_in`] then rewrites in the same transaction) when a Contact has no row.
fn update_in(tx: &Transaction<'_>, aor: &str, bindings: &[Binding]) -> Result<bool, StoreError> {
    let mut up = tx.prepare_cached(
        "UPDATE binding SET expires_at = ?3, q = ?4, call_id = ?5, cseq = ?6, path = ?7,
             source = ?8, max_calls = ?9, load_query = ?10
         WHERE aor = ?1 AND contact = ?2",
    )?;
    for b in bindings {
        if execute_row(&mut up, aor, b)? != 1 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn purge_in(tx: &Transaction<'_>, unix_now: u64, aors: &[Arc<str>]) -> Result<(), StoreError> {
    let now = i64::try_from(unix_now).unwrap_or(i64::MAX);
    let mut del = tx.prepare_cached("DELETE FROM binding WHERE aor = ?1 AND expires_at <= ?2")?;
    for aor in aors {
        del.execute(params![&**aor, now])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(contact: &str, expires_at: u64) -> Binding {
        Binding {
            contact: contact.into(),
            expires_at,
            q: 500,
            call_id: CallIdHash::of("c1"),
            cseq: 7,
            path: vec!["<sip:edge1;lr>".into(), "<sip:edge2;lr>".into()].into(),
            source: Some(
                (
                    Transport::Tcp,
                    "127.0.0.1:5099".parse::<SocketAddr>().unwrap(),
                )
                    .into(),
            ),
            max_calls: Some(2),
            load_query: false,
        }
    }

    #[test]
    fn source_and_call_id_texts_are_the_formatted_forms() {
        for (t, a) in [
            (Transport::Udp, "0.0.0.0:0"),
            (Transport::Tcp, "255.255.255.255:65535"),
            (Transport::Tls, "10.1.20.3:5061"),
            (Transport::Udp, "[2001:db8::1]:5060"),
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let text = source_to_text(Some((t, a).into())).unwrap();
            assert_eq!(text, format!("{} {a}", t.via_token()));
            assert_eq!(source_from_text(Some(text)).map(Source::get), Some((t, a)));
        }
        assert_eq!(source_to_text(None), None);
        for h in [0, 1, 0xfedc_ba98_7654_3210, u64::MAX] {
            assert_eq!(CallIdHash(h).to_text(), format!("h:{h:016x}"));
            assert_eq!(
                CallIdHash::from_text(&CallIdHash(h).to_text()),
                CallIdHash(h)
            );
        }
    }

    #[test]
    fn sqlite_round_trip_and_purge() {
        let dir = std::env::temp_dir().join(format!("permit-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = SqliteStore::open(&dir, Durability::Normal).unwrap();
            s.put(
                "alice@localhost",
                &[
                    binding("sip:a@127.0.0.1:5070", 100),
                    binding("sip:a@h2", 50),
                ],
            )
            .unwrap();
            s.put("bob@localhost", &[]).unwrap();
            s.put("carol@localhost", &[binding("sip:c@h3", 40)])
                .unwrap();
            // Only the AORs the location names: carol's lapsed binding waits for hers.
            s.purge_expired(60, &[Arc::from("alice@localhost")])
                .unwrap();
        }
        let mut s = SqliteStore::open(&dir, Durability::Full).unwrap();
        let mut all = s.load_all().unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].0, "alice@localhost");
        assert_eq!(all[0].1, vec![binding("sip:a@127.0.0.1:5070", 100)]);
        assert_eq!(all[1], ("bob@localhost".to_owned(), vec![]));
        assert_eq!(all[2].1, vec![binding("sip:c@h3", 40)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A refresh updates its rows in place; a hint that does not hold (a Contact
    /// without a row) still leaves exactly the given bindings.
    #[test]
    fn an_in_place_put_ends_as_a_full_one() {
        let dir = std::env::temp_dir().join(format!("permit-store-inplace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = SqliteStore::open(&dir, Durability::Normal).unwrap();
        let put = |bindings: Vec<Binding>, in_place| Write::Put {
            aor: Arc::from("alice@localhost"),
            bindings: bindings.into(),
            in_place,
        };
        s.apply(&[put(
            vec![binding("sip:a@h1", 100), binding("sip:a@h2", 50)],
            false,
        )])
        .unwrap();
        let refreshed = vec![binding("sip:a@h1", 700), binding("sip:a@h2", 900)];
        s.apply(&[put(refreshed.clone(), true)]).unwrap();
        assert_eq!(s.load_all().unwrap()[0].1.len(), 2);
        let mut got = s.load_all().unwrap().remove(0).1;
        got.sort_by_key(|b| b.expires_at);
        assert_eq!(got, refreshed);
        // A wrong hint: h3 has no row, h2 must go.
        let moved = vec![binding("sip:a@h1", 800), binding("sip:a@h3", 800)];
        s.apply(&[put(moved.clone(), true)]).unwrap();
        let mut got = s.load_all().unwrap().remove(0).1;
        got.sort_by(|a, b| a.contact.cmp(&b.contact));
        assert_eq!(got, moved);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The location service purges what lapsed in memory and names those AORs to the
    /// store; a data directory from before keeps no expiry index.
    #[test]
    fn location_purge_reaches_sqlite_and_the_old_index_goes() {
        let dir = std::env::temp_dir().join(format!("permit-store-purge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Connection::open(dir.join("permit.sqlite"))
            .unwrap()
            .execute_batch(
                "CREATE TABLE binding (aor TEXT NOT NULL, contact TEXT NOT NULL,
                     expires_at INTEGER NOT NULL, q INTEGER NOT NULL, call_id TEXT NOT NULL,
                     cseq INTEGER NOT NULL, path TEXT NOT NULL, source TEXT,
                     PRIMARY KEY (aor, contact)) WITHOUT ROWID;
                 CREATE INDEX binding_expiry ON binding (expires_at);",
            )
            .unwrap();
        {
            let store = SqliteStore::open(&dir, Durability::Normal).unwrap();
            let index: bool = store
                .conn
                .prepare("SELECT 1 FROM sqlite_master WHERE name = 'binding_expiry'")
                .unwrap()
                .exists([])
                .unwrap();
            assert!(!index, "the expiry index is dropped");
            let mut l = crate::location::Location::open(Box::new(store)).unwrap();
            l.replace(
                "alice@localhost",
                vec![binding("sip:a@h1", 100), binding("sip:a@h2", 50)],
            )
            .unwrap();
            l.replace("bob@localhost", vec![binding("sip:b@h1", 40)])
                .unwrap();
            l.replace("carol@localhost", vec![binding("sip:c@h1", 90)])
                .unwrap();
            assert_eq!(l.purge(60).unwrap(), 2);
            assert_eq!(l.purge(60).unwrap(), 0, "nothing left to purge");
        }
        let mut all = SqliteStore::open(&dir, Durability::Normal)
            .unwrap()
            .load_all()
            .unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            all,
            vec![
                ("alice@localhost".to_owned(), vec![binding("sip:a@h1", 100)]),
                ("bob@localhost".to_owned(), vec![]),
                ("carol@localhost".to_owned(), vec![binding("sip:c@h1", 90)]),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
