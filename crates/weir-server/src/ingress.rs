//! The ingress limit (SPEC §6, `weir serve --ingress-rate`): a token bucket per
//! client address in front of every route but `/healthz`, `/readyz` and `/metrics`,
//! so that no one client can take the server from the others. Over its bucket a
//! request is answered 429 (`urn:weir:problem:rate-limited`) with `Retry-After`
//! and `RateLimit-*` headers before any handler runs, so nothing of it is done.
//!
//! The bucket arithmetic is governor's GCRA; the buckets live in a table of our
//! own ([`ClientTable`]) whose size is fixed, because governor's keyed stores grow
//! with every address that ever sent a request. The table holds at most
//! [`INGRESS_CLIENTS_MAX`] client addresses. A full bucket (one its client could
//! empty again at once) is the same as no entry at all, so those entries are
//! dropped whenever room is needed. When the table is still full, an address that
//! has no entry shares one overflow bucket, with the same rate and burst, with
//! every other such address that hashes to the same shard: a flood of new
//! addresses gets no more than [`INGRESS_SHARDS`] buckets' worth between them, and
//! never a fresh bucket by pushing an entry out. The price is that a new client
//! that arrives while the table is full of busy addresses is limited together
//! with them until some of those buckets refill.
//!
//! The key is the peer address of the TCP connection (`ConnectInfo`, set by the
//! connection layer only when the limit is on): an IPv4 address, or the /64
//! prefix of an IPv6 one, since one host or one customer usually gets a whole /64.
//! An IPv4 address mapped into IPv6 (a dual-stack listener) counts as the IPv4
//! address. `X-Forwarded-For` is not read: behind a proxy every client shares the
//! proxy's bucket. A request that carries an API key (auth on) counts under the
//! key instead, wherever it comes from (`limit`).

use std::collections::hash_map::{HashMap, RandomState};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::auth::Principal;
use crate::error::ApiError;

/// Most client addresses (IPv4 addresses and IPv6 /64 prefixes) the ingress
/// limiter keeps a bucket for: 64 shards of 1,024, about 3 MiB at most. Past it,
/// see the module comment.
pub const INGRESS_CLIENTS_MAX: usize = 65_536;
/// Shards of the client table, each behind its own lock; also the number of
/// overflow buckets.
pub const INGRESS_SHARDS: usize = 64;

/// Paths never limited: probes and scrapes must see the server as it is, and a
/// load balancer must not take a busy server out of rotation for its clients'
/// traffic.
pub const UNLIMITED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The ingress limit of one client address: `requests` per `per` on average, and
/// at most `burst` at once after a quiet spell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressLimit {
    requests: NonZeroU32,
    per: Duration,
    burst: NonZeroU32,
}

impl IngressLimit {
    /// `requests` per `per` in bursts of at most `burst`, or by default one second's
    /// worth of the rate (at least 1). Refused: no requests, a zero period, or a
    /// rate above one request per nanosecond.
    pub fn new(requests: u32, per: Duration, burst: Option<u32>) -> Result<IngressLimit, String> {
        let requests =
            NonZeroU32::new(requests).ok_or("the rate must let at least 1 request through")?;
        if per.is_zero() {
            return Err("the rate's period must not be zero".into());
        }
        if per.as_nanos() / u128::from(requests.get()) == 0 {
            return Err(format!(
                "{requests} requests per {per:?} is more than one per nanosecond"
            ));
        }
        let burst = match burst {
            Some(b) => NonZeroU32::new(b).ok_or("the burst must be at least 1")?,
            None => {
                let per_sec = (u128::from(requests.get()) * 1_000_000_000).div_ceil(per.as_nanos());
                NonZeroU32::new(u32::try_from(per_sec).unwrap_or(u32::MAX))
                    .unwrap_or(NonZeroU32::MIN)
            }
        };
        Ok(IngressLimit {
            requests,
            per,
            burst,
        })
    }

