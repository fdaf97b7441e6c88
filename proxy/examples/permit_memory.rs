//! Memory and lookup cost of the permitted-terminal table.
//!
//! ```text
//! cargo run --release -p permit-proxy --example permit_memory -- \
//!     [CALLEES] [ENTRIES] [POOL] [STORED]
//! ```
//!
//! Builds a table of CALLEES lists (default 1,000,000) of ENTRIES callers each (default
//! 100), the callers drawn from a pool of POOL distinct AORs (default 2 × CALLEES) so
//! that interning matters; every tenth list also holds one `*@domain` entry. AORs are
//! 26–30 bytes. Prints the resident set before and after (VmRSS, VmHWM from
//! /proc/self/status), the build time, and lookup ns/op for permitted pairs and for
//! absent pairs. Then measures the facade on a small SQLite table, where each lookup
//! also checks `PRAGMA data_version` for changes made by other processes. When STORED
//! is given, also writes STORED lists of ENTRIES to a scratch `permit.sqlite` and times
//! loading them back (what a proxy start or a full reload costs).

// Figures are printed as floats; sizes and nanoseconds far below 2^52 lose nothing.
#![allow(clippy::cast_precision_loss)]

use std::hint::black_box;
use std::time::Instant;

use std::ops::Range;

use permit_proxy::permits::{
    Aor, ETag, PermitEntry, PermitStore, PermitTable, Permits, SqlitePermitStore,
};
use permit_proxy::store::Durability;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LOOKUPS: usize = 2_000_000;

fn callee(i: usize) -> String {
    format!("u{i:07}@tenant{}.example.com", i % 500)
}

fn caller(j: usize) -> String {
    format!("c{j:07}@voip{}.example.net", j % 97)
}

fn domain(i: usize) -> String {
    format!("partner{}.example.org", i % 1000)
}

