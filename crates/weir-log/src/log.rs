//! `Log`: the one writer. Stages frames into a round buffer, commits a round with one write
//! and one fdatasync per segment it touches, rolls segments, and publishes committed bytes to
//! readers.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use crate::error::{CommitError, OpenError, ReplayError};
use crate::format::{
    encode_frame, segment_bytes_invalid, Marker, SegmentHeader, KIND_MAX, MARKER_KIND,
};
use crate::limits::{
    frame_bytes, frame_bytes_max, MARKER_FRAME_BYTES, SEGMENT_BYTES_DEFAULT, SEGMENT_HEADER_BYTES,
    SUMMARY_PAYLOAD_PERCENT_MIN_DEFAULT,
};
use crate::read::{
    frame_at, ActiveImage, FileSource, Reader, SealedSeg, Shared, SliceSource, Source,
};
use crate::recover::{recover, Visit};
use crate::segdir::{write_zeros, Fail, SegDir, Spares};
use crate::storage::{RealStorage, Storage, StorageFile};
use crate::summary::{sum_path, Policy, Summaries, SummaryMeta};
use crate::Loc;

/// How to open a log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Directory holding the segment files; created if missing.
    pub dir: PathBuf,
    /// Size of each new segment file (existing ones keep their size).
    pub segment_bytes: u64,
    /// The file layer.
    pub storage: Arc<dyn Storage>,
    /// Prepare the next spare segment, and write the summary of a segment just sealed, on
    /// background threads (the default). When false, a roll does both synchronously, which
    /// keeps the order of storage calls deterministic for simulation tests.
    pub spare_in_background: bool,
    /// How many leading bytes of a frame's meta `open_visiting` hands to its visitor, given
    /// the frame's kind and whole meta (`None`: all of it). Segment summaries keep only
    /// these bytes, so the less a caller needs to rebuild its indexes, the smaller they are
    /// and the faster the log opens. Changing what this keeps for frames already written
    /// requires deleting the `.sum` files (or a new summary version).
    pub summary_meta: Option<SummaryMeta>,
    /// A sealed segment gets a summary only if at least this percent of its committed
    /// bytes are frame payloads (`SUMMARY_PAYLOAD_PERCENT_MIN_DEFAULT`; 0: every one). A
    /// summary spares open reading the payloads; a segment of small frames would get one
    /// nearly as large as itself, paid for at every seal and saving nothing at open.
    pub summary_payload_percent_min: u8,
}

impl LogConfig {
    /// A log in `dir` on the real file system with default sizes.
    pub fn new(dir: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            storage: Arc::new(RealStorage::default()),
            spare_in_background: true,
            summary_meta: None,
            summary_payload_percent_min: SUMMARY_PAYLOAD_PERCENT_MIN_DEFAULT,
        }
    }
}

/// A segment and its committed length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub seq: u32,
    pub len: u64,
}

/// The segment the writer appends to.
#[derive(Debug)]
struct Active {
    /// Its seq.
    seq: u32,
    /// Its file (the image in `Shared` mirrors the committed bytes).
    file: Arc<dyn StorageFile>,
    /// The file's size.
    size: u64,
    /// End of the last committed round.
    committed: u64,
    /// The last committed round sealed this segment: the next frame goes to a new one.
    sealed: bool,
    /// Payload bytes of its committed frames (whether its summary pays).
    payload_bytes: u64,
}

/// The frames of the current round that go to one segment.
#[derive(Debug)]
struct Part {
    seq: u32,
    /// Segment offset of the part's first byte.
    start: u64,
    /// Index in the round buffer of the part's first byte.
    buf_start: usize,
    /// Size of the part's segment.
    size: u64,
    /// Round number its marker will carry.
    round: u64,
    /// CRC over the CRCs of its frames (see `Marker::chain`).
    chain: crc32fast::Hasher,
    /// Frames in the part (its marker not counted).
    frames: u32,
    /// Payload bytes of its frames.
    payload_bytes: u64,
}

/// The round being staged.
#[derive(Default)]
struct Stage {
    /// Frames and markers, ready to write; reused from round to round.
    buf: Vec<u8>,
    /// The round's parts in segment order; the last one is open for frames.
    parts: Vec<Part>,
    /// Frames staged (markers not counted).
    frames: u64,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("bytes", &self.buf.len())
            .field("parts", &self.parts)
            .field("frames", &self.frames)
            .finish()
    }
}

