//! Stored items in PostgreSQL (tables `item`, `upload_slot`): every write is committed
//! before it returns, like the embedded store's synced commit.
//!
//! Nodes share the items: a deposit made at one node is listed and delivered by any
//! other. Reading an item to deliver it ([`StoredItems::get`]) is an atomic claim
//! (`UPDATE … WHERE unclaimed … RETURNING`): for [`CLAIM_S`] seconds no other node
//! reads it, so a callee that asks two nodes at once gets each item from one of them;
//! the claiming node may read it again (a retried delivery), and a claim of a node that
//! died lapses. A delivered item is removed with `DELETE … RETURNING` on the callee's
//! 2xx, so exactly one node sees it go; it is never handed out again.
//! Uploaded files stay in the data directory of the node that received them.

use std::path::PathBuf;

use postgres::GenericClient;
use postgres::error::SqlState;

use super::{Db, NodeId, PgError, PgUrl, int, uint};
use crate::mailbox::{Item, ItemId, ItemMeta, MailboxError, Slot, StoredItems, Usage};

impl From<PgError> for MailboxError {
    fn from(e: PgError) -> Self {
        if let PgError::Db(db) = &e {
            match db.code() {
                Some(c) if *c == SqlState::UNIQUE_VIOLATION => return Self::Duplicate,
                Some(c) if *c == SqlState::DISK_FULL => return Self::Full,
                _ => {}
            }
        }
        Self::Postgres(e)
    }
}

impl From<postgres::Error> for MailboxError {
    fn from(e: postgres::Error) -> Self {
        PgError::Db(e).into()
    }
}

/// How long a node's claim on an item it read keeps other nodes from reading it.
pub const CLAIM_S: i64 = 30;

/// Items in the shared database.
pub struct PgItems {
    db: Db,
    node: NodeId,
    /// This node's uploaded files (`DIR/uploads`).
    files: PathBuf,
}

const ITEM_COLUMNS: &str =
    "id, owner, sender, content_type, attributes, body, size, sha256, stored_at, expires_at";
const SLOT_COLUMNS: &str =
    "id, owner, sender, content_type, attributes, name, size, sha256, created_at, expires_at";

fn digest(v: &[u8]) -> [u8; 32] {
    v.try_into().unwrap_or([0; 32])
}

fn item_from_row(id: ItemId, r: &postgres::Row) -> Result<Item, postgres::Error> {
    Ok(Item {
        id,
        owner: r.try_get(1)?,
        sender: r.try_get(2)?,
        content_type: r.try_get(3)?,
        attributes: r.try_get(4)?,
        body: r.try_get(5)?,
        sha256: digest(r.try_get(7)?),
        stored_at: uint(r.try_get(8)?),
        expires_at: uint(r.try_get(9)?),
    })
}

fn insert_item(c: &mut impl GenericClient, item: &Item) -> Result<(), postgres::Error> {
    c.execute(
        &format!(
            "INSERT INTO item ({ITEM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ),
        &[
            &item.id.to_string(),
            &item.owner,
            &item.sender,
            &item.content_type,
            &item.attributes,
            &item.body,
            &int(item.stored_size()),
            &&item.sha256[..],
            &int(item.stored_at),
            &int(item.expires_at),
        ],
    )?;
    Ok(())
}

impl PgItems {
    /// Connects; `data` is this node's data directory (its `uploads/` files), `node`
    /// the name its claims carry.
    pub fn open(url: &PgUrl, data: &std::path::Path, node: NodeId) -> Result<Self, PgError> {
        Ok(Self {
            db: Db::open(url, "permit-pg-items")?,
            node,
            files: data.join(crate::mailbox::sqlite::FILES),
        })
    }

    /// Removes the files of `id` on this node, if any.
    fn remove_files(&self, id: &ItemId) {
        for p in [
            self.files.join(id.to_string()),
            self.files.join(format!("{id}.part")),
        ] {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "an uploaded file was not removed");
            }
        }
    }

    /// Unexpired items of every owner and their bytes (for `/metrics`).
    pub fn usage_total(&self, unix_now: u64) -> Result<Usage, MailboxError> {
        self.db.run(move |c| {
            let r = c.query_one(
                "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM item WHERE expires_at > $1",
                &[&int(unix_now)],
            )?;
            Ok(Usage {
                items: uint(r.try_get(0)?),
                bytes: uint(r.try_get(1)?),
            })
        })
    }

    /// [`StoredItems::list`] through a shared reference (the operator's view).
    pub fn listed(
        &self,
        owner: &str,
        unix_now: u64,
        limit: usize,
    ) -> Result<Vec<ItemMeta>, MailboxError> {
        let owner = owner.to_owned();
        let limit = int(limit as u64);
        let rows = self.db.run(move |c| {
            c.query(
                "SELECT id, sender, content_type, attributes, size, sha256, stored_at, expires_at
                 FROM item WHERE owner = $1 AND expires_at > $2
                 ORDER BY stored_at, id LIMIT $3",
                &[&owner, &int(unix_now), &limit],
            )
            .map_err(MailboxError::from)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            // A row edited by hand into a bad id is skipped, not fatal.
            let Some(id) = ItemId::parse(r.try_get(0)?) else {
                tracing::warn!("an item row has no valid id; skipped");
                continue;
            };
            out.push(ItemMeta {
                id,
                sender: r.try_get(1)?,
                content_type: r.try_get(2)?,
                attributes: r.try_get(3)?,
                size: uint(r.try_get(4)?),
                sha256: digest(r.try_get(5)?),
                stored_at: uint(r.try_get(6)?),
                expires_at: uint(r.try_get(7)?),
            });
        }
        Ok(out)
    }

    fn usage(&self, column: &'static str, who: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        let who = who.to_owned();
        let sql = format!(
            "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM (
                 SELECT size FROM item WHERE {column} = $1 AND expires_at > $2
                 UNION ALL
                 SELECT size FROM upload_slot WHERE {column} = $1 AND expires_at > $2) u"
        );
        self.db.run(move |c| {
            let r = c.query_one(&sql, &[&who, &int(unix_now)])?;
            Ok(Usage {
                items: uint(r.try_get(0)?),
                bytes: uint(r.try_get(1)?),
            })
        })
    }
}

