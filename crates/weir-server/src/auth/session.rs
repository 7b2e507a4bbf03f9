//! The dashboard's session: a cookie a browser gets for a key (`POST
//! /v1/session`), and the CSRF token its writes must carry.
//!
//! Nothing is stored: the cookie is `<key id>.<expiry ms>.<mac>`, where the MAC is
//! HMAC-SHA256 keyed with the key's stored secret hash, which only the store and a
//! holder of the key know. So every server on one store accepts it, a revoked or
//! expired key ends its sessions, and forging one needs the key. The CSRF token is
//! an HMAC of the cookie under the same key; the page learns it from the session's
//! JSON (the cookie itself is `HttpOnly`, out of a script's reach), and a write
//! made with the cookie must echo it in `X-CSRF-Token`, which another site's page
//! cannot read or set.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::key::{self, KeyRecord};

/// The cookie's name.
pub const COOKIE: &str = "weir_session";
/// The header a cookie-authenticated write carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts (never past its key's expiry).
pub const SESSION_MS: u64 = 12 * 3600 * 1000;
/// Longest cookie value read (an id, an expiry and a MAC are far shorter).
const COOKIE_BYTES_MAX: usize = 128;

fn mac(record: &KeyRecord, what: &str, text: &str) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(&record.hash_bytes())
        .expect("HMAC takes a key of any length");
    m.update(what.as_bytes());
    m.update(b"\0");
    m.update(text.as_bytes());
    m.finalize().into_bytes().into()
}

/// A new session for the key `id`: the cookie's value and its CSRF token.
pub fn issue(id: &str, record: &KeyRecord, now_ms: u64) -> (String, String) {
    let mut until = now_ms.saturating_add(SESSION_MS);
    if let Some(at) = record.expires_at_ms {
        until = until.min(at);
    }
    let body = format!("{id}.{until}");
    let value = format!("{body}.{}", hex::encode(mac(record, "session", &body)));
    let csrf = csrf(record, &value);
    (value, csrf)
}

/// The CSRF token that goes with the cookie `value`.
pub fn csrf(record: &KeyRecord, value: &str) -> String {
    hex::encode(mac(record, "csrf", value))
}

/// A cookie value split into its key id and expiry, before its MAC is checked.
pub struct Claimed<'a> {
    pub id: &'a str,
    pub until_ms: u64,
    body: &'a str,
    mac: &'a str,
}

/// Splits a cookie value; `None` if it is not one this server makes.
pub fn claimed(value: &str) -> Option<Claimed<'_>> {
    if value.len() > COOKIE_BYTES_MAX {
        return None;
    }
    let (body, mac) = value.rsplit_once('.')?;
    let (id, until) = body.split_once('.')?;
    if !key::is_id(id) {
        return None;
    }
    Some(Claimed {
        id,
        until_ms: until.parse().ok()?,
        body,
        mac,
    })
}

impl Claimed<'_> {
    /// Whether the MAC is the key's, in constant time.
    pub fn genuine(&self, record: &KeyRecord) -> bool {
        let mut given = [0u8; 32];
        hex::decode_to_slice(self.mac, &mut given).is_ok()
            && given.ct_eq(&mac(record, "session", self.body)).into()
    }
}

/// Whether `given` is the CSRF token of the cookie `value` (constant time).
pub fn csrf_matches(record: &KeyRecord, value: &str, given: &str) -> bool {
    given
        .as_bytes()
        .ct_eq(csrf(record, value).as_bytes())
        .into()
}

/// The cookie header's `weir_session` value, if any.
pub fn from_cookies(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for a session: `HttpOnly` (no script reads it), `Secure` (browsers
/// treat `localhost` as secure, so plain HTTP on loopback works too),
/// `SameSite=Strict` (no other site's page sends it).
pub fn set_cookie(value: &str, max_age_secs: u64) -> String {
    format!("{COOKIE}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::key::{KeySpec, Role};

    fn key() -> (String, KeyRecord) {
        let k = KeySpec {
            name: "ui".into(),
            roles: vec![Role::Reader],
            ..KeySpec::default()
        }
        .make(1)
        .unwrap();
        (k.id, k.record)
    }

    #[test]
    fn a_session_is_genuine_only_for_its_key_and_unchanged() {
        let (id, record) = key();
        let (_, other) = key();
        let (value, token) = issue(&id, &record, 1_000);
        let c = claimed(&value).unwrap();
        assert_eq!((c.id, c.until_ms), (id.as_str(), 1_000 + SESSION_MS));
        assert!(c.genuine(&record));
        assert!(!c.genuine(&other));
        // A longer life written into the cookie breaks its MAC.
        let stretched = value.replacen(&format!(".{}.", 1_000 + SESSION_MS), ".99999999999999.", 1);
        assert!(!claimed(&stretched).unwrap().genuine(&record));
        assert!(csrf_matches(&record, &value, &token));
        assert!(!csrf_matches(&record, &value, &csrf(&other, &value)));
        assert!(!csrf_matches(&record, &value, ""));
    }

    #[test]
    fn a_session_ends_with_its_key() {
        let (id, mut record) = key();
        record.expires_at_ms = Some(5_000);
        let (value, _) = issue(&id, &record, 1_000);
        assert_eq!(claimed(&value).unwrap().until_ms, 5_000);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "a=1; weir_session=abc".parse().unwrap());
        assert_eq!(from_cookies(&h), Some("abc"));
        assert!(claimed("abc").is_none());
    }
}
