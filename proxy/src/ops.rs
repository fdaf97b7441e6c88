//! The operator's operations on users and permitted-terminal lists: one library API
//! behind both the command line (`permit-proxy user …`, `permit-proxy permit …`) and
//! the admin HTTP API ([`crate::admin`]); neither holds logic of its own.
//!
//! I/O contract: every call is synchronous and commits to the data directory's SQLite
//! file before it returns. A running proxy applies the change on its next read
//! (`PRAGMA data_version`, the permit change-log), exactly as for the CLI, so these
//! calls never touch the engine.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use crate::control::{BindingInfo, ItemInfo};
use crate::mailbox::{MailboxError, SqliteItems, StoredItems};
use crate::permits::{
    Aor, ETag, Imported, PermitEntry, PermitError, PermitStore, Permits, SqlitePermitStore,
    StoredList, Written,
};
use crate::pg::{AnyUsers, PgUrl};
use crate::store::{Durability, LocationStore, SqliteStore, StoreError};
use crate::users::{SqliteUsers, UserRecord};

/// Page size when the caller names none, and the largest one served.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// Operator failures by fault (STYLE.md rule 8); [`OpsError::status`] is the HTTP
/// status of each (the CLI prints the message and exits 1).
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Malformed input (400).
    #[error("{0}")]
    BadInput(String),
    /// The user exists already (409).
    #[error("user {0} exists; use `user passwd`")]
    UserExists(String),
    /// No such user (404).
    #[error("no user {0}")]
    NoUser(String),
    /// Nothing by that name (404).
    #[error("{0}")]
    NotFound(String),
    /// Permit-list failures keep their own fault and status.
    #[error(transparent)]
    Permit(#[from] PermitError),
    /// Storage (500).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    /// A file named by the operator (400: it is the operator's input).
    #[error("{0}")]
    File(String),
}

impl OpsError {
    /// The HTTP status for this failure.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadInput(_) | Self::File(_) => 400,
            Self::UserExists(_) => 409,
            Self::NoUser(_) | Self::NotFound(_) => 404,
            // RFC 3903's statuses mean the same in HTTP (RFC 9110 §15.5.13, §15.5.14).
            Self::Permit(e) => e.status(),
            Self::Store(_) | Self::Mailbox(_) => 500,
        }
    }
}

/// Which slice of a sorted listing to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Page {
    /// Everything (the CLI lists all).
    pub const ALL: Page = Page {
        offset: 0,
        limit: usize::MAX,
    };

    /// A page from optional query values: [`DEFAULT_PAGE`] items by default, at most
    /// [`MAX_PAGE`].
    pub fn new(offset: Option<usize>, limit: Option<usize>) -> Self {
        Page {
            offset: offset.unwrap_or(0),
            limit: limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
        }
    }
}

/// One page of a listing: the items, how many there are in all, and the offset of
/// the next page (`None` on the last).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub total: usize,
    pub next: Option<usize>,
}

impl<T> Paged<T> {
    fn slice(all: Vec<T>, page: Page) -> Self {
        let total = all.len();
        let end = page.offset.saturating_add(page.limit).min(total);
        let items: Vec<T> = all
            .into_iter()
            .skip(page.offset)
            .take(end.saturating_sub(page.offset))
            .collect();
        Paged {
            items,
            total,
            next: (end < total).then_some(end),
        }
    }
}

/// A user as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserInfo {
    pub name: String,
    pub realm: String,
}

/// A callee's list as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListInfo {
    pub callee: String,
    pub etag: String,
    pub entries: Vec<String>,
}

/// The operations on one data directory.
pub struct Ops {
    data: PathBuf,
    domain: String,
    durability: Durability,
    users: AnyUsers,
    /// The PostgreSQL backend's URL and item store when the tables live there.
    pg: Option<PgUrl>,
    pg_items: Option<crate::pg::PgItems>,
    permits: Permits,
}

impl Ops {
    /// Opens the user and permit stores of `data`, serving `domain` (the realm of new
    /// users; settled with the data directory beforehand, see `users::claim_domain`).
    pub fn open(data: &Path, domain: &str, durability: Durability) -> Result<Self, OpsError> {
        Ok(Self {
            data: data.to_path_buf(),
            domain: domain.to_owned(),
            durability,
            users: AnyUsers::Sqlite(SqliteUsers::open(data)?),
            pg: None,
            pg_items: None,
            permits: Permits::open_admin(data, durability)?,
        })
    }