impl Stage {
    fn clear(&mut self) {
        self.buf.clear();
        self.parts.clear();
        self.frames = 0;
    }

    fn part_bytes(&self, i: usize) -> &[u8] {
        let end = self
            .parts
            .get(i + 1)
            .map_or(self.buf.len(), |p| p.buf_start);
        &self.buf[self.parts[i].buf_start..end]
    }

    fn part_end(&self, i: usize) -> u64 {
        self.parts[i].start + self.part_bytes(i).len() as u64
    }

    /// Appends the marker that closes the last part.
    fn close_last(&mut self, seal: bool) {
        let i = self.parts.len() - 1;
        let off = self.part_end(i);
        let part = &self.parts[i];
        let marker = Marker {
            round: part.round,
            start: part.start as u32,
            frames: part.frames,
            chain: part.chain.clone().finalize(),
            seal,
        };
        assert!(
            off + MARKER_FRAME_BYTES <= part.size,
            "a marker always has room: append reserves it"
        );
        let seq = part.seq;
        encode_frame(
            &mut self.buf,
            seq,
            off as u32,
            MARKER_KIND,
            &[],
            &marker.encode(),
        );
    }
}

/// The append-only log. Owned by one writer thread; readers use `Reader`.
#[derive(Debug)]
pub struct Log {
    /// The directory and the storage under it.
    segdir: SegDir,
    /// Size of new segments.
    segment_bytes: u64,
    /// What readers see.
    shared: Arc<Shared>,
    /// The segment the next round starts in (unless it is sealed).
    active: Active,
    /// Round number of the next part to commit: one more than the last committed marker's.
    next_round: u64,
    /// The round being staged.
    stage: Stage,
    /// A range of the active segment that a failed commit may have written (and even synced).
    /// The failed commit zeroes and syncs it before it returns, or if that fails too, the
    /// next commit does first: those frames can never resurface behind a later round that
    /// is lost in a crash.
    scrub: Option<(u64, u64)>,
    /// A sync failed: nothing since the last good sync can be trusted.
    poisoned: bool,
    /// The next segment, prepared ahead.
    spares: Spares,
    /// Writes the summary of each segment sealed.
    summaries: Summaries,
}

// The writer moves to its own thread; readers are shared across threads.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<Log>();
    send_sync::<Reader>();
};

impl Log {
    /// Opens (or creates) the log: recovers every segment (see the crate docs) and positions
    /// the log to append after the last committed round.
    pub fn open(cfg: LogConfig) -> Result<Log, OpenError> {
        Log::open_visiting(cfg, None)
    }

