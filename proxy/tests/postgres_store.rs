//! Every storage trait of the proxy against a real PostgreSQL server (started by the
//! test, never a mock), with the checks of the embedded SQLite store's tests where
//! they exist: the location store and its one-transaction groups, the permit store
//! and its change log as a second node sees it, the credential store and the domain
//! claim, the item store and its atomic removal, and the migrations.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use permit_proxy::auth::UserDirectory;
use permit_proxy::location::{Binding, CallIdHash};
use permit_proxy::mailbox::{Item, ItemId, MailboxError, StoredItems, Usage};
use permit_proxy::permits::{Aor, Changes, ETag, PermitEntry, PermitError, PermitStore, Permits};
use permit_proxy::pg::{
    Db, MIGRATIONS, NodeId, PgItems, PgLocationStore, PgPermitStore, PgUrl, PgUsers,
};
use permit_proxy::store::{LocationStore, Write};
use permit_proxy::users::UserRecord;
use postgres::fallible_iterator::FallibleIterator;
use rand::SeedableRng;
use sip_core::digest::Algorithm;
use sip_core::transport::Transport;

use common::postgres::{Postgres, postgres_available};

const SUITE: &str = "PostgreSQL store";

/// A fresh server and a migrated database on it.
fn server(name: &str) -> Option<(Postgres, PgUrl)> {
    if !postgres_available(SUITE) {
        return None;
    }
    let pg = Postgres::start(name);
    let url = PgUrl::new(pg.create_db("permit"));
    let version = Db::open(&url, "test-migrate").unwrap().migrate().unwrap();
    assert_eq!(version, MIGRATIONS.last().unwrap().0);
    Some((pg, url))
}

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
                "127.0.0.1:5099".parse::<std::net::SocketAddr>().unwrap(),
            )
                .into(),
        ),
        max_calls: Some(2),
        load_query: false,
    }
}

fn node(name: &str) -> NodeId {
    NodeId(name.into())
}

#[test]
fn migrations_apply_once_and_record_their_version() {
    let Some((pg, url)) = server("migrate") else {
        return;
    };
    // Again, and from two connections at once: nothing is applied twice.
    let a = Db::open(&url, "a").unwrap();
    let b = Db::open(&url, "b").unwrap();
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| a.migrate());
        let hb = s.spawn(|| b.migrate());
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let latest = MIGRATIONS.last().unwrap().0;
    assert_eq!((ra.unwrap(), rb.unwrap()), (latest, latest));
    let mut c = pg.client("permit");
    let rows = c
        .query("SELECT version, name FROM schema_version", &[])
        .unwrap();
    assert_eq!(rows.len(), MIGRATIONS.len());
    assert_eq!(rows[0].get::<_, String>(1), "initial");
    // A database newer than the binary is refused.
    c.execute(
        "INSERT INTO schema_version (version, name) VALUES (99, 'future')",
        &[],
    )
    .unwrap();
    let err = a.migrate().unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");
}

