//! Facade tests: entity-tags and preconditions, durability across reopen, changes made
//! by another connection, CSV import.

use std::fmt::Write as _;
use std::path::PathBuf;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn aor(s: &str) -> Aor {
    Aor::parse(s).unwrap()
}
fn e(s: &str) -> PermitEntry {
    PermitEntry::parse(s).unwrap()
}

/// A fresh directory for one test, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("permit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memory() -> Permits {
    Permits::with_store(Box::new(MemoryPermitStore::new()), StdRng::seed_from_u64(7)).unwrap()
}

#[test]
fn etag_changes_on_every_write_and_guards_if_match() {
    let mut p = memory();
    let bob = aor("bob@example.com");
    assert_eq!(p.etag("bob@example.com"), None);
    assert!(!p.known_callee("bob@example.com"));
    // An absent list matches no tag.
    let stale = ETag::from_u64(1).to_string();
    assert!(matches!(
        p.replace(&bob, &[], Some(&stale)),
        Err(PermitError::PreconditionFailed)
    ));
    let t1 = p.replace(&bob, &[e("alice@example.com")], None).unwrap();
    assert_eq!(p.etag("sip:bob@EXAMPLE.com"), Some(t1));
    let w = p
        .add(&bob, &e("*@partner.org"), Some(&t1.to_string()))
        .unwrap();
    assert!(w.changed);
    assert_ne!(w.etag, t1);
    // No-op writes still succeed with a new tag (RFC 3903 §6 step 6).
    let again = p.add(&bob, &e("*@partner.org"), None).unwrap();
    assert!(!again.changed);
    assert_ne!(again.etag, w.etag);
    let err = p.remove(&bob, &e("alice@example.com"), Some(&t1.to_string()));
    assert_eq!(err.unwrap_err().status(), 412);
    assert!(matches!(
        p.add(&bob, &e("x@y.z"), Some("not-a-tag")),
        Err(PermitError::PreconditionFailed)
    ));
    // The failed writes changed nothing.
    assert_eq!(p.etag("bob@example.com"), Some(again.etag));
    assert!(p.is_permitted("bob@example.com", "alice@example.com"));
    let gone = p
        .remove(
            &bob,
            &e("alice@example.com"),
            Some(&again.etag.to_string().to_uppercase()),
        )
        .unwrap();
    assert!(gone.changed);
    assert!(!p.is_permitted("bob@example.com", "alice@example.com"));
    assert!(p.is_permitted("sip:bob@example.com", "sip:carol@PARTNER.org"));
    assert_eq!(p.list("bob@example.com"), Some(vec![e("*@partner.org")]));
    assert_eq!(p.table().unwrap().entries(), 1);
}

#[test]
fn oversized_lists_are_refused() {
    let mut p = memory();
    let many: Vec<PermitEntry> = (0..=MAX_ENTRIES)
        .map(|i| PermitEntry::Exact(format!("u{i}@example.com")))
        .collect();
    let err = p.replace(&aor("bob@example.com"), &many, None).unwrap_err();
    assert_eq!(err.status(), 413);
    assert!(!p.known_callee("bob@example.com"));
}

#[test]
fn sqlite_lists_and_etags_survive_reopen() {
    let dir = TempDir::new("reopen");
    let bob = aor("bob@example.com");
    let (t_bob, t_carol);
    {
        let mut p = Permits::open(&dir.0, Durability::Normal).unwrap();
        p.replace(&bob, &[e("alice@example.com"), e("*@partner.org")], None)
            .unwrap();
        t_bob = p.remove(&bob, &e("*@partner.org"), None).unwrap().etag;
        t_carol = p.replace(&aor("carol@example.com"), &[], None).unwrap();
    }
    let mut p = Permits::open(&dir.0, Durability::Full).unwrap();
    assert_eq!(p.etag("bob@example.com"), Some(t_bob));
    assert_eq!(p.etag("carol@example.com"), Some(t_carol));
    assert_eq!(
        p.list("bob@example.com"),
        Some(vec![e("alice@example.com")])
    );
    assert_eq!(p.list("carol@example.com"), Some(vec![]));
    assert!(p.known_callee("carol@example.com"));
    assert!(p.is_permitted("bob@example.com", "alice@example.com"));
    assert!(!p.is_permitted("bob@example.com", "eve@partner.org"));
    // The table holds exactly what was stored.
    assert_eq!(
        (p.table().unwrap().callees(), p.table().unwrap().entries()),
        (2, 1)
    );
}

