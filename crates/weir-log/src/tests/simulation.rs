//! The crash simulation: seeded random rounds, transient faults, deletions and power loss at
//! a random storage call, then recovery, checked against a model of what was acknowledged.
//!
//! `WEIR_LOG_SEEDS=n` runs n seeds (default 300); `WEIR_LOG_SEED=s` runs only seed s.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::sim::{errno, Fault, OpKind};
use crate::{CommitError, ReadError};

const SEEDS_DEFAULT: u64 = 300;
const CYCLES: usize = 4;

#[test]
fn acknowledged_rounds_survive_crashes_at_any_point() {
    if let Ok(seed) = std::env::var("WEIR_LOG_SEED") {
        let stats = run_seed(seed.parse().expect("WEIR_LOG_SEED is a number"));
        eprintln!("{stats:?}");
        return;
    }
    let seeds = std::env::var("WEIR_LOG_SEEDS").map_or(SEEDS_DEFAULT, |n| {
        n.parse().expect("WEIR_LOG_SEEDS is a number")
    });
    let mut stats = Stats::default();
    for seed in 0..seeds {
        stats.add(&run_seed(seed));
    }
    eprintln!("{seeds} seeds: {stats:?}");
    if seeds >= SEEDS_DEFAULT {
        // The simulation must keep reaching the cases it exists for.
        assert!(stats.crashes_in_commit >= seeds / 2, "{stats:?}");
        assert!(stats.crashes_between_rounds >= seeds / 10, "{stats:?}");
        assert!(stats.crashes_in_open >= seeds / 20, "{stats:?}");
        assert!(stats.in_flight_recovered >= seeds / 100, "{stats:?}");
        assert!(stats.in_flight_lost >= seeds / 5, "{stats:?}");
        assert!(stats.in_flight_partly_recovered >= 1, "{stats:?}");
        assert!(stats.failed_rounds >= seeds / 2, "{stats:?}");
        assert!(stats.deletes >= seeds / 5, "{stats:?}");
        assert!(stats.opened_with_summaries >= seeds, "{stats:?}");
    }
}

/// How often the simulation reached each case.
#[derive(Debug, Default)]
struct Stats {
    crashes_in_commit: u64,
    crashes_between_rounds: u64,
    crashes_in_open: u64,
    /// The round in flight at a crash came back whole.
    in_flight_recovered: u64,
    /// ... came back in part (whole segment parts).
    in_flight_partly_recovered: u64,
    /// ... was lost.
    in_flight_lost: u64,
    /// Commits that failed with a transient fault, the log staying usable.
    failed_rounds: u64,
    deletes: u64,
    rounds_acked: u64,
    /// Opens that found segment summaries to visit from.
    opened_with_summaries: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.crashes_in_commit += o.crashes_in_commit;
        self.crashes_between_rounds += o.crashes_between_rounds;
        self.crashes_in_open += o.crashes_in_open;
        self.in_flight_recovered += o.in_flight_recovered;
        self.in_flight_partly_recovered += o.in_flight_partly_recovered;
        self.in_flight_lost += o.in_flight_lost;
        self.failed_rounds += o.failed_rounds;
        self.deletes += o.deletes;
        self.rounds_acked += o.rounds_acked;
        self.opened_with_summaries += o.opened_with_summaries;
    }
}

/// What the model knows about the log.
#[derive(Default)]
struct Model {
    /// Every frame the log holds for sure, in log order.
    acked: Vec<Expect>,
    /// The frames of the round being committed when the crash came: some whole segment-parts
    /// of it, from its start, may survive.
    in_flight: Vec<Expect>,
    /// A segment whose deletion was under way when the crash came: it may or may not be there.
    maybe_deleted: Option<u32>,
}

