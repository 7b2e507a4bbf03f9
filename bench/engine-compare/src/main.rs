//! engine-compare: durable group-commit throughput of fjall 3 vs redb vs a raw
//! fdatasync'd append-only log, for weir's task-store workload.
//!
//! Workload (per task, mirrors weir's enqueue):
//!   tasks[id16]    = 120-byte metadata record
//!   payloads[id16] = 1 KiB payload
//!   index[id16]    = 30-byte index entry
//! committed in groups (one commit + fsync per group).
//!
//! Ack (per task): overwrite tasks[id16], delete index[id16],
//!   insert expiry[be64 expire_at ++ id16] = "" (24-byte key).
//!
//! Usage: engine-compare [--reps 3] [--n 200000] [--n-g1 2000] [--scratch DIR]
//! Values are pseudo-random (incompressible) so lz4 in fjall gains nothing.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const META_LEN: usize = 120;
const PAYLOAD_LEN: usize = 1024;
const INDEX_LEN: usize = 30;
const READS: usize = 200_000;
const ACK_GROUP: usize = 1000;

// ---------------------------------------------------------------- data gen

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn key(id: u64) -> [u8; 16] {
    // 16-byte big-endian id (ULID-like, monotonically increasing)
    (id as u128 | (0x0190_0000_0000u128 << 80)).to_be_bytes()
}

fn expiry_key(id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&(1_800_000_000_000u64 + id).to_be_bytes());
    k[8..].copy_from_slice(&key(id));
    k
}

/// Pre-generated value pools so value generation is not timed.
struct Values {
    meta: Vec<Vec<u8>>,
    meta_acked: Vec<Vec<u8>>,
    payload: Vec<Vec<u8>>,
    index: Vec<Vec<u8>>,
}
const POOL: usize = 1024;
impl Values {
    fn new() -> Self {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let mut gen = |len: usize| {
            (0..POOL)
                .map(|_| {
                    let mut v = vec![0u8; len];
                    r.fill(&mut v);
                    v
                })
                .collect::<Vec<_>>()
        };
        Values {
            meta: gen(META_LEN),
            meta_acked: gen(META_LEN),
            payload: gen(PAYLOAD_LEN),
            index: gen(INDEX_LEN),
        }
    }
    fn meta(&self, id: u64) -> &[u8] {
        &self.meta[id as usize % POOL]
    }
    fn meta_acked(&self, id: u64) -> &[u8] {
        &self.meta_acked[id as usize % POOL]
    }
    fn payload(&self, id: u64) -> &[u8] {
        &self.payload[id as usize % POOL]
    }
    fn index(&self, id: u64) -> &[u8] {
        &self.index[id as usize % POOL]
    }
}

fn random_ids(n: u64, count: usize, seed: u64) -> Vec<u64> {
    let mut r = Rng(seed | 1);
    (0..count).map(|_| r.next() % n).collect()
}

// ---------------------------------------------------------------- engines

trait Engine {
    fn write(&mut self, v: &Values, n: u64, group: usize);
    fn ack(&mut self, v: &Values, n: u64, group: usize);
    /// returns number of found values (sanity check)
    fn reads(&mut self, ids: &[u64]) -> usize;
}

// ---- fjall 3

struct Fjall {
    db: fjall::Database,
    tasks: fjall::Keyspace,
    payloads: fjall::Keyspace,
    index: fjall::Keyspace,
    expiry: fjall::Keyspace,
}

impl Fjall {
    fn open(path: &Path, cache: Option<u64>) -> Self {
        use fjall::{Database, KeyspaceCreateOptions};
        let mut b = Database::builder(path);
        if let Some(c) = cache {
            b = b.cache_size(c);
        }
        let db = b.open().expect("fjall open");
        let tasks = db.keyspace("tasks", KeyspaceCreateOptions::default).unwrap();
        let payloads = db.keyspace("payloads", KeyspaceCreateOptions::default).unwrap();
        let index = db.keyspace("index", KeyspaceCreateOptions::default).unwrap();
        let expiry = db.keyspace("expiry", KeyspaceCreateOptions::default).unwrap();
        Fjall { db, tasks, payloads, index, expiry }
    }
}