#[test]
fn another_connection_is_seen_without_restart() {
    let dir = TempDir::new("second");
    let bob = aor("bob@example.com");
    let mut proxy = Permits::open(&dir.0, Durability::Normal).unwrap();
    let t0 = proxy
        .replace(&bob, &[e("alice@example.com")], None)
        .unwrap();
    let mut cli = Permits::open_admin(&dir.0, Durability::Normal).unwrap();
    assert!(cli.table().is_none());
    assert_eq!(cli.etag("bob@example.com"), Some(t0));
    assert!(cli.is_permitted("bob@example.com", "alice@example.com"));

    let w = cli.add(&bob, &e("*@partner.org"), None).unwrap();
    assert!(proxy.is_permitted("bob@example.com", "x@partner.org"));
    assert_eq!(proxy.etag("bob@example.com"), Some(w.etag));
    // The proxy's view was stale: its old tag no longer matches.
    assert!(matches!(
        proxy.replace(&bob, &[], Some(&t0.to_string())),
        Err(PermitError::PreconditionFailed)
    ));
    cli.remove(&bob, &e("alice@example.com"), None).unwrap();
    cli.replace(&aor("dave@example.com"), &[e("bob@example.com")], None)
        .unwrap();
    assert!(!proxy.is_permitted("bob@example.com", "alice@example.com"));
    assert!(proxy.is_permitted("dave@example.com", "bob@example.com"));
    // And the other way round: the proxy's own write is seen by the CLI.
    let t = proxy.replace(&bob, &[e("eve@example.com")], None).unwrap();
    assert_eq!(
        cli.list("bob@example.com"),
        Some(vec![e("eve@example.com")])
    );
    assert_eq!(cli.etag("bob@example.com"), Some(t));
    assert_eq!(proxy.table().unwrap().entries(), 2);
}

#[test]
fn a_reader_behind_the_pruned_log_reloads_everything() {
    let dir = TempDir::new("pruned");
    let proxy_store = SqlitePermitStore::open(&dir.0, Durability::Normal).unwrap();
    let mut proxy = Permits::with_store(Box::new(proxy_store), StdRng::seed_from_u64(1)).unwrap();
    // The writer prunes the change log to its last 2 rows.
    let mut cli_store = SqlitePermitStore::open(&dir.0, Durability::Normal).unwrap();
    cli_store.set_change_log_keep(2);
    let mut cli = Permits::with_store(Box::new(cli_store), StdRng::seed_from_u64(2)).unwrap();
    for i in 0..5 {
        cli.add(
            &aor(&format!("u{i}@example.com")),
            &e("alice@example.com"),
            None,
        )
        .unwrap();
    }
    for i in 0..5 {
        assert!(proxy.is_permitted(&format!("u{i}@example.com"), "alice@example.com"));
    }
    assert_eq!(proxy.table().unwrap().callees(), 5);
}

#[test]
fn csv_import_is_all_or_nothing() {
    let dir = TempDir::new("import");
    let mut proxy = Permits::open(&dir.0, Durability::Normal).unwrap();
    let mut cli = Permits::open_admin(&dir.0, Durability::Normal).unwrap();
    let t0 = cli
        .replace(&aor("bob@example.com"), &[e("zed@example.com")], None)
        .unwrap();
    let bad = "bob@example.com,alice@example.com\nbob@example.com;x\n";
    let err = cli.import_csv(bad.as_bytes()).unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(err.to_string().contains("line 2"), "{err}");
    assert_eq!(cli.etag("bob@example.com"), Some(t0));
    assert!(!proxy.is_permitted("bob@example.com", "alice@example.com"));

    let good = "# callee,caller\n\
                bob@example.com,alice@example.com\n\
                \n\
                bob@example.com,*@partner.org\n\
                carol@example.com,bob@example.com\n";
    let done = cli.import_csv(good.as_bytes()).unwrap();
    assert_eq!(
        done,
        Imported {
            lines: 3,
            callees: 2
        }
    );
    assert_ne!(cli.etag("bob@example.com"), Some(t0));
    assert!(proxy.is_permitted("bob@example.com", "alice@example.com"));
    assert!(proxy.is_permitted("bob@example.com", "z@partner.org"));
    assert!(proxy.is_permitted("bob@example.com", "zed@example.com"));
    assert!(proxy.is_permitted("carol@example.com", "bob@example.com"));
    assert_eq!(
        proxy.etag("carol@example.com"),
        cli.etag("carol@example.com")
    );
    // An import through the loaded table lands in memory at once.
    proxy
        .import_csv("dave@example.com,carol@example.com\n".as_bytes())
        .unwrap();
    assert!(proxy.is_permitted("dave@example.com", "carol@example.com"));
    assert_eq!(proxy.table().unwrap().entries(), 5);
}

