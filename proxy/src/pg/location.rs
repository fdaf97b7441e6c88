//! The location service's bindings in PostgreSQL (tables `binding_aor`, `binding`).
//!
//! [`LocationStore::apply`] writes a whole group in one transaction (the group-commit
//! worker, crate::commit), and each AOR it changed is announced once on
//! [`super::CHANNEL_BINDING`] as `<node> <aor>`: NOTIFY is transactional, so the other
//! nodes hear of a change only once it is committed, and hear nothing of a group that
//! failed.

use std::collections::HashMap;
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
            in_place: false,
        }])
    }

    /// Every lapsed binding goes, listed or not: one statement on the expiry index.
    fn purge_expired(&mut self, unix_now: u64, aors: &[Arc<str>]) -> Result<(), StoreError> {
        self.apply(&[Write::PurgeExpired {
            unix_now,
            aors: aors.into(),
        }])
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let writes = writes.to_vec();
        let node = self.node.0.clone();
        self.db
            .run(move |c| apply_in(c, &writes, &node).map_err(PgError::from))
            .map_err(StoreError::from)
    }
}

/// The group in one transaction of a few set-wise statements (their number does not
/// grow with the group), one NOTIFY per AOR it changed.
///
/// Each `Put` replaces an AOR's whole binding set, so only the last `Put` of an AOR
/// in the group is written; purges run after the puts, with the latest instant of the
/// group (a binding that lapsed is purged now rather than by the next purge: either
/// way routing ignores it, it has lapsed).
fn apply_in(c: &mut postgres::Client, writes: &[Write], node: &str) -> Result<(), postgres::Error> {
    let mut last: HashMap<&str, &[Binding]> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut purge: Option<u64> = None;
    for w in writes {
        match w {
            Write::Put { aor, bindings, .. } => {
                if last.insert(aor, bindings).is_none() {
                    order.push(aor);
                }
            }
            Write::PurgeExpired { unix_now, .. } => {
                purge = Some(purge.map_or(*unix_now, |p| p.max(*unix_now)));
            }
        }
    }
    let mut tx = c.transaction()?;
    if !order.is_empty() {
        tx.execute(
            "INSERT INTO binding_aor (aor) SELECT * FROM unnest($1::TEXT[])
             ON CONFLICT (aor) DO UPDATE SET changed_at = clock_timestamp()",
            &[&order],
        )?;
        tx.execute("DELETE FROM binding WHERE aor = ANY($1)", &[&order])?;
        let rows = Columns::of(&order, &last);
        if !rows.aor.is_empty() {
            let params: [&(dyn ToSql + Sync); 10] = [
                &rows.aor,
                &rows.contact,
                &rows.expires,
                &rows.q,
                &rows.call_id,
                &rows.cseq,
                &rows.path,
                &rows.source,
                &rows.max_calls,
                &rows.load_query,
            ];
            tx.execute(
                &format!(
                    "INSERT INTO binding ({BINDING_COLUMNS}) SELECT * FROM unnest(
                         $1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::INTEGER[], $5::TEXT[],
                         $6::BIGINT[], $7::TEXT[], $8::TEXT[], $9::BIGINT[], $10::BOOLEAN[])"
                ),
                &params,
            )?;
        }
        // NOTIFY payloads stop short of 8000 bytes: an AOR too long to name is
        // announced as "something changed" (the listener reloads by `changed_at`).
        let payloads: Vec<String> = order
            .iter()
            .map(|aor| {
                if aor.len() <= MAX_NOTIFIED_AOR {
                    format!("{node} {aor}")
                } else {
                    node.to_owned()
                }
            })
            .collect();
        tx.execute(
            "SELECT pg_notify($1, p) FROM unnest($2::TEXT[]) AS p",
            &[&CHANNEL_BINDING, &payloads],
        )?;
    }
    if let Some(unix_now) = purge {
        // Every node purges its own memory by the clock: nothing to announce.
        tx.execute(
            "DELETE FROM binding WHERE expires_at <= $1",
            &[&int(unix_now)],
        )?;
    }
    tx.commit()
}

/// The bindings of a group as one array per column (for `unnest`).
#[derive(Default)]
struct Columns<'a> {
    aor: Vec<&'a str>,
    contact: Vec<&'a str>,
    expires: Vec<i64>,
    q: Vec<i32>,
    call_id: Vec<String>,
    cseq: Vec<i64>,
    path: Vec<String>,
    source: Vec<Option<String>>,
    max_calls: Vec<Option<i64>>,
    load_query: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn of(order: &[&'a str], last: &HashMap<&'a str, &'a [Binding]>) -> Self {
        let mut c = Columns::default();
        for aor in order {
            for b in last.get(aor).copied().unwrap_or_default() {
                c.aor.push(aor);
                c.contact.push(&b.contact);
                c.expires.push(int(b.expires_at));
                c.q.push(i32::from(b.q));
                c.call_id.push(b.call_id.to_text());
                c.cseq.push(i64::from(b.cseq));
                c.path.push(b.path.join("\n"));
                c.source.push(source_to_text(b.source));
                c.max_calls.push(b.max_calls.map(i64::from));
                c.load_query.push(b.load_query);
            }
        }
        c
    }
}
