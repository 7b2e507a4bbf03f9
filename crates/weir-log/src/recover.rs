//! Recovery at open: checks every segment, tells a torn tail (cut it) from corruption
//! (refuse to open), and hands back the state the writer continues from.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memchr::memmem;

use crate::error::OpenError;
use crate::format::{Marker, SegmentHeader, MARKER_KIND, MARKER_MAGIC, MARKER_MAGIC_AT};
use crate::limits::{FRAME_ALIGN_BYTES, SEGMENT_HEADER_BYTES};
use crate::read::{frame_at, FileSource, SliceSource, Source};
use crate::segdir::{parse_seg_name, write_zeros, Fail, SegDir, TMP_SUFFIX};
use crate::storage::StorageFile;
use crate::summary::{
    check_seal, keep_len, parse_sum_name, sum_path, Summary, SummaryMeta, SUM_TMP_SUFFIX,
};

/// What a walk over a segment's rounds found.
#[derive(Debug)]
pub(crate) struct Walk {
    /// End of the last complete round (its marker's end); `SEGMENT_HEADER_BYTES` if none.
    pub committed: u64,
    /// Round number of the last complete round's marker.
    pub last_round: Option<u64>,
    /// The last complete round's marker seals the segment.
    pub sealed: bool,
    /// Where the walk stopped short of a seal, and why.
    pub stop: Option<(u64, String)>,
    /// The visitor asked to stop.
    pub visit_stopped: bool,
    /// Payload bytes of the frames of the complete rounds (those up to `committed`).
    pub payload_bytes: u64,
}

/// What `Log::open_visiting` calls for every committed frame it recovers, in log
/// order: `(loc, kind, meta, payload length)`, `meta` cut to what `LogConfig::summary_meta`
/// keeps; `Err` stops the open.
pub type Visit<'a> = dyn FnMut(crate::Loc, u8, &[u8], u32) -> Result<(), ()> + 'a;

/// Walks the rounds of segment `header.seq` (whose bytes end at `end`): frames up to and
/// including a marker that closes exactly them, each closed round's frames handed to `visit`
/// with their meta cut to what `keep` keeps. Stops at a seal or at the first frame that is
/// not valid.
pub(crate) fn walk(
    src: &mut dyn Source,
    header: &SegmentHeader,
    end: u64,
    keep: Option<SummaryMeta>,
    mut visit: Option<&mut Visit<'_>>,
) -> std::io::Result<Walk> {
    let mut w = Walk {
        committed: SEGMENT_HEADER_BYTES,
        last_round: None,
        sealed: false,
        stop: None,
        visit_stopped: false,
        payload_bytes: 0,
    };
    // The frames of the round being walked, handed to `visit` only once its marker
    // closes it (a torn round is never visited): (offset, kind, meta range in
    // `metas`, payload length).
    let mut round_frames: Vec<(u64, u8, std::ops::Range<usize>, u32)> = Vec::new();
    let mut metas: Vec<u8> = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut round = header.round_first;
    let mut chain = crc32fast::Hasher::new();
    let mut frames = 0u32;
    let mut round_payload = 0u64;
    loop {
        let frame = match frame_at(src, header.seq, pos, end)? {
            Ok(frame) => frame,
            Err(detail) => {
                w.stop = Some((pos, detail));
                return Ok(w);
            }
        };
        let len = frame.header.frame_len();
        if frame.header.kind == MARKER_KIND {
            let marker = Marker::decode(&frame.header, frame.body);
            let closes = marker.is_some_and(|m| {
                m.round == round
                    && u64::from(m.start) == w.committed
                    && m.frames == frames
                    && m.chain == chain.clone().finalize()
            });
            if !closes {
                let detail = format!(
                    "commit marker does not close the round {round} that began at {}",
                    w.committed
                );
                w.stop = Some((pos, detail));
                return Ok(w);
            }
            if let Some(v) = visit.as_mut() {
                for (off, kind, meta, payload_len) in round_frames.drain(..) {
                    let loc = crate::Loc {
                        seg: header.seq,
                        off: off as u32,
                    };
                    if v(loc, kind, &metas[meta], payload_len).is_err() {
                        w.visit_stopped = true;
                        return Ok(w);
                    }
                }
                metas.clear();
            }
            w.committed = pos + len;
            w.last_round = Some(round);
            w.payload_bytes += round_payload;
            round += 1;
            chain = crc32fast::Hasher::new();
            frames = 0;
            round_payload = 0;
            if marker.is_some_and(|m| m.seal) {
                w.sealed = true;
                return Ok(w);
            }
        } else {
            chain.update(&frame.header.crc.to_le_bytes());
            frames += 1;
            let payload_len = frame.header.body_len - frame.header.meta_len;
            round_payload += u64::from(payload_len);
            if visit.is_some() {
                let meta = &frame.body[..frame.header.meta_len as usize];
                let meta = &meta[..keep_len(keep, frame.header.kind, meta)];
                let start = metas.len();
                metas.extend_from_slice(meta);
                round_frames.push((pos, frame.header.kind, start..metas.len(), payload_len));
            }
        }
        pos += len;
    }
}