#[test]
fn a_big_import_makes_other_readers_reload_everything() {
    let dir = TempDir::new("bigimport");
    let mut proxy = Permits::open(&dir.0, Durability::Normal).unwrap();
    let mut cli = Permits::open_admin(&dir.0, Durability::Normal).unwrap();
    let mut csv = String::new();
    for i in 0..1500 {
        writeln!(csv, "u{i}@example.com,alice@example.com").unwrap();
    }
    assert_eq!(cli.import_csv(csv.as_bytes()).unwrap().callees, 1500);
    assert!(proxy.is_permitted("u1499@example.com", "alice@example.com"));
    assert_eq!(proxy.table().unwrap().callees(), 1500);
}

#[test]
fn store_checks_the_tag_inside_its_transaction() {
    let dir = TempDir::new("storecheck");
    let mut s = SqlitePermitStore::open(&dir.0, Durability::Normal).unwrap();
    let bob = aor("bob@example.com");
    let (t1, t2) = (ETag::from_u64(1), ETag::from_u64(2));
    s.replace(&bob, &[e("a@b.c")], None, t1).unwrap();
    assert!(matches!(
        s.edit(&bob, &[e("d@e.f")], &[], Some(t2), t2),
        Err(PermitError::PreconditionFailed)
    ));
    let (add, remove) = ([e("d@e.f"), e("g@h.i")], [e("a@b.c"), e("x@y.z")]);
    assert_eq!(s.edit(&bob, &add, &remove, Some(t1), t2).unwrap(), 3);
    let l = s.load(&bob).unwrap().unwrap();
    assert_eq!((l.etag, l.entries), (t2, add.to_vec()));
    assert_eq!(s.counts().unwrap(), (1, 2));
    // Own writes are not reported back as changes.
    assert_eq!(s.poll_changes().unwrap(), Changes::None);
}

#[test]
fn table_and_store_agree_after_random_changes() {
    use rand::Rng;
    let dir = TempDir::new("model");
    let mut live = Permits::open(&dir.0, Durability::Normal).unwrap();
    let mut admin = Permits::open_admin(&dir.0, Durability::Normal).unwrap();
    let callees: Vec<Aor> = (0..5).map(|i| aor(&format!("c{i}@example.com"))).collect();
    let pool: Vec<PermitEntry> = (0..6)
        .map(|i| e(&format!("u{i}@example.com")))
        .chain([e("*@example.com"), e("*@partner.org")])
        .collect();
    let mut rng = StdRng::seed_from_u64(42);
    let pick = |rng: &mut StdRng, n: usize| -> Vec<PermitEntry> {
        (0..rng.random_range(0..=n))
            .map(|_| pool[rng.random_range(0..pool.len())].clone())
            .collect()
    };
    for _ in 0..300 {
        let c = &callees[rng.random_range(0..callees.len())];
        match rng.random_range(0..3) {
            0 => {
                let list = pick(&mut rng, 5);
                live.replace(c, &list, None).unwrap();
            }
            1 => {
                let (add, remove) = (pick(&mut rng, 3), pick(&mut rng, 3));
                live.edit(c, &add, &remove, None).unwrap();
            }
            _ => {
                let tag = live.etag(c.as_str()).map(|t| t.to_string());
                let one = pick(&mut rng, 1);
                if let Some(x) = one.first() {
                    live.remove(c, x, tag.as_deref()).unwrap();
                }
            }
        }
        // The table says what the store says, after every change.
        assert_eq!(live.list(c.as_str()), admin.list(c.as_str()), "{c}");
        assert_eq!(live.etag(c.as_str()), admin.etag(c.as_str()), "{c}");
    }
    let mut reopened = Permits::open(&dir.0, Durability::Normal).unwrap();
    let mut total = 0;
    for c in &callees {
        let l = live.list(c.as_str());
        total += l.as_ref().map_or(0, Vec::len);
        assert_eq!(l, reopened.list(c.as_str()), "{c}");
        assert_eq!(l, admin.list(c.as_str()), "{c}");
        assert_eq!(live.etag(c.as_str()), reopened.etag(c.as_str()));
        for who in ["u1@example.com", "x@partner.org", "x@elsewhere.net"] {
            let want = live.is_permitted(c.as_str(), who);
            assert_eq!(want, reopened.is_permitted(c.as_str(), who));
            assert_eq!(want, admin.is_permitted(c.as_str(), who));
        }
    }
    assert_eq!(live.table().unwrap().entries(), total);
    assert!(total > 0, "the random walk left every list empty");
}
