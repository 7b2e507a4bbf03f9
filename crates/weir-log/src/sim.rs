//! `SimStorage`: an in-memory `Storage` that simulates power loss and injects faults, so the
//! log's (and the store's) crash tests are deterministic and replayable from a seed.
//!
//! The model. Each file has a durable content (what survives power loss for sure) and a live
//! content (what reads see). A write changes the live content and records, for each 512-byte
//! sector it touches, the sector's new content as one more version. `sync_data` makes the live
//! content durable. `crash(seed)` simulates power loss: each sector written since the last
//! `sync_data` independently ends up with its durable content or any one of its written
//! versions (writeback may have flushed an intermediate one), or, if torn sectors are on, a
//! mix of two of those split at a random byte. A file whose size grew since its last sync keeps
//! its old or its new size. Names made or removed since the last `sync_dir` of their directory
//! survive as a random prefix of those operations, in order (a journaling file system commits
//! them in order). Handles opened before a crash fail afterwards.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::storage::{Storage, StorageFile};

/// Linux errno values for `Fault::errno`.
pub mod errno {
    /// I/O error.
    pub const EIO: i32 = 5;
    /// Too many open files.
    pub const EMFILE: i32 = 24;
    /// No space left on device.
    pub const ENOSPC: i32 = 28;
}

/// Sector size of the simulated disk: the unit that survives power loss whole (unless torn).
pub const SECTOR_BYTES: usize = 512;

/// Kinds of storage calls, for fault injection and call counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    CreateDir,
    List,
    Create,
    Open,
    Rename,
    Remove,
    SyncDir,
    Write,
    Read,
    SyncData,
    Len,
    /// Matches every kind: a fault on `Any` counts every call (a crash point).
    Any,
}

const OP_KINDS: [OpKind; 11] = [
    OpKind::CreateDir,
    OpKind::List,
    OpKind::Create,
    OpKind::Open,
    OpKind::Rename,
    OpKind::Remove,
    OpKind::SyncDir,
    OpKind::Write,
    OpKind::Read,
    OpKind::SyncData,
    OpKind::Len,
];

/// A fault to inject: the `nth` call (1-based, counted from when it is injected) of `kind`
/// fails with `errno`; if `sticky`, every later matching call fails too until cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: OpKind,
    pub nth: u64,
    pub errno: i32,
    pub sticky: bool,
    /// For a failing write: how many leading bytes of the buffer land before the error (they
    /// are written but not synced, like a short or failed pwrite). `None`: nothing lands.
    pub partial_bytes: Option<usize>,
}

impl Fault {
    /// The `nth` call of `kind` fails once.
    pub fn once(kind: OpKind, nth: u64, errno: i32) -> Fault {
        Fault {
            kind,
            nth,
            errno,
            sticky: false,
            partial_bytes: None,
        }
    }

    /// The `nth` call of `kind` and every later one fail, until `clear_faults`.
    pub fn sticky(kind: OpKind, nth: u64, errno: i32) -> Fault {
        Fault {
            kind,
            nth,
            errno,
            sticky: true,
            partial_bytes: None,
        }
    }

    /// A failing write lands its first `bytes` bytes before reporting the error.
    pub fn partial(mut self, bytes: usize) -> Fault {
        self.partial_bytes = Some(bytes);
        self
    }
}

#[derive(Debug)]
struct Armed {
    fault: Fault,
    seen: u64,
    fired: bool,
}

#[derive(Debug, Default)]
struct Inode {
    /// What reads see.
    live: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Sector index → contents it had after each write since the last sync, oldest first.
    versions: BTreeMap<usize, Vec<Box<[u8]>>>,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link {
        path: PathBuf,
        ino: u64,
    },
    Unlink {
        path: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        ino: u64,
    },
}

impl DirOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => path.parent(),
            DirOp::Rename { to, .. } => to.parent(),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Link { path, ino } => {
                names.insert(path.clone(), *ino);
            }
            DirOp::Unlink { path } => {
                names.remove(path);
            }
            DirOp::Rename { from, to, ino } => {
                names.remove(from);
                names.insert(to.clone(), *ino);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every crash; handles from an older generation fail.
    generation: u64,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    dirs: BTreeSet<PathBuf>,
    /// Names as the live file system sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Names as they survive a crash for sure.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Name changes since the last `sync_dir` of their directory, in order.
    pending: Vec<DirOp>,
    faults: Vec<Armed>,
    counts: HashMap<OpKind, u64>,
    torn_sectors: bool,
}

