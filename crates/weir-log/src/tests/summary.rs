//! Segment summaries: open visits from them exactly what a full walk visits; damaged,
//! stale or torn summaries are never trusted (walked instead, and rewritten); deleting a
//! segment deletes its summary; strays go at open.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::sim::{errno, Fault, OpKind};
use crate::summary::{sum_path, sum_tmp_path};
use crate::SUMMARY_PAYLOAD_PERCENT_MIN_DEFAULT;

const SEGMENT_BYTES: u64 = 8 << 10;

/// Keeps 5 bytes of the meta of even kinds and all of odd ones: summaries and visits must
/// carry exactly these prefixes.
fn cut(kind: u8, meta: &[u8]) -> usize {
    if kind % 2 == 0 {
        meta.len().min(5)
    } else {
        meta.len()
    }
}

fn cfg(sim: &SimStorage) -> LogConfig {
    LogConfig {
        summary_meta: Some(cut),
        ..sim_cfg(sim, SEGMENT_BYTES)
    }
}

/// Opens with `cfg`, returning the log and everything open visited.
fn open_visited(cfg: LogConfig) -> (Log, Visited) {
    let mut visited = Vec::new();
    let mut visit = |loc: Loc, kind: u8, meta: &[u8], payload_len: u32| {
        visited.push((loc, kind, meta.to_vec(), payload_len));
        Ok(())
    };
    let log = Log::open_visiting(cfg, Some(&mut visit)).unwrap_or_else(|e| panic!("open: {e}"));
    (log, visited)
}

/// What open must visit for `frames`: their metas cut by `cut`.
fn want(frames: &[Expect]) -> Visited {
    frames
        .iter()
        .map(|e| {
            let keep = cut(e.kind, &e.meta);
            (
                e.loc,
                e.kind,
                e.meta[..keep].to_vec(),
                e.payload.len() as u32,
            )
        })
        .collect()
}

/// A log of at least `segments` segments with random frames, dropped; returns its frames.
fn build(sim: &SimStorage, seed: u64, segments: usize) -> Vec<Expect> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Log::open(cfg(sim)).expect("open");
    let mut all = Vec::new();
    while log.segments().len() < segments {
        let frames: Vec<Content> = (0..rng.gen_range(1..=8))
            .map(|_| random_content(&mut rng, SEGMENT_BYTES))
            .collect();
        all.extend(commit_round(&mut log, &frames));
    }
    all
}

fn sealed_seqs(log: &Log) -> Vec<u32> {
    let segments = log.segments();
    segments[..segments.len() - 1]
        .iter()
        .map(|s| s.seq)
        .collect()
}

fn summary_bytes(sim: &SimStorage, seq: u32) -> Option<Vec<u8>> {
    sim.contents(&sum_path(&sim_dir(), seq))
}

fn put(sim: &SimStorage, path: &std::path::Path, bytes: &[u8]) {
    use crate::Storage;
    let file = sim.create(path).expect("create");
    file.write_at(0, bytes).expect("write");
    file.sync_data().expect("sync");
    sim.sync_dir(&sim_dir()).expect("sync dir");
}

#[test]
fn summaries_give_exactly_what_a_full_walk_visits() {
    for seed in 0..20 {
        let sim = SimStorage::new();
        let frames = build(&sim, seed, 8);
        let (log, from_summaries) = open_visited(cfg(&sim));
        let sealed = sealed_seqs(&log);
        let summaries: Vec<Vec<u8>> = sealed
            .iter()
            .map(|&seq| summary_bytes(&sim, seq).expect("every sealed segment has a summary"))
            .collect();
        let (segments, tail) = (log.segments(), log.tail());
        drop(log);

        // Without summaries: the full walk, which writes them again.
        use crate::Storage;
        for &seq in &sealed {
            sim.remove(&sum_path(&sim_dir(), seq))
                .expect("remove summary");
        }
        let reads_before = sim.count(OpKind::Read);
        let (log, walked) = open_visited(cfg(&sim));
        assert!(sim.count(OpKind::Read) > reads_before);

        assert_eq!(from_summaries, walked, "seed {seed}");
        assert_eq!(walked, want(&frames), "seed {seed}");
        assert_eq!(log.segments(), segments, "seed {seed}");
        assert_eq!(log.tail(), tail, "seed {seed}");
        for (&seq, bytes) in sealed.iter().zip(&summaries) {
            assert_eq!(
                summary_bytes(&sim, seq).as_ref(),
                Some(bytes),
                "seed {seed}: the rewritten summary of segment {seq}"
            );
        }
        assert_log(&log, &frames);
    }
}

