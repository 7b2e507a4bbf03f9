//! API keys: their text form `weir_<id>_<secret>`, the record the store keeps for
//! each (never the secret: a SHA-256 of it, which is enough for a 256-bit random
//! secret), roles, queue patterns, and checking a presented key against a record
//! in constant time.
//!
//! May not: keep or print a secret anywhere but in the one answer that creates it
//! (`Debug` of a [`Presented`] key shows its id only).

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The text before a key's id.
pub const KEY_PREFIX: &str = "weir_";
/// Hex digits of a key's id (64 random bits: ids only need to be distinct, and
/// the ingress limiter counts a key's requests under its id's bits).
pub const KEY_ID_HEX: usize = 16;
/// Hex digits of a key's secret (256 random bits).
pub const KEY_SECRET_HEX: usize = 64;
/// Most queue patterns one key may be limited to.
pub const KEY_QUEUES_MAX: usize = 32;
/// Longest key name.
pub const KEY_NAME_BYTES_MAX: usize = 128;
/// Longest queue pattern (a default queue name's longest).
pub const KEY_PATTERN_BYTES_MAX: usize = 128;

/// What a key may do. A key holds one or more; `admin` may do everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Enqueue (single, batch, group), get and wait, cancel, queue counts.
    Producer,
    /// Lease, ack, fail, release, heartbeat, `/v1/acks`, get.
    Worker,
    /// Every read: tasks, queues, groups, schedules, the dashboard.
    Reader,
    /// Everything, queue config, dead-task admin, schedules and keys included.
    Admin,
}