impl State {
    /// Counts one call of `kind` and decides whether an injected fault fails it.
    fn call(&mut self, kind: OpKind) -> Result<(), (io::Error, Option<usize>)> {
        *self.counts.entry(kind).or_default() += 1;
        let mut failure = None;
        for armed in &mut self.faults {
            if armed.fault.kind != kind && armed.fault.kind != OpKind::Any {
                continue;
            }
            if armed.fired {
                // Only the first failing write of a sticky fault lands partly: after power
                // fails, nothing more reaches the disk.
                if armed.fault.sticky && failure.is_none() {
                    failure = Some((armed.fault.errno, None));
                }
                continue;
            }
            armed.seen += 1;
            if armed.seen == armed.fault.nth {
                armed.fired = true;
                if failure.is_none() {
                    failure = Some((armed.fault.errno, armed.fault.partial_bytes));
                }
            }
        }
        match failure {
            Some((errno, partial)) => Err((io::Error::from_raw_os_error(errno), partial)),
            None => Ok(()),
        }
    }

    fn inode_of(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn check_dir(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(dir) if self.dirs.contains(dir) => Ok(()),
            _ => Err(not_found(path)),
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("sim: no such file {}", path.display()),
    )
}

/// An in-memory `Storage` with power loss and fault injection. Clones share one file system.
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

impl SimStorage {
    /// An empty file system; torn sectors off (each sector survives whole, as on real disks
    /// with atomic sector writes).
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    /// Lets `crash` tear sectors (a random prefix new, the rest old).
    pub fn with_torn_sectors(self, torn: bool) -> SimStorage {
        self.lock().torn_sectors = torn;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; the state is still
        // good enough to inspect.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Injects a fault (see `Fault`).
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(Armed {
            fault,
            seen: 0,
            fired: false,
        });
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// How many calls of `kind` were made (`Any`: all calls), failed ones included.
    pub fn count(&self, kind: OpKind) -> u64 {
        let state = self.lock();
        match kind {
            OpKind::Any => OP_KINDS
                .iter()
                .map(|k| state.counts.get(k).copied().unwrap_or(0))
                .sum(),
            kind => state.counts.get(&kind).copied().unwrap_or(0),
        }
    }

    /// Simulates power loss (see the module docs), then clears every fault. Deterministic for
    /// a given seed and history.
    pub fn crash(&self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = self.lock();
        let state = &mut *state;
        let kept = rng.gen_range(0..=state.pending.len());
        for op in &state.pending[..kept] {
            op.apply(&mut state.durable_names);
        }
        state.pending.clear();
        state.names = state.durable_names.clone();
        let alive: BTreeSet<u64> = state.names.values().copied().collect();
        state.inodes.retain(|ino, _| alive.contains(ino));
        let torn = state.torn_sectors;
        for ino in &alive {
            let inode = state.inodes.get_mut(ino).expect("named inode exists");
            let len = if inode.live.len() != inode.durable.len() && rng.gen_bool(0.5) {
                inode.live.len()
            } else {
                inode.durable.len()
            };
            let mut content = std::mem::take(&mut inode.durable);
            content.resize(len, 0);
            for (&sector, versions) in &inode.versions {
                let at = sector * SECTOR_BYTES;
                if at >= len {
                    continue;
                }
                let end = (at + SECTOR_BYTES).min(len);
                // Choice 0 is the durable content; 1..=n the written versions.
                let pick = |rng: &mut StdRng, old: &[u8]| -> Vec<u8> {
                    match rng.gen_range(0..=versions.len()) {
                        0 => old.to_vec(),
                        v => versions[v - 1][..end - at].to_vec(),
                    }
                };
                let old = content[at..end].to_vec();
                let first = pick(&mut rng, &old);
                let sector_bytes = if torn && rng.gen_bool(0.25) {
                    let second = pick(&mut rng, &old);
                    let split = rng.gen_range(0..=end - at);
                    [&first[..split], &second[split..]].concat()
                } else {
                    first
                };
                content[at..end].copy_from_slice(&sector_bytes);
            }
            inode.versions.clear();
            inode.live = content.clone();
            inode.durable = content;
        }
        state.generation += 1;
        state.faults.clear();
    }

    /// Flips bit `bit` (0..8) of byte `off` of `path`, in both its live and durable content
    /// (media corruption of synced data).
    pub fn flip_bit(&self, path: &Path, off: u64, bit: u8) {
        let mut state = self.lock();
        let ino = state.inode_of(path).expect("flip_bit: file exists");
        let inode = state.inodes.get_mut(&ino).expect("inode");
        let off = off as usize;
        inode.live[off] ^= 1 << bit;
        if off < inode.durable.len() {
            inode.durable[off] ^= 1 << bit;
        }
    }

    /// The live content of `path`, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let ino = state.names.get(path)?;
        Some(state.inodes[ino].live.clone())
    }