#[test]
fn location_round_trip_purge_and_groups_all_or_nothing() {
    let Some((pg, url)) = server("location") else {
        return;
    };
    let mut listen = pg.client("permit");
    listen.batch_execute("LISTEN permit_binding").unwrap();
    {
        let mut s = PgLocationStore::open(&url, node("n1")).unwrap();
        s.put(
            "alice@localhost",
            &[
                binding("sip:a@127.0.0.1:5070", 100),
                binding("sip:a@h2", 50),
            ],
        )
        .unwrap();
        s.put("bob@localhost", &[]).unwrap();
        // PostgreSQL purges every lapsed binding, whether the location named its AOR or not.
        s.purge_expired(60, &[]).unwrap();
    }
    let mut s = PgLocationStore::open(&url, node("n2")).unwrap();
    let mut all = s.load_all().unwrap();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].0, "alice@localhost");
    assert_eq!(all[0].1, vec![binding("sip:a@127.0.0.1:5070", 100)]);
    assert_eq!(all[1], ("bob@localhost".to_owned(), vec![]));

    // Each committed AOR change was announced with the writer's node.
    let mut heard = Vec::new();
    let mut notes = listen.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(5));
    while heard.len() < 2 {
        let n = it.next().unwrap().expect("a NOTIFY within 5 s");
        heard.push(n.payload().to_owned());
    }
    assert_eq!(heard, ["n1 alice@localhost", "n1 bob@localhost"]);

    // A group with a write PostgreSQL refuses (NUL in text) stores nothing of it.
    let group = [
        Write::Put {
            aor: Arc::from("carol@localhost"),
            bindings: vec![binding("sip:c@127.0.0.1:5071", 900)].into(),
            in_place: false,
        },
        Write::Put {
            aor: Arc::from("dave@localhost"),
            bindings: vec![binding("sip:d\0@bad", 900)].into(),
            in_place: false,
        },
    ];
    assert!(s.apply(&group).is_err());
    let names: Vec<String> = s.load_all().unwrap().into_iter().map(|a| a.0).collect();
    assert!(!names.iter().any(|a| a == "carol@localhost"), "{names:?}");
    // The same group without the bad write commits whole, in one transaction.
    s.apply(&group[..1]).unwrap();
    let all = s.load_all().unwrap();
    assert!(
        all.iter()
            .any(|(a, b)| a == "carol@localhost" && b.len() == 1)
    );
    // In one group the last write of an AOR wins, and a purge removes what lapsed.
    let put = |contact: &str, expires_at: u64| Write::Put {
        aor: Arc::from("erin@localhost"),
        bindings: vec![binding(contact, expires_at)].into(),
        in_place: false,
    };
    s.apply(&[
        put("sip:e1@127.0.0.1:5072", 20_000),
        Write::PurgeExpired {
            unix_now: 10_000,
            aors: Box::new([]),
        },
        put("sip:e2@127.0.0.1:5072", 20_000),
    ])
    .unwrap();
    let all = s.load_all().unwrap();
    let erin = all.iter().find(|(a, _)| a == "erin@localhost").unwrap();
    assert_eq!(erin.1, vec![binding("sip:e2@127.0.0.1:5072", 20_000)]);
    let carol = all.iter().find(|(a, _)| a == "carol@localhost").unwrap();
    assert!(
        carol.1.is_empty(),
        "carol's binding (900) was purged at 10000"
    );
}

fn aor(s: &str) -> Aor {
    Aor::parse(s).unwrap()
}
fn e(s: &str) -> PermitEntry {
    PermitEntry::parse(s).unwrap()
}

#[test]
fn permits_survive_reopen_and_another_node_sees_them_after_a_notify() {
    let Some((_pg, url)) = server("permits") else {
        return;
    };
    let rng = || rand::rngs::StdRng::seed_from_u64(7);
    let bob = aor("bob@example.com");
    let (t_bob, t_carol);
    {
        let store = PgPermitStore::open(&url, node("a"), Arc::default()).unwrap();
        let mut p = Permits::with_store(Box::new(store), rng()).unwrap();
        p.replace(&bob, &[e("alice@example.com"), e("*@partner.org")], None)
            .unwrap();
        t_bob = p.remove(&bob, &e("*@partner.org"), None).unwrap().etag;
        t_carol = p.replace(&aor("carol@example.com"), &[], None).unwrap();
    }
    // Node B starts: the lists and tags as stored.
    let heard_b = Arc::new(AtomicU64::new(0));
    let store_b = PgPermitStore::open(&url, node("b"), heard_b.clone()).unwrap();
    let mut b = Permits::with_store(Box::new(store_b), rng()).unwrap();
    assert_eq!(b.etag("bob@example.com"), Some(t_bob));
    assert_eq!(b.etag("carol@example.com"), Some(t_carol));
    assert_eq!(
        b.list("bob@example.com"),
        Some(vec![e("alice@example.com")])
    );
    assert!(b.known_callee("carol@example.com"));
    assert!(b.is_permitted("bob@example.com", "alice@example.com"));
    assert!(!b.is_permitted("bob@example.com", "eve@partner.org"));
    assert_eq!(
        (b.table().unwrap().callees(), b.table().unwrap().entries()),
        (2, 1)
    );

    // Node A (administration mode, as the CLI) adds an entry.
    let store_a = PgPermitStore::open(&url, node("a"), Arc::default()).unwrap();
    let mut a = Permits::admin_with_store(Box::new(store_a));
    let w = a.add(&bob, &e("*@partner.org"), None).unwrap();
    assert!(w.changed);
    // B reads nothing from the database until its listener heard the NOTIFY...
    assert!(!b.is_permitted("bob@example.com", "x@partner.org"));
    // ...then applies the change from the log.
    heard_b.fetch_add(1, Ordering::AcqRel);
    assert!(b.is_permitted("bob@example.com", "x@partner.org"));
    assert_eq!(b.etag("bob@example.com"), Some(w.etag));
    // B's view was stale for a moment; a stale tag is refused inside the transaction.
    assert!(matches!(
        b.replace(&bob, &[], Some(&t_bob.to_string())),
        Err(PermitError::PreconditionFailed)
    ));
    // A's CSV import reaches B the same way.
    a.import_csv("dave@example.com,bob@example.com\n".as_bytes())
        .unwrap();
    heard_b.fetch_add(1, Ordering::AcqRel);
    assert!(b.is_permitted("dave@example.com", "bob@example.com"));
    // B's own write is seen by A, which reads the store.
    let t = b.replace(&bob, &[e("eve@example.com")], None).unwrap();
    assert_eq!(a.list("bob@example.com"), Some(vec![e("eve@example.com")]));
    assert_eq!(a.etag("bob@example.com"), Some(t));
}