    /// `open`, calling `visit(loc, kind, meta, payload_len)` for every committed frame
    /// in log order as recovery checks it, so that a caller that rebuilds its indexes
    /// from the whole log reads it once instead of twice (`open`, then `replay`).
    /// A round is visited only once its commit marker is found valid, so nothing of a
    /// torn round is visited; if recovery then refuses the log (corruption), what was
    /// visited must be dropped. `Err` from `visit` stops the open
    /// (`OpenError::Stopped`).
    pub fn open_visiting(cfg: LogConfig, visit: Option<&mut Visit<'_>>) -> Result<Log, OpenError> {
        if let Some(detail) = segment_bytes_invalid(cfg.segment_bytes) {
            return Err(OpenError::Config { detail });
        }
        let segdir = SegDir {
            storage: cfg.storage,
            dir: cfg.dir,
        };
        let policy = Policy {
            keep: cfg.summary_meta,
            payload_percent_min: cfg.summary_payload_percent_min,
        };
        let mut recovered = recover(&segdir, cfg.segment_bytes, policy.keep, visit)?.segments;
        let last = recovered
            .pop()
            .expect("recovery yields at least one segment");
        // Sealed segments walked for want of a valid summary, for the summary writer.
        let unsummarized: Vec<(u32, Arc<dyn StorageFile>, u64, u64)> = recovered
            .iter()
            .filter(|seg| !seg.summarized)
            .map(|seg| {
                let w = &seg.walk;
                (seg.seq, seg.file.clone(), w.payload_bytes, w.committed)
            })
            .collect();
        let sealed: BTreeMap<u32, SealedSeg> = recovered
            .into_iter()
            .map(|seg| {
                (
                    seg.seq,
                    SealedSeg {
                        file: seg.file,
                        len: seg.walk.committed,
                    },
                )
            })
            .collect();
        let image = ActiveImage {
            seq: last.seq,
            bytes: last.image.expect("the last segment is read whole"),
            committed: last.walk.committed,
        };
        let shared = Arc::new(Shared {
            dir: segdir.dir.clone(),
            sealed: RwLock::new(sealed),
            active: RwLock::new(image),
        });
        let active = Active {
            seq: last.seq,
            file: last.file,
            size: last.header.segment_bytes,
            committed: last.walk.committed,
            sealed: last.walk.sealed,
            payload_bytes: last.walk.payload_bytes,
        };
        let next_round = last
            .walk
            .last_round
            .map_or(last.header.round_first, |r| r + 1);
        let mut spares = Spares::new(segdir.clone(), cfg.segment_bytes, cfg.spare_in_background);
        spares.request(active.seq + 1);
        let mut summaries = Summaries::new(segdir.clone(), policy, cfg.spare_in_background);
        summaries.found(unsummarized);
        Ok(Log {
            segdir,
            segment_bytes: cfg.segment_bytes,
            shared,
            active,
            next_round,
            stage: Stage::default(),
            scrub: None,
            poisoned: false,
            spares,
            summaries,
        })
    }

    /// Calls `f(loc, kind, meta, payload_len)` for every committed frame at or after `from`
    /// (`None`: from the first), in log order. `from` must be a `Loc` from `append` or `replay`,
    /// or `Loc { seg, off: 0 }` for the start of a segment. Sealed segments are read with
    /// large sequential reads; the active one comes from memory (readers of the active
    /// segment wait while `f` runs on it).
    pub fn replay<E>(
        &self,
        from: Option<Loc>,
        mut f: impl FnMut(Loc, u8, &[u8], u32) -> Result<(), E>,
    ) -> Result<(), ReplayError<E>> {
        let from = from.unwrap_or(Loc { seg: 0, off: 0 });
        let start_in = |seq: u32| {
            if seq == from.seg {
                u64::from(from.off).max(SEGMENT_HEADER_BYTES)
            } else {
                SEGMENT_HEADER_BYTES
            }
        };
        let sealed: Vec<(u32, SealedSeg)> = self
            .shared
            .sealed()
            .range(from.seg..)
            .map(|(&seq, seg)| (seq, seg.clone()))
            .collect();
        for (seq, seg) in sealed {
            let mut src = FileSource::new(seg.file.as_ref(), seg.len);
            self.replay_segment(&mut src, seq, start_in(seq), seg.len, &mut f)?;
        }
        let image = self.shared.active();
        if image.seq >= from.seg {
            let mut src = SliceSource(&image.bytes);
            self.replay_segment(
                &mut src,
                image.seq,
                start_in(image.seq),
                image.committed,
                &mut f,
            )?;
        }
        Ok(())
    }

    fn replay_segment<E>(
        &self,
        src: &mut dyn Source,
        seq: u32,
        mut pos: u64,
        end: u64,
        f: &mut impl FnMut(Loc, u8, &[u8], u32) -> Result<(), E>,
    ) -> Result<(), ReplayError<E>> {
        let file = || self.segdir.seg_path(seq);
        while pos < end {
            let frame = frame_at(src, seq, pos, end)
                .map_err(|source| ReplayError::Io {
                    file: file(),
                    source,
                })?
                .map_err(|detail| ReplayError::Corrupt {
                    file: file(),
                    off: pos,
                    detail,
                })?;
            if frame.header.kind != MARKER_KIND {
                let meta = &frame.body[..frame.header.meta_len as usize];
                let loc = Loc {
                    seg: seq,
                    off: pos as u32,
                };
                f(
                    loc,
                    frame.header.kind,
                    meta,
                    frame.header.body_len - frame.header.meta_len,
                )
                .map_err(ReplayError::Callback)?;
            }
            pos += frame.header.frame_len();
        }
        Ok(())
    }

