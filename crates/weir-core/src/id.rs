//! Task ids: 128-bit ULIDs (48-bit millisecond timestamp + 80 random bits), so ids
//! sort by creation time and FIFO order within a priority falls out of id order.

use std::fmt;
use std::str::FromStr;

/// A task's id. Its big-endian bytes are the store key, so keys sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u128);

impl TaskId {
    /// Builds an id from a creation time and 80 random bits (the caller supplies
    /// both: the core reads no clock and owns no RNG).
    pub fn new(now_ms: u64, random: u128) -> TaskId {
        TaskId(ulid::Ulid::from_parts(now_ms, random).0)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> TaskId {
        TaskId(u128::from_be_bytes(bytes))
    }

    /// The creation time encoded in the id.
    pub fn timestamp_ms(self) -> u64 {
        ulid::Ulid(self.0).timestamp_ms()
    }

    /// The id as its 26 ASCII characters, on the stack (what `Display` writes,
    /// without `fmt`'s machinery or an allocation).
    pub fn to_text(self) -> [u8; 26] {
        let mut buf = [0u8; 26];
        ulid::Ulid(self.0).array_to_str(&mut buf);
        buf
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ulid::Ulid(self.0), f)
    }
}

/// The text was not a 26-character Crockford base32 ULID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a task id (expected a 26-character ULID)")]
pub struct ParseIdError;

impl FromStr for TaskId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<TaskId, ParseIdError> {
        ulid::Ulid::from_string(s)
            .map(|u| TaskId(u.0))
            .map_err(|_| ParseIdError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_bytes() {
        let id = TaskId::new(1_700_000_000_000, 0xdead_beef);
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        assert_eq!(TaskId::from_bytes(id.to_bytes()), id);
        assert_eq!(id.timestamp_ms(), 1_700_000_000_000);
        assert_eq!(id.to_string().len(), 26);
        assert_eq!(&id.to_text()[..], id.to_string().as_bytes());
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let a = TaskId::new(1000, u128::MAX >> 48);
        let b = TaskId::new(1001, 0);
        assert!(a < b);
        assert!(a.to_bytes() < b.to_bytes());
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!("nope".parse::<TaskId>(), Err(ParseIdError));
        assert_eq!("".parse::<TaskId>(), Err(ParseIdError));
    }
}
