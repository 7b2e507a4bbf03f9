//! weir's append-only task log: frames of `(kind, meta, payload)` appended in rounds, one
//! group commit (one write and one fdatasync per segment touched) per round, read back by
//! `Loc` from any thread, recovered after a crash without losing an acknowledged round.
//!
//! The log knows nothing about tasks. The store above keeps an index from task id to `Loc`,
//! decides which segments are dead, and deletes them.
//!
//! # On-disk format
//!
//! All integers are little-endian. CRCs are CRC-32 (IEEE, `crc32fast`).
//!
//! ## Segment files
//!
//! The log is a directory of segment files named `<seq>.seg`, `seq` as ten zero-padded
//! decimal digits, starting at `0000000001.seg`. Sequence numbers increase by one per roll;
//! gaps are segments the caller deleted. Each file is exactly `segment_bytes` long (64 MiB by
//! default, a multiple of 4 KiB between 4 KiB and 2 GiB).
//!
//! A segment is born as a spare `<seq>.seg.tmp`: created, filled with zeros by writing them
//! (not fallocate or set_len: overwriting unwritten extents makes every later fdatasync
//! journal metadata too, a written file avoids that) and fdatasynced. A background thread
//! keeps the next spare ready. When the log rolls, it writes the segment header into the
//! spare, fdatasyncs it, renames it to `<seq>.seg` and fsyncs the directory; only then is a
//! frame written into it. So a file named `.seg` always has a durable header, and stray
//! `.seg.tmp` files are deleted at open.
//!
//! ## Segment header: bytes 0..64
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8  | magic `b"WEIRLOG1"` |
//! | 8  | 4  | format version, `1` |
//! | 12 | 4  | `seq` (must match the file name) |
//! | 16 | 8  | `segment_bytes` (must match the file size) |
//! | 24 | 8  | `prev_len`: final committed length of segment `seq - 1`; `u64::MAX` for the first segment |
//! | 32 | 8  | `round_first`: the round number of this segment's first commit marker |
//! | 40 | 20 | reserved, zero |
//! | 60 | 4  | CRC of bytes 0..60 |
//!
//! ## Frames: from byte 64 on
//!
//! Each frame starts at a multiple of 8 and is padded with zeros to the next one.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4 | `body_len` = `meta_len` + payload length |
//! | 4  | 4 | `crc` |
//! | 8  | 1 | `kind`: `0..=0xFE` for callers, `0xFF` for commit markers |
//! | 9  | 3 | reserved, zero |
//! | 12 | 4 | `meta_len` |
//! | 16 | `body_len` | body: meta, then payload |
//!
//! `crc` covers, in order: the segment `seq` (u32), the frame's offset in the segment (u32),
//! header bytes 0..4 and 8..16, and the body. A frame therefore validates only in the segment
//! and at the offset it was written to; a stale copy anywhere else never does. An all-zero
//! header (never written) is never a frame.
//!
//! ## Commit markers
//!
//! A round's frames in one segment (a *part*) end with a commit marker: a frame of kind
//! `0xFF`, `meta_len` 0, and a 32-byte body:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic `b"WEIRCMIT"` (recovery finds markers by searching for it) |
//! | 8  | 8 | round number: one more than the previous marker's, across the whole log |
//! | 16 | 4 | `start`: segment offset where this part began (right after the previous marker) |
//! | 20 | 4 | number of frames in the part |
//! | 24 | 4 | `chain`: CRC of the parts' frame CRCs (each as 4 bytes), in order |
//! | 28 | 4 | flags: bit 0 = *seal* (the log continues in the next segment); other bits zero |
//!
//! A marker is valid only if it closes exactly the frames since the previous marker: right
//! round number, start, count and chain. Frames of different rounds mixed by a crash can
//! therefore never pass for one round.
//!
//! ## Segment summaries
//!
//! When the log rolls, the segment it sealed gets a summary `<seq>.sum`: what recovery
//! visits in it, so that a later open need not read the segment. It is made by reading the
//! sealed segment back and walking it exactly as recovery does (on a background thread; at
//! the roll itself when `spare_in_background` is false), written to `<seq>.sum.tmp`,
//! fdatasynced and renamed to `<seq>.sum`. The directory is not synced: a lost rename (or a
//! summary never written, or a crash before its rename) only means the next open walks that
//! segment; once open, the log hands every sealed segment it walked for want of a summary to
//! the same writer. Dropping the log waits for the summaries of segments it sealed; what is
//! left of the ones found at open is left to the next open.
//!
//! Only a segment that is mostly payload gets one (`LogConfig::summary_payload_percent_min`,
//! 50% by default): a summary spares open reading the payloads, and little else. A segment
//! of small frames would get a summary about half its own size, paid for at every seal
//! (measured: 10% of a server's CPU in an end-to-end run of small tasks) to save ~0.1 µs per
//! frame at open; such a segment is always walked, and open does not write a summary for it.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic `b"WEIRSUM1"` |
//! | 8  | 4 | summary version, `1` |
//! | 12 | 4 | `seq` of the segment |
//! | 16 | 8 | `segment_bytes` of the segment |
//! | 24 | 8 | committed length: the end of its seal marker |
//! | 32 | 8 | first round number (the segment header's `round_first`) |
//! | 40 | 8 | last round number (its seal marker's) |
//! | 48 | 4 | entry count |
//! | 52 | 4 | reserved, zero |
//! | 56 | … | entries, packed, one per committed frame in order: offset (u32), kind (u8), `n` (u32), payload length (u32), then the first `n` bytes of the meta |
//! | end − 4 | 4 | CRC of everything before it |
//!
//! `n` is what `LogConfig::summary_meta` keeps of the frame's meta (all of it by default).
//! `delete_segment` deletes a segment's summary with it; open deletes `.sum.tmp` files and
//! `.sum` files whose segment is gone or is the last one.
//!
//! # Commit protocol
//!
//! `append` copies a frame into one reusable round buffer. A frame goes to the current
//! segment if, after it, there is room for two markers (its round's and a possible seal);
//! otherwise the part in the current segment is closed with a seal marker (a part may hold
//! nothing but its seal) and the frame starts a part in the next segment.
//!
//! `commit` closes the last part with a marker and, for each part in order: puts a new segment
//! in place if the part needs one (header, sync, rename, directory sync, as above), writes the
//! part with one positional write, and fdatasyncs that file. A round is acknowledged (Ok) only
//! after every fdatasync returned; the next round starts only after that. The round's bytes
//! are then copied into the in-memory image of the active segment that readers use.
//!
//! On a failed write (or create, rename, zero-fill) the round is dropped: segments it put in
//! place are removed again (directory synced), and the range it may have written in the
//! active segment is zeroed and synced before the next round is written there, so a failed
//! round's bytes never resurface behind a later round lost in a crash. The next round starts
//! at the same offset. A failed fdatasync poisons the log: the kernel may have dropped pages,
//! so the process must reopen (and recover) the log.
//!
//! # Recovery
//!
//! `Log::open` reads every segment in seq order:
//!
//! - The header must be valid (it was durable before the file had its name).
//! - A segment that is not the last was sealed and synced before its successor existed.
//!   If it has a summary that checks out (CRC; magic, version, seq, size and first round
//!   match the segment; entries in order inside the committed length; and a valid seal
//!   marker of its last round ends the segment exactly where it says), its frames are
//!   visited from the summary and the segment itself is not read further. Otherwise every
//!   frame up to a seal marker must be valid, or the open fails with `OpenError::Corrupt`
//!   naming the file and offset; the summary is written again after open (above), and an
//!   invalid one is logged (`tracing::warn`, naming the file) and never trusted. Either
//!   way, its committed length must equal the successor's `prev_len`, and round numbers
//!   must continue, when the successor is seq + 1.
//! - In the last segment, rounds are walked (frames up to and including a valid marker).
//!   Let `m` be the last good round, ending at offset `t`, and `p` the first offset with no
//!   valid frame (or a marker that does not close its round). If a valid marker of round
//!   `m + 2` or later is found at or after `p` (searched by its magic), round `m + 1` had been
//!   synced before it, so the damage at `p` is corruption: `OpenError::Corrupt` at `p`.
//!   Otherwise `p` is inside a torn last round (its fdatasync never returned, so it was never
//!   acknowledged; a marker of round `m + 1` itself proves nothing, as the pages of one
//!   unsynced write persist in any order): `[t, last nonzero byte)` is overwritten with
//!   zeros and synced, and the log appends from `t`.
//! - A last segment that ends with a seal makes the next frame go to a new segment.
//!
//! The trade of summaries (the same as Kafka's recovery point, below which it does not scan
//! segments at startup): damage inside a summarized segment, short of its header and seal
//! marker, is no longer found at open. Every read still checks its frame's CRC
//! (`Reader::read`, `replay`), so such damage is reported as `ReadError::Corrupt` /
//! `ReplayError::Corrupt` when the frame is read, naming file and offset, never returned as
//! data. Delete the `.sum` files to have the next open check every segment in full.
//!
//! What this cannot tell: a bit flipped in the last acknowledged round, with no round after
//! it, looks exactly like a torn tail, and that round is dropped. A round that rolled commits
//! segment by segment: if it fails or the machine crashes after its first part was synced,
//! that part may be recovered without the rest. Either way it is the last round attempted,
//! which was not acknowledged.

mod error;
mod format;
mod limits;
mod log;
mod read;
mod recover;
mod segdir;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod storage;
mod summary;

#[cfg(test)]
mod tests;

pub use error::{CommitError, OpenError, ReadError, ReplayError};
pub use format::{KIND_MAX, MARKER_KIND};
pub use limits::*;
pub use log::{Log, LogConfig, SegmentInfo};
pub use read::{Frame, Reader};
pub use recover::Visit;
pub use storage::{RealStorage, Storage, StorageFile};
pub use summary::SummaryMeta;

/// Where a frame lives: its segment's seq and the byte offset of its header in that segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub seg: u32,
    pub off: u32,
}

impl Loc {
    /// `seg` in the high 32 bits, `off` in the low: the order of `u64`s is log order.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.seg) << 32) | u64::from(self.off)
    }

    pub fn from_u64(v: u64) -> Loc {
        Loc {
            seg: (v >> 32) as u32,
            off: v as u32,
        }
    }
}