#[test]
fn permit_store_checks_the_tag_inside_its_transaction() {
    let Some((_pg, url)) = server("permittag") else {
        return;
    };
    let heard = Arc::new(AtomicU64::new(0));
    let mut s = PgPermitStore::open(&url, node("a"), heard.clone()).unwrap();
    let bob = aor("bob@example.com");
    let (t1, t2) = (ETag::from_u64(1), ETag::from_u64(2));
    s.replace(&bob, &[e("a@b.c")], None, t1).unwrap();
    assert!(matches!(
        s.edit(&bob, &[e("d@e.f")], &[], Some(t2), t2),
        Err(PermitError::PreconditionFailed)
    ));
    let (add, remove) = ([e("d@e.f"), e("g@h.i")], [e("a@b.c"), e("x@y.z")]);
    assert_eq!(s.edit(&bob, &add, &remove, Some(t1), t2).unwrap(), 3);
    let mut l = s.load(&bob).unwrap().unwrap();
    l.entries.sort();
    assert_eq!((l.etag, l.entries), (t2, add.to_vec()));
    // Own writes are not reported back as changes, even after their NOTIFY.
    heard.fetch_add(1, Ordering::AcqRel);
    assert_eq!(s.poll_changes().unwrap(), Changes::None);
}

#[test]
fn users_domain_and_cache_refresh() {
    let Some((pg, url)) = server("users") else {
        return;
    };
    let mut first = PgUsers::open(&url, node("a"), Arc::default()).unwrap();
    assert_eq!(first.stored_domain().unwrap(), None);
    assert_eq!(
        first
            .claim_domain(Some("example.org"), "localhost")
            .unwrap(),
        "example.org"
    );
    let heard = Arc::new(AtomicU64::new(0));
    let mut proxy_side = PgUsers::open(&url, node("b"), heard.clone()).unwrap();
    assert_eq!(
        proxy_side.claim_domain(None, "localhost").unwrap(),
        "example.org"
    );
    assert!(
        proxy_side
            .claim_domain(Some("localhost"), "localhost")
            .is_err()
    );
    proxy_side.refresh();
    assert_eq!(proxy_side.ha1("alice", "example.org", Algorithm::Md5), None);

    let rec = UserRecord::new("alice", "example.org", "secret-pw");
    first.put(&rec).unwrap();
    // Served from the cache until the listener hears of the change.
    proxy_side.refresh();
    assert_eq!(proxy_side.ha1("alice", "example.org", Algorithm::Md5), None);
    heard.fetch_add(1, Ordering::AcqRel);
    proxy_side.refresh();
    assert_eq!(
        proxy_side
            .ha1("alice", "example.org", Algorithm::Sha256)
            .as_deref(),
        Some(rec.ha1_sha256.as_str())
    );
    assert_eq!(proxy_side.ha1("alice", "other.realm", Algorithm::Md5), None);
    assert!(first.exists("alice").unwrap());
    assert_eq!(
        first.list().unwrap(),
        vec![("alice".to_owned(), "example.org".to_owned())]
    );
    assert_eq!(first.count().unwrap(), 1);
    assert!(first.delete("alice").unwrap());
    assert!(!first.delete("alice").unwrap());
    heard.fetch_add(1, Ordering::AcqRel);
    proxy_side.refresh();
    assert_eq!(proxy_side.ha1("alice", "example.org", Algorithm::Md5), None);
    // The password itself is stored nowhere.
    first.put(&rec).unwrap();
    let mut c = pg.client("permit");
    let dump: String = c
        .query_one("SELECT string_agg(t::text, ' ') FROM sip_user t", &[])
        .unwrap()
        .get(0);
    assert!(!dump.contains("secret-pw"), "{dump}");
    assert!(dump.contains(&rec.ha1_md5));
}

