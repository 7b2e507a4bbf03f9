//! Failed writes, creates, renames and syncs: what commit reports, what stays readable, and
//! what survives a crash afterwards.

use super::*;
use crate::sim::{errno, Fault, OpKind};
use crate::{CommitError, ReadError};

const SEGMENT_BYTES: u64 = 16 << 10;

fn acked_rounds(log: &mut Log, n: usize) -> Vec<Expect> {
    (0..n)
        .flat_map(|i| {
            commit_round(
                log,
                &[
                    content(1, &format!("ok{i}"), 150),
                    content(2, &format!("ok{i}b"), 90),
                ],
            )
        })
        .collect()
}

fn stage(log: &mut Log, tag: &str, frames: usize, bytes: usize) -> Vec<Expect> {
    (0..frames)
        .map(|i| content(4, &format!("{tag}{i}"), bytes).append(log))
        .collect()
}

fn assert_not_committed(log: &Log, frames: &[Expect]) {
    let reader = log.reader();
    for e in frames {
        match reader.read(e.loc) {
            Err(ReadError::NotCommitted { .. }) => {}
            other => panic!("frame of a failed round at {:?}: {other:?}", e.loc),
        }
    }
}

fn errno_of(error: &CommitError) -> Option<i32> {
    match error {
        CommitError::Write { source, .. } | CommitError::Sync { source, .. } => {
            source.raw_os_error()
        }
        _ => None,
    }
}

/// Fills segment 1 so that the next round of 1000-byte frames rolls.
fn nearly_full(log: &mut Log) -> Vec<Expect> {
    let mut acked = Vec::new();
    while log.tail().off < 12 << 10 {
        acked.extend(commit_round(log, &[content(1, "fill", 1000)]));
    }
    acked
}

/// ENOSPC or EIO on the segment write: the round is dropped, nothing of it is readable, a
/// retry commits at the same offset, and all of it survives a crash.
#[test]
fn a_failed_write_drops_the_round_and_a_retry_commits_at_the_same_offset() {
    for code in [errno::ENOSPC, errno::EIO] {
        let sim = SimStorage::new();
        let mut log = open(&sim, SEGMENT_BYTES);
        let mut acked = acked_rounds(&mut log, 3);
        let tail = log.tail();
        let failed = stage(&mut log, "x", 3, 300);
        // The whole buffer lands in the page cache before the error is reported.
        sim.inject(Fault::once(OpKind::Write, 1, code).partial(usize::MAX));
        let error = log.commit().unwrap_err();
        assert!(
            matches!(&error, CommitError::Write { file, .. } if *file == seg_file(1)),
            "{error}"
        );
        assert_eq!(errno_of(&error), Some(code));
        assert_eq!((log.tail(), log.staged_frames()), (tail, 0));
        assert_not_committed(&log, &failed);
        assert_log(&log, &acked);

        let retry = commit_round(&mut log, &[content(5, "y", 40)]);
        assert_eq!(
            retry[0].loc, failed[0].loc,
            "the retry starts where the failed round did"
        );
        acked.extend(retry);
        assert_log(&log, &acked);
        drop(log);
        for seed in 0..8 {
            sim.crash(seed);
            let log = open(&sim, SEGMENT_BYTES);
            assert_log(&log, &acked);
        }
    }
}

/// A round whose write failed is zeroed and synced before the failed commit returns, so it
/// cannot come back when the next round is lost in a crash (its pages may have reached the
/// disk by writeback even though the write reported an error).
#[test]
fn a_failed_round_never_resurfaces_behind_a_lost_later_round() {
    for seed in 0..64 {
        let sim = SimStorage::new();
        let mut log = open(&sim, SEGMENT_BYTES);
        let acked = acked_rounds(&mut log, 2);
        stage(&mut log, "failed", 4, 400);
        sim.inject(Fault::once(OpKind::Write, 1, errno::ENOSPC).partial(usize::MAX));
        assert!(matches!(log.commit(), Err(CommitError::Write { .. })));
        let lost = stage(&mut log, "lost", 1, 20);
        sim.inject(Fault::once(OpKind::SyncData, 1, errno::EIO));
        assert!(matches!(log.commit(), Err(CommitError::Sync { .. })));
        drop(log);
        sim.crash(seed);
        let log = open(&sim, SEGMENT_BYTES);
        let got = replay_all(&log);
        assert!(
            got.len() == acked.len() || got.len() == acked.len() + lost.len(),
            "seed {seed}: {got:?}"
        );
        assert_log(
            &log,
            &[acked.clone(), lost[..got.len() - acked.len()].to_vec()].concat(),
        );
    }
}

