//! Reading frames back: `Reader` (one frame by `Loc`, from any thread) and the sequential
//! frame scan that `replay` and recovery share.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;

use crate::error::ReadError;
use crate::format::{frame_valid, FrameHeader, MARKER_KIND};
use crate::limits::{FRAME_HEADER_BYTES, REPLAY_BUFFER_BYTES, SEGMENT_HEADER_BYTES};
use crate::segdir::seg_path;
use crate::storage::StorageFile;
use crate::Loc;

const FRAME_HEADER_LEN: usize = FRAME_HEADER_BYTES as usize;

/// One frame read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub meta: Bytes,
    pub payload: Bytes,
}

/// What readers share with the writer: the committed bytes of every segment.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The log directory, to name files in errors.
    pub dir: PathBuf,
    /// Every segment but the active one, by seq: read with pread.
    pub sealed: RwLock<BTreeMap<u32, SealedSeg>>,
    /// The active segment's committed bytes, served from memory.
    pub active: RwLock<ActiveImage>,
}

impl Shared {
    pub(crate) fn sealed(&self) -> RwLockReadGuard<'_, BTreeMap<u32, SealedSeg>> {
        self.sealed.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn active(&self) -> RwLockReadGuard<'_, ActiveImage> {
        self.active.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// A segment that takes no more frames.
#[derive(Clone, Debug)]
pub(crate) struct SealedSeg {
    pub file: Arc<dyn StorageFile>,
    /// Its committed length: everything below is valid frames ending with a seal.
    pub len: u64,
}

/// An in-memory copy of the active segment. Only `bytes[..committed]` is meaningful; the
/// writer copies each round in after its fdatasync returned, then moves `committed`.
pub(crate) struct ActiveImage {
    /// The active segment's seq.
    pub seq: u32,
    /// As long as the segment; allocated zeroed, so untouched pages cost no memory.
    pub bytes: Box<[u8]>,
    /// Readers see only the bytes below this.
    pub committed: u64,
}

impl std::fmt::Debug for ActiveImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveImage")
            .field("seq", &self.seq)
            .field("committed", &self.committed)
            .finish()
    }
}

/// A cheap, clonable handle for reading committed frames from any thread.
#[derive(Clone, Debug)]
pub struct Reader {
    pub(crate) shared: Arc<Shared>,
}

impl Reader {
    /// Reads the committed frame at `loc` and checks its CRC. A frame of the active segment is
    /// copied from memory (no storage call); an older one takes two preads (header, body).
    pub fn read(&self, loc: Loc) -> Result<Frame, ReadError> {
        {
            let image = self.shared.active();
            if loc.seg == image.seq {
                return read_image(&self.shared.dir, &image, loc);
            }
            if loc.seg > image.seq {
                return Err(ReadError::NotCommitted { loc });
            }
        }
        // The writer files a segment under `sealed` before it stops being the active one, so a
        // seq below the active one is either here or deleted.
        let seg = self.shared.sealed().get(&loc.seg).cloned();
        let seg = seg.ok_or(ReadError::Gone { seg: loc.seg })?;
        read_file(&self.shared.dir, &seg, loc)
    }
}

fn corrupt(dir: &Path, loc: Loc, detail: impl Into<String>) -> ReadError {
    ReadError::Corrupt {
        file: seg_path(dir, loc.seg),
        off: u64::from(loc.off),
        detail: detail.into(),
    }
}

fn read_image(dir: &Path, image: &ActiveImage, loc: Loc) -> Result<Frame, ReadError> {
    let off = u64::from(loc.off);
    if off < SEGMENT_HEADER_BYTES || off + FRAME_HEADER_BYTES > image.committed {
        return Err(ReadError::NotCommitted { loc });
    }
    let at = off as usize;
    let header = FrameHeader::decode(&image.bytes[at..])
        .ok_or_else(|| corrupt(dir, loc, "bad frame header"))?;
    let end = off + FRAME_HEADER_BYTES + u64::from(header.body_len);
    if end > image.committed {
        return Err(corrupt(dir, loc, "frame runs past the committed end"));
    }
    // Copy out under the lock, check the CRC after.
    let bytes = image.bytes[at..end as usize].to_vec();
    finish(dir, loc, header, bytes)
}