/// Under the default policy a segment of small frames (mostly headers and metas) gets no
/// summary and one mostly of payload gets one; open visits the same frames either way and
/// writes no summary the policy would not.
#[test]
fn only_segments_mostly_of_payload_get_a_summary() {
    let sim = SimStorage::new();
    let cfg = || LogConfig {
        summary_payload_percent_min: SUMMARY_PAYLOAD_PERCENT_MIN_DEFAULT,
        ..cfg(&sim)
    };
    let mut log = Log::open(cfg()).expect("open");
    let mut frames = Vec::new();
    // 16 header + 24 meta + 8 payload bytes: 17% payload.
    let small: Vec<Content> = (0..10)
        .map(|_| Content {
            kind: 2,
            meta: vec![7; 24],
            payload: vec![1; 8],
        })
        .collect();
    while log.segments().len() < 3 {
        frames.extend(commit_round(&mut log, &small));
    }
    let small_sealed = sealed_seqs(&log);
    // 16 + 24 + 400: 91% payload.
    let big = [Content {
        kind: 2,
        meta: vec![7; 24],
        payload: vec![1; 400],
    }];
    while log.segments().len() < 6 {
        frames.extend(commit_round(&mut log, &big));
    }
    let sealed = sealed_seqs(&log);
    let big_sealed: Vec<u32> = sealed[small_sealed.len() + 1..].to_vec();
    drop(log);
    let summarized = |seqs: &[u32]| -> Vec<bool> {
        seqs.iter()
            .map(|&seq| summary_bytes(&sim, seq).is_some())
            .collect()
    };
    assert_eq!(summarized(&small_sealed), vec![false; small_sealed.len()]);
    assert_eq!(summarized(&big_sealed), vec![true; big_sealed.len()]);

    let (log, visited) = open_visited(cfg());
    assert_eq!(visited, want(&frames));
    assert_eq!(summarized(&small_sealed), vec![false; small_sealed.len()]);
    assert_eq!(summarized(&big_sealed), vec![true; big_sealed.len()]);
    assert_log(&log, &frames);
    drop(log);

    // Every summary gone: open walks, and writes back only those the policy wants.
    use crate::Storage;
    for &seq in &big_sealed {
        sim.remove(&sum_path(&sim_dir(), seq))
            .expect("remove summary");
    }
    let (_log, visited) = open_visited(cfg());
    assert_eq!(visited, want(&frames));
    assert_eq!(summarized(&small_sealed), vec![false; small_sealed.len()]);
    assert_eq!(summarized(&big_sealed), vec![true; big_sealed.len()]);
}

#[test]
fn an_open_with_summaries_reads_summaries_not_segments() {
    let sim = SimStorage::new();
    let frames = build(&sim, 1, 8);
    let reads_before = sim.count(OpKind::Read);
    let (log, visited) = open_visited(cfg(&sim));
    let sealed = sealed_seqs(&log);
    assert_eq!(visited, want(&frames));
    // Per sealed segment: its header, its summary, its seal marker (no rewrite); then the
    // last segment's header and whole image.
    assert_eq!(
        sim.count(OpKind::Read) - reads_before,
        3 * sealed.len() as u64 + 2
    );
}

