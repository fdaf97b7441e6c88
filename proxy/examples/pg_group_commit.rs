//! Binding writes per second through the PostgreSQL location store, as the
//! group-commit worker issues them: `GROUPS` groups of `SIZE` REGISTER-like writes
//! (one binding each, distinct AORs), each group one `apply` (one transaction).
//!
//! ```sh
//! cargo run --release -p permit-proxy --example pg_group_commit -- \
//!     postgres://permit@127.0.0.1:5432/permit 1 2000
//! ```
//! Arguments: the URL of a database the proxy may migrate, the group size, the number
//! of writes in all. Prints the rate; the database keeps what was written.

use std::sync::Arc;
use std::time::Instant;

use permit_proxy::location::{Binding, CallIdHash};
use permit_proxy::pg::{Db, NodeId, PgLocationStore, PgUrl};
use permit_proxy::store::{LocationStore, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, size, total] = args.as_slice() else {
        eprintln!("usage: pg_group_commit URL GROUP_SIZE WRITES");
        std::process::exit(2);
    };
    let url = PgUrl::new(url.clone());
    let size: usize = size.parse().expect("group size");
    let total: usize = total.parse().expect("writes");
    Db::open(&url, "migrate")
        .and_then(|db| db.migrate())
        .expect("migrate");
    let mut store = PgLocationStore::open(&url, NodeId("bench".into())).expect("connect");
    let started = Instant::now();
    let mut written = 0;
    let mut n = 0u64;
    while written < total {
        let group: Vec<Write> = (0..size.min(total - written))
            .map(|_| {
                n += 1;
                Write::Put {
                    aor: Arc::from(format!("user{n}@bench.invalid")),
                    bindings: vec![Binding {
                        contact: format!("sip:user{n}@127.0.0.1:5070").into(),
                        expires_at: 4_000_000_000,
                        q: 1000,
                        call_id: CallIdHash::of(&n.to_string()),
                        cseq: 1,
                        path: Vec::new().into(),
                        source: None,
                        max_calls: None,
                        load_query: true,
                    }]
                    .into(),
                    in_place: false,
                }
            })
            .collect();
        store.apply(&group).expect("apply");
        written += group.len();
    }
    let elapsed = started.elapsed();
    let per_write_us = elapsed.as_micros() / u128::try_from(written.max(1)).unwrap_or(1);
    println!(
        "group size {size}: {written} writes in {:.2} s, {per_write_us} us per write",
        elapsed.as_secs_f64()
    );
}
