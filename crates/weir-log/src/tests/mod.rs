//! The log's tests: round trips, crash simulation, corruption, faults, deletion, reads.
//! Deterministic: every random choice comes from a seeded RNG, and failures print the seed.

mod corrupt;
mod faults;
mod gc;
mod reads;
mod roundtrip;
mod simulation;
mod summary;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;

use crate::sim::SimStorage;
use crate::{frame_bytes_max, Loc, Log, LogConfig};

/// The directory simulated logs live in.
pub(crate) fn sim_dir() -> PathBuf {
    PathBuf::from("/weir/log")
}

pub(crate) fn seg_file(seq: u32) -> PathBuf {
    crate::segdir::seg_path(&sim_dir(), seq)
}

/// A config on `sim` with synchronous spares, so storage calls happen in a fixed order, and
/// a summary for every sealed segment.
pub(crate) fn sim_cfg(sim: &SimStorage, segment_bytes: u64) -> LogConfig {
    LogConfig {
        dir: sim_dir(),
        segment_bytes,
        storage: Arc::new(sim.clone()),
        spare_in_background: false,
        summary_meta: None,
        summary_payload_percent_min: 0,
    }
}

pub(crate) fn open(sim: &SimStorage, segment_bytes: u64) -> Log {
    Log::open(sim_cfg(sim, segment_bytes)).unwrap_or_else(|e| panic!("open: {e}"))
}

/// A frame as the tests expect to read it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Expect {
    pub loc: Loc,
    pub kind: u8,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
}

/// A frame's content before it is appended.
#[derive(Clone, Debug)]
pub(crate) struct Content {
    pub kind: u8,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Content {
    pub(crate) fn append(&self, log: &mut Log) -> Expect {
        let loc = log.append(self.kind, &self.meta, &self.payload);
        Expect {
            loc,
            kind: self.kind,
            meta: self.meta.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// A random frame: mostly small, some medium, a few as large as a segment allows.
pub(crate) fn random_content(rng: &mut StdRng, segment_bytes: u64) -> Content {
    let max = frame_bytes_max(segment_bytes) as usize;
    let body = match rng.gen_range(0..100) {
        0..70 => rng.gen_range(0..200),
        70..92 => rng.gen_range(200..2000.min(max)),
        _ => rng.gen_range(max / 2..=max),
    };
    let meta_len = rng.gen_range(0..=body.min(40));
    let bytes: Vec<u8> = (0..body).map(|_| rng.gen()).collect();
    Content {
        kind: rng.gen_range(0..=crate::KIND_MAX),
        meta: bytes[..meta_len].to_vec(),
        payload: bytes[meta_len..].to_vec(),
    }
}

/// Simple recognisable content.
pub(crate) fn content(kind: u8, tag: &str, payload_bytes: usize) -> Content {
    let payload = tag.bytes().cycle().take(payload_bytes).collect();
    Content {
        kind,
        meta: tag.as_bytes().to_vec(),
        payload,
    }
}

/// Stages `frames` and commits them, panicking on failure.
pub(crate) fn commit_round(log: &mut Log, frames: &[Content]) -> Vec<Expect> {
    let round: Vec<Expect> = frames.iter().map(|c| c.append(log)).collect();
    log.commit().unwrap_or_else(|e| panic!("commit: {e}"));
    round
}

/// Frames as `replay` and `open_visiting` hand them out: (loc, kind, meta, payload_len).
pub(crate) type Visited = Vec<(Loc, u8, Vec<u8>, u32)>;

/// Everything `replay(None)` yields: (loc, kind, meta, payload_len).
pub(crate) fn replay_all(log: &Log) -> Visited {
    let mut out = Vec::new();
    log.replay::<()>(None, |loc, kind, meta, len| {
        out.push((loc, kind, meta.to_vec(), len));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("replay: {e}"));
    out
}

/// Asserts that the log holds exactly `expected`, in order, through replay and through reads.
pub(crate) fn assert_log(log: &Log, expected: &[Expect]) {
    let got = replay_all(log);
    let want: Vec<(Loc, u8, Vec<u8>, u32)> = expected
        .iter()
        .map(|e| (e.loc, e.kind, e.meta.clone(), e.payload.len() as u32))
        .collect();
    assert_eq!(got.len(), want.len(), "frame count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "frame {i}");
    }
    assert_reads(log, expected);
}

pub(crate) fn assert_reads(log: &Log, expected: &[Expect]) {
    let reader = log.reader();
    for e in expected {
        let frame = reader
            .read(e.loc)
            .unwrap_or_else(|err| panic!("read {:?}: {err}", e.loc));
        assert_eq!(frame.kind, e.kind, "kind at {:?}", e.loc);
        assert_eq!(frame.meta, e.meta, "meta at {:?}", e.loc);
        assert_eq!(frame.payload, e.payload, "payload at {:?}", e.loc);
    }
}

/// The bytes of `path` on `sim`.
pub(crate) fn file_bytes(sim: &SimStorage, path: &Path) -> Vec<u8> {
    sim.contents(path)
        .unwrap_or_else(|| panic!("{} exists", path.display()))
}