/// A valid commit marker at or after `from` in `bytes` (segment `seq`) with a round number of
/// at least `round_min`, if any: found by searching for the marker magic, so it works where
/// frame boundaries are lost.
fn later_marker(bytes: &[u8], seq: u32, from: u64, round_min: u64) -> Option<(u64, u64)> {
    let end = bytes.len() as u64;
    let mut src = SliceSource(bytes);
    for hit in memmem::find_iter(&bytes[from as usize..], &MARKER_MAGIC) {
        let Some(off) = (from + hit as u64).checked_sub(MARKER_MAGIC_AT as u64) else {
            continue;
        };
        if off < from || off % FRAME_ALIGN_BYTES != 0 {
            continue;
        }
        let Ok(Ok(frame)) = frame_at(&mut src, seq, off, end) else {
            continue;
        };
        if let Some(marker) = Marker::decode(&frame.header, frame.body) {
            if marker.round >= round_min {
                return Some((off, marker.round));
            }
        }
    }
    None
}

/// A segment as recovery found it.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Its seq.
    pub seq: u32,
    /// Its file, open.
    pub file: Arc<dyn StorageFile>,
    /// Its checked header.
    pub header: SegmentHeader,
    /// Its rounds.
    pub walk: Walk,
    /// The last segment's whole content (its committed part becomes the active image).
    pub image: Option<Box<[u8]>>,
    /// Visited from a valid summary (a sealed segment without one was walked instead).
    pub summarized: bool,
}

/// Everything `Log::open` continues from: segments in order, the last one last.
#[derive(Debug)]
pub(crate) struct RecoveredLog {
    pub segments: Vec<Recovered>,
}

fn io_err<'a>(file: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> OpenError + 'a {
    move |source| OpenError::Io {
        file: file.to_path_buf(),
        op,
        source,
    }
}

fn corrupt(file: &Path, off: u64, detail: impl Into<String>) -> OpenError {
    OpenError::Corrupt {
        file: file.to_path_buf(),
        off,
        detail: detail.into(),
    }
}

impl From<Fail> for OpenError {
    fn from(fail: Fail) -> OpenError {
        match fail {
            Fail::Write { file, op, source } | Fail::Sync { file, op, source } => {
                OpenError::Io { file, op, source }
            }
        }
    }
}

/// Recovers the log in `segdir` (see the crate docs, "Recovery"). Creates segment 1 for an
/// empty directory.
pub(crate) fn recover(
    segdir: &SegDir,
    segment_bytes: u64,
    keep: Option<SummaryMeta>,
    mut visit: Option<&mut Visit<'_>>,
) -> Result<RecoveredLog, OpenError> {
    let storage = &segdir.storage;
    let dir = &segdir.dir;
    storage
        .create_dir_all(dir)
        .map_err(io_err(dir, "create log directory"))?;
    let mut seqs = Vec::new();
    let mut sums = Vec::new();
    let mut strays = Vec::new();
    for name in storage
        .list(dir)
        .map_err(io_err(dir, "list log directory"))?
    {
        if let Some(seq) = parse_seg_name(&name) {
            seqs.push(seq);
        } else if let Some(seq) = parse_sum_name(&name) {
            sums.push(seq);
        } else if name.ends_with(TMP_SUFFIX) || name.ends_with(SUM_TMP_SUFFIX) {
            // A spare never put in place holds nothing of the log; a summary never renamed
            // into place is no summary.
            strays.push(dir.join(&name));
        }
    }
    seqs.sort_unstable();
    // Summaries of sealed segments only: one whose segment is gone (deleted, its summary
    // left by a crash or written late) or is the last one (never summarized; walked whole
    // anyway) is a stray.
    let sealed = &seqs[..seqs.len().saturating_sub(1)];
    let mut summarized = HashSet::new();
    for seq in sums {
        if sealed.binary_search(&seq).is_ok() {
            summarized.insert(seq);
        } else {
            strays.push(sum_path(dir, seq));
        }
    }
    for path in &strays {
        storage
            .remove(path)
            .map_err(io_err(path, "remove stray file"))?;
    }
    if !strays.is_empty() {
        storage
            .sync_dir(dir)
            .map_err(io_err(dir, "sync log directory"))?;
    }
    if seqs.is_empty() {
        let header = SegmentHeader {
            seq: 1,
            segment_bytes,
            prev_len: u64::MAX,
            round_first: 1,
        };
        let file = segdir.prepare(1, segment_bytes)?;
        segdir.install(&file, &header)?;
        let mut image = vec![0u8; segment_bytes as usize].into_boxed_slice();
        image[..SEGMENT_HEADER_BYTES as usize].copy_from_slice(&header.encode());
        let walk = Walk {
            committed: SEGMENT_HEADER_BYTES,
            last_round: None,
            sealed: false,
            stop: None,
            visit_stopped: false,
            payload_bytes: 0,
        };
        return Ok(RecoveredLog {
            segments: vec![Recovered {
                seq: 1,
                file,
                header,
                walk,
                image: Some(image),
                summarized: false,
            }],
        });
    }
    let last = seqs.len() - 1;
    let mut segments: Vec<Recovered> = Vec::with_capacity(seqs.len());
    for (i, &seq) in seqs.iter().enumerate() {
        let seg = if i == last {
            recover_last(segdir, seq, keep, visit.as_deref_mut())?
        } else {
            recover_sealed(
                segdir,
                seq,
                keep,
                summarized.contains(&seq),
                visit.as_deref_mut(),
            )?
        };
        if seg.walk.visit_stopped {
            return Err(OpenError::Stopped);
        }
        if let Some(prev) = segments.last() {
            check_link(&segdir.seg_path(seq), prev, &seg)?;
        }
        segments.push(seg);
    }
    Ok(RecoveredLog { segments })
}

