//! What a backend measures about itself in this process, as Prometheus
//! histograms the server registers and exposes (`GET /metrics`). Per-queue
//! counts and totals are not here: they are data (`QueueInfo`), read at scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of `commit_seconds`' buckets: 50 µs doubling to ~1.6 s,
/// which covers an fdatasync on fast and slow disks and a Redis round trip.
pub const COMMIT_SECONDS_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512,
    0.1024, 0.2048, 0.4096, 0.8192, 1.6384,
];

/// Upper bounds (seconds) of `run_seconds`' buckets: 1 ms to an hour.
pub const RUN_SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The `queue` label of a per-queue series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

/// Per-queue histograms made with their buckets.
pub type QueueHistograms = Family<QueueLabel, Histogram, fn() -> Histogram>;

/// A backend's histograms. Clones share the same series.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// One commit's time: on the embedded store one writer round's write and
    /// fdatasync; on Redis one script call's round trip.
    pub commit_seconds: Histogram,
    /// A task's attempt from its lease to its ack or fail, per queue, observed
    /// where the store settles it (this process's settles only).
    pub run_seconds: QueueHistograms,
}

impl Default for StoreMetrics {
    fn default() -> StoreMetrics {
        StoreMetrics {
            commit_seconds: Histogram::new(COMMIT_SECONDS_BUCKETS),
            run_seconds: Family::new_with_constructor(|| Histogram::new(RUN_SECONDS_BUCKETS)),
        }
    }
}

impl StoreMetrics {
    /// Observes attempts' run times (ms), each with its queue, one label lookup
    /// per run of equal queues (a settle batch is mostly one queue).
    pub fn ran<'a>(&self, runs: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut current: Option<(&str, _)> = None;
        for (queue, ms) in runs {
            let h = match &current {
                Some((q, h)) if *q == queue => h,
                _ => {
                    let label = QueueLabel {
                        queue: queue.to_owned(),
                    };
                    &current
                        .insert((queue, self.run_seconds.get_or_create_owned(&label)))
                        .1
                }
            };
            h.observe(ms as f64 / 1000.0);
        }
    }
}