impl Engine for Fjall {
    fn write(&mut self, v: &Values, n: u64, group: usize) {
        let mut id = 0u64;
        while id < n {
            let end = (id + group as u64).min(n);
            let mut b = self.db.batch();
            for i in id..end {
                let k = key(i);
                b.insert(&self.tasks, k, v.meta(i));
                b.insert(&self.payloads, k, v.payload(i));
                b.insert(&self.index, k, v.index(i));
            }
            b.commit().unwrap();
            self.db.persist(fjall::PersistMode::SyncAll).unwrap();
            id = end;
        }
    }
    fn ack(&mut self, v: &Values, n: u64, group: usize) {
        let mut id = 0u64;
        while id < n {
            let end = (id + group as u64).min(n);
            let mut b = self.db.batch();
            for i in id..end {
                let k = key(i);
                b.insert(&self.tasks, k, v.meta_acked(i));
                b.remove(&self.index, k);
                b.insert(&self.expiry, expiry_key(i), b"".as_slice());
            }
            b.commit().unwrap();
            self.db.persist(fjall::PersistMode::SyncAll).unwrap();
            id = end;
        }
    }
    fn reads(&mut self, ids: &[u64]) -> usize {
        let mut found = 0;
        for &i in ids {
            let k = key(i);
            if let Some(m) = self.tasks.get(k).unwrap() {
                found += (m.len() == META_LEN) as usize;
            }
            if let Some(p) = self.payloads.get(k).unwrap() {
                found += (p.len() == PAYLOAD_LEN) as usize;
            }
        }
        found
    }
}

// ---- redb

use redb::{ReadableDatabase, TableDefinition};
const R_TASKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tasks");
const R_PAYLOADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("payloads");
const R_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index");
const R_EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("expiry");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn create(path: &Path) -> Self {
        let db = redb::Database::create(path.join("db.redb")).expect("redb create");
        // create tables up-front so the first timed commit isn't special
        let tx = db.begin_write().unwrap();
        for t in [R_TASKS, R_PAYLOADS, R_INDEX, R_EXPIRY] {
            tx.open_table(t).unwrap();
        }
        tx.commit().unwrap();
        Redb { db }
    }
}

