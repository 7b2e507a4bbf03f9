//! Segment summaries: for each sealed segment a small `<seq>.sum` file listing exactly what
//! recovery visits in it (each committed frame's offset, kind, the meta prefix the caller
//! needs, payload length), so that opening the log reads the summaries instead of every byte
//! of every sealed segment. Layout and trust rules are in the crate docs ("Segment
//! summaries").
//!
//! A summary is made by walking the sealed segment with the same `walk` recovery uses, so it
//! is by construction what a full walk would visit. It is an optimisation only: a missing,
//! torn or otherwise invalid summary means "walk the segment", never an error.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::format::{Marker, SegmentHeader, MARKER_KIND};
use crate::limits::{
    FRAME_ALIGN_BYTES, FRAME_HEADER_BYTES, MARKER_FRAME_BYTES, SEGMENT_HEADER_BYTES,
    SUMMARY_QUEUE_MAX,
};
use crate::read::{frame_at, FileSource};
use crate::recover::{walk, Visit};
use crate::segdir::SegDir;
use crate::storage::StorageFile;

/// Suffix of segment summaries.
pub(crate) const SUM_SUFFIX: &str = ".sum";
/// Suffix of summaries being written.
pub(crate) const SUM_TMP_SUFFIX: &str = ".sum.tmp";
/// First bytes of every summary file.
const SUMMARY_MAGIC: [u8; 8] = *b"WEIRSUM1";
/// Version of the summary layout.
const SUMMARY_VERSION: u32 = 1;
/// Bytes of the summary header.
const HEADER_LEN: usize = 56;
/// Bytes of an entry before its meta: off u32, kind u8, meta_len u32, payload_len u32.
const ENTRY_FIXED_LEN: usize = 13;
/// Bytes of the trailing CRC.
const CRC_LEN: usize = 4;

/// How many leading bytes of a frame's meta recovery hands to the visitor (and a summary
/// keeps), given the frame's kind and whole meta. See `LogConfig::summary_meta`.
pub type SummaryMeta = fn(kind: u8, meta: &[u8]) -> usize;

/// Which sealed segments get a summary, and what their entries keep of each meta.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// `LogConfig::summary_meta`.
    pub keep: Option<SummaryMeta>,
    /// `LogConfig::summary_payload_percent_min`.
    pub payload_percent_min: u8,
}

impl Policy {
    /// Whether a sealed segment of `committed` bytes, `payload_bytes` of them frame
    /// payloads, gets a summary. A summary saves open from reading the payloads and little
    /// else: for a segment of small frames it is a third of the segment's size, costs as
    /// much to write, and saves about nothing at open.
    pub(crate) fn pays(&self, payload_bytes: u64, committed: u64) -> bool {
        payload_bytes.saturating_mul(100)
            >= committed.saturating_mul(u64::from(self.payload_percent_min))
    }
}

/// The length of `meta` that `keep` keeps (all of it without a `keep`).
pub(crate) fn keep_len(keep: Option<SummaryMeta>, kind: u8, meta: &[u8]) -> usize {
    keep.map_or(meta.len(), |f| f(kind, meta).min(meta.len()))
}

pub(crate) fn sum_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}{SUM_SUFFIX}"))
}

pub(crate) fn sum_tmp_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}{SUM_TMP_SUFFIX}"))
}