    /// Requests let through per [`per`](Self::per) on average.
    pub fn requests(&self) -> u32 {
        self.requests.get()
    }

    /// The period the rate is counted over.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// Most requests let through at once (the bucket's size).
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    fn quota(&self) -> Quota {
        let interval = self.per / self.requests.get();
        Quota::with_period(interval)
            .expect("IngressLimit::new refuses a zero interval")
            .allow_burst(self.burst)
    }
}

/// As the flags write it: `10000/s, burst 20000`.
impl std::fmt::Display for IngressLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match (self.per.as_secs(), self.per.subsec_nanos()) {
            (1, 0) => "s",
            (60, 0) => "m",
            (3600, 0) => "h",
            _ => {
                return write!(
                    f,
                    "{} per {:?}, burst {}",
                    self.requests, self.per, self.burst
                )
            }
        };
        write!(f, "{}/{unit}", self.requests)?;
        write!(f, ", burst {}", self.burst)
    }
}

/// What the limiter counts requests under: an API key, or without one an IPv4
/// address or an IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An API key's id (its 64 bits).
    Key(u64),
    V4(u32),
    /// The upper 64 bits of the address.
    V6(u64),
}

impl ClientKey {
    /// The key of a request whose peer address is unknown (a router driven without
    /// the connection layer, as tests do): all such requests share one bucket.
    pub const UNKNOWN: ClientKey = ClientKey::V4(0);

    /// The key of a client at `ip`.
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.to_bits()),
                None => ClientKey::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// The buckets of the client addresses, as a governor state store of a fixed
/// size (see the module comment). A bucket is governor's "theoretical arrival
/// time" (TAT), nanoseconds from the limiter's start; the limiter computes, this
/// table only keeps. A handle: the limiter owns one, [`IngressLimiter`] keeps
/// another to read the table's size.
#[derive(Clone)]
pub struct ClientTable(Arc<Table>);

struct Table {
    /// Picks the shard of a key.
    hasher: RandomState,
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// Addresses one shard holds before new ones overflow.
    shard_clients_max: usize,
    /// governor's emission interval (one request's worth of time): a fresh key's
    /// new TAT is "now" plus this, which is how the table learns "now".
    interval: Nanos,
    /// Shards whose new addresses currently go to the overflow bucket, for the
    /// log lines when the first one starts and the last one stops.
    overflowing: AtomicUsize,
}

/// One shard of [`ClientTable`], on its own cache line so that two cores locking
/// two shards do not contend.
#[repr(align(128))]
struct Padded<T>(T);

#[derive(Default)]
struct Shard {
    /// Each tracked address's TAT. Never more than `shard_clients_max` entries.
    clients: HashMap<ClientKey, Nanos>,
    /// The bucket shared by addresses that found this shard full.
    overflow: Option<Nanos>,
    /// No entry's bucket is full before this time (the smallest TAT at the last
    /// prune, lowered by later inserts; TATs only grow), so a prune before it
    /// would find nothing to drop.
    stale_from: Nanos,
    /// Whether the last new address of this shard went to the overflow bucket.
    overflowing: bool,
}

impl Shard {
    /// Drops the entries whose buckets are full at `now`: a bucket whose TAT has
    /// passed is the same as no entry (governor starts a missing key at "now").
    fn prune(&mut self, now: Nanos) {
        let mut stale_from = Nanos::new(u64::MAX);
        self.clients.retain(|_, tat| {
            let keep = *tat > now;
            if keep {
                stale_from = stale_from.min(*tat);
            }
            keep
        });
        self.stale_from = stale_from;
    }
}