/// ENOSPC or EMFILE creating the next segment fails a round that rolls: the part already
/// written to the old segment is undone, and a retry rolls at the same place.
#[test]
fn a_failed_segment_create_fails_the_roll_and_a_retry_rolls() {
    for code in [errno::ENOSPC, errno::EMFILE] {
        let sim = SimStorage::new();
        let mut log = open(&sim, SEGMENT_BYTES);
        let mut acked = nearly_full(&mut log);
        let failed = stage(&mut log, "roll", 6, 1000);
        assert_eq!(failed.last().unwrap().loc.seg, 2);
        sim.inject(Fault::once(OpKind::Create, 1, code));
        let error = log.commit().unwrap_err();
        assert!(
            matches!(&error, CommitError::Write { file, .. } if file.to_string_lossy().ends_with("0000000002.seg.tmp")),
            "{error}"
        );
        assert_eq!(errno_of(&error), Some(code));
        assert_not_committed(&log, &failed);
        assert_eq!(log.segments().len(), 1);
        assert_log(&log, &acked);

        let retry = stage(&mut log, "roll", 6, 1000);
        assert_eq!(
            retry.iter().map(|e| e.loc).collect::<Vec<_>>(),
            failed.iter().map(|e| e.loc).collect::<Vec<_>>()
        );
        log.commit().unwrap();
        acked.extend(retry);
        assert_log(&log, &acked);
        drop(log);
        sim.crash(3);
        let log = open(&sim, SEGMENT_BYTES);
        assert_log(&log, &acked);
    }
}

/// EIO renaming the new segment into place, after the old segment's part and seal were
/// synced: the failed commit undoes that part, so a crash right after loses nothing acked and
/// shows nothing of the failed round.
#[test]
fn a_failed_rename_undoes_the_synced_first_part() {
    for seed in 0..8 {
        let sim = SimStorage::new();
        let mut log = open(&sim, SEGMENT_BYTES);
        let acked = nearly_full(&mut log);
        let failed = stage(&mut log, "roll", 6, 1000);
        sim.inject(Fault::once(OpKind::Rename, 1, errno::EIO));
        assert!(matches!(log.commit(), Err(CommitError::Write { .. })));
        assert_not_committed(&log, &failed);
        drop(log);
        sim.crash(seed);
        let mut log = open(&sim, SEGMENT_BYTES);
        assert_log(&log, &acked);
        assert_eq!(log.tail(), failed[0].loc);
        let retry = commit_round(&mut log, &[content(1, "after", 10)]);
        assert_log(&log, &[acked, retry].concat());
    }
}

/// EIO writing the new segment's part: the new segment is removed again.
#[test]
fn a_failed_write_to_the_new_segment_removes_it() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let mut acked = nearly_full(&mut log);
    let failed = stage(&mut log, "roll", 6, 1000);
    // Writes of the round: part 1, the spare's zero-fill, its header, part 2 (fails).
    sim.inject(Fault::once(OpKind::Write, 4, errno::EIO).partial(100));
    assert!(matches!(log.commit(), Err(CommitError::Write { file, .. }) if file == seg_file(2)));
    assert!(!sim.files().contains(&seg_file(2)), "{:?}", sim.files());
    assert_not_committed(&log, &failed);
    assert_eq!(log.segments().len(), 1);

    let retry = stage(&mut log, "again", 6, 1000);
    assert_eq!(retry[0].loc, failed[0].loc);
    log.commit().unwrap();
    acked.extend(retry);
    drop(log);
    sim.crash(9);
    let log = open(&sim, SEGMENT_BYTES);
    assert_log(&log, &acked);
}

/// A failed fdatasync is fatal: Sync, then Poisoned for every later commit; reads of what was
/// acked keep working; reopening recovers.
#[test]
fn a_failed_fdatasync_poisons_the_log() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let mut acked = acked_rounds(&mut log, 3);
    let unsure = stage(&mut log, "unsure", 2, 100);
    sim.inject(Fault::once(OpKind::SyncData, 1, errno::EIO));
    let error = log.commit().unwrap_err();
    assert!(
        matches!(&error, CommitError::Sync { file, .. } if *file == seg_file(1)),
        "{error}"
    );
    assert_eq!(errno_of(&error), Some(errno::EIO));
    assert_not_committed(&log, &unsure);
    stage(&mut log, "later", 1, 10);
    assert!(matches!(log.commit(), Err(CommitError::Poisoned)));
    assert_eq!(log.staged_frames(), 0);
    stage(&mut log, "later", 1, 10);
    assert!(
        matches!(log.commit(), Err(CommitError::Poisoned)),
        "faults cleared or not, it stays poisoned"
    );
    assert_log(&log, &acked);
    drop(log);

    sim.crash(2);
    let mut log = open(&sim, SEGMENT_BYTES);
    let got = replay_all(&log).len();
    acked.extend(unsure[..got - acked.len()].iter().cloned());
    acked.extend(commit_round(&mut log, &[content(7, "reopened", 10)]));
    assert_log(&log, &acked);
}