impl Engine for Redb {
    fn write(&mut self, v: &Values, n: u64, group: usize) {
        let mut id = 0u64;
        while id < n {
            let end = (id + group as u64).min(n);
            let tx = self.db.begin_write().unwrap(); // Durability::Immediate (default)
            {
                let mut t = tx.open_table(R_TASKS).unwrap();
                let mut p = tx.open_table(R_PAYLOADS).unwrap();
                let mut x = tx.open_table(R_INDEX).unwrap();
                for i in id..end {
                    let k = key(i);
                    t.insert(k.as_slice(), v.meta(i)).unwrap();
                    p.insert(k.as_slice(), v.payload(i)).unwrap();
                    x.insert(k.as_slice(), v.index(i)).unwrap();
                }
            }
            tx.commit().unwrap();
            id = end;
        }
    }
    fn ack(&mut self, v: &Values, n: u64, group: usize) {
        let mut id = 0u64;
        while id < n {
            let end = (id + group as u64).min(n);
            let tx = self.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(R_TASKS).unwrap();
                let mut x = tx.open_table(R_INDEX).unwrap();
                let mut e = tx.open_table(R_EXPIRY).unwrap();
                for i in id..end {
                    let k = key(i);
                    t.insert(k.as_slice(), v.meta_acked(i)).unwrap();
                    x.remove(k.as_slice()).unwrap();
                    e.insert(expiry_key(i).as_slice(), b"".as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
            id = end;
        }
    }
    fn reads(&mut self, ids: &[u64]) -> usize {
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(R_TASKS).unwrap();
        let p = tx.open_table(R_PAYLOADS).unwrap();
        let mut found = 0;
        for &i in ids {
            let k = key(i);
            if let Some(m) = t.get(k.as_slice()).unwrap() {
                found += (m.value().len() == META_LEN) as usize;
            }
            if let Some(pv) = p.get(k.as_slice()).unwrap() {
                found += (pv.value().len() == PAYLOAD_LEN) as usize;
            }
        }
        found
    }
}

// ---- plain append-only log: write_all + fdatasync per group (the floor)

struct PlainLog {
    f: File,
    buf: Vec<u8>,
}

impl PlainLog {
    fn create(path: &Path) -> Self {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.join("log"))
            .unwrap();
        // make the directory entry durable once, like a real log would at creation
        File::open(path).unwrap().sync_all().unwrap();
        PlainLog { f, buf: Vec::with_capacity(2 << 20) }
    }
    fn rec(&mut self, tag: u8, k: &[u8], val: &[u8]) {
        self.buf.push(tag);
        self.buf.extend_from_slice(&(k.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(&(val.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(k);
        self.buf.extend_from_slice(val);
    }
    fn flush(&mut self) {
        self.f.write_all(&self.buf).unwrap();
        self.f.sync_data().unwrap();
        self.buf.clear();
    }
}

impl Engine for PlainLog {
    fn write(&mut self, v: &Values, n: u64, group: usize) {
        let mut id = 0u64;
        while id < n {
            let end = (id + group as u64).min(n);
            for i in id..end {
                let k = key(i);
                self.rec(1, &k, v.meta(i));
                self.rec(2, &k, v.payload(i));
                self.rec(3, &k, v.index(i));
            }
            self.flush();
            id = end;
        }
    }
    fn ack(&mut self, v: &Values, n: u64, group: usize) {
        let mut id = 0u64;
        while id < n {
            let end = (id + group as u64).min(n);
            for i in id..end {
                let k = key(i);
                self.rec(1, &k, v.meta_acked(i));
                self.rec(4, &k, b"");
                self.rec(5, &expiry_key(i), b"");
            }
            self.flush();
            id = end;
        }
    }
    fn reads(&mut self, _ids: &[u64]) -> usize {
        unimplemented!("plain log has no point reads")
    }
}

// ---------------------------------------------------------------- harness

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Fjall,
    Redb,
    Plain,
}
impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fjall => "fjall 3",
            Kind::Redb => "redb 4",
            Kind::Plain => "plain log",
        }
    }
    fn open(self, dir: &Path) -> Box<dyn Engine> {
        match self {
            Kind::Fjall => Box::new(Fjall::open(dir, None)),
            Kind::Redb => Box::new(Redb::create(dir)),
            Kind::Plain => Box::new(PlainLog::create(dir)),
        }
    }
}

struct Results {
    // (row label, column label) -> samples (ops/s)
    rows: Vec<(String, String, Vec<f64>)>,
}
impl Results {
    fn push(&mut self, row: &str, col: &str, v: f64) {
        eprintln!("  {row:<34} {col:<28} {v:>12.0}/s");
        if let Some(e) = self.rows.iter_mut().find(|(r, c, _)| r == row && c == col) {
            e.2.push(v);
        } else {
            self.rows.push((row.into(), col.into(), vec![v]));
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

fn rate(count: usize, d: Duration) -> f64 {
    count as f64 / d.as_secs_f64()
}

fn fresh_dir(scratch: &Path) -> tempfile::TempDir {
    tempfile::Builder::new().prefix("run-").tempdir_in(scratch).unwrap()
}

fn drop_caches_hint() {
    // best effort: nothing; we do not drop the OS page cache (needs root + affects the
    // other build). Reads are therefore "warm OS page cache" numbers.
}

fn fsync_rate(scratch: &Path, secs: f64) -> (f64, f64) {
    let dir = fresh_dir(scratch);
    // (a) append 1 byte + fdatasync (file grows -> size metadata must be journaled too)
    let mut f = OpenOptions::new().create(true).append(true).open(dir.path().join("a")).unwrap();
    let t = Instant::now();
    let mut n = 0usize;
    while t.elapsed().as_secs_f64() < secs {
        f.write_all(b"x").unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let append = rate(n, t.elapsed());
    // (b) overwrite 1 byte in place at offset 0 + fdatasync (no size change)
    let mut g = OpenOptions::new().create(true).write(true).read(true).open(dir.path().join("b")).unwrap();
    g.write_all(&[0u8; 4096]).unwrap();
    g.sync_all().unwrap();
    g.seek(SeekFrom::Start(0)).unwrap();
    let t = Instant::now();
    let mut n = 0usize;
    while t.elapsed().as_secs_f64() < secs {
        g.write_all_at(b"y", 0).unwrap();
        g.sync_data().unwrap();
        n += 1;
    }
    (append, rate(n, t.elapsed()))
}

fn main() {
    let mut reps = 3usize;
    let mut n: u64 = 200_000;
    let mut n_g1: u64 = 2_000;
    let mut scratch = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scratch"));
    let mut only: Option<String> = None;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--reps" => { reps = args[i + 1].parse().unwrap(); i += 1; }
            "--n" => { n = args[i + 1].parse().unwrap(); i += 1; }
            "--n-g1" => { n_g1 = args[i + 1].parse().unwrap(); i += 1; }
            "--scratch" => { scratch = PathBuf::from(&args[i + 1]); i += 1; }
            "--only" => { only = Some(args[i + 1].clone()); i += 1; }
            a => panic!("unknown arg {a}"),
        }
        i += 1;
    }
    std::fs::create_dir_all(&scratch).unwrap();
    eprintln!("scratch dir: {} ; reps={reps} n={n} n_g1={n_g1}", scratch.display());

    let vals = Values::new();
    let read_ids = random_ids(n, READS, 0xC0FFEE);
    let mut res = Results { rows: vec![] };

    eprintln!("raw fsync rate (2 s each)...");
    let (fa, fo) = fsync_rate(&scratch, 2.0);
    res.push("raw disk: 1-byte append + fdatasync", "ops/s", fa);
    res.push("raw disk: 1-byte overwrite + fdatasync", "ops/s", fo);

    let kinds = [Kind::Fjall, Kind::Redb, Kind::Plain];
    for rep in 0..reps {
        eprintln!("=== rep {} / {reps}", rep + 1);
        // per-rep fsync probe: the VM's fsync latency is not stable over time, so record
        // which regime each rep ran in.
        let (fa, _) = fsync_rate(&scratch, 1.0);
        res.push("fsync probe", &format!("rep {}", rep + 1), fa);
        for &kind in &kinds {
            if let Some(o) = &only {
                if !kind.name().starts_with(o.as_str()) { continue; }
            }
            for &(group, count) in &[(1usize, n_g1), (64, n), (1000, n)] {
                let dir = fresh_dir(&scratch);
                let mut e = kind.open(dir.path());
                let t = Instant::now();
                e.write(&vals, count, group);
                let d = t.elapsed();
                res.push(kind.name(), &format!("enqueue g={group}"), rate(count as usize, d));

                if group == 1000 {
                    let t = Instant::now();
                    e.ack(&vals, count, ACK_GROUP);
                    let d = t.elapsed();
                    res.push(kind.name(), &format!("ack g={ACK_GROUP}"), rate(count as usize, d));

                    if kind != Kind::Plain {
                        drop_caches_hint();
                        let t = Instant::now();
                        let found = e.reads(&read_ids);
                        let d = t.elapsed();
                        assert_eq!(found, 2 * READS, "{} reads: missing values", kind.name());
                        res.push(kind.name(), "point read (meta+payload)", rate(READS, d));

                        // reopen and read again: fjall with its block cache raised to
                        // redb's 1 GiB default, after background flush/compaction settled
                        drop(e);
                        let mut e2: Box<dyn Engine> = match kind {
                            Kind::Fjall => {
                                let f = Fjall::open(dir.path(), Some(1 << 30));
                                let t = Instant::now();
                                while (f.db.outstanding_flushes() > 0 || f.db.active_compactions() > 0)
                                    && t.elapsed() < Duration::from_secs(60)
                                {
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                                eprintln!("  fjall settled after {:?}", t.elapsed());
                                Box::new(f)
                            }
                            Kind::Redb => Box::new(Redb {
                                db: redb::Database::open(dir.path().join("db.redb")).unwrap(),
                            }),
                            Kind::Plain => unreachable!(),
                        };
                        let _ = e2.reads(&read_ids); // untimed warm-up pass: fill the engine cache
                        let t = Instant::now();
                        let found = e2.reads(&read_ids);
                        let d = t.elapsed();
                        assert_eq!(found, 2 * READS);
                        res.push(kind.name(), "point read, reopened+warm", rate(READS, d));
                        drop(e2);
                        continue;
                    }
                }
                drop(e);
                drop(dir);
            }
        }
    }

    // ---- markdown output
    let cols = [
        "enqueue g=1",
        "enqueue g=64",
        "enqueue g=1000",
        "ack g=1000",
        "point read (meta+payload)",
        "point read, reopened+warm",
    ];
    println!("Raw disk (single 2 s run each, before the reps):\n");
    println!("| probe | ops/s |\n|---|---:|");
    for (r, _, v) in res.rows.iter().filter(|(r, _, _)| r.starts_with("raw disk")) {
        println!("| {} | {:.0} |", r.trim_start_matches("raw disk: "), v[0]);
    }
    for (_, c, v) in res.rows.iter().filter(|(r, _, _)| r == "fsync probe") {
        println!("| 1-byte append + fdatasync, 1 s probe at start of {c} | {:.0} |", v[0]);
    }
    println!();
    println!("Median of {reps} runs; enqueue/ack in tasks/s (1 task = 3 writes), reads in lookups/s (1 lookup = get meta + get payload). g=1 uses N={n_g1}, others N={n}.\n");
    print!("| engine |");
    for c in cols { print!(" {c} |"); }
    println!();
    print!("|---|");
    for _ in cols { print!("---:|"); }
    println!();
    for &kind in &kinds {
        print!("| {} |", kind.name());
        for c in cols {
            match res.rows.iter().find(|(r, cc, _)| r == kind.name() && cc == c) {
                Some((_, _, v)) => print!(" {:.0} |", median(v)),
                None => print!(" – |"),
            }
        }
        println!();
    }
    println!("\nAll samples:\n");
    for (r, c, v) in &res.rows {
        let s: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
        println!("- {r} / {c}: [{}]", s.join(", "));
    }
}
