//! Deleting segments: readers get Gone, replay skips them, the log reopens with gaps.

use super::*;
use crate::ReadError;

const SEGMENT_BYTES: u64 = 16 << 10;

#[test]
fn deleted_segments_read_as_gone_and_the_log_reopens_with_gaps() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let mut all = Vec::new();
    let mut i = 0;
    while log.segments().len() < 7 {
        all.extend(commit_round(
            &mut log,
            &[
                content(1, &format!("a{i}"), 1500),
                content(2, &format!("b{i}"), 500),
            ],
        ));
        i += 1;
    }
    let reader = log.reader();
    let in_2 = all.iter().find(|e| e.loc.seg == 2).unwrap().clone();
    assert!(reader.read(in_2.loc).is_ok());

    // Not only the oldest: a middle one, and the one right before the active one.
    for seq in [2, 4, 6] {
        log.delete_segment(seq).unwrap();
    }
    assert!(matches!(
        reader.read(in_2.loc),
        Err(ReadError::Gone { seg: 2 })
    ));
    assert!(!sim.files().contains(&seg_file(2)));
    log.delete_segment(2)
        .expect("deleting a deleted segment is Ok");
    let active = log.segments().last().unwrap().seq;
    let refused = log.delete_segment(active).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    assert!(log.delete_segment(active + 1).is_err());

    let live: Vec<Expect> = all
        .iter()
        .filter(|e| ![2, 4, 6].contains(&e.loc.seg))
        .cloned()
        .collect();
    let seqs: Vec<u32> = log.segments().iter().map(|s| s.seq).collect();
    assert_eq!(seqs, vec![1, 3, 5, 7]);
    assert_log(&log, &live);

    drop(log);
    sim.crash(4);
    let mut log = open(&sim, SEGMENT_BYTES);
    assert_eq!(
        log.segments().iter().map(|s| s.seq).collect::<Vec<_>>(),
        seqs,
        "deletions are durable"
    );
    assert_log(&log, &live);

    log.delete_segment(1).unwrap();
    let mut live: Vec<Expect> = live.into_iter().filter(|e| e.loc.seg != 1).collect();
    while log.segments().len() < 5 {
        live.extend(commit_round(&mut log, &[content(3, "c", 3000)]));
    }
    drop(log);
    let log = open(&sim, SEGMENT_BYTES);
    assert_log(&log, &live);
}