impl Role {
    /// Every role, in the order `weir keys create --role` lists them.
    pub const ALL: [Role; 4] = [Role::Producer, Role::Worker, Role::Reader, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Worker => "worker",
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`, if any.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// This role as one bit of a [`Roles`] set.
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of roles, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Roles(pub u8);

impl Roles {
    pub const fn of(roles: &[Role]) -> Roles {
        let mut bits = 0;
        let mut i = 0;
        while i < roles.len() {
            bits |= roles[i].bit();
            i += 1;
        }
        Roles(bits)
    }

    pub fn has(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether a key holding `self` may do what any of `needed` may (an admin
    /// may do anything).
    pub fn grant(self, needed: Roles) -> bool {
        self.has(Role::Admin) || self.0 & needed.0 != 0
    }
}

/// What the store keeps of a key (as JSON text: the store treats it as opaque).
/// The id is the store's key; the last use is kept by the store apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub name: String,
    /// Sorted, without repeats, at least one.
    pub roles: Vec<Role>,
    /// Queue patterns the key is limited to; `None`: every queue.
    pub queues: Option<Vec<String>>,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// SHA-256 of the secret, in hex.
    pub secret_sha256: String,
}

impl KeyRecord {
    /// The record as the store keeps it.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a key record serializes")
    }

    /// A record the store kept; an error names what is wrong with it.
    pub fn from_text(text: &str) -> Result<KeyRecord, String> {
        let r: KeyRecord =
            serde_json::from_str(text).map_err(|e| format!("unreadable key record: {e}"))?;
        if r.roles.is_empty() || decode_hash(&r.secret_sha256).is_none() {
            return Err("key record without a role or a secret hash".into());
        }
        Ok(r)
    }

    pub fn roles(&self) -> Roles {
        Roles::of(&self.roles)
    }

    /// Whether `presented` is this key's secret (constant time in the secret).
    pub fn matches(&self, presented: &Presented<'_>) -> bool {
        let Some(stored) = decode_hash(&self.secret_sha256) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(presented.secret.as_bytes()).into();
        stored.ct_eq(&given).into()
    }

    /// The stored hash's bytes: what a session cookie's MAC is keyed with, a
    /// secret only the store and a holder of the key can know.
    pub fn hash_bytes(&self) -> [u8; 32] {
        decode_hash(&self.secret_sha256).unwrap_or([0; 32])
    }

    /// Whether the key may touch `queue`.
    pub fn allows_queue(&self, queue: &str) -> bool {
        match &self.queues {
            None => true,
            Some(patterns) => patterns.iter().any(|p| glob_match(p, queue)),
        }
    }
}

fn decode_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A key as a client presented it, split into its id and secret (borrowed from
/// the request: nothing of it outlives the check).
pub struct Presented<'a> {
    pub id: &'a str,
    secret: &'a str,
}

/// Whether `s` is `n` lowercase hex digits.
fn lower_hex(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `s` is a key id as this server makes them (`KEY_ID_HEX` lowercase hex
/// digits): what a token, a session cookie and `DELETE /v1/keys/{id}` accept.
pub fn is_id(s: &str) -> bool {
    lower_hex(s, KEY_ID_HEX)
}

impl fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Presented {{ id: {:?}, secret: <redacted> }}", self.id)
    }
}

impl Presented<'_> {
    /// Parses `weir_<16 hex>_<64 hex>` (lowercase); `None` for anything else.
    pub fn parse(text: &str) -> Option<Presented<'_>> {
        let rest = text.strip_prefix(KEY_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        if !is_id(id) || !lower_hex(secret, KEY_SECRET_HEX) {
            return None;
        }
        Some(Presented { id, secret })
    }

    /// The id's 64 bits (what the ingress limiter counts the key's requests under).
    pub fn id_bits(id: &str) -> u64 {
        u64::from_str_radix(id, 16).unwrap_or(0)
    }
}

/// A new key: its id, the text to hand out once, and its record.
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub record: KeyRecord,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewKey {{ id: {:?}, key: <redacted> }}", self.id)
    }
}

/// What a new key is for, as an admin asks for it (`POST /v1/keys`, `weir keys
/// create`).
#[derive(Clone, Debug, Default)]
pub struct KeySpec {
    pub name: String,
    pub roles: Vec<Role>,
    pub queues: Option<Vec<String>>,
    pub expires_at_ms: Option<u64>,
}

impl KeySpec {
    /// Checks the spec (a clear error naming the field) and makes the key with a
    /// fresh random id and secret from the OS's generator.
    pub fn make(mut self, now_ms: u64) -> Result<NewKey, (&'static str, String)> {
        if self.name.is_empty() || self.name.len() > KEY_NAME_BYTES_MAX {
            return Err((
                "name",
                format!("a key's name is 1 to {KEY_NAME_BYTES_MAX} bytes"),
            ));
        }
        if self.name.chars().any(char::is_control) {
            return Err(("name", "a key's name has no control characters".into()));
        }
        self.roles.sort();
        self.roles.dedup();
        if self.roles.is_empty() {
            return Err((
                "roles",
                "a key needs at least one role: producer, worker, reader or admin".into(),
            ));
        }
        if let Some(patterns) = &mut self.queues {
            if patterns.is_empty() || patterns.len() > KEY_QUEUES_MAX {
                return Err((
                    "queues",
                    format!("give 1 to {KEY_QUEUES_MAX} queue patterns, or null for every queue"),
                ));
            }
            for p in patterns.iter() {
                check_pattern(p).map_err(|e| ("queues", e))?;
            }
            patterns.sort();
            patterns.dedup();
        }
        if let Some(at) = self.expires_at_ms {
            if at <= now_ms {
                return Err(("expires_at", "the expiry is not in the future".into()));
            }
        }
        let mut rng = rand::rngs::OsRng;
        let mut id = [0u8; KEY_ID_HEX / 2];
        let mut secret = [0u8; KEY_SECRET_HEX / 2];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let (id, secret) = (hex::encode(id), hex::encode(secret));
        let record = KeyRecord {
            name: self.name,
            roles: self.roles,
            queues: self.queues,
            created_at_ms: now_ms,
            expires_at_ms: self.expires_at_ms,
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        };
        Ok(NewKey {
            key: format!("{KEY_PREFIX}{id}_{secret}"),
            id,
            record,
        })
    }
}

/// A queue pattern: a queue name in which `*` stands for any run of characters.
fn check_pattern(p: &str) -> Result<(), String> {
    let ok_char = |c: char| c == '*' || c.is_ascii_alphanumeric() || "_.:-".contains(c);
    if p.is_empty() || p.len() > KEY_PATTERN_BYTES_MAX || !p.chars().all(ok_char) {
        return Err(format!(
            "queue pattern {p:?} is not 1 to {KEY_PATTERN_BYTES_MAX} characters of \
             [A-Za-z0-9_.:-] and *"
        ));
    }
    Ok(())
}

/// Whether `name` matches `pattern`, where `*` matches any run (empty too) and
/// every other character itself. Linear in practice: on a mismatch it backs up
/// only to the last `*`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(roles: &[Role]) -> KeySpec {
        KeySpec {
            name: "ops".into(),
            roles: roles.to_vec(),
            ..KeySpec::default()
        }
    }