/// Opens segment `seq` and checks its header.
fn open_segment(
    segdir: &SegDir,
    seq: u32,
) -> Result<(PathBuf, Arc<dyn StorageFile>, u64, SegmentHeader), OpenError> {
    let path = segdir.seg_path(seq);
    let file = segdir
        .storage
        .open(&path)
        .map_err(io_err(&path, "open segment"))?;
    let size = file.len_bytes().map_err(io_err(&path, "size of segment"))?;
    let mut head = [0u8; SEGMENT_HEADER_BYTES as usize];
    if size < SEGMENT_HEADER_BYTES {
        return Err(corrupt(
            &path,
            0,
            format!("segment file is only {size} bytes"),
        ));
    }
    file.read_at(0, &mut head)
        .map_err(io_err(&path, "read segment header"))?;
    // The header was synced before the file got its name, so a bad one is damage, never a
    // crash in progress.
    let header = SegmentHeader::decode(&head).map_err(|detail| corrupt(&path, 0, detail))?;
    if header.seq != seq {
        return Err(corrupt(
            &path,
            12,
            format!("header says segment {}, file name says {seq}", header.seq),
        ));
    }
    if header.segment_bytes != size {
        return Err(corrupt(
            &path,
            16,
            format!(
                "header says {} bytes, file has {size}",
                header.segment_bytes
            ),
        ));
    }
    Ok((path, file, size, header))
}

/// A segment that is not the last: it was sealed and synced before its successor was made, so
/// every frame up to its seal must be valid. Visited from its summary (`has_summary`) when
/// that is valid; otherwise walked whole (and `Log::open` hands it to the summary writer).
fn recover_sealed(
    segdir: &SegDir,
    seq: u32,
    keep: Option<SummaryMeta>,
    has_summary: bool,
    mut visit: Option<&mut Visit<'_>>,
) -> Result<Recovered, OpenError> {
    let (path, file, size, header) = open_segment(segdir, seq)?;
    if has_summary {
        let sum_file = sum_path(&segdir.dir, seq);
        let used = read_summary(segdir, &sum_file, &header).and_then(|bytes| {
            let summary = Summary::parse(&bytes, &header)?;
            check_seal(file.as_ref(), &header, &summary)
                .map_err(|e| format!("read segment: {e}"))??;
            // Checked whole: only now is anything visited.
            let visit_stopped = match visit.as_deref_mut() {
                Some(v) => summary.visit(seq, v).is_err(),
                None => false,
            };
            Ok(Walk {
                committed: summary.committed,
                last_round: Some(summary.round_last),
                sealed: true,
                stop: None,
                visit_stopped,
                payload_bytes: summary.payload_bytes,
            })
        });
        match used {
            Ok(walk) => {
                return Ok(Recovered {
                    seq,
                    file,
                    header,
                    walk,
                    image: None,
                    summarized: true,
                });
            }
            Err(error) => tracing::warn!(
                file = %sum_file.display(),
                error = %error,
                "ignoring an invalid segment summary: reading the segment instead (it is rewritten after open)"
            ),
        }
    }
    let walk = walk(
        &mut FileSource::new(file.as_ref(), size),
        &header,
        size,
        keep,
        visit,
    )
    .map_err(io_err(&path, "read segment"))?;
    if !walk.sealed && !walk.visit_stopped {
        let (off, detail) = walk.stop.clone().expect("an unsealed walk stops somewhere");
        return Err(corrupt(
            &path,
            off,
            format!("{detail} (in a segment that was sealed and synced)"),
        ));
    }
    Ok(Recovered {
        seq,
        file,
        header,
        walk,
        image: None,
        summarized: false,
    })
}

