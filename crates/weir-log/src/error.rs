//! The log's error types: what went wrong, with the file and offset it went wrong at.

use std::io;
use std::path::PathBuf;

use crate::Loc;

/// Why `Log::open` refused to open the log.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The config cannot describe a log (for example a segment size out of range).
    #[error("invalid log config: {detail}")]
    Config { detail: String },
    /// Bytes that were once durable are damaged: the log will not guess past them.
    #[error("corrupt log file {} at offset {off}: {detail}", file.display())]
    Corrupt {
        file: PathBuf,
        off: u64,
        detail: String,
    },
    /// The file system failed.
    #[error("log I/O failed on {} ({op}): {source}", file.display())]
    Io {
        file: PathBuf,
        /// What the log was doing.
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The visitor of `Log::open_visiting` stopped the open.
    #[error("the caller stopped recovery")]
    Stopped,
}

/// Why `Log::commit` failed. In every case nothing of the round is readable or counted as
/// committed, and its staged frames are dropped.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A write, create, rename or zero-fill failed (ENOSPC, EMFILE, EIO on write): an outage
    /// the caller may retry later. The log stays usable; the next round starts at the offset
    /// this one started at.
    #[error("log write to {} failed, round dropped: {source}", file.display())]
    Write {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    /// fdatasync (of a segment or of the directory) failed: the kernel may have dropped dirty
    /// pages, so nothing written since the last good sync can be trusted. Fatal: every later
    /// commit returns `Poisoned`; reopen the log to recover.
    #[error("log fdatasync of {} failed, log poisoned: {source}", file.display())]
    Sync {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A write failed halfway through a round that rolled to a new segment, and removing that
    /// new segment failed too. Fatal like `Sync`.
    #[error("undoing a failed segment roll failed on {} ({cause}), log poisoned: {source}", file.display())]
    Rollback {
        file: PathBuf,
        /// The failure that made the roll be undone.
        cause: String,
        #[source]
        source: io::Error,
    },
    /// An earlier commit failed fatally; reopen the log.
    #[error("log poisoned by an earlier failed commit; reopen it to recover")]
    Poisoned,
}

/// Why `Reader::read` returned no frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The segment was deleted.
    #[error("segment {seg} was deleted")]
    Gone { seg: u32 },
    /// `loc` is not below the committed end of its segment (or its segment does not exist yet).
    #[error("nothing committed at {loc:?}")]
    NotCommitted { loc: Loc },
    /// `loc` names a commit marker, which belongs to the log, not to a caller.
    #[error("{loc:?} is a commit marker, not a frame")]
    NotAFrame { loc: Loc },
    /// The frame at the location fails its checks: damaged media, or `loc` did not come from
    /// `append` or `replay`.
    #[error("corrupt log file {} at offset {off}: {detail}", file.display())]
    Corrupt {
        file: PathBuf,
        off: u64,
        detail: String,
    },
    /// The file system failed.
    #[error("log read of {} failed: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why `Log::replay` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError<E> {
    /// The callback returned this error.
    #[error("replay stopped by its callback")]
    Callback(E),
    /// A committed frame fails its checks (it passed them at open: the media changed since).
    #[error("corrupt log file {} at offset {off}: {detail}", file.display())]
    Corrupt {
        file: PathBuf,
        off: u64,
        detail: String,
    },
    /// The file system failed.
    #[error("log read of {} failed: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
}
