//! The location service's bindings in PostgreSQL (tables `binding_aor`, `binding`).
//!
//! [`LocationStore::apply`] writes a whole group in one transaction (the group-commit
//! worker, crate::commit), and each AOR it changed is announced once on
//! [`super::CHANNEL_BINDING`] as `<node> <aor>`: NOTIFY is transactional, so the other
//! nodes hear of a change only once it is committed, and hear nothing of a group that
//! failed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use postgres::GenericClient;
use postgres::types::ToSql;

use super::{CHANNEL_BINDING, Db, NodeId, PgError, PgUrl, int, uint};
use crate::location::{Binding, CallIdHash};
use crate::store::{LocationStore, StoreError, Write, source_from_text, source_to_text};

/// The columns of `binding` in the order [`binding_from_row`] reads them (after `aor`).
pub(crate) const BINDING_COLUMNS: &str =
    "aor, contact, expires_at, q, call_id, cseq, path, source, max_calls, load_query";

/// The longest AOR a NOTIFY names.
const MAX_NOTIFIED_AOR: usize = 4000;

/// Bindings in the shared database.
pub struct PgLocationStore {
    db: Db,
    node: NodeId,
}

impl PgLocationStore {
    /// Connects; the schema must be migrated ([`Db::migrate`]).
    pub fn open(url: &PgUrl, node: NodeId) -> Result<Self, PgError> {
        Ok(Self {
            db: Db::open(url, "permit-pg-location")?,
            node,
        })
    }
}

impl PgLocationStore {
    /// The stored bindings of one AOR (the operator's view).
    pub fn bindings_of(&self, aor: &str) -> Result<Vec<Binding>, StoreError> {
        let aor = aor.to_owned();
        self.db.run(move |c| {
            let rows = c
                .query(
                    &format!("SELECT {BINDING_COLUMNS} FROM binding WHERE aor = $1"),
                    &[&aor],
                )
                .map_err(PgError::from)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(binding_from_row(r).map_err(PgError::from)?.1);
            }
            Ok(out)
        })
    }
}

/// One row of `SELECT {BINDING_COLUMNS}` as (aor, binding).
pub(crate) fn binding_from_row(r: &postgres::Row) -> Result<(String, Binding), postgres::Error> {
    let path: String = r.try_get(6)?;
    Ok((
        r.try_get(0)?,
        Binding {
            contact: r.try_get::<_, String>(1)?.into(),
            expires_at: uint(r.try_get(2)?),
            q: u16::try_from(r.try_get::<_, i32>(3)?).unwrap_or(1000),
            call_id: CallIdHash::from_text(&r.try_get::<_, String>(4)?),
            cseq: u32::try_from(r.try_get::<_, i64>(5)?).unwrap_or(0),
            path: path.lines().map(str::to_owned).collect(),
            source: source_from_text(r.try_get(7)?),
            max_calls: r
                .try_get::<_, Option<i64>>(8)?
                .and_then(|n| u32::try_from(n).ok()),
            load_query: r.try_get(9)?,
        },
    ))
}

/// Every AOR with its bindings (possibly none), read in one snapshot.
pub(crate) fn load_all_in(
    c: &mut impl GenericClient,
) -> Result<Vec<(String, Vec<Binding>)>, postgres::Error> {
    let mut out: HashMap<String, Vec<Binding>> = HashMap::new();
    for r in c.query("SELECT aor FROM binding_aor", &[])? {
        out.entry(r.try_get(0)?).or_default();
    }
    for r in c.query(&format!("SELECT {BINDING_COLUMNS} FROM binding"), &[])? {
        let (aor, b) = binding_from_row(&r)?;
        out.entry(aor).or_default().push(b);
    }
    Ok(out.into_iter().collect())
}

impl LocationStore for PgLocationStore {
    fn load_all(&mut self) -> Result<Vec<(String, Vec<Binding>)>, StoreError> {
        self.db.run(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(PgError::from)?;
            // A large table may take longer than one statement's usual limit.
            tx.batch_execute("SET LOCAL statement_timeout = 0")
                .map_err(PgError::from)?;
            let all = load_all_in(&mut tx).map_err(PgError::from)?;
            tx.commit().map_err(PgError::from)?;
            Ok(all)
        })
    }

    fn put(&mut self, aor: &str, bindings: &[Binding]) -> Result<(), StoreError> {
        self.apply(&[Write::Put {
            aor: Arc::from(aor),
            bindings: bindings.into(),
        }])
    }

    fn purge_expired(&mut self, unix_now: u64) -> Result<(), StoreError> {
        self.apply(&[Write::PurgeExpired { unix_now }])
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let writes = writes.to_vec();
        let node = self.node.0.clone();
        self.db
            .run(move |c| apply_in(c, &writes, &node).map_err(PgError::from))
            .map_err(StoreError::from)
    }
}

/// The group in one transaction, one NOTIFY per AOR it changed.
fn apply_in(c: &mut postgres::Client, writes: &[Write], node: &str) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    let touch = tx.prepare(
        "INSERT INTO binding_aor (aor) VALUES ($1)
         ON CONFLICT (aor) DO UPDATE SET changed_at = clock_timestamp()",
    )?;
    let clear = tx.prepare("DELETE FROM binding WHERE aor = $1")?;
    let insert = tx.prepare(&format!(
        "INSERT INTO binding ({BINDING_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))?;
    let purge = tx.prepare("DELETE FROM binding WHERE expires_at <= $1")?;
    let mut changed: HashSet<&str> = HashSet::new();
    for w in writes {
        match w {
            Write::Put { aor, bindings } => {
                let aor: &str = aor;
                tx.execute(&touch, &[&aor])?;
                tx.execute(&clear, &[&aor])?;
                for b in bindings {
                    let contact: &str = &b.contact;
                    let expires = int(b.expires_at);
                    let q = i32::from(b.q);
                    let call_id = b.call_id.to_text();
                    let cseq = i64::from(b.cseq);
                    let path = b.path.join("\n");
                    let source = source_to_text(b.source);
                    let max_calls = b.max_calls.map(i64::from);
                    let params: [&(dyn ToSql + Sync); 10] = [
                        &aor,
                        &contact,
                        &expires,
                        &q,
                        &call_id,
                        &cseq,
                        &path,
                        &source,
                        &max_calls,
                        &b.load_query,
                    ];
                    tx.execute(&insert, &params)?;
                }
                changed.insert(aor);
            }
            Write::PurgeExpired { unix_now } => {
                // Every node purges its own memory by the clock: nothing to announce.
                tx.execute(&purge, &[&int(*unix_now)])?;
            }
        }
    }
    if !changed.is_empty() {
        let notify = tx.prepare("SELECT pg_notify($1, $2)")?;
        for aor in changed {
            // NOTIFY payloads stop short of 8000 bytes: an AOR too long to name is
            // announced as "something changed" (the listener reloads by `changed_at`).
            let payload = if aor.len() <= MAX_NOTIFIED_AOR {
                format!("{node} {aor}")
            } else {
                node.to_owned()
            };
            tx.execute(&notify, &[&CHANNEL_BINDING, &payload])?;
        }
    }
    tx.commit()
}
