//! Recovery tells a torn tail (cut it, open) from damage to what was durable (refuse to open).

use super::*;
use crate::limits::{frame_bytes, MARKER_BODY_BYTES};
use crate::sim::{errno, Fault, OpKind};
use crate::OpenError;

const SEGMENT_BYTES: u64 = 16 << 10;

/// `n` rounds of three 100-byte frames.
fn rounds(log: &mut Log, n: usize) -> Vec<Vec<Expect>> {
    (0..n)
        .map(|i| {
            commit_round(
                log,
                &[
                    content(1, &format!("r{i}a"), 100),
                    content(2, &format!("r{i}b"), 100),
                    content(3, &format!("r{i}c"), 100),
                ],
            )
        })
        .collect()
}

/// Offset of a byte inside the payload of the frame `e`.
fn payload_byte(e: &Expect) -> u64 {
    u64::from(e.loc.off) + 16 + e.meta.len() as u64 + 5
}

/// Offset of the commit marker right after frame `e` (the last frame of its round).
fn marker_after(e: &Expect) -> u64 {
    u64::from(e.loc.off) + frame_bytes((e.meta.len() + e.payload.len()) as u64)
}

fn expect_corrupt(sim: &SimStorage, file: PathBuf, off: u64) {
    match Log::open(sim_cfg(sim, SEGMENT_BYTES)) {
        Err(OpenError::Corrupt {
            file: f,
            off: o,
            detail,
        }) => {
            assert_eq!((f.clone(), o), (file.clone(), off), "{detail}");
            let shown = OpenError::Corrupt {
                file: f,
                off: o,
                detail,
            }
            .to_string();
            assert!(
                shown.contains(&file.display().to_string()) && shown.contains(&off.to_string()),
                "{shown}"
            );
        }
        Err(e) => panic!("want Corrupt, got {e}"),
        Ok(_) => panic!(
            "want Corrupt at {} offset {off}, the log opened",
            file.display()
        ),
    }
}

/// A bit flipped in the last round looks exactly like a torn write: the round is cut, the
/// bytes after the last good round are zeroed, and the log appends there. The round's own
/// marker is intact, which proves nothing: a marker of round m + 1 may persist without the
/// rest of its write.
#[test]
fn a_broken_frame_in_the_last_round_is_a_torn_tail_cut_and_zeroed() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let r = rounds(&mut log, 4);
    drop(log);
    sim.flip_bit(&seg_file(1), payload_byte(&r[3][1]), 2);

    let mut log = open(&sim, SEGMENT_BYTES);
    let kept: Vec<Expect> = r[..3].concat();
    assert_log(&log, &kept);
    let t = r[3][0].loc;
    assert_eq!(log.tail(), t);
    let bytes = file_bytes(&sim, &seg_file(1));
    assert!(
        bytes[t.off as usize..].iter().all(|&b| b == 0),
        "the torn round is zeroed on disk"
    );

    let new = commit_round(&mut log, &[content(9, "new", 50)]);
    assert_eq!(
        new[0].loc, t,
        "the log appends where the last good round ended"
    );
    drop(log);
    sim.crash(1);
    let log = open(&sim, SEGMENT_BYTES);
    assert_log(&log, &[kept, new].concat());
}

/// A round after the damaged one was committed, so the damaged one had been synced: refuse.
/// (Found by the marker search: the walk alone cannot see past the broken frame.)
#[test]
fn a_broken_frame_before_a_later_round_is_corruption() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let r = rounds(&mut log, 4);
    drop(log);
    sim.flip_bit(&seg_file(1), payload_byte(&r[1][1]), 0);
    expect_corrupt(&sim, seg_file(1), u64::from(r[1][1].loc.off));
}

/// The round just before the last one: the marker of round m + 2 is what proves it was synced.
#[test]
fn a_broken_frame_in_the_round_before_the_last_is_corruption() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let r = rounds(&mut log, 4);
    drop(log);
    sim.flip_bit(&seg_file(1), payload_byte(&r[2][0]), 7);
    expect_corrupt(&sim, seg_file(1), u64::from(r[2][0].loc.off));
}

#[test]
fn a_broken_marker_before_a_later_round_is_corruption() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let r = rounds(&mut log, 4);
    drop(log);
    let marker = marker_after(&r[1][2]);
    // A bit of the marker's round number.
    sim.flip_bit(&seg_file(1), marker + 16 + 8, 0);
    expect_corrupt(&sim, seg_file(1), marker);
}

/// Builds a log of at least three segments, returning its frames.
fn three_segments(sim: &SimStorage) -> Vec<Expect> {
    let mut log = open(sim, SEGMENT_BYTES);
    let mut all = Vec::new();
    let mut i = 0;
    while log.segments().len() < 3 {
        all.extend(commit_round(
            &mut log,
            &[
                content(1, &format!("f{i}"), 700),
                content(2, &format!("g{i}"), 900),
            ],
        ));
        i += 1;
    }
    all
}