    /// The operations on the PostgreSQL backend at `url` (users and permits there;
    /// `data` still names this node's data directory).
    pub fn open_postgres(
        url: &PgUrl,
        data: &Path,
        domain: &str,
        durability: Durability,
    ) -> Result<Self, OpsError> {
        let node = crate::pg::NodeId::random();
        let users = crate::pg::PgUsers::open(url, node.clone(), std::sync::Arc::default())?;
        let permits = crate::pg::PgPermitStore::open(url, node, std::sync::Arc::default())?;
        Ok(Self {
            data: data.to_path_buf(),
            domain: domain.to_owned(),
            durability,
            users: AnyUsers::Postgres(users),
            pg: Some(url.clone()),
            pg_items: Some(crate::pg::PgItems::open(
                url,
                data,
                crate::pg::NodeId::random(),
            )?),
            permits: Permits::admin_with_store(Box::new(permits)),
        })
    }

    /// The served domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether the stores answer (one read of each).
    pub fn ready(&mut self) -> Result<(), OpsError> {
        self.users.count()?;
        self.permits.known_callee("readiness@probe.invalid");
        Ok(())
    }

    // ------------------------------------------------------------ users

    /// Adds user `name` (the user part of the AOR) with the password `password`
    /// yields; the password is asked for only once the name is known to be free.
    /// Returns the AOR `name@domain`.
    pub fn add_user(
        &mut self,
        name: &str,
        password: impl FnOnce() -> Result<String, OpsError>,
    ) -> Result<String, OpsError> {
        if name.is_empty() || name.contains(['@', ':', ' ']) {
            return Err(OpsError::BadInput(format!(
                "bad user name {name:?}: use the user part of the AOR"
            )));
        }
        if self.users.exists(name)? {
            return Err(OpsError::UserExists(name.to_owned()));
        }
        let pw = checked(password()?)?;
        self.users.put(&UserRecord::new(name, &self.domain, &pw))?;
        Ok(format!("{name}@{}", self.domain))
    }

    /// Changes `name`'s password.
    pub fn set_password(
        &mut self,
        name: &str,
        password: impl FnOnce() -> Result<String, OpsError>,
    ) -> Result<(), OpsError> {
        if !self.users.exists(name)? {
            return Err(OpsError::NoUser(name.to_owned()));
        }
        let pw = checked(password()?)?;
        self.users.put(&UserRecord::new(name, &self.domain, &pw))?;
        Ok(())
    }

    /// Deletes `name`.
    pub fn remove_user(&mut self, name: &str) -> Result<(), OpsError> {
        if !self.users.delete(name)? {
            return Err(OpsError::NoUser(name.to_owned()));
        }
        Ok(())
    }

    /// Users sorted by name, one page of them.
    pub fn list_users(&self, page: Page) -> Result<Paged<UserInfo>, OpsError> {
        let all = self
            .users
            .list()?
            .into_iter()
            .map(|(name, realm)| UserInfo { name, realm })
            .collect();
        Ok(Paged::slice(all, page))
    }

    // ------------------------------------------------------------ permits

    /// Puts `caller` (`alice@example.org` or `*@example.org`) on `callee`'s list.
    pub fn add_permit(&mut self, callee: &str, caller: &str) -> Result<Written, OpsError> {
        let (callee, caller) = (Aor::parse(callee)?, PermitEntry::parse(caller)?);
        Ok(self.permits.add(&callee, &caller, None)?)
    }

    /// Takes `caller` off `callee`'s list.
    pub fn remove_permit(&mut self, callee: &str, caller: &str) -> Result<Written, OpsError> {
        let (callee, caller) = (Aor::parse(callee)?, PermitEntry::parse(caller)?);
        Ok(self.permits.remove(&callee, &caller, None)?)
    }

