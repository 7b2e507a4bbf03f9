//! Reads: the active segment from memory, older ones by pread, only committed frames, and
//! readers on other threads while the writer commits and rolls.

use std::sync::mpsc;

use super::*;
use crate::limits::frame_bytes;
use crate::sim::OpKind;
use crate::{ReadError, ReplayError};

const SEGMENT_BYTES: u64 = 16 << 10;

#[test]
fn reading_the_active_segment_makes_no_storage_call() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let round = commit_round(
        &mut log,
        &[
            content(1, "a", 100),
            content(2, "b", 3000),
            content(3, "c", 0),
        ],
    );
    let calls = sim.count(OpKind::Any);
    let reader = log.reader();
    for _ in 0..10 {
        assert_reads(&log, &round);
        reader.read(round[1].loc).unwrap();
    }
    assert_eq!(sim.count(OpKind::Any), calls);
}

#[test]
fn reading_a_sealed_segment_takes_two_preads() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let old = commit_round(&mut log, &[content(1, "old", 5000)]);
    while log.segments().len() < 2 {
        commit_round(&mut log, &[content(2, "fill", 5000)]);
    }
    let (reads, calls) = (sim.count(OpKind::Read), sim.count(OpKind::Any));
    assert_reads(&log, &old);
    assert_eq!(
        (
            sim.count(OpKind::Read) - reads,
            sim.count(OpKind::Any) - calls
        ),
        (2, 2)
    );
}

#[test]
fn only_committed_frames_are_read() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let reader = log.reader();
    let staged = content(1, "staged", 10).append(&mut log);
    assert!(matches!(
        reader.read(staged.loc),
        Err(ReadError::NotCommitted { .. })
    ));
    assert!(matches!(
        reader.read(Loc { seg: 2, off: 64 }),
        Err(ReadError::NotCommitted { .. })
    ));
    log.commit().unwrap();
    assert_reads(&log, std::slice::from_ref(&staged));
    let marker = Loc {
        seg: 1,
        off: staged.loc.off + frame_bytes(16) as u32,
    };
    assert!(matches!(
        reader.read(marker),
        Err(ReadError::NotAFrame { .. })
    ));
    assert!(matches!(
        reader.read(Loc { seg: 1, off: 8 }),
        Err(ReadError::NotCommitted { .. })
    ));
    assert!(matches!(
        reader.read(Loc {
            seg: 1,
            off: marker.off + 48
        }),
        Err(ReadError::NotCommitted { .. })
    ));
}

/// Damage after open shows in reads and replays as Corrupt with the file and offset.
#[test]
fn a_frame_damaged_after_open_reads_as_corrupt() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let old = commit_round(&mut log, &[content(1, "old", 5000)]);
    while log.segments().len() < 2 {
        commit_round(&mut log, &[content(2, "fill", 5000)]);
    }
    sim.flip_bit(&seg_file(1), u64::from(old[0].loc.off) + 100, 4);
    match log.reader().read(old[0].loc) {
        Err(ReadError::Corrupt { file, off, .. }) => {
            assert_eq!((file, off), (seg_file(1), u64::from(old[0].loc.off)))
        }
        other => panic!("{other:?}"),
    }
    match log.replay::<()>(None, |_, _, _, _| Ok(())) {
        Err(ReplayError::Corrupt { file, off, .. }) => {
            assert_eq!((file, off), (seg_file(1), u64::from(old[0].loc.off)))
        }
        other => panic!("{other:?}"),
    }
}

/// A reader on another thread reads every frame as soon as its commit returned, while the
/// writer keeps committing and rolling segments.
#[test]
fn readers_on_other_threads_see_every_committed_frame_across_rolls() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let reader = log.reader();
    let (tx, rx) = mpsc::sync_channel::<Vec<Expect>>(4);
    std::thread::scope(|s| {
        let check = s.spawn(move || {
            let mut n = 0;
            for round in rx {
                for e in &round {
                    let frame = reader
                        .read(e.loc)
                        .unwrap_or_else(|err| panic!("{:?}: {err}", e.loc));
                    assert_eq!(
                        (frame.kind, &frame.meta[..], &frame.payload[..]),
                        (e.kind, &e.meta[..], &e.payload[..])
                    );
                    n += 1;
                }
            }
            n
        });
        let mut sent = 0;
        for i in 0..300 {
            let round = commit_round(
                &mut log,
                &[
                    content(1, &format!("r{i}"), 700),
                    content(2, &format!("s{i}"), 1300),
                ],
            );
            sent += round.len();
            tx.send(round).unwrap();
        }
        drop(tx);
        assert!(log.segments().len() > 20);
        assert_eq!(check.join().unwrap(), sent);
    });
}