/// Removes every segment summary, so that open walks every segment.
fn drop_summaries(sim: &SimStorage) {
    use crate::storage::Storage;
    for file in sim.files() {
        if file.extension().is_some_and(|e| e == "sum") {
            sim.remove(&file).unwrap();
        }
    }
}

/// A segment that is not the last was synced whole before the next one existed: damage
/// anywhere in it, even in its last round, is corruption (when open walks it: without a
/// summary).
#[test]
fn a_broken_frame_in_a_sealed_segment_is_corruption_even_in_its_last_round() {
    let sim = SimStorage::new();
    let all = three_segments(&sim);
    drop_summaries(&sim);
    let last_of_1 = all.iter().rfind(|e| e.loc.seg == 1).unwrap().clone();
    sim.flip_bit(&seg_file(1), payload_byte(&last_of_1), 3);
    expect_corrupt(&sim, seg_file(1), u64::from(last_of_1.loc.off));

    let sim = SimStorage::new();
    let all = three_segments(&sim);
    drop_summaries(&sim);
    let first_of_2 = all.iter().find(|e| e.loc.seg == 2).unwrap().clone();
    sim.flip_bit(&seg_file(2), payload_byte(&first_of_2), 3);
    expect_corrupt(&sim, seg_file(2), u64::from(first_of_2.loc.off));
}

/// The trade of summaries: open does not read a summarized segment, so damage inside it
/// (short of its header and seal, which open still checks) is found when the frame is read,
/// by its CRC, not at open.
#[test]
fn a_broken_frame_in_a_summarized_segment_is_found_when_read() {
    let sim = SimStorage::new();
    let all = three_segments(&sim);
    let last_of_1 = all.iter().rfind(|e| e.loc.seg == 1).unwrap().clone();
    sim.flip_bit(&seg_file(1), payload_byte(&last_of_1), 3);
    let log = open(&sim, SEGMENT_BYTES);
    match log.reader().read(last_of_1.loc) {
        Err(crate::ReadError::Corrupt { file, off, .. }) => {
            assert_eq!((file, off), (seg_file(1), u64::from(last_of_1.loc.off)));
        }
        other => panic!("want Corrupt, got {other:?}"),
    }
    let intact: Vec<Expect> = all.into_iter().filter(|e| e.loc != last_of_1.loc).collect();
    assert_reads(&log, &intact);
}

/// The seal of a sealed segment is part of what was synced.
#[test]
fn a_broken_seal_is_corruption() {
    let sim = SimStorage::new();
    let all = three_segments(&sim);
    let last_of_1 = all.iter().rfind(|e| e.loc.seg == 1).unwrap().clone();
    let seal = marker_after(&last_of_1);
    sim.flip_bit(&seg_file(1), seal + 16 + MARKER_BODY_BYTES - 4, 0);
    expect_corrupt(&sim, seg_file(1), seal);
}

#[test]
fn a_damaged_segment_header_is_corruption() {
    for seq in [1, 3] {
        let sim = SimStorage::new();
        three_segments(&sim);
        sim.flip_bit(&seg_file(seq), 33, 1);
        expect_corrupt(&sim, seg_file(seq), 0);
    }
}

/// Power fails after a round's first part (ending in a seal) was synced and before the next
/// segment was put in place: the log reopens with a sealed last segment, recovers that part
/// (it belongs to the one unacknowledged round) and continues in a new segment.
#[test]
fn a_last_segment_ending_in_a_seal_continues_in_a_new_segment() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let mut acked = Vec::new();
    while log.tail().off < 12 << 10 {
        acked.extend(commit_round(&mut log, &[content(1, "fill", 1000)]));
    }
    let in_flight: Vec<Expect> = (0..6)
        .map(|i| content(2, &format!("roll{i}"), 1000).append(&mut log))
        .collect();
    assert_eq!(in_flight.last().unwrap().loc.seg, 2, "the round rolls");
    // Calls of a rolled round: write part 1, sync it, create the spare (fails, and so does
    // everything after: power is gone).
    sim.inject(Fault::sticky(OpKind::Any, 3, errno::EIO));
    assert!(log.commit().is_err());
    drop(log);
    sim.crash(5);

    let mut log = open(&sim, SEGMENT_BYTES);
    let first_part: Vec<Expect> = in_flight
        .iter()
        .filter(|e| e.loc.seg == 1)
        .cloned()
        .collect();
    assert!(!first_part.is_empty());
    acked.extend(first_part);
    assert_log(&log, &acked);
    assert_eq!(log.segments().len(), 1);
    assert_eq!(log.tail(), Loc { seg: 2, off: 64 });
    acked.extend(commit_round(&mut log, &[content(3, "next", 10)]));
    assert_eq!(acked.last().unwrap().loc, Loc { seg: 2, off: 64 });
    drop(log);
    let log = open(&sim, SEGMENT_BYTES);
    assert_log(&log, &acked);
}