    /// Stages one frame for the current round, copying `meta` and `payload` into the round
    /// buffer, and returns the `Loc` it will have once committed.
    ///
    /// A frame goes to the current segment if it fits there with room left for two markers
    /// (its round's, and a seal); otherwise the current segment's part of the round is sealed
    /// and the frame starts a part in the next segment.
    ///
    /// Panics if `kind > KIND_MAX` or `meta.len() + payload.len() > frame_bytes_max(segment_bytes)`.
    pub fn append(&mut self, kind: u8, meta: &[u8], payload: &[u8]) -> Loc {
        assert!(
            kind <= KIND_MAX,
            "frame kind {kind:#x} is reserved for the log"
        );
        let body = (meta.len() + payload.len()) as u64;
        let body_max = frame_bytes_max(self.segment_bytes);
        assert!(
            body <= body_max,
            "a frame of {body} bytes exceeds frame_bytes_max = {body_max}"
        );
        let len = frame_bytes(body);
        if self.stage.parts.is_empty() {
            if self.active.sealed {
                self.open_part(
                    self.active.seq + 1,
                    SEGMENT_HEADER_BYTES,
                    self.segment_bytes,
                );
            } else {
                self.open_part(self.active.seq, self.active.committed, self.active.size);
            }
        }
        let last = self.stage.parts.len() - 1;
        let (seq, size) = (self.stage.parts[last].seq, self.stage.parts[last].size);
        if self.stage.part_end(last) + len + 2 * MARKER_FRAME_BYTES > size {
            self.stage.close_last(true);
            self.open_part(seq + 1, SEGMENT_HEADER_BYTES, self.segment_bytes);
        }
        let last = self.stage.parts.len() - 1;
        let off = self.stage.part_end(last);
        let part_seq = self.stage.parts[last].seq;
        let crc = encode_frame(
            &mut self.stage.buf,
            part_seq,
            off as u32,
            kind,
            meta,
            payload,
        );
        let part = &mut self.stage.parts[last];
        part.chain.update(&crc.to_le_bytes());
        part.frames += 1;
        part.payload_bytes += payload.len() as u64;
        self.stage.frames += 1;
        Loc {
            seg: part_seq,
            off: off as u32,
        }
    }

    fn open_part(&mut self, seq: u32, start: u64, size: u64) {
        let round = self
            .stage
            .parts
            .last()
            .map_or(self.next_round, |p| p.round + 1);
        self.stage.parts.push(Part {
            seq,
            start,
            buf_start: self.stage.buf.len(),
            size,
            round,
            chain: crc32fast::Hasher::new(),
            frames: 0,
            payload_bytes: 0,
        });
    }

    /// Bytes staged and not yet committed (frames, padding, seals of finished parts).
    pub fn staged_bytes(&self) -> u64 {
        self.stage.buf.len() as u64
    }

    /// Frames staged and not yet committed.
    pub fn staged_frames(&self) -> u64 {
        self.stage.frames
    }

    /// Drops the staged frames without writing them.
    pub fn discard(&mut self) {
        self.stage.clear();
    }

    /// Writes everything staged and makes it durable: per segment the round touches, one
    /// positional write and one fdatasync (a round that rolls seals and syncs the old segment,
    /// puts the next one in place, then writes and syncs it). See `CommitError` for failures;
    /// on any of them nothing of the round is readable or counted as committed.
    pub fn commit(&mut self) -> Result<(), CommitError> {
        if self.poisoned {
            self.stage.clear();
            return Err(CommitError::Poisoned);
        }
        if self.stage.parts.is_empty() {
            return Ok(());
        }
        self.stage.close_last(false);
        match self.write_round() {
            Ok(installed) => {
                self.publish(installed);
                Ok(())
            }
            Err(error) => {
                self.stage.clear();
                if matches!(error, CommitError::Write { .. }) {
                    // Zero what the failed round may have written now, not only before the
                    // next round: then a round that failed never resurfaces after a crash,
                    // unless zeroing failed too (it is retried first thing next commit).
                    if let Err(sync @ CommitError::Sync { .. }) = self.scrub_tail() {
                        return Err(sync);
                    }
                }
                Err(error)
            }
        }
    }