impl ClientTable {
    fn new(quota: Quota, clients_max: usize) -> ClientTable {
        let shard_clients_max = (clients_max / INGRESS_SHARDS).max(1);
        ClientTable(Arc::new(Table {
            hasher: RandomState::new(),
            shards: (0..INGRESS_SHARDS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            shard_clients_max,
            interval: Nanos::from(quota.replenish_interval()),
            overflowing: AtomicUsize::new(0),
        }))
    }

    /// Addresses with a bucket of their own.
    pub fn len(&self) -> usize {
        self.0
            .shards
            .iter()
            .map(|s| {
                s.0.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clients
                    .len()
            })
            .sum()
    }

    /// Whether no address has a bucket of its own.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most addresses the table holds.
    pub fn capacity(&self) -> usize {
        self.0.shard_clients_max * INGRESS_SHARDS
    }

    /// Whether `key` has a bucket of its own.
    pub fn tracks(&self, key: ClientKey) -> bool {
        self.0
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clients
            .contains_key(&key)
    }
}

impl StateStore for ClientTable {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl Table {
    fn shard(&self, key: &ClientKey) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h % INGRESS_SHARDS as u64) as usize].0
    }

    fn overflow_changed(&self, now_overflowing: bool) {
        if now_overflowing {
            if self.overflowing.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    clients_max = self.shard_clients_max * INGRESS_SHARDS,
                    "ingress limiter: the client table is full of active addresses; \
                     new addresses share overflow buckets until entries free up"
                );
            }
        } else if self.overflowing.fetch_sub(1, Ordering::Relaxed) == 1 {
            tracing::info!("ingress limiter: every new address gets its own bucket again");
        }
    }

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let shard = &mut *shard;
        if let Some(tat) = shard.clients.get_mut(key) {
            let (decision, next) = f(Some(*tat))?;
            *tat = next;
            return Ok(decision);
        }
        // A new address: a fresh bucket always lets its first request through,
        // and its new TAT is now + interval.
        let (decision, next) = f(None)?;
        let now = next.saturating_sub(self.interval);
        if shard.clients.len() >= self.shard_clients_max && now >= shard.stale_from {
            shard.prune(now);
        }
        if shard.clients.len() < self.shard_clients_max {
            shard.clients.insert(*key, next);
            shard.stale_from = shard.stale_from.min(next);
            if shard.overflowing {
                shard.overflowing = false;
                self.overflow_changed(false);
            }
            return Ok(decision);
        }
        if !shard.overflowing {
            shard.overflowing = true;
            self.overflow_changed(true);
        }
        let (decision, next) = f(shard.overflow)?;
        shard.overflow = Some(next);
        Ok(decision)
    }
}

/// Whether a request may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let through; `remaining` more requests would be now.
    Allowed { remaining: u32 },
    /// Over the limit; a request would pass after `wait`.
    Refused { wait: Duration },
}

/// The ingress limit's state: governor's GCRA over a [`ClientTable`].
pub struct IngressLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<ClientKey, ClientTable, C, StateInformationMiddleware>,
    /// The limiter's own table, shared.
    table: ClientTable,
    limit: IngressLimit,
    /// `RateLimit-Limit`, the same on every answer.
    limit_header: HeaderValue,
}

impl IngressLimiter {
    /// A limiter on the monotonic clock with room for [`INGRESS_CLIENTS_MAX`]
    /// addresses.
    pub fn new(limit: IngressLimit) -> IngressLimiter {
        IngressLimiter::with_clock(limit, DefaultClock::default(), INGRESS_CLIENTS_MAX)
    }
}

impl<C: Clock> IngressLimiter<C> {
    /// A limiter on `clock` with room for about `clients_max` addresses (rounded
    /// down to a multiple of [`INGRESS_SHARDS`], at least one per shard).
    pub fn with_clock(limit: IngressLimit, clock: C, clients_max: usize) -> IngressLimiter<C> {
        let quota = limit.quota();
        let table = ClientTable::new(quota, clients_max);
        IngressLimiter {
            limiter: RateLimiter::<_, _, _, StateInformationMiddleware>::new(
                quota,
                table.clone(),
                clock,
            ),
            table,
            limit,
            limit_header: HeaderValue::from(limit.burst()),
        }
    }