/// A spare left by a crash is deleted at open.
#[test]
fn stray_spares_are_deleted_at_open() {
    let sim = SimStorage::new();
    let mut log = open(&sim, SEGMENT_BYTES);
    let mut acked = Vec::new();
    while log.tail().off < 12 << 10 {
        acked.extend(commit_round(&mut log, &[content(1, "fill", 1000)]));
    }
    for i in 0..6 {
        content(2, &format!("roll{i}"), 1000).append(&mut log);
    }
    // Write part 1, sync it, create the spare, zero-fill it, sync it; then the process dies
    // (the machine does not: the file system keeps everything).
    sim.inject(Fault::sticky(OpKind::Any, 6, errno::EIO));
    assert!(log.commit().is_err());
    drop(log);
    sim.clear_faults();
    assert!(
        sim.files()
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".seg.tmp")),
        "{:?}",
        sim.files()
    );
    let log = open(&sim, SEGMENT_BYTES);
    assert!(
        !sim.files()
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".tmp")),
        "{:?}",
        sim.files()
    );
    assert!(replay_all(&log).len() >= acked.len());
}

/// Writes `bytes` at `off` of `path` and syncs them, as if the disk held them.
fn plant(sim: &SimStorage, path: &Path, off: u64, bytes: &[u8]) {
    use crate::storage::Storage;
    let file = sim.open(path).unwrap();
    file.write_at(off, bytes).unwrap();
    file.sync_data().unwrap();
}

/// Segment headers are checked against their predecessor: its committed length and the next
/// round number must continue.
#[test]
fn a_segment_that_does_not_continue_its_predecessor_is_corruption() {
    use crate::format::SegmentHeader;
    let sim = SimStorage::new();
    three_segments(&sim);
    let log = open(&sim, SEGMENT_BYTES);
    let len_1 = log.segments()[0].len;
    drop(log);
    let header = |prev_len, round_first| {
        SegmentHeader {
            seq: 2,
            segment_bytes: SEGMENT_BYTES,
            prev_len,
            round_first,
        }
        .encode()
    };
    let bytes = file_bytes(&sim, &seg_file(2));
    let good = SegmentHeader::decode(&bytes[..64]).unwrap();
    assert_eq!(good.prev_len, len_1);

    plant(&sim, &seg_file(2), 0, &header(len_1 + 8, good.round_first));
    expect_corrupt(&sim, seg_file(2), 24);
    // A wrong first round also breaks the segment's own markers; the walk finds that first.
    plant(&sim, &seg_file(2), 0, &header(len_1, good.round_first + 1));
    assert!(
        matches!(Log::open(sim_cfg(&sim, SEGMENT_BYTES)), Err(OpenError::Corrupt { file, .. }) if file == seg_file(2))
    );
    plant(&sim, &seg_file(2), 0, &header(len_1, good.round_first));
    open(&sim, SEGMENT_BYTES);
}

/// A marker commits a round only if it closes exactly that round's frames: the right round
/// number, start, frame count and chain of frame CRCs. Otherwise frames of different rounds
/// mixed on disk could pass for one round.
#[test]
fn a_marker_commits_only_the_exact_frames_of_its_round() {
    use crate::format::{encode_frame, Marker};
    use crate::MARKER_KIND;
    type Tweak = fn(&mut Marker);
    let tweaks: [(&str, Tweak); 5] = [
        ("none", |_| {}),
        ("chain", |m| m.chain ^= 1),
        ("frames", |m| m.frames += 1),
        ("start", |m| m.start += 8),
        ("round", |m| m.round -= 1),
    ];
    for (name, tweak) in tweaks {
        let sim = SimStorage::new();
        let mut log = open(&sim, SEGMENT_BYTES);
        let first = commit_round(&mut log, &[content(1, "a", 30), content(2, "b", 30)]);
        let t = log.tail();
        drop(log);
        // A round of one frame at the tail, written by hand.
        let mut buf = Vec::new();
        let crc = encode_frame(&mut buf, 1, t.off, 7, b"x", b"planted");
        let mut chain = crc32fast::Hasher::new();
        chain.update(&crc.to_le_bytes());
        let mut marker = Marker {
            round: 2,
            start: t.off,
            frames: 1,
            chain: chain.finalize(),
            seal: false,
        };
        tweak(&mut marker);
        let marker_off = t.off + buf.len() as u32;
        encode_frame(&mut buf, 1, marker_off, MARKER_KIND, &[], &marker.encode());
        plant(&sim, &seg_file(1), u64::from(t.off), &buf);

        let log = open(&sim, SEGMENT_BYTES);
        let got = replay_all(&log);
        if name == "none" {
            assert_eq!(got.len(), 3, "a well-formed planted round is committed");
            assert_eq!(got[2].0, t);
        } else {
            assert_log(&log, &first);
            assert_eq!(
                log.tail(),
                t,
                "marker with a wrong {name}: the round is cut as a torn tail"
            );
        }
    }
}