    /// Zeroes and syncs the range a failed round may have written in the active segment.
    fn scrub_tail(&mut self) -> Result<(), CommitError> {
        let Some((from, to)) = self.scrub else {
            return Ok(());
        };
        write_zeros(self.active.file.as_ref(), from, to).map_err(|source| CommitError::Write {
            file: self.segdir.seg_path(self.active.seq),
            source,
        })?;
        self.active
            .file
            .sync_data()
            .map_err(|source| self.poison(self.active.seq, source))?;
        self.scrub = None;
        Ok(())
    }

    /// Writes and syncs the staged round; on success returns the files of the segments it
    /// put in place.
    fn write_round(&mut self) -> Result<Vec<Arc<dyn StorageFile>>, CommitError> {
        self.scrub_tail()?;
        let mut installed: Vec<(u32, Arc<dyn StorageFile>)> = Vec::new();
        for i in 0..self.stage.parts.len() {
            let (seq, start) = (self.stage.parts[i].seq, self.stage.parts[i].start);
            let file = if seq == self.active.seq {
                self.active.file.clone()
            } else {
                let prev_len = if i == 0 {
                    self.active.committed
                } else {
                    self.stage.part_end(i - 1)
                };
                let header = SegmentHeader {
                    seq,
                    segment_bytes: self.segment_bytes,
                    prev_len,
                    round_first: self.stage.parts[i].round,
                };
                let file = match self
                    .spares
                    .take(seq)
                    .and_then(|file| self.segdir.install(&file, &header).map(|()| file))
                {
                    Ok(file) => file,
                    Err(Fail::Sync { file, source, .. }) => {
                        self.poisoned = true;
                        return Err(CommitError::Sync { file, source });
                    }
                    Err(Fail::Write { file, source, .. }) => {
                        return Err(self.roll_back(&installed, CommitError::Write { file, source }));
                    }
                };
                installed.push((seq, file.clone()));
                file
            };
            if seq == self.active.seq {
                // Whatever happens next, this range may now hold bytes of this round.
                self.scrub = Some((start, self.stage.part_end(i)));
            }
            if let Err(source) = file.write_at(start, self.stage.part_bytes(i)) {
                let error = CommitError::Write {
                    file: self.segdir.seg_path(seq),
                    source,
                };
                return Err(self.roll_back(&installed, error));
            }
            file.sync_data()
                .map_err(|source| self.poison(seq, source))?;
        }
        self.scrub = None;
        Ok(installed.into_iter().map(|(_, file)| file).collect())
    }

    fn poison(&mut self, seq: u32, source: io::Error) -> CommitError {
        self.poisoned = true;
        CommitError::Sync {
            file: self.segdir.seg_path(seq),
            source,
        }
    }

    /// Undoes a round that failed after putting new segments in place: removes them, so the
    /// active segment is the last again and the next round can start where this one did.
    fn roll_back(
        &mut self,
        installed: &[(u32, Arc<dyn StorageFile>)],
        error: CommitError,
    ) -> CommitError {
        if installed.is_empty() {
            return error;
        }
        let cause = error.to_string();
        for (seq, _) in installed.iter().rev() {
            let path = self.segdir.seg_path(*seq);
            if let Err(source) = self.segdir.storage.remove(&path) {
                self.poisoned = true;
                return CommitError::Rollback {
                    file: path,
                    cause,
                    source,
                };
            }
        }
        if let Err(source) = self.segdir.storage.sync_dir(&self.segdir.dir) {
            self.poisoned = true;
            return CommitError::Rollback {
                file: self.segdir.dir.clone(),
                cause,
                source,
            };
        }
        error
    }