    /// `callee`'s list (sorted) and its entity-tag; `None` when it has none (then
    /// nobody may reach it).
    pub fn permit_list(&mut self, callee: &str) -> Result<Option<ListInfo>, OpsError> {
        let callee = Aor::parse(callee)?;
        Ok(
            match (
                self.permits.list(callee.as_str()),
                self.permits.etag(callee.as_str()),
            ) {
                (Some(entries), Some(etag)) => Some(list_info(&callee, etag, &entries)),
                _ => None,
            },
        )
    }

    /// Every callee's list, sorted by callee, one page of them. Only the callees are
    /// held while the page is chosen (a million callees cost tens of MB, not their
    /// entries); then the page's lists are read one by one.
    pub fn permit_lists(&mut self, page: Page) -> Result<Paged<ListInfo>, OpsError> {
        let mut callees: Vec<Aor> = Vec::new();
        self.each_list(&mut |l| {
            callees.push(l.callee);
            Ok(())
        })?;
        callees.sort_unstable();
        let chosen = Paged::slice(callees, page);
        let mut items = Vec::with_capacity(chosen.items.len());
        for callee in &chosen.items {
            // A list removed meanwhile is left out of the page.
            if let Some(l) = self.permit_list(callee.as_str())? {
                items.push(l);
            }
        }
        Ok(Paged {
            items,
            total: chosen.total,
            next: chosen.next,
        })
    }

    /// Adds every `callee,caller` line of `reader` (all or nothing, docs/permits.md).
    pub fn import_permits(&mut self, reader: impl BufRead) -> Result<Imported, OpsError> {
        Ok(self.permits.import_csv(reader)?)
    }

    /// [`Self::import_permits`] from the file at `path`.
    pub fn import_permit_file(&mut self, path: &Path) -> Result<Imported, OpsError> {
        let f = std::fs::File::open(path)
            .map_err(|e| OpsError::File(format!("{}: {e}", path.display())))?;
        self.import_permits(std::io::BufReader::new(f))
    }

    /// Writes every list as `callee,caller` lines, the import format (an export read
    /// back by [`Self::import_permits`] restores the same lists). Callees without
    /// entries have no line: an empty list and no list both permit no one.
    pub fn export_permits(&self, out: &mut dyn Write) -> Result<usize, OpsError> {
        let mut lines = 0;
        let mut failed = None;
        writeln!(out, "# callee,caller").map_err(write_failed)?;
        let r = self.each_list(&mut |l| {
            let mut entries = l.entries;
            entries.sort_unstable();
            for e in entries {
                if let Err(e) = writeln!(out, "{},{e}", l.callee) {
                    failed = Some(write_failed(e));
                    // Any error stops the load; the write failure is what is reported.
                    return Err(PermitError::TableFull);
                }
                lines += 1;
            }
            Ok(())
        });
        match failed {
            Some(e) => Err(e),
            None => r.map(|()| lines),
        }
    }

    /// Unexpired stored items and their bytes (uploaded files by their size), read
    /// from `DIR/mailbox.sqlite` on a read-only connection; none without the file.
    pub fn store_usage(&self, unix_now: u64) -> Result<(u64, u64), OpsError> {
        if let Some(items) = &self.pg_items {
            let u = items.usage_total(unix_now)?;
            return Ok((u.items, u.bytes));
        }
        let path = self.data.join(crate::mailbox::sqlite::FILE);
        if !path.exists() {
            return Ok((0, 0));
        }
        let read = || -> rusqlite::Result<(i64, i64)> {
            let conn = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(1))?;
            conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM item WHERE expires_at > ?1",
                [i64::try_from(unix_now).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        };
        let (items, bytes) = read().map_err(|e| OpsError::Store(e.into()))?;
        Ok((
            u64::try_from(items).unwrap_or(0),
            u64::try_from(bytes).unwrap_or(0),
        ))
    }

    // ------------------------------------------------------------ as stored