impl StoredItems for PgItems {
    fn put(&mut self, item: &Item) -> Result<(), MailboxError> {
        let item = item.clone();
        self.db.run(move |c| {
            let mut tx = c.transaction()?;
            let slot = tx.query_opt(
                "SELECT 1 FROM upload_slot WHERE id = $1",
                &[&item.id.to_string()],
            )?;
            if slot.is_some() {
                return Err(MailboxError::Duplicate);
            }
            insert_item(&mut tx, &item)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The item, claimed for this node; `None` also while another node's claim holds.
    fn get(&mut self, id: &ItemId) -> Result<Option<Item>, MailboxError> {
        let id = *id;
        let node = self.node.0.clone();
        self.db.run(move |c| {
            let row = c.query_opt(
                &format!(
                    "UPDATE item SET claimed_by = $2,
                         claimed_until = extract(epoch FROM clock_timestamp())::BIGINT + $3
                     WHERE id = $1 AND (claimed_by IS NULL OR claimed_by = $2
                         OR claimed_until <= extract(epoch FROM clock_timestamp())::BIGINT)
                     RETURNING {ITEM_COLUMNS}"
                ),
                &[&id.to_string(), &node, &CLAIM_S],
            )?;
            Ok(row.map(|r| item_from_row(id, &r)).transpose()?)
        })
    }

    fn list(
        &mut self,
        owner: &str,
        unix_now: u64,
        limit: usize,
    ) -> Result<Vec<ItemMeta>, MailboxError> {
        self.listed(owner, unix_now, limit)
    }

    fn delete(&mut self, id: &ItemId) -> Result<bool, MailboxError> {
        let key = id.to_string();
        // The atomic claim: of two nodes settling one delivery, one gets the row.
        let gone = self.db.run(move |c| {
            c.query_opt("DELETE FROM item WHERE id = $1 RETURNING id", &[&key])
                .map_err(MailboxError::from)
        })?;
        self.remove_files(id);
        Ok(gone.is_some())
    }

    fn usage_of_owner(&mut self, owner: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        self.usage("owner", owner, unix_now)
    }

    fn usage_of_sender(&mut self, sender: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        self.usage("sender", sender, unix_now)
    }

    fn purge_expired(&mut self, unix_now: u64) -> Result<usize, MailboxError> {
        let now = int(unix_now);
        let ids: Vec<String> = self.db.run(move |c| {
            let mut tx = c.transaction()?;
            let mut ids: Vec<String> = tx
                .query(
                    "DELETE FROM item WHERE expires_at <= $1 RETURNING id",
                    &[&now],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            ids.extend(
                tx.query(
                    "DELETE FROM upload_slot WHERE expires_at <= $1 RETURNING id",
                    &[&now],
                )?
                .iter()
                .map(|r| r.get::<_, String>(0)),
            );
            tx.commit()?;
            Ok::<_, MailboxError>(ids)
        })?;
        for id in ids.iter().filter_map(|i| ItemId::parse(i)) {
            self.remove_files(&id);
        }
        Ok(ids.len())
    }

    fn put_slot(&mut self, s: &Slot) -> Result<(), MailboxError> {
        let s = s.clone();
        self.db.run(move |c| {
            let mut tx = c.transaction()?;
            let taken = tx.query_opt("SELECT 1 FROM item WHERE id = $1", &[&s.id.to_string()])?;
            if taken.is_some() {
                return Err(MailboxError::Duplicate);
            }
            tx.execute(
                &format!(
                    "INSERT INTO upload_slot ({SLOT_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ),
                &[
                    &s.id.to_string(),
                    &s.owner,
                    &s.sender,
                    &s.content_type,
                    &s.attributes,
                    &s.name,
                    &int(s.size),
                    &&s.sha256[..],
                    &int(s.created_at),
                    &int(s.expires_at),
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn get_slot(&mut self, id: &ItemId) -> Result<Option<Slot>, MailboxError> {
        let id = *id;
        self.db.run(move |c| {
            let Some(r) = c.query_opt(
                &format!("SELECT {SLOT_COLUMNS} FROM upload_slot WHERE id = $1"),
                &[&id.to_string()],
            )?
            else {
                return Ok(None);
            };
            Ok(Some(Slot {
                id,
                owner: r.try_get(1)?,
                sender: r.try_get(2)?,
                content_type: r.try_get(3)?,
                attributes: r.try_get(4)?,
                name: r.try_get(5)?,
                size: uint(r.try_get(6)?),
                sha256: digest(r.try_get(7)?),
                created_at: uint(r.try_get(8)?),
                expires_at: uint(r.try_get(9)?),
            }))
        })
    }

    fn complete_slot(&mut self, item: &Item) -> Result<bool, MailboxError> {
        let item = item.clone();
        self.db.run(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM upload_slot WHERE id = $1",
                &[&item.id.to_string()],
            )?;
            if n == 0 {
                return Ok(false);
            }
            insert_item(&mut tx, &item)?;
            tx.commit()?;
            Ok(true)
        })
    }
}