    /// Every live file name.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.call(OpKind::CreateDir).map_err(|e| e.0)?;
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut state = self.lock();
        state.call(OpKind::List).map_err(|e| e.0)?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.lock();
        state.call(OpKind::Create).map_err(|e| e.0)?;
        state.check_dir(path)?;
        state.next_ino += 1;
        let ino = state.next_ino;
        state.inodes.insert(ino, Inode::default());
        state.names.insert(path.to_path_buf(), ino);
        state.pending.push(DirOp::Link {
            path: path.to_path_buf(),
            ino,
        });
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            ino,
            generation: state.generation,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.lock();
        state.call(OpKind::Open).map_err(|e| e.0)?;
        let ino = state.inode_of(path)?;
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            ino,
            generation: state.generation,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.call(OpKind::Rename).map_err(|e| e.0)?;
        let ino = state.inode_of(from)?;
        state.check_dir(to)?;
        let op = DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            ino,
        };
        op.apply(&mut state.names);
        state.pending.push(op);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.call(OpKind::Remove).map_err(|e| e.0)?;
        state.inode_of(path)?;
        let op = DirOp::Unlink {
            path: path.to_path_buf(),
        };
        op.apply(&mut state.names);
        state.pending.push(op);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.call(OpKind::SyncDir).map_err(|e| e.0)?;
        let state = &mut *state;
        let (now, later): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut state.pending)
            .into_iter()
            .partition(|op| op.dir() == Some(dir));
        for op in &now {
            op.apply(&mut state.durable_names);
        }
        state.pending = later;
        Ok(())
    }
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    generation: u64,
}

impl SimFile {
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation != self.generation {
            return Err(io::Error::other("sim: handle from before a crash"));
        }
        Ok(state)
    }
}

fn write_live(inode: &mut Inode, off: usize, buf: &[u8]) {
    let end = off + buf.len();
    if inode.live.len() < end {
        inode.live.resize(end, 0);
    }
    inode.live[off..end].copy_from_slice(buf);
    if buf.is_empty() {
        return;
    }
    for sector in off / SECTOR_BYTES..=(end - 1) / SECTOR_BYTES {
        let at = sector * SECTOR_BYTES;
        let mut content = vec![0u8; SECTOR_BYTES];
        let have = inode.live.len().min(at + SECTOR_BYTES) - at;
        content[..have].copy_from_slice(&inode.live[at..at + have]);
        inode
            .versions
            .entry(sector)
            .or_default()
            .push(content.into_boxed_slice());
    }
}