fn run_seed(seed: u64) -> Stats {
    let mut stats = Stats::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let sim = SimStorage::new().with_torn_sectors(rng.gen_bool(0.5));
    let segment_bytes = [8u64 << 10, 16 << 10][rng.gen_range(0..2)];
    let mut model = Model::default();
    let ctx = |cycle: usize| format!("seed {seed} cycle {cycle}");
    for cycle in 0..CYCLES {
        // Sometimes power fails during recovery itself.
        if cycle > 0 && rng.gen_bool(0.15) {
            sim.inject(Fault::sticky(OpKind::Any, rng.gen_range(1..12), errno::EIO));
            if Log::open(sim_cfg(&sim, segment_bytes)).is_ok() {
                sim.clear_faults();
            } else {
                stats.crashes_in_open += 1;
                sim.crash(rng.gen());
            }
        }
        let (mut log, visited) = open_visiting(&sim, segment_bytes, &ctx(cycle), &mut stats);
        check_recovered(&log, &mut model, &ctx(cycle), &mut stats);
        check_visited(&log, &visited, &ctx(cycle));

        // Power fails at the `halt_at`-th storage call from here (maybe never this cycle).
        let halt_at = rng.gen_range(1..400);
        let halt = Fault {
            kind: OpKind::Any,
            nth: halt_at,
            errno: errno::EIO,
            sticky: true,
            partial_bytes: None,
        };
        let halt = if rng.gen_bool(0.5) {
            halt.partial(rng.gen_range(0..=2 * segment_bytes as usize))
        } else {
            halt
        };
        let calls_before = sim.count(OpKind::Any);
        sim.inject(halt);
        let halted = || sim.count(OpKind::Any) >= calls_before + halt_at;
        let mut transient_armed = false;
        for _ in 0..rng.gen_range(5..60) {
            if rng.gen_bool(0.05) && log.segments().len() > 1 {
                let segments = log.segments();
                let seq = segments[rng.gen_range(0..segments.len() - 1)].seq;
                match log.delete_segment(seq) {
                    Ok(()) => {
                        stats.deletes += 1;
                        model.acked.retain(|e| e.loc.seg != seq);
                    }
                    Err(_) => {
                        assert!(halted(), "{}: delete failed without a crash", ctx(cycle));
                        model.maybe_deleted = Some(seq);
                        break;
                    }
                }
                let reader = log.reader();
                assert!(matches!(
                    reader.read(crate::Loc { seg: seq, off: 64 }),
                    Err(ReadError::Gone { .. })
                ));
            }
            if !transient_armed && rng.gen_bool(0.15) {
                let kind = [OpKind::Write, OpKind::Create, OpKind::Rename][rng.gen_range(0..3)];
                let code = [errno::ENOSPC, errno::EIO, errno::EMFILE][rng.gen_range(0..3)];
                let fault = Fault::once(kind, rng.gen_range(1..4), code);
                let fault = if rng.gen_bool(0.7) {
                    fault.partial(rng.gen_range(0..=2 * segment_bytes as usize))
                } else {
                    fault
                };
                sim.inject(fault);
                transient_armed = true;
            }
            let frames: Vec<Content> = (0..rng.gen_range(1..=10))
                .map(|_| random_content(&mut rng, segment_bytes))
                .collect();
            let tail_before = log.tail();
            let round: Vec<Expect> = frames.iter().map(|c| c.append(&mut log)).collect();
            if rng.gen_bool(0.05) {
                log.discard();
                continue;
            }
            match log.commit() {
                Ok(()) => {
                    let reader = log.reader();
                    for e in &round {
                        match reader.read(e.loc) {
                            Ok(frame) => assert_eq!(
                                frame.payload,
                                e.payload,
                                "{}: read back {:?}",
                                ctx(cycle),
                                e.loc
                            ),
                            // A pread of an older segment counts as a storage call too.
                            Err(ReadError::Io { .. }) if halted() => {}
                            Err(err) => panic!("{}: read back {:?}: {err}", ctx(cycle), e.loc),
                        }
                    }
                    model.acked.extend(round);
                    stats.rounds_acked += 1;
                }
                Err(_) if halted() => {
                    model.in_flight = round;
                    stats.crashes_in_commit += 1;
                    break;
                }
                Err(CommitError::Write { .. }) => {
                    transient_armed = false;
                    stats.failed_rounds += 1;
                    assert_eq!(
                        log.tail(),
                        tail_before,
                        "{}: a failed round leaves the tail",
                        ctx(cycle)
                    );
                    let reader = log.reader();
                    for e in &round {
                        match reader.read(e.loc) {
                            Err(ReadError::NotCommitted { .. }) => {}
                            other => panic!(
                                "{}: frame of a failed round at {:?}: {other:?}",
                                ctx(cycle),
                                e.loc
                            ),
                        }
                    }
                }
                Err(e) => panic!(
                    "{}: unexpected commit failure without a crash: {e}",
                    ctx(cycle)
                ),
            }
        }
        if !halted() {
            stats.crashes_between_rounds += 1;
        }
        drop(log);
        sim.crash(rng.gen());
    }
    let (log, visited) = open_visiting(&sim, segment_bytes, &ctx(CYCLES), &mut stats);
    check_recovered(&log, &mut model, &ctx(CYCLES), &mut stats);
    check_visited(&log, &visited, &ctx(CYCLES));
    stats
}