fn read_file(dir: &Path, seg: &SealedSeg, loc: Loc) -> Result<Frame, ReadError> {
    let off = u64::from(loc.off);
    if off < SEGMENT_HEADER_BYTES || off + FRAME_HEADER_BYTES > seg.len {
        return Err(ReadError::NotCommitted { loc });
    }
    let io = |source| ReadError::Io {
        file: seg_path(dir, loc.seg),
        source,
    };
    let mut head = [0u8; FRAME_HEADER_LEN];
    seg.file.read_at(off, &mut head).map_err(io)?;
    let header = FrameHeader::decode(&head).ok_or_else(|| corrupt(dir, loc, "bad frame header"))?;
    let end = off + FRAME_HEADER_BYTES + u64::from(header.body_len);
    if end > seg.len {
        return Err(corrupt(dir, loc, "frame runs past the committed end"));
    }
    let mut bytes = vec![0u8; FRAME_HEADER_LEN + header.body_len as usize];
    bytes[..FRAME_HEADER_LEN].copy_from_slice(&head);
    seg.file
        .read_at(off + FRAME_HEADER_BYTES, &mut bytes[FRAME_HEADER_LEN..])
        .map_err(io)?;
    finish(dir, loc, header, bytes)
}

/// Checks the CRC of a frame copied into `bytes` (header then body) and splits it, sharing the
/// one allocation.
fn finish(dir: &Path, loc: Loc, header: FrameHeader, bytes: Vec<u8>) -> Result<Frame, ReadError> {
    let (head, body) = bytes.split_at(FRAME_HEADER_LEN);
    if !frame_valid(loc.seg, loc.off, head, &header, body) {
        return Err(corrupt(dir, loc, "frame CRC mismatch"));
    }
    if header.kind == MARKER_KIND {
        return Err(ReadError::NotAFrame { loc });
    }
    let bytes = Bytes::from(bytes);
    let meta_end = FRAME_HEADER_LEN + header.meta_len as usize;
    Ok(Frame {
        kind: header.kind,
        meta: bytes.slice(FRAME_HEADER_LEN..meta_end),
        payload: bytes.slice(meta_end..),
    })
}

/// Where a scan reads a segment's bytes from.
pub(crate) trait Source {
    /// `len` bytes at segment offset `off`; the caller keeps `off + len` within the segment.
    fn bytes(&mut self, off: u64, len: usize) -> io::Result<&[u8]>;
}

/// A segment already in memory (the active image, or the last segment at recovery).
pub(crate) struct SliceSource<'a>(pub &'a [u8]);

impl Source for SliceSource<'_> {
    fn bytes(&mut self, off: u64, len: usize) -> io::Result<&[u8]> {
        let at = off as usize;
        Ok(&self.0[at..at + len])
    }
}

/// A segment file read with large sequential reads, not a syscall per frame.
pub(crate) struct FileSource<'a> {
    file: &'a dyn StorageFile,
    /// The scan never reads at or past this offset.
    end: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    at: u64,
    filled: usize,
}

impl<'a> FileSource<'a> {
    pub(crate) fn new(file: &'a dyn StorageFile, end: u64) -> FileSource<'a> {
        FileSource {
            file,
            end,
            buf: Vec::new(),
            at: 0,
            filled: 0,
        }
    }
}

impl Source for FileSource<'_> {
    fn bytes(&mut self, off: u64, len: usize) -> io::Result<&[u8]> {
        debug_assert!(off + len as u64 <= self.end);
        let have = off >= self.at && off + len as u64 <= self.at + self.filled as u64;
        if !have {
            // Refill from `off`: one large read, grown for a frame larger than the buffer.
            let want = (REPLAY_BUFFER_BYTES.max(len) as u64).min(self.end - off) as usize;
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            self.file.read_at(off, &mut self.buf[..want])?;
            self.at = off;
            self.filled = want;
        }
        let from = (off - self.at) as usize;
        Ok(&self.buf[from..from + len])
    }
}

/// A frame that passed every check.
pub(crate) struct ValidFrame<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
}

/// Reads and checks the frame at `off` of segment `seq` whose bytes end at `end`. The inner
/// error says why there is no valid frame there.
pub(crate) fn frame_at<'s>(
    src: &'s mut dyn Source,
    seq: u32,
    off: u64,
    end: u64,
) -> io::Result<Result<ValidFrame<'s>, String>> {
    if off + FRAME_HEADER_BYTES > end {
        return Ok(Err(
            "no room for a frame header before the segment end".into()
        ));
    }
    let Some(header) = FrameHeader::decode(src.bytes(off, FRAME_HEADER_LEN)?) else {
        return Ok(Err("zero or malformed frame header".into()));
    };
    if off + header.frame_len() > end {
        return Ok(Err(format!(
            "frame of {} body bytes runs past the segment end",
            header.body_len
        )));
    }
    let bytes = src.bytes(off, FRAME_HEADER_LEN + header.body_len as usize)?;
    let (head, body) = bytes.split_at(FRAME_HEADER_LEN);
    if !frame_valid(seq, off as u32, head, &header, body) {
        return Ok(Err("frame CRC mismatch".into()));
    }
    Ok(Ok(ValidFrame { header, body }))
}
