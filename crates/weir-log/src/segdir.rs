//! Segment files in the log directory: their names, preparing a zero-filled spare, putting a
//! spare in place as a segment, and the background thread that keeps one spare ready.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::format::SegmentHeader;
use crate::limits::ZERO_FILL_CHUNK_BYTES;
use crate::storage::{Storage, StorageFile};

/// Suffix of segment files.
const SEG_SUFFIX: &str = ".seg";
/// Suffix of spares being prepared.
pub(crate) const TMP_SUFFIX: &str = ".seg.tmp";

/// A failed file-system step, classified by what it means for the log.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A write, create or rename failed, or a sync of a file that is not yet part of the log:
    /// nothing durable was lost.
    Write {
        file: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// A sync of something already part of the log failed: what it covered may be lost.
    Sync {
        file: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

/// The log directory and the storage it lives on.
#[derive(Debug, Clone)]
pub(crate) struct SegDir {
    /// The file layer.
    pub storage: Arc<dyn Storage>,
    /// The log directory.
    pub dir: PathBuf,
}

impl SegDir {
    pub(crate) fn seg_path(&self, seq: u32) -> PathBuf {
        seg_path(&self.dir, seq)
    }

    pub(crate) fn tmp_path(&self, seq: u32) -> PathBuf {
        self.dir.join(format!("{seq:010}{TMP_SUFFIX}"))
    }

    /// Creates `<seq>.seg.tmp`, fills it with zeros up to `segment_bytes` and syncs it: a spare
    /// whose later writes land on allocated, written blocks, so their fdatasync journals no
    /// metadata.
    pub(crate) fn prepare(
        &self,
        seq: u32,
        segment_bytes: u64,
    ) -> Result<Arc<dyn StorageFile>, Fail> {
        let file_path = self.tmp_path(seq);
        let write = |op, source| Fail::Write {
            file: file_path.clone(),
            op,
            source,
        };
        let file = self
            .storage
            .create(&file_path)
            .map_err(|e| write("create spare", e))?;
        write_zeros(file.as_ref(), 0, segment_bytes).map_err(|e| write("zero-fill spare", e))?;
        // The spare is not part of the log yet: a failed sync costs only this spare.
        file.sync_data().map_err(|e| write("sync spare", e))?;
        Ok(file)
    }

    /// Turns the prepared spare `file` into segment `header.seq`: writes and syncs its header,
    /// renames it into place and syncs the directory. Once this returns Ok the segment is part
    /// of the log, with a durable header, before any frame is written to it.
    pub(crate) fn install(
        &self,
        file: &Arc<dyn StorageFile>,
        header: &SegmentHeader,
    ) -> Result<(), Fail> {
        let tmp = self.tmp_path(header.seq);
        let write = |op, source| Fail::Write {
            file: tmp.clone(),
            op,
            source,
        };
        file.write_at(0, &header.encode())
            .map_err(|e| write("write segment header", e))?;
        file.sync_data()
            .map_err(|e| write("sync segment header", e))?;
        let seg = self.seg_path(header.seq);
        self.storage
            .rename(&tmp, &seg)
            .map_err(|e| write("rename spare into place", e))?;
        // From here the name may be durable or not; if this sync fails we cannot tell.
        self.storage
            .sync_dir(&self.dir)
            .map_err(|source| Fail::Sync {
                file: self.dir.clone(),
                op: "sync log directory",
                source,
            })
    }
}

/// Overwrites `[from, to)` of `file` with zeros, a bounded chunk per write.
pub(crate) fn write_zeros(file: &dyn StorageFile, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES.min((to - from) as usize)];
    let mut off = from;
    while off < to {
        let n = (zeros.len() as u64).min(to - off) as usize;
        file.write_at(off, &zeros[..n])?;
        off += n as u64;
    }
    Ok(())
}

pub(crate) fn seg_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}{SEG_SUFFIX}"))
}

/// The seq a segment file name encodes: exactly ten digits and `.seg`.
pub(crate) fn parse_seg_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(SEG_SUFFIX)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

type Prepared = (u32, Result<Arc<dyn StorageFile>, Fail>);