fn item(n: u8, owner: &str, sender: &str, size: usize, stored_at: u64) -> Item {
    Item::new(
        ItemId([n; 16]),
        owner,
        sender,
        "text/plain",
        if n.is_multiple_of(2) { "secret" } else { "" },
        vec![n; size],
        stored_at,
        stored_at + 100,
    )
}

#[test]
fn items_keep_the_store_contract_and_go_exactly_once() {
    let Some((pg, url)) = server("items") else {
        return;
    };
    let data = std::env::temp_dir().join(format!("permit-pg-items-{}", std::process::id()));
    let mut s = PgItems::open(&url, &data, node("a")).unwrap();
    // The contract of mailbox::tests, against PostgreSQL.
    let a = item(1, "bob@x", "alice@x", 10, 1000);
    let b = item(2, "bob@x", "carol@x", 20, 1001);
    let c = item(3, "dave@x", "alice@x", 5, 1002);
    for i in [&b, &a, &c] {
        s.put(i).unwrap();
    }
    assert!(
        matches!(s.put(&a), Err(MailboxError::Duplicate)),
        "an id is stored once"
    );
    assert_eq!(s.get(&a.id).unwrap().as_ref(), Some(&a));
    assert_eq!(s.get(&ItemId([9; 16])).unwrap(), None);
    let listed: Vec<ItemId> = s
        .list("bob@x", 1050, 10)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, vec![a.id, b.id], "oldest first, only the owner's");
    assert_eq!(s.list("bob@x", 1050, 1).unwrap().len(), 1);
    assert_eq!(s.list("bob@x", 1050, 10).unwrap()[1], b.meta());
    assert_eq!(
        s.usage_of_owner("bob@x", 1050).unwrap(),
        Usage {
            items: 2,
            bytes: 30
        }
    );
    assert_eq!(
        s.usage_of_sender("alice@x", 1050).unwrap(),
        Usage {
            items: 2,
            bytes: 15
        }
    );
    assert_eq!(s.list("bob@x", 1100, 10).unwrap().len(), 1);
    assert_eq!(s.usage_of_sender("alice@x", 1100).unwrap().items, 1);
    assert_eq!(s.purge_expired(1100).unwrap(), 1);
    assert_eq!(s.get(&a.id).unwrap(), None);
    assert!(s.delete(&b.id).unwrap());
    assert!(!s.delete(&b.id).unwrap(), "a second delete finds nothing");
    assert_eq!(s.list("bob@x", 0, 10).unwrap(), vec![]);
    assert_eq!(s.get(&c.id).unwrap().map(|i| i.sha256), Some(c.sha256));

    // Reading an item to deliver it claims it: the other node skips it until the
    // claim lapses (as when the claiming node died).
    let frank = item(50, "frank@x", "alice@x", 8, 6000);
    s.put(&frank).unwrap();
    let mut other = PgItems::open(&url, &data, node("b")).unwrap();
    assert_eq!(s.get(&frank.id).unwrap().as_ref(), Some(&frank));
    assert_eq!(other.get(&frank.id).unwrap(), None, "claimed by node a");
    assert_eq!(
        s.get(&frank.id).unwrap().as_ref(),
        Some(&frank),
        "a reads it again"
    );
    assert_eq!(
        other.list("frank@x", 6050, 10).unwrap().len(),
        1,
        "still listed"
    );
    pg.client("permit")
        .execute(
            "UPDATE item SET claimed_until = 0 WHERE owner = 'frank@x'",
            &[],
        )
        .unwrap();
    assert_eq!(
        other.get(&frank.id).unwrap().as_ref(),
        Some(&frank),
        "the claim lapsed"
    );
    assert_eq!(s.get(&frank.id).unwrap(), None, "now claimed by node b");
    assert!(other.delete(&frank.id).unwrap());

    // Two nodes settle the same deliveries at once: each item goes to exactly one.
    let items: Vec<Item> = (10..40)
        .map(|n| item(n, "erin@x", "alice@x", 8, 5000))
        .collect();
    for i in &items {
        s.put(i).unwrap();
    }
    let (won_a, won_b) = std::thread::scope(|sc| {
        let ha = sc.spawn(|| items.iter().filter(|i| s.delete(&i.id).unwrap()).count());
        let hb = sc.spawn(|| {
            items
                .iter()
                .rev()
                .filter(|i| other.delete(&i.id).unwrap())
                .count()
        });
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert_eq!(won_a + won_b, items.len(), "{won_a} + {won_b}");
    let _ = std::fs::remove_dir_all(&data);
}
