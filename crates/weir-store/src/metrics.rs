//! What a backend measures about itself in this process, as Prometheus
//! histograms the server registers and exposes (`GET /metrics`). Per-queue
//! counts and totals are not here: they are data (`QueueInfo`), read at scrape.

use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of `commit_seconds`' buckets: 50 µs doubling to ~1.6 s,
/// which covers an fdatasync on fast and slow disks and a Redis round trip.
pub const COMMIT_SECONDS_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512,
    0.1024, 0.2048, 0.4096, 0.8192, 1.6384,
];

/// A backend's histograms. Clones share the same series.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// One commit's time: on the embedded store one writer round's write and
    /// fdatasync; on Redis one script call's round trip.
    pub commit_seconds: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> StoreMetrics {
        StoreMetrics {
            commit_seconds: Histogram::new(COMMIT_SECONDS_BUCKETS),
        }
    }
}
