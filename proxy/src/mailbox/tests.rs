//! The same checks against both implementations of [`StoredItems`], the quota policy,
//! and the SQLite store across a reopen and at its size cap.

use super::*;

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

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("permit-mailbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// What every implementation must do.
fn contract(s: &mut dyn StoredItems) {
    let a = item(1, "bob@x", "alice@x", 10, 1000);
    let b = item(2, "bob@x", "carol@x", 20, 1001);
    let c = item(3, "dave@x", "alice@x", 5, 1002);
    for i in [&b, &a, &c] {
        s.put(i).unwrap();
    }
    assert!(s.put(&a).is_err(), "an id is stored once");
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
    assert_eq!(
        s.waiting("bob@x", 1050).unwrap(),
        Usage {
            items: 2,
            bytes: 30
        }
    );
    assert_eq!(s.waiting("alice@x", 1050).unwrap(), Usage::default());
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
    // a expires at 1100: no longer listed or counted, then purged.
    assert_eq!(s.list("bob@x", 1100, 10).unwrap().len(), 1);
    assert_eq!(s.usage_of_sender("alice@x", 1100).unwrap().items, 1);
    assert_eq!(s.purge_expired(1100).unwrap(), 1);
    assert_eq!(s.get(&a.id).unwrap(), None);
    assert!(s.delete(&b.id).unwrap());
    assert!(!s.delete(&b.id).unwrap(), "a second delete finds nothing");
    assert_eq!(s.list("bob@x", 0, 10).unwrap(), vec![]);
    assert_eq!(s.waiting("bob@x", 0).unwrap(), Usage::default());
    assert_eq!(s.get(&c.id).unwrap().map(|i| i.sha256), Some(c.sha256));
    // An owner seen empty, then given an item, has it waiting.
    assert_eq!(s.waiting("erin@x", 1050).unwrap().items, 0);
    s.put(&item(4, "erin@x", "alice@x", 7, 1003)).unwrap();
    assert_eq!(s.waiting("erin@x", 1050).unwrap().items, 1);
}

/// The SQLite store answers `waiting` from its set of owners with items; what another
/// connection to the same file commits (the upload listener completing a file, the
/// operator's CLI deleting an item) is seen from the next second on.
#[test]
fn sqlite_waiting_sees_the_writes_of_other_connections() {
    let d = dir("waiting");
    let mut engine_side = SqliteItems::open(&d, 0).unwrap();
    let mut other = SqliteItems::open(&d, 0).unwrap();
    assert_eq!(
        engine_side.waiting("bob@x", 1050).unwrap(),
        Usage::default()
    );

    other.put(&item(1, "bob@x", "alice@x", 10, 1000)).unwrap();
    assert_eq!(
        engine_side.waiting("bob@x", 1051).unwrap(),
        Usage {
            items: 1,
            bytes: 10
        }
    );

    // An upload slot completed by the other connection becomes an item waiting.
    other.put_slot(&slot(2, 64, 5000)).unwrap();
    assert_eq!(engine_side.waiting("dave@x", 1052).unwrap().items, 0);
    let mut done = item(2, "dave@x", "alice@x", 3, 1001);
    done.content_type = crate::upload::FILE_TYPE.into();
    assert!(other.complete_slot(&done).unwrap());
    assert_eq!(engine_side.waiting("dave@x", 1053).unwrap().items, 1);

    // This connection's own deposit is seen within the same second.
    engine_side
        .put(&item(3, "erin@x", "alice@x", 4, 1002))
        .unwrap();
    assert_eq!(engine_side.waiting("erin@x", 1053).unwrap().items, 1);

    assert!(other.delete(&ItemId([1; 16])).unwrap());
    assert_eq!(
        engine_side.waiting("bob@x", 1054).unwrap(),
        Usage::default()
    );
    // Expired items are not waiting.
    assert_eq!(engine_side.waiting("dave@x", 999_999).unwrap().items, 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn memory_store_keeps_the_contract() {
    contract(&mut MemoryItems::default());
}

#[test]
fn sqlite_store_keeps_the_contract() {
    let d = dir("contract");
    contract(&mut SqliteItems::open(&d, 0).unwrap());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sqlite_items_survive_a_reopen_byte_for_byte() {
    let d = dir("reopen");
    let mut body = vec![0u8; 4096];
    for (i, b) in body.iter_mut().enumerate() {
        *b = u8::try_from(i % 251).unwrap();
    }
    let stored = Item::new(
        ItemId([7; 16]),
        "bob@x",
        "alice@x",
        "application/octet-stream",
        "secret, label=a",
        body,
        10,
        20,
    );
    {
        let mut s = SqliteItems::open(&d, 0).unwrap();
        s.put(&stored).unwrap();
    }
    let mut s = SqliteItems::open(&d, 0).unwrap();
    let got = s.get(&stored.id).unwrap().unwrap();
    assert_eq!(got, stored);
    assert_eq!(got.sha256, <[u8; 32]>::from(Sha256::digest(&got.body)));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sqlite_store_at_its_cap_answers_full_and_keeps_what_it_had() {
    let d = dir("full");
    // A cap a few pages above the empty schema: the first large item does not fit.
    let mut s = SqliteItems::open(&d, 64 * 1024).unwrap();
    s.put(&item(1, "bob@x", "alice@x", 100, 1)).unwrap();
    let err = s.put(&item(2, "bob@x", "alice@x", 200_000, 2)).unwrap_err();
    assert!(matches!(err, MailboxError::Full), "{err}");
    assert_eq!(err.status().0, 507);
    assert_eq!(
        s.list("bob@x", 0, 10).unwrap().len(),
        1,
        "the failed write left nothing"
    );
    drop(s);
    let mut s = SqliteItems::open(&d, 0).unwrap();
    assert_eq!(s.list("bob@x", 0, 10).unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn quota_decisions() {
    let q = Quotas {
        max_item_bytes: 100,
        max_upload_bytes: 1000,
        callee_items: 2,
        callee_bytes: 150,
        caller_items: 3,
        caller_bytes: 120,
        expiry_secs: 60,
    };
    let u = |items, bytes| Usage { items, bytes };
    assert_eq!(
        check_quota(&q, (100, q.max_item_bytes), u(0, 0), u(0, 0)),
        Ok(())
    );
    assert_eq!(
        check_quota(&q, (101, q.max_item_bytes), u(0, 0), u(0, 0)),
        Err(Refusal::TooLarge)
    );
    assert_eq!(
        check_quota(&q, (1, q.max_item_bytes), u(2, 2), u(0, 0)),
        Err(Refusal::MailboxFull)
    );
    assert_eq!(
        check_quota(&q, (60, q.max_item_bytes), u(1, 100), u(0, 0)),
        Err(Refusal::MailboxFull)
    );
    assert_eq!(
        check_quota(&q, (30, q.max_item_bytes), u(1, 100), u(1, 100)),
        Err(Refusal::SenderQuota)
    );
    assert_eq!(
        check_quota(&q, (1, q.max_item_bytes), u(0, 0), u(3, 3)),
        Err(Refusal::SenderQuota)
    );
    assert_eq!(Refusal::MailboxFull.status().0, 486);
    assert_eq!(Refusal::SenderQuota.status().0, 507);
    assert_eq!(Refusal::TooLarge.status().0, 413);
}

#[test]
fn mailbox_refuses_over_quota_and_on_a_failing_disk_without_storing() {
    let mem = MemoryItems::default();
    let mut m = Mailbox::new(
        Box::new(mem.clone()),
        Quotas {
            callee_items: 1,
            ..Quotas::default()
        },
    );
    m.deposit(&item(1, "bob@x", "alice@x", 10, 1), 1).unwrap();
    assert!(matches!(
        m.deposit(&item(2, "bob@x", "alice@x", 10, 1), 1),
        Err(DepositError::Refused(Refusal::MailboxFull))
    ));
    mem.fail_writes(Some(memory::Failure::Full));
    let e = m
        .deposit(&item(3, "carol@x", "alice@x", 10, 1), 1)
        .unwrap_err();
    assert!(matches!(e, DepositError::Store(MailboxError::Full)));
    mem.fail_writes(Some(memory::Failure::Unavailable));
    let e = m
        .deposit(&item(3, "carol@x", "alice@x", 10, 1), 1)
        .unwrap_err();
    assert!(matches!(&e, DepositError::Store(s) if s.status().0 == 503));
    assert_eq!(mem.all().len(), 1);
    // Expired items are not returned and do not count against the quota.
    mem.fail_writes(None);
    assert!(m.get(&ItemId([1; 16]), 101).unwrap().is_none());
    m.deposit(&item(4, "bob@x", "alice@x", 10, 200), 200)
        .unwrap();
}

#[test]
fn item_ids_print_and_parse() {
    let id = ItemId([0xab; 16]);
    assert_eq!(id.to_string(), "ab".repeat(16));
    assert_eq!(ItemId::parse(&"AB".repeat(16)), Some(id));
    assert_eq!(ItemId::parse("ab"), None);
    assert_eq!(ItemId::parse(&"zz".repeat(16)), None);
}

fn slot(n: u8, size: u64, expires_at: u64) -> Slot {
    Slot {
        id: ItemId([n; 16]),
        owner: "bob@x".into(),
        sender: "alice@x".into(),
        content_type: "image/png".into(),
        attributes: "secret".into(),
        name: Some("a.png".into()),
        size,
        sha256: [n; 32],
        created_at: 1,
        expires_at,
    }
}

/// Upload slots: counted in the usage, invisible as items until completed, replaced
/// by their item once, purged at expiry.
fn slot_contract(s: &mut dyn StoredItems) {
    let a = slot(1, 1000, 100);
    s.put_slot(&a).unwrap();
    assert!(s.put_slot(&a).is_err());
    assert_eq!(s.get_slot(&a.id).unwrap().as_ref(), Some(&a));
    assert_eq!(s.get(&a.id).unwrap(), None, "no item before completion");
    assert!(s.list("bob@x", 0, 10).unwrap().is_empty());
    assert_eq!(
        s.usage_of_owner("bob@x", 0).unwrap(),
        Usage {
            items: 1,
            bytes: 1000
        }
    );
    let body = serde_json::to_vec(&crate::upload::FileRef {
        file: a.id.to_string(),
        name: a.name.clone(),
        content_type: a.content_type.clone(),
        size: 1000,
        sha256: hex(&a.sha256),
    })
    .unwrap();
    let item = Item::new(
        a.id,
        "bob@x",
        "alice@x",
        crate::upload::FILE_TYPE,
        "secret",
        body,
        5,
        500,
    );
    assert!(s.complete_slot(&item).unwrap());
    assert!(!s.complete_slot(&item).unwrap(), "once");
    assert_eq!(s.get_slot(&a.id).unwrap(), None);
    assert_eq!(s.get(&a.id).unwrap().unwrap().stored_size(), 1000);
    assert_eq!(
        s.list("bob@x", 0, 10).unwrap()[0].size,
        1000,
        "the file's size"
    );
    assert_eq!(s.usage_of_sender("alice@x", 0).unwrap().bytes, 1000);
    s.put_slot(&slot(2, 10, 50)).unwrap();
    assert_eq!(s.purge_expired(50).unwrap(), 1, "the expired slot");
    assert_eq!(s.get_slot(&ItemId([2; 16])).unwrap(), None);
    assert!(s.get(&a.id).unwrap().is_some());
}

#[test]
fn memory_slots_keep_the_contract() {
    slot_contract(&mut MemoryItems::default());
}

#[test]
fn sqlite_slots_keep_the_contract_and_their_files_go_with_them() {
    let d = dir("slots");
    let mut s = SqliteItems::open(&d, 0).unwrap();
    slot_contract(&mut s);
    // A deleted file item takes its file along; an expired slot its part file.
    let id = ItemId([1; 16]);
    std::fs::create_dir_all(d.join(sqlite::FILES)).unwrap();
    std::fs::write(s.file_path(&id), b"data").unwrap();
    assert!(s.delete(&id).unwrap());
    assert!(!s.file_path(&id).exists());
    s.put_slot(&slot(3, 10, 60)).unwrap();
    let part = s.part_path(&ItemId([3; 16]));
    std::fs::write(&part, b"half").unwrap();
    assert_eq!(s.purge_expired(60).unwrap(), 1);
    assert!(!part.exists());
    let _ = std::fs::remove_dir_all(&d);
}

/// The deposit writer stores through a second connection: within the second in which
/// the engine's connection last checked the file, its owner set does not know of the
/// new item until it is told (`learn_owner`), and then every REGISTER of the owner
/// sees it waiting.
#[test]
fn an_item_stored_through_another_connection_is_learned_at_once() {
    let d = dir("learn");
    let mut engine = SqliteItems::open(&d, 0).unwrap();
    let mut writer = SqliteItems::open(&d, 0).unwrap();
    assert_eq!(engine.waiting("bob@x", 1000).unwrap(), Usage::default());
    writer.put(&item(1, "bob@x", "alice@x", 10, 1000)).unwrap();
    assert_eq!(
        engine.waiting("bob@x", 1000).unwrap(),
        Usage::default(),
        "checked at most once a second"
    );
    engine.learn_owner("bob@x");
    assert_eq!(
        engine.waiting("bob@x", 1000).unwrap(),
        Usage {
            items: 1,
            bytes: 10
        }
    );
    let _ = std::fs::remove_dir_all(&d);
}
