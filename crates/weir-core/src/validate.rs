//! Input validation. Every check names the offending field, so the HTTP layer can
//! answer a precise problem document, and says which limit was exceeded.

use crate::Limits;

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// The value is malformed or out of range.
    #[error("{field}: {detail}")]
    Invalid { field: String, detail: String },
    /// The value is larger than its limit (HTTP 413).
    #[error("{field}: {detail}")]
    TooLarge { field: String, detail: String },
}

impl InvalidInput {
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> InvalidInput {
        InvalidInput::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    pub fn too_large(field: impl Into<String>, detail: impl Into<String>) -> InvalidInput {
        InvalidInput::TooLarge {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// The same error, its field named inside a larger document (`tasks[3].`).
    pub fn prefixed(self, prefix: &str) -> InvalidInput {
        match self {
            InvalidInput::Invalid { field, detail } => InvalidInput::Invalid {
                field: format!("{prefix}{field}"),
                detail,
            },
            InvalidInput::TooLarge { field, detail } => InvalidInput::TooLarge {
                field: format!("{prefix}{field}"),
                detail,
            },
        }
    }

    pub fn field(&self) -> &str {
        match self {
            InvalidInput::Invalid { field, .. } | InvalidInput::TooLarge { field, .. } => field,
        }
    }
}

/// Queue names: 1–`queue_name_bytes_max` characters of `[A-Za-z0-9_.:-]`.
pub fn queue_name(name: &str, limits: &Limits) -> Result<(), InvalidInput> {
    name_like("queue", name, limits.queue_name_bytes_max)
}

/// Schedule names follow the queue-name rules.
pub fn schedule_name(name: &str, limits: &Limits) -> Result<(), InvalidInput> {
    name_like("name", name, limits.queue_name_bytes_max)
}

/// API key ids (the `<id>` of `weir_<id>_<secret>`): 1–`KEY_ID_CHARS_MAX`
/// characters of `[a-z0-9]`, so a token splits at its underscores unambiguously.
pub fn key_id(id: &str) -> Result<(), InvalidInput> {
    let max = crate::limits::KEY_ID_CHARS_MAX;
    if id.is_empty() {
        return Err(InvalidInput::invalid("id", "must not be empty"));
    }
    if id.len() > max {
        return Err(InvalidInput::invalid(
            "id",
            format!("is {} characters long; the limit is {max}", id.len()),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        return Err(InvalidInput::invalid(
            "id",
            format!("contains {c:?}; allowed are a-z 0-9"),
        ));
    }
    Ok(())
}

/// Task kinds follow the queue-name alphabet, so they are safe in logs and metrics.
pub fn kind(kind: &str, limits: &Limits) -> Result<(), InvalidInput> {
    name_like("kind", kind, limits.kind_bytes_max)
}

fn name_like(field: &str, name: &str, max: usize) -> Result<(), InvalidInput> {
    if name.is_empty() {
        return Err(InvalidInput::invalid(field, "must not be empty"));
    }
    if name.len() > max {
        return Err(InvalidInput::invalid(
            field,
            format!("is {} bytes long; the limit is {max}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(InvalidInput::invalid(
            field,
            format!("contains {c:?}; allowed are A-Z a-z 0-9 _ . : -"),
        ));
    }
    Ok(())
}

/// Free text with a byte limit and no control characters other than tab/newline
/// (idempotency keys, worker names).
pub fn text(field: &str, value: &str, max: usize) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(InvalidInput::invalid(
            field,
            format!("is {} bytes long; the limit is {max}", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(InvalidInput::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A size limit on a JSON document (payload, result) or error text.
pub fn size(field: &str, len: usize, max: usize) -> Result<(), InvalidInput> {
    if len > max {
        return Err(InvalidInput::too_large(
            field,
            format!("is {len} bytes; the limit is {max}"),
        ));
    }
    Ok(())
}

/// A JSON value the server stores and hands out again (a payload, a result): within
/// `json_depth_max` levels of nesting and valid Unicode, so every client can decode
/// it. `text` is already valid JSON (a `RawValue`); its size is checked apart.
pub fn json_value(field: &str, text: &[u8], limits: &Limits) -> Result<(), InvalidInput> {
    crate::json::check(text, limits.json_depth_max)
        .map_err(|problem| InvalidInput::invalid(field, problem.to_string()))
}

/// A number in `min..=max`.
pub fn range(field: &str, value: u64, min: u64, max: u64) -> Result<(), InvalidInput> {
    if value < min || value > max {
        return Err(InvalidInput::invalid(
            field,
            format!("is {value}; it must be between {min} and {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        let l = Limits::default();
        for ok in ["a", "emails", "a.b:c-d_e", &"x".repeat(128)] {
            assert_eq!(queue_name(ok, &l), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ü", &"x".repeat(129), "a\0"] {
            let e = queue_name(bad, &l).unwrap_err();
            assert_eq!(e.field(), "queue", "{bad}");
        }
    }

    #[test]
    fn key_ids() {
        for ok in ["a", "0", "k1x9", &"z".repeat(32)] {
            assert_eq!(key_id(ok), Ok(()), "{ok}");
        }
        // Upper case, underscores (the token's separator) and any other byte are
        // refused, as is an empty or overlong id.
        for bad in ["", "A", "a_b", "a-b", "a b", "é", "a\0", &"z".repeat(33)] {
            let e = key_id(bad).unwrap_err();
            assert_eq!(e.field(), "id", "{bad:?}");
        }
    }

    #[test]
    fn sizes_and_ranges() {
        assert!(size("payload", 10, 10).is_ok());
        assert!(matches!(
            size("payload", 11, 10),
            Err(InvalidInput::TooLarge { .. })
        ));
        assert!(range("max", 0, 1, 5).is_err());
        assert!(range("max", 5, 1, 5).is_ok());
        assert!(text("key", "a\nb", 10).is_err());
        assert!(text("key", "abc", 2).is_err());
        assert!(text("key", "abc", 3).is_ok());
    }

    #[test]
    fn json_values_name_their_field() {
        let l = Limits::default();
        assert_eq!(json_value("payload", br#"{"ok":1}"#, &l), Ok(()));
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let e = json_value("payload", deep.as_bytes(), &l).unwrap_err();
        assert_eq!(e.field(), "payload");
        assert!(e.to_string().contains("the limit is 64"), "{e}");
        let e = json_value("result", br#""\ud800""#, &l).unwrap_err();
        assert_eq!(e.field(), "result");
        assert!(e.to_string().contains("lone surrogate"), "{e}");
    }
}