impl StorageFile for SimFile {
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        let mut state = self.lock()?;
        let result = state.call(OpKind::Write);
        let inode = state.inodes.get_mut(&self.ino).expect("open inode exists");
        match result {
            Ok(()) => {
                write_live(inode, off as usize, buf);
                Ok(())
            }
            Err((error, partial)) => {
                if let Some(bytes) = partial {
                    write_live(inode, off as usize, &buf[..bytes.min(buf.len())]);
                }
                Err(error)
            }
        }
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut state = self.lock()?;
        state.call(OpKind::Read).map_err(|e| e.0)?;
        let inode = &state.inodes[&self.ino];
        let off = off as usize;
        if off + buf.len() > inode.live.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sim: read past end of file",
            ));
        }
        buf.copy_from_slice(&inode.live[off..off + buf.len()]);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.lock()?;
        state.call(OpKind::SyncData).map_err(|e| e.0)?;
        let inode = state.inodes.get_mut(&self.ino).expect("open inode exists");
        inode.durable.clone_from(&inode.live);
        inode.versions.clear();
        Ok(())
    }

    fn len_bytes(&self) -> io::Result<u64> {
        let mut state = self.lock()?;
        state.call(OpKind::Len).map_err(|e| e.0)?;
        Ok(state.inodes[&self.ino].live.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/log")
    }

    #[test]
    fn synced_data_and_names_survive_a_crash() {
        let sim = SimStorage::new();
        sim.create_dir_all(&dir()).unwrap();
        let f = sim.create(&dir().join("a")).unwrap();
        f.write_at(0, &[7u8; 1000]).unwrap();
        f.sync_data().unwrap();
        sim.sync_dir(&dir()).unwrap();
        for seed in 0..20 {
            sim.crash(seed);
            assert_eq!(sim.contents(&dir().join("a")).unwrap(), vec![7u8; 1000]);
        }
        assert!(
            f.write_at(0, &[1]).is_err(),
            "a handle from before a crash is dead"
        );
    }

    #[test]
    fn unsynced_sectors_keep_old_or_new_content_independently() {
        let mut saw = BTreeSet::new();
        for seed in 0..64 {
            let sim = SimStorage::new();
            sim.create_dir_all(&dir()).unwrap();
            let f = sim.create(&dir().join("a")).unwrap();
            f.write_at(0, &[0u8; 2048]).unwrap();
            f.sync_data().unwrap();
            sim.sync_dir(&dir()).unwrap();
            f.write_at(0, &[1u8; 2048]).unwrap();
            f.write_at(0, &[2u8; 2048]).unwrap();
            sim.crash(seed);
            let c = sim.contents(&dir().join("a")).unwrap();
            for s in 0..4 {
                let sector = &c[s * SECTOR_BYTES..(s + 1) * SECTOR_BYTES];
                assert!(
                    sector.iter().all(|&b| b == sector[0]),
                    "no torn sectors by default"
                );
                saw.insert(sector[0]);
            }
        }
        assert_eq!(
            saw,
            BTreeSet::from([0, 1, 2]),
            "old, intermediate and new versions all occur"
        );
    }

    #[test]
    fn unsynced_names_survive_as_a_prefix_of_their_operations() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..32 {
            let sim = SimStorage::new();
            sim.create_dir_all(&dir()).unwrap();
            let f = sim.create(&dir().join("a.tmp")).unwrap();
            f.sync_data().unwrap();
            sim.rename(&dir().join("a.tmp"), &dir().join("a")).unwrap();
            sim.crash(seed);
            outcomes.insert(sim.files());
        }
        let outcomes: Vec<Vec<PathBuf>> = outcomes.into_iter().collect();
        assert_eq!(
            outcomes,
            vec![vec![], vec![dir().join("a")], vec![dir().join("a.tmp")]]
        );
    }

    #[test]
    fn faults_fire_on_the_nth_call_once_or_until_cleared() {
        let sim = SimStorage::new();
        sim.create_dir_all(&dir()).unwrap();
        let f = sim.create(&dir().join("a")).unwrap();
        sim.inject(Fault::once(OpKind::Write, 2, errno::ENOSPC).partial(3));
        f.write_at(0, b"abcdef").unwrap();
        let e = f.write_at(10, b"ghijkl").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(errno::ENOSPC));
        assert_eq!(
            sim.contents(&dir().join("a")).unwrap(),
            b"abcdef\0\0\0\0ghi"
        );
        f.write_at(0, b"x").unwrap();
        sim.inject(Fault::sticky(OpKind::SyncData, 1, errno::EIO));
        assert!(f.sync_data().is_err());
        assert!(f.sync_data().is_err());
        sim.clear_faults();
        f.sync_data().unwrap();
        assert_eq!(sim.count(OpKind::SyncData), 3);
        assert_eq!(sim.count(OpKind::Write), 3);
    }
}