/// The entries of list `i`, the same on every call (seeded by `i`).
fn entries(i: usize, m: usize, pool: usize) -> Vec<PermitEntry> {
    let mut rng = StdRng::seed_from_u64(i as u64);
    let mut out: Vec<PermitEntry> = (0..m)
        .map(|_| PermitEntry::Exact(caller(rng.random_range(0..pool))))
        .collect();
    if i.is_multiple_of(10) && m > 0 {
        out[m - 1] = PermitEntry::Domain(domain(i));
    }
    out
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ns_per_op(start: Instant, n: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / n as f64
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map_or(default, |a| a.parse().expect("a number"))
}

fn main() {
    let n = arg(1, 1_000_000);
    let m = arg(2, 100);
    let pool = arg(3, 2 * n).max(1);
    println!("table: {n} callees x {m} entries, callers from a pool of {pool}");

    let (rss0, _) = rss_kib();
    let start = Instant::now();
    let mut generating = std::time::Duration::ZERO;
    let mut table = PermitTable::new();
    for i in 0..n {
        let g = Instant::now();
        let aor = Aor::parse(&callee(i)).expect("synthetic AOR");
        let list = entries(i, m, pool);
        generating += g.elapsed();
        table
            .set_list(&aor, &list, ETag::from_u64(i as u64))
            .expect("table not full");
    }
    table.shrink_to_fit();
    let build = start.elapsed();
    let (rss1, hwm1) = rss_kib();
    println!(
        "build: {:.1} s, of which {:.1} s making the synthetic entries; lists {}, entries {}, names {}",
        build.as_secs_f64(),
        generating.as_secs_f64(),
        table.callees(),
        table.entries(),
        table.names()
    );
    println!(
        "rss: before {:.0} MiB, after {:.0} MiB (table {:.0} MiB = {:.1} bytes/entry); \
         peak {:.0} MiB; own accounting {:.0} MiB",
        mib(rss0),
        mib(rss1),
        mib(rss1 - rss0),
        (rss1 - rss0) as f64 * 1024.0 / table.entries().max(1) as f64,
        mib(hwm1),
        table.heap_bytes() as f64 / (1024.0 * 1024.0)
    );

    // Queries are made before the clock starts and laid out one after the other, as a
    // request's bytes would be: only the table's memory accesses are timed.
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut present = Queries::default();
    for _ in 0..LOOKUPS.min(n * m.max(1)) {
        let i = rng.random_range(0..n);
        let list = entries(i, m, pool);
        let who = match &list[rng.random_range(0..m)] {
            PermitEntry::Exact(a) => a.clone(),
            PermitEntry::Domain(d) => format!("anyone@{d}"),
        };
        present.push(&callee(i), &who);
    }
    let mut absent = Queries::default();
    for _ in 0..LOOKUPS {
        let i = rng.random_range(0..n);
        absent.push(&callee(i), &caller(rng.random_range(0..pool)));
    }
    let start = Instant::now();
    let hits = present.count(|a, b| table.is_permitted(black_box(a), black_box(b)));
    let t_present = ns_per_op(start, present.len());
    assert_eq!(hits, present.len(), "a permitted pair was refused");
    let start = Instant::now();
    let false_hits = absent.count(|a, b| table.is_permitted(black_box(a), black_box(b)));
    let t_absent = ns_per_op(start, absent.len());
    println!(
        "lookup: permitted {t_present:.0} ns/op ({} pairs), random pair {t_absent:.0} ns/op \
         ({} pairs, {false_hits} of them happen to be on the list)",
        present.len(),
        absent.len()
    );
    drop(table);
    drop((present, absent));

    facade();
    let stored = arg(4, 0);
    if stored > 0 {
        load(stored, m, pool);
    }
}

/// (callee, caller) pairs in one buffer.
#[derive(Default)]
struct Queries {
    text: String,
    pairs: Vec<(Range<usize>, Range<usize>)>,
}

impl Queries {
    fn push(&mut self, a: &str, b: &str) {
        let s = self.text.len();
        self.text.push_str(a);
        self.text.push_str(b);
        self.pairs
            .push((s..s + a.len(), s + a.len()..s + a.len() + b.len()));
    }
    fn len(&self) -> usize {
        self.pairs.len()
    }
    fn count(&self, mut f: impl FnMut(&str, &str) -> bool) -> usize {
        self.pairs
            .iter()
            .filter(|(a, b)| f(&self.text[a.clone()], &self.text[b.clone()]))
            .count()
    }
}

/// Stores `lists` lists of `m` entries in a scratch SQLite file, then times
/// [`Permits::open`] loading them into a table.
fn load(lists: usize, m: usize, pool: usize) {
    let dir = std::env::temp_dir().join(format!("permit-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = SqlitePermitStore::open(&dir, Durability::Normal).expect("open");
    let start = Instant::now();
    for chunk in (0..lists).collect::<Vec<_>>().chunks(10_000) {
        let groups: Vec<(Aor, Vec<PermitEntry>, ETag)> = chunk
            .iter()
            .map(|&i| {
                let aor = Aor::parse(&callee(i)).expect("AOR");
                (aor, entries(i, m, pool), ETag::from_u64(i as u64))
            })
            .collect();
        store.import(&groups).expect("import");
    }
    let write = start.elapsed();
    drop(store);
    let file = std::fs::metadata(dir.join("permit.sqlite")).map_or(0, |md| md.len());
    let start = Instant::now();
    let p = Permits::open(&dir, Durability::Normal).expect("load");
    let read = start.elapsed();
    let table = p.table().expect("loaded");
    println!(
        "sqlite: {lists} lists x {m} written in {:.1} s ({} MiB file, {:.0} bytes/entry); \
         loaded in {:.1} s ({:.0} entries/s) into a table of {:.0} MiB (own accounting)",
        write.as_secs_f64(),
        file / (1024 * 1024),
        file as f64 / table.entries().max(1) as f64,
        read.as_secs_f64(),
        table.entries() as f64 / read.as_secs_f64(),
        table.heap_bytes() as f64 / (1024.0 * 1024.0)
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The facade over SQLite: each lookup first reads `PRAGMA data_version`.
fn facade() {
    let dir = std::env::temp_dir().join(format!("permit-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut p = Permits::open(&dir, Durability::Normal).expect("open");
    let csv: String = (0..1000)
        .flat_map(|i| (0..10).map(move |j| format!("{},{}\n", callee(i), caller(i * 10 + j))))
        .collect();
    p.import_csv(csv.as_bytes()).expect("import");
    let queries: Vec<(String, String)> = (0..200_000)
        .map(|k| (callee(k % 1000), caller((k % 1000) * 10 + k % 10)))
        .collect();
    let start = Instant::now();
    let hits = queries
        .iter()
        .filter(|(a, b)| p.is_permitted(black_box(a), black_box(b)))
        .count();
    let t = ns_per_op(start, queries.len());
    assert_eq!(hits, queries.len());
    let start = Instant::now();
    let mut writes = 0;
    for i in 0..200 {
        let aor = Aor::parse(&callee(i)).expect("AOR");
        p.add(&aor, &PermitEntry::Domain(domain(i)), None)
            .expect("add");
        writes += 1;
    }
    let w = ns_per_op(start, writes) / 1000.0;
    println!(
        "facade (SQLite, 1000 lists x 10, data_version checked per lookup): {t:.0} ns/op; \
         add (one committed transaction, synchronous=NORMAL): {w:.0} us/op"
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}