/// Recomputes the CRC of a summary whose fields a test changed.
fn recrc(mut bytes: Vec<u8>) -> Vec<u8> {
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn a_damaged_or_stale_summary_is_never_trusted_and_is_rewritten() {
    let sim = SimStorage::new();
    let frames = build(&sim, 3, 8);
    let good = summary_bytes(&sim, 3).expect("summary of segment 3");
    let other = summary_bytes(&sim, 4).expect("summary of segment 4");
    let set_u32 = |at: usize, v: u32| {
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        recrc(b)
    };
    let set_u64 = |b: &[u8], at: usize, v: u64| {
        let mut b = b.to_vec();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        b
    };
    let u64_at = |at: usize| u64::from_le_bytes(good[at..at + 8].try_into().unwrap());
    // (what is wrong, the summary file's bytes)
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for at in [
        0,
        13,
        30,
        57,
        good.len() / 2,
        good.len() - 6,
        good.len() - 1,
    ] {
        let mut b = good.clone();
        b[at] ^= 1 << (at % 8);
        cases.push(("a flipped bit", b));
    }
    cases.push(("torn in half", good[..good.len() / 2].to_vec()));
    cases.push(("empty", Vec::new()));
    cases.push(("zeros", vec![0; good.len()]));
    cases.push(("another segment's summary", other.clone()));
    cases.push(("the wrong seq", set_u32(12, 4)));
    // Ends one marker later, as if a round more had been sealed: only the seal check sees it.
    let later = u64_at(24) + crate::MARKER_FRAME_BYTES;
    let moved = set_u64(&good, 24, later);
    cases.push((
        "a seal that is not there",
        recrc(set_u64(&moved, 40, u64_at(40) + 1)),
    ));
    cases.push((
        "an entry count off by one",
        set_u32(48, u32::from_le_bytes(good[48..52].try_into().unwrap()) + 1),
    ));
    for (what, bytes) in cases {
        put(&sim, &sum_path(&sim_dir(), 3), &bytes);
        let (log, visited) = open_visited(cfg(&sim));
        assert_eq!(visited, want(&frames), "{what}");
        assert_eq!(
            summary_bytes(&sim, 3),
            Some(good.clone()),
            "{what}: the summary is rewritten"
        );
        assert_log(&log, &frames);
    }
}

#[test]
fn deleting_a_segment_deletes_its_summary_and_open_removes_strays() {
    let sim = SimStorage::new();
    build(&sim, 4, 6);
    let mut log = Log::open(cfg(&sim)).expect("open");
    let sealed = sealed_seqs(&log);
    let last = log.segments().last().unwrap().seq;
    assert!(summary_bytes(&sim, 2).is_some());
    log.delete_segment(2).expect("delete");
    assert!(summary_bytes(&sim, 2).is_none(), "deleted with its segment");
    drop(log);

    // Summaries of segments that are gone, of the last segment, and unfinished ones.
    let good = summary_bytes(&sim, 3).expect("summary of segment 3");
    put(&sim, &sum_path(&sim_dir(), 2), &good);
    put(&sim, &sum_path(&sim_dir(), last + 5), &good);
    put(&sim, &sum_path(&sim_dir(), last), &good);
    put(&sim, &sum_tmp_path(&sim_dir(), 3), &good);
    let log = Log::open(cfg(&sim)).expect("reopen");
    let files = sim.files();
    for stray in [
        sum_path(&sim_dir(), 2),
        sum_path(&sim_dir(), last + 5),
        sum_path(&sim_dir(), last),
        sum_tmp_path(&sim_dir(), 3),
    ] {
        assert!(!files.contains(&stray), "{} is removed", stray.display());
    }
    for seq in sealed.into_iter().filter(|&s| s != 2) {
        assert!(
            summary_bytes(&sim, seq).is_some(),
            "segment {seq} keeps its summary"
        );
    }
    drop(log);
}

/// Power fails at each storage call of a round that rolls in turn (the summary of the
/// segment it seals included, with torn writes and sectors): every open afterwards recovers
/// each acknowledged round, visiting what a full walk visits.
#[test]
fn a_crash_while_writing_a_summary_never_breaks_open_or_loses_frames() {
    let mut summaries_cut = 0;
    for seed in 0..40u64 {
        // Rounds up to and including the first that rolls, and that round's storage calls.
        let mut rng = StdRng::seed_from_u64(seed);
        let sim = SimStorage::new();
        let mut log = Log::open(cfg(&sim)).expect("open");
        let mut rounds: Vec<Vec<Content>> = Vec::new();
        let calls_rolled = loop {
            let frames: Vec<Content> = (0..rng.gen_range(1..=8))
                .map(|_| random_content(&mut rng, SEGMENT_BYTES))
                .collect();
            let before = (log.segments().len(), sim.count(OpKind::Any));
            commit_round(&mut log, &frames);
            rounds.push(frames);
            if log.segments().len() > before.0 {
                break sim.count(OpKind::Any) - before.1;
            }
        };
        drop(log);
        for n in 1..=calls_rolled {
            let sim = SimStorage::new().with_torn_sectors(true);
            let mut log = Log::open(cfg(&sim)).expect("open");
            let mut acked = Vec::new();
            let mut in_flight = Vec::new();
            for (i, frames) in rounds.iter().enumerate() {
                if i == rounds.len() - 1 {
                    let halt = Fault::sticky(OpKind::Any, n, errno::EIO);
                    sim.inject(if n % 2 == 0 {
                        halt.partial((seed * 37 + n * 101) as usize % 4096)
                    } else {
                        halt
                    });
                }
                let round: Vec<Expect> = frames.iter().map(|c| c.append(&mut log)).collect();
                match log.commit() {
                    Ok(()) => acked.extend(round),
                    Err(_) => in_flight = round,
                }
            }
            if in_flight.is_empty() && summary_bytes(&sim, 1).is_none() {
                // The round was acknowledged; its roll's summary was cut short.
                summaries_cut += 1;
            }
            drop(log);
            sim.crash(seed * 1000 + n);
            let ctx = format!("seed {seed}, power lost at call {n} of {calls_rolled}");
            // A summary that has its name is whole (synced before its rename): a crash
            // leaves a summary or none, never a torn one.
            for file in sim.files() {
                let Some(seq) = file
                    .file_name()
                    .and_then(|n| crate::summary::parse_sum_name(n.to_str()?))
                else {
                    continue;
                };
                let seg = file_bytes(&sim, &seg_file(seq));
                let header = crate::format::SegmentHeader::decode(&seg[..64]).expect("header");
                let bytes = file_bytes(&sim, &file);
                if let Err(e) = crate::summary::Summary::parse(&bytes, &header) {
                    panic!("{ctx}: {} after the crash: {e}", file.display());
                }
            }
            let (log, visited) = open_visited(cfg(&sim));
            assert!(visited.len() >= acked.len(), "{ctx}");
            let (old, extra) = visited.split_at(acked.len());
            assert_eq!(old, want(&acked).as_slice(), "{ctx}");
            assert!(extra.len() <= in_flight.len(), "{ctx}");
            assert_eq!(extra, &want(&in_flight)[..extra.len()], "{ctx}");
            assert_reads(&log, &acked);
            drop(log);
            // The summary that open wrote (or kept) gives the same again.
            let (_log, again) = open_visited(cfg(&sim));
            assert_eq!(again, visited, "{ctx}");
        }
    }
    assert!(
        summaries_cut >= 40,
        "crashes hit summaries being written: {summaries_cut}"
    );
}