    /// `aor`'s bindings as stored, read from the location table (without the running
    /// engine; its memory can be a moment ahead while writes settle).
    pub fn stored_bindings(&self, aor: &str, unix_now: u64) -> Result<Vec<BindingInfo>, OpsError> {
        let aor = Aor::parse(aor)?;
        let list = if let Some(url) = &self.pg {
            crate::pg::PgLocationStore::open(url, crate::pg::NodeId::random())?
                .bindings_of(aor.as_str())?
        } else {
            let mut store = SqliteStore::open(&self.data, self.durability)?;
            store
                .load_all()?
                .into_iter()
                .find_map(|(a, list)| (a == aor.as_str()).then_some(list))
                .unwrap_or_default()
        };
        if list.is_empty() {
            return Err(OpsError::NotFound(format!("no bindings for {aor}")));
        }
        Ok(list
            .iter()
            .map(|b| BindingInfo {
                contact: b.contact.to_string(),
                expires_in: b.expires_at.saturating_sub(unix_now),
                q: b.q,
            })
            .collect())
    }

    /// The unexpired items waiting for `owner`, oldest first (at most
    /// [`MAX_PAGE`]; no bodies), read from `DIR/mailbox.sqlite`.
    pub fn stored_items(&self, owner: &str, unix_now: u64) -> Result<Vec<ItemInfo>, OpsError> {
        let owner = Aor::parse(owner)?;
        if let Some(items) = &self.pg_items {
            let listed = items.listed(owner.as_str(), unix_now, MAX_PAGE)?;
            return Ok(listed.into_iter().map(ItemInfo::from).collect());
        }
        if !self.data.join(crate::mailbox::sqlite::FILE).exists() {
            return Ok(Vec::new());
        }
        let mut items = SqliteItems::open(&self.data, 0)?;
        Ok(items
            .list(owner.as_str(), unix_now, MAX_PAGE)?
            .into_iter()
            .map(ItemInfo::from)
            .collect())
    }

    /// Feeds every stored list to `sink` through a second connection (the admin view
    /// reads the store, never a full table in memory).
    fn each_list(
        &self,
        sink: &mut dyn FnMut(StoredList) -> Result<(), PermitError>,
    ) -> Result<(), OpsError> {
        if let Some(url) = &self.pg {
            let mut store = crate::pg::PgPermitStore::open(
                url,
                crate::pg::NodeId::random(),
                std::sync::Arc::default(),
            )?;
            store.load_all(sink)?;
            return Ok(());
        }
        let mut store = SqlitePermitStore::open(&self.data, self.durability)?;
        store.load_all(sink)?;
        Ok(())
    }
}

fn write_failed(e: std::io::Error) -> OpsError {
    OpsError::File(format!("export: {e}"))
}

fn checked(pw: String) -> Result<String, OpsError> {
    if pw.is_empty() {
        return Err(OpsError::BadInput("empty password".into()));
    }
    Ok(pw)
}