/// Reads the summary file at `path` of the segment with `header`; the error says why it
/// cannot be read.
fn read_summary(segdir: &SegDir, path: &Path, header: &SegmentHeader) -> Result<Vec<u8>, String> {
    let file = segdir
        .storage
        .open(path)
        .map_err(|e| format!("open: {e}"))?;
    let len = file.len_bytes().map_err(|e| format!("size: {e}"))?;
    // A summary lists at most one entry per frame, each no larger than the frame: it is
    // never larger than its segment.
    if len > header.segment_bytes {
        return Err(format!("summary of {len} bytes is larger than its segment"));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_at(0, &mut bytes)
        .map_err(|e| format!("read: {e}"))?;
    Ok(bytes)
}

/// The last segment: its last round may be torn by a crash; anything before that may not.
fn recover_last(
    segdir: &SegDir,
    seq: u32,
    keep: Option<SummaryMeta>,
    visit: Option<&mut Visit<'_>>,
) -> Result<Recovered, OpenError> {
    let (path, file, size, header) = open_segment(segdir, seq)?;
    let mut image = vec![0u8; size as usize].into_boxed_slice();
    file.read_at(0, &mut image)
        .map_err(io_err(&path, "read segment"))?;
    let walk = walk(&mut SliceSource(&image), &header, size, keep, visit)
        .map_err(io_err(&path, "read segment"))?;
    if walk.visit_stopped {
        return Err(OpenError::Stopped);
    }
    if !walk.sealed {
        let (p, detail) = walk.stop.clone().expect("an unsealed walk stops somewhere");
        // Round m was the last good one. A round starts only after the one before it was
        // synced, so a valid marker of round m + 2 or later means round m + 1, where the walk
        // broke, had been synced (and acknowledged): this is damage, not a torn tail. A marker
        // of round m + 1 itself proves nothing: the pages of one unsynced write persist in any
        // order.
        let m = walk.last_round.unwrap_or(header.round_first - 1);
        if let Some((off, round)) = later_marker(&image, seq, p, m + 2) {
            return Err(corrupt(
                &path,
                p,
                format!("{detail}, yet round {round} (after the last good round {m}) was committed at offset {off}"),
            ));
        }
        // A torn tail: the last round's fdatasync never returned, so nothing of it was
        // acknowledged. Zero it durably so none of its frames can ever pass for new ones.
        let t = walk.committed as usize;
        if let Some(last_nonzero) = image[t..].iter().rposition(|&b| b != 0) {
            let dirty_end = t + last_nonzero + 1;
            write_zeros(file.as_ref(), t as u64, dirty_end as u64)
                .map_err(io_err(&path, "zero torn tail"))?;
            file.sync_data()
                .map_err(io_err(&path, "sync zeroed torn tail"))?;
            image[t..dirty_end].fill(0);
        }
    }
    Ok(Recovered {
        seq,
        file,
        header,
        walk,
        image: Some(image),
        summarized: false,
    })
}

/// Checks that `next` continues `prev`: committed length and round numbers, when `prev` is its
/// direct predecessor (a gap means segments in between were deleted).
fn check_link(path: &Path, prev: &Recovered, next: &Recovered) -> Result<(), OpenError> {
    let prev_round = prev.walk.last_round.expect("a sealed segment has a round");
    if next.seq == prev.seq + 1 {
        if next.header.prev_len != u64::MAX && next.header.prev_len != prev.walk.committed {
            return Err(corrupt(
                path,
                24,
                format!(
                    "header says segment {} ended at {}, it ends at {}",
                    prev.seq, next.header.prev_len, prev.walk.committed
                ),
            ));
        }
        if next.header.round_first != prev_round + 1 {
            return Err(corrupt(
                path,
                32,
                format!(
                    "first round {} does not follow round {prev_round} of segment {}",
                    next.header.round_first, prev.seq
                ),
            ));
        }
    } else if next.header.round_first <= prev_round {
        return Err(corrupt(
            path,
            32,
            format!(
                "first round {} is not after round {prev_round}",
                next.header.round_first
            ),
        ));
    }
    Ok(())
}