/// The seq a summary file name encodes: exactly ten digits and `.sum`.
pub(crate) fn parse_sum_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(SUM_SUFFIX)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Collects a segment's entries as its walk visits them, then encodes the file.
pub(crate) struct Builder {
    buf: Vec<u8>,
    entries: u32,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder {
            buf: vec![0u8; HEADER_LEN],
            entries: 0,
        }
    }

    /// One visited frame (`meta` already cut to what is kept).
    pub(crate) fn push(&mut self, off: u32, kind: u8, meta: &[u8], payload_len: u32) {
        self.buf.extend_from_slice(&off.to_le_bytes());
        self.buf.push(kind);
        self.buf
            .extend_from_slice(&(meta.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&payload_len.to_le_bytes());
        self.buf.extend_from_slice(meta);
        self.entries += 1;
    }

    /// The whole file: header, entries, CRC.
    pub(crate) fn finish(
        mut self,
        header: &SegmentHeader,
        committed: u64,
        round_last: u64,
    ) -> Vec<u8> {
        let h = &mut self.buf[..HEADER_LEN];
        h[0..8].copy_from_slice(&SUMMARY_MAGIC);
        h[8..12].copy_from_slice(&SUMMARY_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&header.seq.to_le_bytes());
        h[16..24].copy_from_slice(&header.segment_bytes.to_le_bytes());
        h[24..32].copy_from_slice(&committed.to_le_bytes());
        h[32..40].copy_from_slice(&header.round_first.to_le_bytes());
        h[40..48].copy_from_slice(&round_last.to_le_bytes());
        h[48..52].copy_from_slice(&self.entries.to_le_bytes());
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// A summary file that passed every check that needs only its own bytes and its segment's
/// header.
#[derive(Debug)]
pub(crate) struct Summary<'a> {
    /// The entries' bytes (between the header and the CRC).
    entries: &'a [u8],
    /// The segment's committed length: the end of its seal marker.
    pub committed: u64,
    /// Round number of the segment's last (sealing) marker.
    pub round_last: u64,
    /// Payload bytes of the segment's frames (the sum of the entries').
    pub payload_bytes: u64,
}

impl<'a> Summary<'a> {
    /// Checks `bytes` as the summary of the segment with `header`: CRC, magic, version, seq,
    /// size, first round, and every entry's shape (offsets increasing, aligned and inside the
    /// committed length; no marker kind). The error says what is wrong.
    pub(crate) fn parse(bytes: &'a [u8], header: &SegmentHeader) -> Result<Summary<'a>, String> {
        if bytes.len() < HEADER_LEN + CRC_LEN {
            return Err(format!("summary is only {} bytes", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
        if u32_at(crc, 0) != crc32fast::hash(body) {
            return Err("summary CRC mismatch".into());
        }
        if body[0..8] != SUMMARY_MAGIC {
            return Err("no WEIRSUM1 magic".into());
        }
        let version = u32_at(body, 8);
        if version != SUMMARY_VERSION {
            return Err(format!(
                "summary version {version}, this build reads {SUMMARY_VERSION}"
            ));
        }
        let seq = u32_at(body, 12);
        if seq != header.seq {
            return Err(format!("summary of segment {seq}, not {}", header.seq));
        }
        let segment_bytes = u64_at(body, 16);
        if segment_bytes != header.segment_bytes {
            return Err(format!(
                "summary says {segment_bytes} segment bytes, the segment has {}",
                header.segment_bytes
            ));
        }
        let committed = u64_at(body, 24);
        if committed < SEGMENT_HEADER_BYTES + MARKER_FRAME_BYTES || committed > segment_bytes {
            return Err(format!("committed length {committed} out of range"));
        }
        let round_first = u64_at(body, 32);
        if round_first != header.round_first {
            return Err(format!(
                "summary says first round {round_first}, the segment header {}",
                header.round_first
            ));
        }
        let round_last = u64_at(body, 40);
        if round_last < round_first {
            return Err(format!(
                "last round {round_last} before first {round_first}"
            ));
        }
        let count = u32_at(body, 48);
        if u32_at(body, 52) != 0 {
            return Err("reserved header bytes are not zero".into());
        }
        let mut summary = Summary {
            entries: &body[HEADER_LEN..],
            committed,
            round_last,
            payload_bytes: 0,
        };
        // Shape of the entries, checked in full before anything is visited: a summary is
        // either used whole or not at all.
        let mut prev_end = SEGMENT_HEADER_BYTES;
        let mut n = 0u32;
        let mut payload_bytes = 0u64;
        let mut bad = None;
        summary
            .for_each(|off, kind, meta, payload_len| {
                let off = u64::from(off);
                let frame_end =
                    off + FRAME_HEADER_BYTES + meta.len() as u64 + u64::from(payload_len);
                if off < prev_end
                    || off % FRAME_ALIGN_BYTES != 0
                    || frame_end > committed
                    || kind == MARKER_KIND
                {
                    bad = Some(format!(
                        "entry {n} (offset {off}, kind {kind}) is out of place"
                    ));
                    return Err(());
                }
                prev_end = frame_end;
                n += 1;
                payload_bytes += u64::from(payload_len);
                Ok(())
            })
            .map_err(|()| bad.take().unwrap_or_else(|| "entries are cut short".into()))?;
        if n != count {
            return Err(format!("summary has {n} entries, its header says {count}"));
        }
        summary.payload_bytes = payload_bytes;
        Ok(summary)
    }

    /// Calls `f(off, kind, meta, payload_len)` per entry; `Err(())` if `f` stops or an entry
    /// runs past the end.
    fn for_each(&self, mut f: impl FnMut(u32, u8, &[u8], u32) -> Result<(), ()>) -> Result<(), ()> {
        let b = self.entries;
        let mut at = 0usize;
        while at < b.len() {
            if b.len() - at < ENTRY_FIXED_LEN {
                return Err(());
            }
            let off = u32_at(b, at);
            let kind = b[at + 4];
            let meta_len = u32_at(b, at + 5) as usize;
            let payload_len = u32_at(b, at + 9);
            let meta_at = at + ENTRY_FIXED_LEN;
            if b.len() - meta_at < meta_len {
                return Err(());
            }
            f(off, kind, &b[meta_at..meta_at + meta_len], payload_len)?;
            at = meta_at + meta_len;
        }
        Ok(())
    }

    /// Hands every entry to `visit` as recovery would; `Err` if `visit` stopped.
    pub(crate) fn visit(&self, seq: u32, visit: &mut Visit<'_>) -> Result<(), ()> {
        self.for_each(|off, kind, meta, payload_len| {
            visit(crate::Loc { seg: seq, off }, kind, meta, payload_len)
        })
    }
}

/// Checks that segment `file` (with `header`) really ends where `summary` says: a valid seal
/// marker of round `round_last` right before `committed`. One small read, and it binds the
/// summary to this very segment rather than to any file that once had its name.
pub(crate) fn check_seal(
    file: &dyn StorageFile,
    header: &SegmentHeader,
    summary: &Summary<'_>,
) -> io::Result<Result<(), String>> {
    let at = summary.committed - MARKER_FRAME_BYTES;
    let mut src = FileSource::new(file, summary.committed);
    let frame = match frame_at(&mut src, header.seq, at, summary.committed)? {
        Ok(frame) => frame,
        Err(detail) => return Ok(Err(format!("no seal marker at {at}: {detail}"))),
    };
    Ok(match Marker::decode(&frame.header, frame.body) {
        Some(m) if m.seal && m.round == summary.round_last => Ok(()),
        _ => Err(format!(
            "the frame at {at} is not the seal marker of round {}",
            summary.round_last
        )),
    })
}

/// Writes `bytes` as segment `seq`'s summary: into `<seq>.sum.tmp`, fdatasynced, renamed to
/// `<seq>.sum`. The directory is not synced: a lost rename only means no summary.
pub(crate) fn write_summary(segdir: &SegDir, seq: u32, bytes: &[u8]) -> io::Result<()> {
    let tmp = sum_tmp_path(&segdir.dir, seq);
    let file = segdir.storage.create(&tmp)?;
    file.write_at(0, bytes)?;
    file.sync_data()?;
    drop(file);
    segdir.storage.rename(&tmp, &sum_path(&segdir.dir, seq))
}

/// Reads sealed segment `seq` back (its `file`), walks it as recovery does and writes its
/// summary, each entry keeping `keep` of its meta. A segment that does not end with a seal
/// gets none. (Whether a segment gets one at all, `Policy::pays`, its callers decide.)
pub(crate) fn summarize(
    segdir: &SegDir,
    keep: Option<SummaryMeta>,
    seq: u32,
    file: &dyn StorageFile,
) -> Result<(), String> {
    let io = |op: &str, e: io::Error| format!("{op}: {e}");
    let size = file.len_bytes().map_err(|e| io("size of segment", e))?;
    let mut head = [0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_at(0, &mut head)
        .map_err(|e| io("read segment header", e))?;
    let header = SegmentHeader::decode(&head)?;
    if header.seq != seq {
        return Err(format!("segment {seq}'s header says {}", header.seq));
    }
    let mut builder = Builder::new();
    let mut push = |loc: crate::Loc, kind: u8, meta: &[u8], payload_len: u32| {
        builder.push(loc.off, kind, meta, payload_len);
        Ok(())
    };
    let w = walk(
        &mut FileSource::new(file, size),
        &header,
        size,
        keep,
        Some(&mut push),
    )
    .map_err(|e| io("read segment", e))?;
    let Some(round_last) = w.last_round.filter(|_| w.sealed) else {
        return Err("the segment does not end with a seal".into());
    };
    let bytes = builder.finish(&header, w.committed, round_last);
    write_summary(segdir, seq, &bytes).map_err(|e| io("write summary", e))
}

/// A sealed segment (its seq and file) to summarize.
type Seg = (u32, Arc<dyn StorageFile>);

/// Work for the summary thread.
enum Job {
    /// A segment the log just sealed.
    Sealed(Seg),
    /// Sealed segments open found without a valid summary: given up at drop, where the
    /// next open finds them again.
    Found(Vec<Seg>),
}

/// Writes the summary of each segment the log seals, and of those open found without one:
/// on a background thread, or (for simulation tests, whose storage calls must come in a
/// fixed order) right away.
#[derive(Debug)]
pub(crate) struct Summaries {
    segdir: SegDir,
    policy: Policy,
    worker: Option<Worker>,
}

#[derive(Debug)]
struct Worker {
    /// Bounded: when the thread falls this far behind, a sealed segment goes without a
    /// summary (the next open walks it and writes one).
    jobs: Option<SyncSender<Job>>,
    /// Set at drop: the rest of a `Job::Found` is left to the next open.
    stopping: Arc<AtomicBool>,
    /// Joined on drop, after it wrote the summaries of the segments sealed and still
    /// queued (at most `SUMMARY_QUEUE_MAX`, a fraction of a second each): a clean shutdown
    /// leaves every segment sealed since open summarized, and no storage call happens after
    /// the log is dropped.
    thread: Option<JoinHandle<()>>,
}

impl Summaries {
    pub(crate) fn new(segdir: SegDir, policy: Policy, background: bool) -> Summaries {
        let worker = background.then(|| {
            let (jobs, rx): (SyncSender<Job>, Receiver<Job>) =
                mpsc::sync_channel(SUMMARY_QUEUE_MAX);
            let dir = segdir.clone();
            let stopping = Arc::new(AtomicBool::new(false));
            let stop = Arc::clone(&stopping);
            let thread = std::thread::Builder::new()
                .name("weir-log-summary".into())
                .spawn(move || {
                    let one = |(seq, file): Seg| {
                        report(&dir, seq, summarize(&dir, policy.keep, seq, file.as_ref()))
                    };
                    for job in rx {
                        match job {
                            Job::Sealed(seg) => one(seg),
                            Job::Found(segs) => {
                                for seg in segs {
                                    if stop.load(Ordering::Relaxed) {
                                        break;
                                    }
                                    one(seg);
                                }
                            }
                        }
                    }
                })
                .expect("spawn the segment-summary thread");
            Worker {
                jobs: Some(jobs),
                stopping,
                thread: Some(thread),
            }
        });
        Summaries {
            segdir,
            policy,
            worker,
        }
    }

    /// Segment `seq` (its `file`) was sealed at `committed` bytes, `payload_bytes` of them
    /// frame payloads: write its summary if it pays.
    pub(crate) fn sealed(
        &mut self,
        seq: u32,
        file: Arc<dyn StorageFile>,
        payload_bytes: u64,
        committed: u64,
    ) {
        if self.policy.pays(payload_bytes, committed) {
            self.submit(Job::Sealed((seq, file)));
        }
    }

    /// Sealed segments that open found without a valid summary (and walked), each with its
    /// file, payload bytes and committed length: write the summaries that pay.
    pub(crate) fn found(&mut self, segs: Vec<(u32, Arc<dyn StorageFile>, u64, u64)>) {
        let segs: Vec<Seg> = segs
            .into_iter()
            .filter(|&(_, _, payload_bytes, committed)| self.policy.pays(payload_bytes, committed))
            .map(|(seq, file, _, _)| (seq, file))
            .collect();
        if !segs.is_empty() {
            self.submit(Job::Found(segs));
        }
    }

    fn submit(&mut self, job: Job) {
        let Some(worker) = &self.worker else {
            let segs = match job {
                Job::Sealed(seg) => vec![seg],
                Job::Found(segs) => segs,
            };
            for (seq, file) in segs {
                report(
                    &self.segdir,
                    seq,
                    summarize(&self.segdir, self.policy.keep, seq, file.as_ref()),
                );
            }
            return;
        };
        let jobs = worker.jobs.as_ref().expect("jobs open until drop");
        if let Err(TrySendError::Full(_)) = jobs.try_send(job) {
            tracing::debug!("segment summaries are behind; these are left to the next open");
        }
    }
}

fn report(segdir: &SegDir, seq: u32, result: Result<(), String>) {
    if let Err(error) = result {
        // Harmless: the next open walks the segment instead (and writes the summary then).
        tracing::warn!(
            file = %sum_path(&segdir.dir, seq).display(),
            error = %error,
            "cannot write a segment summary"
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_round_trip_and_nothing_else_parses() {
        assert_eq!(
            sum_path(Path::new("/d"), 42),
            PathBuf::from("/d/0000000042.sum")
        );
        assert_eq!(parse_sum_name("0000000042.sum"), Some(42));
        for bad in [
            "0000000042.sum.tmp",
            "0000000042.seg",
            "42.sum",
            "000000004x.sum",
        ] {
            assert_eq!(parse_sum_name(bad), None, "{bad}");
        }
    }
}
