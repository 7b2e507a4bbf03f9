//! The Redis key layout (see docs/design/redis-store.md): hash slots, the
//! per-slot hash tags, and the names of every key and channel the store uses.
//!
//! A queue lives in one hash slot, `CRC16(name) mod 16384`, reached through a
//! short tag string whose own slot is that slot (the raw name never goes inside
//! `{}`, so `{`, `}`, `:` and any bytes in names are harmless). Task and group ids
//! carry their queue's slot in the low 14 bits of their random part, so an id
//! alone finds its keys.

use std::sync::OnceLock;

use rand::Rng;
use weir_core::TaskId;

/// Hash slots in Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster computes it.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of a key, honouring its first `{…}` hash tag as Redis does.
pub fn key_slot(key: &[u8]) -> u16 {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return crc16(&key[open + 1..open + 1 + len]) % SLOTS;
            }
        }
    }
    crc16(key) % SLOTS
}

/// The slot a queue's keys live in.
pub fn queue_slot(queue: &str) -> u16 {
    crc16(queue.as_bytes()) % SLOTS
}

/// For each slot, a short string of `[0-9a-z]` whose key slot is that slot: the
/// first such string in counting order (base 36), so the table is the same in
/// every process. Built once (about 200k CRCs, a few milliseconds).
fn tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut table: Vec<Option<String>> = vec![None; SLOTS as usize];
        let mut left = SLOTS as usize;
        let mut n: u64 = 0;
        while left > 0 {
            let s = base36(n);
            let slot = crc16(s.as_bytes()) % SLOTS;
            if table[slot as usize].is_none() {
                table[slot as usize] = Some(s);
                left -= 1;
            }
            n += 1;
        }
        table.into_iter().map(|t| t.unwrap_or_default()).collect()
    })
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The tag string (without braces) of a slot.
pub fn tag(slot: u16) -> &'static str {
    &tags()[(slot % SLOTS) as usize]
}

/// The slot encoded in a task or group id.
pub fn slot_of(id: TaskId) -> u16 {
    (id.0 as u16) & (SLOTS - 1)
}

/// Issues ids: ULIDs with the server's clock (ids sort by creation time only as
/// well as server clocks agree; dispatch order does not depend on it, see the
/// per-queue sequence) and 80 random bits whose low 14 are the queue's slot.
/// Within one process ids strictly increase, so FIFO by id and FIFO by the
/// queue's sequence agree for tasks enqueued through one server.
#[derive(Default)]
pub struct IdGen {
    /// The last id issued, shifted right past its slot bits.
    last_high: std::sync::Mutex<u128>,
}

impl IdGen {
    /// `n` consecutive fresh ids for the queue in `slot`.
    pub fn next(&self, now_ms: u64, slot: u16, n: usize) -> Vec<TaskId> {
        let random: u128 = rand::thread_rng().gen::<u128>() & ((1u128 << 80) - 1);
        let fresh_high = TaskId::new(now_ms, random).0 >> 14;
        let mut last = self.last_high.lock().unwrap_or_else(|p| p.into_inner());
        let first = fresh_high.max(*last + 1);
        *last = first + n.saturating_sub(1) as u128;
        drop(last);
        (0..n as u128)
            .map(|i| TaskId(((first + i) << 14) | slot as u128))
            .collect()
    }
}

/// Lowercase hex of a queue name: the form queue names take inside keys.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The bytes `hex` wrote (either case); `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Key and channel names of one deployment (one prefix).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>:{<tag>}:`: every key of a slot starts with it. Scripts build
    /// the other keys of the slot from it.
    pub fn base(&self, slot: u16) -> String {
        format!("{}:{{{}}}:", self.prefix, tag(slot))
    }

    /// A queue's meta hash (sequence, per-state counts, registration mark).
    pub fn meta(&self, queue: &str) -> String {
        format!(
            "{}q:{}:m",
            self.base(queue_slot(queue)),
            hex(queue.as_bytes())
        )
    }

    /// The key holding the id of the task of `queue` with idempotency key `key`.
    pub fn idem(&self, queue: &str, key: &str) -> String {
        format!(
            "{}q:{}:i:{key}",
            self.base(queue_slot(queue)),
            hex(queue.as_bytes())
        )
    }

    /// The task hash of `id`'s slot (every task of the slot is one field).
    pub fn task(&self, id: TaskId) -> String {
        self.tasks(slot_of(id))
    }

    /// The task hash of a slot.
    pub fn tasks(&self, slot: u16) -> String {
        format!("{}t", self.base(slot))
    }

    pub fn group(&self, id: TaskId) -> String {
        format!("{}g:{id}", self.base(slot_of(id)))
    }

    /// The registry of queue names (a set outside every queue's slot).
    pub fn registry(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// Every periodic-task schedule (one hash: schedule.lua).
    pub fn schedules(&self) -> String {
        format!("{}:schedules", self.prefix)
    }

    /// Every API key (one hash: api_keys.lua). Like `schedules`, one key outside
    /// every queue's slot, so a script on it is valid on Cluster.
    pub fn api_keys(&self) -> String {
        format!("{}:apikeys", self.prefix)
    }

    /// The lock that elects one sweeper per interval.
    pub fn sweep_lock(&self) -> String {
        format!("{}:sweep", self.prefix)
    }

    /// The pub/sub channel of wake-up messages.
    pub fn channel(&self) -> String {
        format!("{}:wake", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&b)), Some(b.to_vec()));
        for bad in ["a", "zz", "é0", "+1"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
    }

    #[test]
    fn crc16_matches_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
    }

    #[test]
    fn ids_increase_and_keep_their_slot() {
        let g = IdGen::default();
        let a = g.next(1000, 5, 3);
        let b = g.next(1000, 16383, 1);
        let c = g.next(999, 0, 1);
        let all: Vec<TaskId> = a.iter().chain(&b).chain(&c).copied().collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
        assert!(a.iter().all(|id| slot_of(*id) == 5));
        assert_eq!(slot_of(b[0]), 16383);
        assert_eq!(slot_of(c[0]), 0);
    }

    #[test]
    fn every_slot_has_a_tag_of_that_slot() {
        for slot in 0..SLOTS {
            let t = tag(slot);
            assert!(!t.is_empty() && t.len() <= 4, "{slot}: {t}");
            assert_eq!(crc16(t.as_bytes()) % SLOTS, slot);
            assert_eq!(key_slot(format!("weir:{{{t}}}:q:00:m").as_bytes()), slot);
        }
    }

    #[test]
    fn ids_carry_their_slot_and_keys_share_the_queue_slot() {
        let k = Keys::new("weir");
        for q in ["a{b}:c", "zürich", "{", "}", "plain", ":"] {
            let slot = queue_slot(q);
            let id = IdGen::default().next(1_700_000_000_000, slot, 1)[0];
            assert_eq!(slot_of(id), slot);
            assert_eq!(id.timestamp_ms(), 1_700_000_000_000);
            for key in [k.meta(q), k.task(id), k.group(id)] {
                assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
            }
        }
    }
}