/// Keeps one spare segment ready so a roll does not wait for a segment's worth of zeros.
#[derive(Debug)]
pub(crate) struct Spares {
    /// Where spares are made.
    segdir: SegDir,
    /// Size of a spare.
    segment_bytes: u64,
    /// A prepared spare and the seq it was prepared for.
    ready: Option<(u32, Arc<dyn StorageFile>)>,
    /// The background preparer; `None` when spares are prepared synchronously.
    worker: Option<Worker>,
}

#[derive(Debug)]
struct Worker {
    /// Bounded to one request: one spare is prepared at a time.
    requests: Option<SyncSender<(u32, u64)>>,
    /// Spares the thread finished (or failed to make).
    results: Receiver<Prepared>,
    /// The seq the worker is preparing, if any.
    pending: Option<u32>,
    /// Joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl Spares {
    pub(crate) fn new(segdir: SegDir, segment_bytes: u64, background: bool) -> Spares {
        let worker = background.then(|| {
            let (requests, jobs) = mpsc::sync_channel::<(u32, u64)>(1);
            let (done, results) = mpsc::sync_channel::<Prepared>(1);
            let segdir = segdir.clone();
            let thread = std::thread::Builder::new()
                .name("weir-log-spare".into())
                .spawn(move || {
                    for (seq, segment_bytes) in jobs {
                        if done
                            .send((seq, segdir.prepare(seq, segment_bytes)))
                            .is_err()
                        {
                            return;
                        }
                    }
                })
                .expect("spawn the spare-segment thread");
            Worker {
                requests: Some(requests),
                results,
                pending: None,
                thread: Some(thread),
            }
        });
        Spares {
            segdir,
            segment_bytes,
            ready: None,
            worker,
        }
    }

    /// Starts preparing the spare for `seq` in the background (no-op when synchronous or when
    /// it is already ready or under way).
    pub(crate) fn request(&mut self, seq: u32) {
        self.poll();
        let Some(worker) = &mut self.worker else {
            return;
        };
        if self.ready.as_ref().is_some_and(|(s, _)| *s == seq) || worker.pending.is_some() {
            return;
        }
        let requests = worker.requests.as_ref().expect("requests open until drop");
        if requests.send((seq, self.segment_bytes)).is_ok() {
            worker.pending = Some(seq);
        }
    }

    /// The spare for `seq`: the ready one, or the one the worker is preparing (waiting for it),
    /// or, failing those, one prepared now.
    pub(crate) fn take(&mut self, seq: u32) -> Result<Arc<dyn StorageFile>, Fail> {
        self.poll();
        if let Some((s, file)) = self.ready.take() {
            if s == seq {
                return Ok(file);
            }
        }
        if let Some(worker) = &mut self.worker {
            if worker.pending == Some(seq) {
                worker.pending = None;
                if let Ok((s, Ok(file))) = worker.results.recv() {
                    debug_assert_eq!(s, seq);
                    return Ok(file);
                }
                // The background attempt failed: try once more here and report that failure.
            }
        }
        self.segdir.prepare(seq, self.segment_bytes)
    }
}

impl Spares {
    /// Collects a spare the worker finished, without waiting.
    fn poll(&mut self) {
        let Some(worker) = &mut self.worker else {
            return;
        };
        if worker.pending.is_none() {
            return;
        }
        if let Ok((seq, result)) = worker.results.try_recv() {
            worker.pending = None;
            if let Ok(file) = result {
                self.ready = Some((seq, file));
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the request channel ends the thread after its current job; joining it means
        // no storage call happens after the log is dropped.
        self.requests = None;
        if self.pending.is_some() {
            let _ = self.results.recv();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_nothing_else_parses() {
        let path = seg_path(Path::new("/d"), 42);
        assert_eq!(path, PathBuf::from("/d/0000000042.seg"));
        assert_eq!(parse_seg_name("0000000042.seg"), Some(42));
        assert_eq!(parse_seg_name("4294967295.seg"), Some(u32::MAX));
        for bad in [
            "0000000042.seg.tmp",
            "42.seg",
            "00000000042.seg",
            "000000004x.seg",
            "9999999999.seg",
        ] {
            assert_eq!(parse_seg_name(bad), None, "{bad}");
        }
    }
}