    #[test]
    fn a_new_key_parses_and_matches_only_its_own_record() {
        let a = spec(&[Role::Admin]).make(1).unwrap();
        let b = spec(&[Role::Admin]).make(1).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(
            a.key.len(),
            KEY_PREFIX.len() + KEY_ID_HEX + 1 + KEY_SECRET_HEX
        );
        let pa = Presented::parse(&a.key).unwrap();
        assert_eq!(pa.id, a.id);
        assert!(a.record.matches(&pa));
        assert!(!b.record.matches(&pa));
        // The record keeps no secret, and survives the store's round trip.
        let text = a.record.to_text();
        assert!(!text.contains(&a.key[KEY_PREFIX.len() + KEY_ID_HEX + 1..]));
        assert_eq!(KeyRecord::from_text(&text).unwrap(), a.record);
        assert!(!format!("{pa:?}{a:?}").contains(&a.key[KEY_PREFIX.len() + KEY_ID_HEX + 1..]));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let good = spec(&[Role::Reader]).make(1).unwrap().key;
        assert!(Presented::parse(&good).is_some());
        for bad in [
            "",
            "weir_",
            &good.to_uppercase(),
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.replacen("weir_", "wier_", 1),
            &good.replacen('_', "-", 2),
        ] {
            assert!(Presented::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn specs_are_checked() {
        assert_eq!(spec(&[]).make(1).unwrap_err().0, "roles");
        let mut s = spec(&[Role::Worker, Role::Worker, Role::Producer]);
        s.queues = Some(vec!["b*".into(), "a".into(), "a".into()]);
        let k = s.make(1).unwrap();
        assert_eq!(k.record.roles, [Role::Producer, Role::Worker]);
        assert_eq!(k.record.queues.unwrap(), ["a", "b*"]);
        for (queues, name, expires) in [
            (Some(vec![]), "ops", None),
            (Some(vec!["a b".into()]), "ops", None),
            (None, "", None),
            (None, "a\nb", None),
            (None, "ops", Some(1)),
        ] {
            let s = KeySpec {
                name: name.into(),
                roles: vec![Role::Reader],
                queues,
                expires_at_ms: expires,
            };
            assert!(s.make(1).is_err());
        }
    }

    #[test]
    fn roles_grant_their_own_and_admin_grants_all() {
        let producer = Roles::of(&[Role::Producer]);
        assert!(producer.grant(Roles::of(&[Role::Producer, Role::Reader])));
        assert!(!producer.grant(Roles::of(&[Role::Worker])));
        assert!(Roles::of(&[Role::Admin]).grant(Roles::of(&[Role::Worker])));
        assert!(!Roles::of(&[Role::Reader]).grant(Roles::of(&[Role::Admin])));
    }

    #[test]
    fn globs_match_runs() {
        for (p, n, m) in [
            ("emails*", "emails", true),
            ("emails*", "emails.eu", true),
            ("emails*", "email", false),
            ("*", "x", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*.eu", "mail.eu", true),
            ("*.eu", "mail.eux", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**a", "ba", true),
        ] {
            assert_eq!(glob_match(p, n), m, "{p} {n}");
        }
    }
}