    /// Makes a written and synced round visible to readers and moves the tail past it.
    fn publish(&mut self, installed: Vec<Arc<dyn StorageFile>>) {
        let mut installed = installed.into_iter();
        // (seq, file, payload bytes, committed length) of each segment this round sealed.
        let mut sealed_now: Vec<(u32, Arc<dyn StorageFile>, u64, u64)> = Vec::new();
        for i in 0..self.stage.parts.len() {
            let part = &self.stage.parts[i];
            let bytes = self.stage.part_bytes(i);
            let end = self.stage.part_end(i);
            let sealed = i + 1 < self.stage.parts.len();
            if part.seq == self.active.seq {
                assert_eq!(
                    part.start, self.active.committed,
                    "a round continues the committed tail"
                );
                let mut image = write_lock(&self.shared.active);
                image.bytes[part.start as usize..end as usize].copy_from_slice(bytes);
                image.committed = end;
                self.active.payload_bytes += part.payload_bytes;
            } else {
                assert_eq!(
                    part.seq,
                    self.active.seq + 1,
                    "a roll moves to the next seq"
                );
                let file = installed.next().expect("a file per new segment");
                // File the old segment as sealed before it stops being the active one, so a
                // reader always finds it in one place or the other.
                let old = SealedSeg {
                    file: self.active.file.clone(),
                    len: self.active.committed,
                };
                sealed_now.push((
                    self.active.seq,
                    old.file.clone(),
                    self.active.payload_bytes,
                    old.len,
                ));
                write_lock(&self.shared.sealed).insert(self.active.seq, old);
                let mut image = vec![0u8; part.size as usize].into_boxed_slice();
                image[part.start as usize..end as usize].copy_from_slice(bytes);
                *write_lock(&self.shared.active) = ActiveImage {
                    seq: part.seq,
                    bytes: image,
                    committed: end,
                };
                self.active = Active {
                    seq: part.seq,
                    file,
                    size: part.size,
                    committed: end,
                    sealed: false,
                    payload_bytes: part.payload_bytes,
                };
            }
            self.active.committed = end;
            self.active.sealed = sealed;
            self.next_round = part.round + 1;
        }
        self.stage.clear();
        self.spares.request(self.active.seq + 1);
        // The round is committed whatever happens here: a summary that cannot be written is
        // only a slower next open.
        for (seq, file, payload_bytes, committed) in sealed_now {
            self.summaries.sealed(seq, file, payload_bytes, committed);
        }
    }

    /// A cheap, clonable handle for readers on other threads.
    pub fn reader(&self) -> Reader {
        Reader {
            shared: self.shared.clone(),
        }
    }

    /// Committed segments in order with their committed lengths; the last is the active one.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let mut out: Vec<SegmentInfo> = self
            .shared
            .sealed()
            .iter()
            .map(|(&seq, seg)| SegmentInfo { seq, len: seg.len })
            .collect();
        out.push(SegmentInfo {
            seq: self.active.seq,
            len: self.active.committed,
        });
        out
    }

    /// Deletes a segment other than the active one, and its summary: readers get
    /// `ReadError::Gone` for it from now on, and the unlinks are made durable. Deleting a
    /// segment that is already gone is Ok.
    pub fn delete_segment(&mut self, seq: u32) -> Result<(), io::Error> {
        if seq >= self.active.seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "segment {seq} is not older than the active segment {}",
                    self.active.seq
                ),
            ));
        }
        let removed = write_lock(&self.shared.sealed).remove(&seq);
        match self.segdir.storage.remove(&self.segdir.seg_path(seq)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                if let Some(seg) = removed {
                    write_lock(&self.shared.sealed).insert(seq, seg);
                }
                return Err(e);
            }
        }
        // After the segment: a summary left behind by a failure here is removed at open.
        match self.segdir.storage.remove(&sum_path(&self.segdir.dir, seq)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.segdir.storage.sync_dir(&self.segdir.dir)
    }

    /// Where the next frame would go if it fits in the current segment.
    pub fn tail(&self) -> Loc {
        match self.stage.parts.last() {
            Some(_) => {
                let i = self.stage.parts.len() - 1;
                Loc {
                    seg: self.stage.parts[i].seq,
                    off: self.stage.part_end(i) as u32,
                }
            }
            None if self.active.sealed => Loc {
                seg: self.active.seq + 1,
                off: SEGMENT_HEADER_BYTES as u32,
            },
            None => Loc {
                seg: self.active.seq,
                off: self.active.committed as u32,
            },
        }
    }

    /// The log's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.segdir.dir
    }
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    // Readers never panic while holding these locks with the data half-changed; a poisoned
    // lock still guards consistent data.
    lock.write().unwrap_or_else(|e| e.into_inner())
}