/// Opens the log, collecting what open visits (from segment summaries where they are).
fn open_visiting(
    sim: &SimStorage,
    segment_bytes: u64,
    ctx: &str,
    stats: &mut Stats,
) -> (Log, Visited) {
    if sim
        .files()
        .iter()
        .any(|f| f.extension().is_some_and(|e| e == "sum"))
    {
        stats.opened_with_summaries += 1;
    }
    let mut visited = Vec::new();
    let mut visit = |loc, kind, meta: &[u8], payload_len| {
        visited.push((loc, kind, meta.to_vec(), payload_len));
        Ok(())
    };
    let log = Log::open_visiting(sim_cfg(sim, segment_bytes), Some(&mut visit))
        .unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
    (log, visited)
}

/// What open visited (from summaries or walks) is exactly what a replay of the log reads.
fn check_visited(log: &Log, visited: &[(crate::Loc, u8, Vec<u8>, u32)], ctx: &str) {
    let got = replay_all(log);
    assert_eq!(visited.len(), got.len(), "{ctx}: frames visited at open");
    for (i, (v, g)) in visited.iter().zip(&got).enumerate() {
        assert_eq!(v, g, "{ctx}: frame {i} visited at open");
    }
}

/// Checks the recovered log against the model, then makes what survived the new truth.
fn check_recovered(log: &Log, model: &mut Model, ctx: &str, stats: &mut Stats) {
    let got = replay_all(log);
    if let Some(seq) = model.maybe_deleted.take() {
        if !got.iter().any(|(loc, ..)| loc.seg == seq) {
            model.acked.retain(|e| e.loc.seg != seq);
        }
    }
    let acked = &model.acked;
    assert!(
        got.len() >= acked.len(),
        "{ctx}: {} frames recovered, {} acknowledged",
        got.len(),
        acked.len()
    );
    for (i, (g, e)) in got.iter().zip(acked).enumerate() {
        assert_eq!(
            *g,
            (e.loc, e.kind, e.meta.clone(), e.payload.len() as u32),
            "{ctx}: acknowledged frame {i}"
        );
    }
    // Beyond the acknowledged frames, only a prefix of the round in flight, in whole parts.
    let extra = &got[acked.len()..];
    let in_flight = std::mem::take(&mut model.in_flight);
    assert!(
        extra.len() <= in_flight.len(),
        "{ctx}: {} frames of unacknowledged rounds",
        extra.len()
    );
    for (i, (g, e)) in extra.iter().zip(&in_flight).enumerate() {
        assert_eq!(
            *g,
            (e.loc, e.kind, e.meta.clone(), e.payload.len() as u32),
            "{ctx}: in-flight frame {i}"
        );
    }
    if !extra.is_empty() && extra.len() < in_flight.len() {
        assert_ne!(
            in_flight[extra.len() - 1].loc.seg,
            in_flight[extra.len()].loc.seg,
            "{ctx}: a round survives only in whole segment parts"
        );
    }
    if !in_flight.is_empty() {
        match extra.len() {
            0 => stats.in_flight_lost += 1,
            n if n == in_flight.len() => stats.in_flight_recovered += 1,
            _ => stats.in_flight_partly_recovered += 1,
        }
    }
    model.acked.extend(in_flight.into_iter().take(extra.len()));
    assert_reads(log, &model.acked);
}