    /// Takes one request from `key`'s bucket, if it has one.
    pub fn check(&self, key: ClientKey) -> Decision {
        match self.limiter.check_key(&key) {
            Ok(snapshot) => Decision::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Decision::Refused {
                wait: not_until.wait_time_from(self.limiter.clock().now()),
            },
        }
    }

    /// The table of client addresses.
    pub fn table(&self) -> &ClientTable {
        &self.table
    }

    /// The answer to a refused request.
    fn refusal(&self, wait: Duration) -> Response {
        let secs = u64::try_from(wait.as_nanos().div_ceil(1_000_000_000))
            .unwrap_or(u64::MAX)
            .max(1);
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Rate limited",
            format!(
                "this client (its API key, or its address) is over the server's ingress limit ({}); retry after {secs} s",
                self.limit
            ),
        );
        err.retry_after_secs = Some(secs);
        let mut resp = err.into_response();
        let headers = resp.headers_mut();
        headers.insert(RATELIMIT_LIMIT.clone(), self.limit_header.clone());
        headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from_static("0"));
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(secs));
        resp
    }
}

/// The middleware (`Router::layer`, inside auth): takes one request from the
/// bucket of the request's API key (its `auth::Principal`) or, without one, of its
/// client address, and answers 429 over it. A route's answer gets
/// `RateLimit-Limit` and `RateLimit-Remaining`; an unlimited path passes as is.
pub async fn limit(
    State(limiter): State<Option<Arc<IngressLimiter>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(limiter) = limiter else {
        return next.run(req).await;
    };
    if UNLIMITED_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let key = match req.extensions().get::<Principal>() {
        Some(p) => ClientKey::Key(p.id_bits()),
        None => req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(ClientKey::UNKNOWN, |c| ClientKey::of(c.0.ip())),
    };
    match limiter.check(key) {
        Decision::Allowed { remaining } => {
            let mut resp = next.run(req).await;
            let h = resp.headers_mut();
            h.insert(RATELIMIT_LIMIT.clone(), limiter.limit_header.clone());
            h.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
            resp
        }
        Decision::Refused { wait } => limiter.refusal(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const HOUR: Duration = Duration::from_secs(3600);

    fn limiter(
        requests: u32,
        per: Duration,
        burst: u32,
        clients_max: usize,
    ) -> (IngressLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limit = IngressLimit::new(requests, per, Some(burst)).unwrap();
        (
            IngressLimiter::with_clock(limit, clock.clone(), clients_max),
            clock,
        )
    }

    fn v4(n: u32) -> ClientKey {
        ClientKey::of(IpAddr::V4(Ipv4Addr::from_bits(n)))
    }

    #[test]
    fn limits_and_their_default_burst() {
        let sec = Duration::from_secs(1);
        let min = Duration::from_secs(60);
        let l = IngressLimit::new(10_000, sec, None).unwrap();
        assert_eq!((l.requests(), l.per(), l.burst()), (10_000, sec, 10_000));
        assert_eq!(
            IngressLimit::new(10_000, sec, Some(20_000))
                .unwrap()
                .burst(),
            20_000
        );
        // One second's worth, rounded up, at least 1.
        assert_eq!(IngressLimit::new(90, min, None).unwrap().burst(), 2);
        assert_eq!(IngressLimit::new(30, min, None).unwrap().burst(), 1);
        assert_eq!(IngressLimit::new(1, HOUR, None).unwrap().burst(), 1);
        assert_eq!(
            IngressLimit::new(1, HOUR, None).unwrap().to_string(),
            "1/h, burst 1"
        );
        assert_eq!(l.to_string(), "10000/s, burst 10000");
        assert!(IngressLimit::new(0, sec, None).is_err());
        assert!(IngressLimit::new(1, Duration::ZERO, None).is_err());
        assert!(IngressLimit::new(10, sec, Some(0)).is_err());
        assert!(IngressLimit::new(1_000_000_000, sec, None).is_ok());
        assert!(IngressLimit::new(1_000_000_001, sec, None).is_err());
    }

    #[test]
    fn client_keys_are_ipv4_addresses_and_ipv6_64_prefixes() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a.into()), ClientKey::of(b.into()));
        assert_ne!(ClientKey::of(a.into()), ClientKey::of(c.into()));
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(
            ClientKey::of(v4.to_ipv6_mapped().into()),
            ClientKey::of(v4.into())
        );
        assert_ne!(
            ClientKey::of(Ipv4Addr::new(192, 0, 2, 8).into()),
            ClientKey::of(v4.into())
        );
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_one_per_interval() {
        let (l, clock) = limiter(1, HOUR, 3, INGRESS_CLIENTS_MAX);
        for remaining in [2, 1, 0] {
            assert_eq!(l.check(v4(1)), Decision::Allowed { remaining });
        }
        assert_eq!(l.check(v4(1)), Decision::Refused { wait: HOUR });
        // Another address has its own bucket.
        assert_eq!(l.check(v4(2)), Decision::Allowed { remaining: 2 });
        clock.advance(HOUR - Duration::from_secs(1));
        assert_eq!(
            l.check(v4(1)),
            Decision::Refused {
                wait: Duration::from_secs(1)
            }
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.check(v4(1)), Decision::Allowed { remaining: 0 });
        assert!(matches!(l.check(v4(1)), Decision::Refused { .. }));
    }

    #[test]
    fn the_table_stays_within_its_cap_however_many_addresses_come() {
        let (l, _clock) = limiter(1, HOUR, 3, INGRESS_CLIENTS_MAX);
        assert_eq!(l.table().capacity(), INGRESS_CLIENTS_MAX);
        for n in 0..4 * INGRESS_CLIENTS_MAX as u32 {
            l.check(v4(n));
            if n % 4096 == 0 {
                assert!(l.table().len() <= INGRESS_CLIENTS_MAX);
            }
        }
        // Every shard got far more addresses than it holds, and holds its share.
        assert_eq!(l.table().len(), INGRESS_CLIENTS_MAX);
    }

    #[test]
    fn new_addresses_past_the_cap_cannot_get_fresh_buckets() {
        // A table of one address per shard, every bucket busy for an hour.
        let burst = 2;
        let (l, _clock) = limiter(1, HOUR, burst, INGRESS_SHARDS);
        let addresses = 10_000;
        let allowed = |l: &IngressLimiter<FakeRelativeClock>| {
            (0..addresses)
                .filter(|&n| matches!(l.check(v4(n)), Decision::Allowed { .. }))
                .count()
        };
        // Each tracked address lets its first request through, and each shard's
        // overflow bucket its burst: nowhere near one per address.
        let first = allowed(&l);
        assert!(
            first <= INGRESS_SHARDS + INGRESS_SHARDS * burst as usize,
            "{first} of {addresses} new addresses got through"
        );
        assert_eq!(l.table().len(), INGRESS_SHARDS);
        // Again: only the tracked addresses have anything left.
        let second = allowed(&l);
        assert!(second <= INGRESS_SHARDS, "{second} got through again");
    }

    #[test]
    fn full_buckets_make_room_for_new_addresses() {
        let (l, clock) = limiter(1, HOUR, 1, INGRESS_SHARDS);
        let mut n = 0;
        while l.table().len() < INGRESS_SHARDS {
            l.check(v4(n));
            n += 1;
            assert!(n < 1_000_000, "the table never filled");
        }
        // Every entry is busy: a new address goes to its shard's overflow bucket.
        let late = v4(n);
        l.check(late);
        assert!(!l.table().tracks(late));
        // An hour later every bucket is full again, the same as no entry: the
        // next new address takes the place of one.
        clock.advance(HOUR);
        let later = v4(n + 1);
        assert_eq!(l.check(later), Decision::Allowed { remaining: 0 });
        assert!(l.table().tracks(later));
        assert!(l.table().len() <= INGRESS_SHARDS);
    }
}