fn list_info(callee: &Aor, etag: ETag, entries: &[PermitEntry]) -> ListInfo {
    ListInfo {
        callee: callee.to_string(),
        etag: etag.to_string(),
        entries: entries.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(test: &str) -> (Ops, PathBuf) {
        let dir = std::env::temp_dir().join(format!("permit-ops-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (
            Ops::open(&dir, "example.org", Durability::Normal).unwrap(),
            dir,
        )
    }

    fn pw(p: &str) -> impl FnOnce() -> Result<String, OpsError> {
        let p = p.to_owned();
        move || Ok(p)
    }

    #[test]
    fn users_add_list_page_passwd_remove() {
        let (mut o, dir) = ops("users");
        for n in ["carol", "alice", "bob"] {
            assert_eq!(o.add_user(n, pw("x")).unwrap(), format!("{n}@example.org"));
        }
        assert!(matches!(
            o.add_user("bob", pw("y")),
            Err(OpsError::UserExists(_))
        ));
        assert_eq!(o.add_user("a@b", pw("y")).unwrap_err().status(), 400);
        assert_eq!(o.add_user("dave", pw("")).unwrap_err().status(), 400);
        let p = o.list_users(Page::new(Some(1), Some(1))).unwrap();
        assert_eq!(p.items[0].name, "bob");
        assert_eq!((p.total, p.next), (3, Some(2)));
        let last = o.list_users(Page::new(Some(2), Some(5))).unwrap();
        assert_eq!((last.items.len(), last.next), (1, None));
        o.set_password("bob", pw("z")).unwrap();
        assert_eq!(o.set_password("zed", pw("z")).unwrap_err().status(), 404);
        o.remove_user("bob").unwrap();
        assert_eq!(o.remove_user("bob").unwrap_err().status(), 404);
        let names: Vec<String> = o
            .list_users(Page::ALL)
            .unwrap()
            .items
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["alice", "carol"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn permits_add_list_export_import_round_trip() {
        let (mut o, dir) = ops("permits");
        assert!(
            o.add_permit("bob@example.org", "alice@example.org")
                .unwrap()
                .changed
        );
        assert!(
            !o.add_permit("bob@example.org", "alice@example.org")
                .unwrap()
                .changed
        );
        o.add_permit("bob@example.org", "*@partner.org").unwrap();
        o.add_permit("carol@example.org", "bob@example.org")
            .unwrap();
        assert_eq!(o.add_permit("nobody", "x@y").unwrap_err().status(), 400);
        let bob = o.permit_list("bob@example.org").unwrap().unwrap();
        assert_eq!(bob.entries, ["alice@example.org", "*@partner.org"]);
        assert!(o.permit_list("zed@example.org").unwrap().is_none());
        let lists = o.permit_lists(Page::new(None, Some(1))).unwrap();
        assert_eq!(lists.items[0].callee, "bob@example.org");
        assert_eq!((lists.total, lists.next), (2, Some(1)));
        let mut csv = Vec::new();
        assert_eq!(o.export_permits(&mut csv).unwrap(), 3);
        assert!(
            o.remove_permit("bob@example.org", "*@partner.org")
                .unwrap()
                .changed
        );
        let (mut other, dir2) = ops("permits-import");
        let n = other.import_permits(&csv[..]).unwrap();
        assert_eq!((n.lines, n.callees), (3, 2));
        assert_eq!(
            other
                .permit_list("bob@example.org")
                .unwrap()
                .unwrap()
                .entries,
            bob.entries
        );
        let bad = other.import_permits(&b"bob@example.org\n"[..]).unwrap_err();
        assert_eq!(bad.status(), 400);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&dir2);
    }

    #[test]
    fn registrations_and_items_as_stored() {
        use crate::location::{Binding, CallIdHash};
        use crate::mailbox::{Item, ItemId};
        let (o, dir) = ops("stored");
        assert_eq!(
            o.stored_bindings("bob@example.org", 1000)
                .unwrap_err()
                .status(),
            404
        );
        let binding = |contact: &str, expires_at| Binding {
            contact: contact.into(),
            expires_at,
            q: 500,
            call_id: CallIdHash::of("c"),
            cseq: 1,
            path: crate::location::PathList::default(),
            source: None,
            max_calls: None,
            load_query: true,
        };
        let mut store = SqliteStore::open(&dir, Durability::Normal).unwrap();
        let bindings = [
            binding("sip:bob@192.0.2.1", 1600),
            binding("sip:bob@192.0.2.2", 900),
        ];
        store.put("bob@example.org", &bindings).unwrap();
        let mut listed = o.stored_bindings("sip:bob@EXAMPLE.org", 1000).unwrap();
        listed.sort_by(|a, b| a.contact.cmp(&b.contact));
        assert_eq!(
            listed,
            [
                BindingInfo {
                    contact: "sip:bob@192.0.2.1".into(),
                    expires_in: 600,
                    q: 500
                },
                BindingInfo {
                    contact: "sip:bob@192.0.2.2".into(),
                    expires_in: 0,
                    q: 500
                },
            ]
        );
        assert_eq!(o.stored_bindings("nobody", 1000).unwrap_err().status(), 400);
        assert!(o.stored_items("bob@example.org", 1000).unwrap().is_empty());
        assert_eq!(o.store_usage(1000).unwrap(), (0, 0));
        let mut items = SqliteItems::open(&dir, 0).unwrap();
        let id = ItemId([7; 16]);
        let item = Item::new(
            id,
            "bob@example.org",
            "alice@example.org",
            "text/plain",
            "",
            b"hello".to_vec(),
            900,
            2000,
        );
        items.put(&item).unwrap();
        let listed = o.stored_items("bob@example.org", 1000).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].id.as_str(), listed[0].size),
            (id.to_string().as_str(), 5)
        );
        assert!(
            o.stored_items("bob@example.org", 2000).unwrap().is_empty(),
            "expired"
        );
        assert_eq!(o.store_usage(1000).unwrap(), (1, 5));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
