//! A check that a JSON text is one every client can read back: nested at most
//! `json_depth_max` levels, and valid Unicode (no lone UTF-16 surrogate escapes).
//!
//! The server stores payloads and results as the producer's or worker's own bytes
//! (serde_json's `RawValue`), and serde_json skips such values without a depth
//! limit and without pairing `\uD800`-style escapes. A typed decoder then refuses
//! them: serde_json stops at 128 levels, Python's `json` raises `RecursionError`
//! near 1000, and a lone surrogate is no valid `String` in Rust. So the server
//! checks what it stores, and every client can decode what it hands out.
//!
//! One pass over the bytes, no allocation. It expects text that is already known to
//! be syntactically valid JSON (a `RawValue`): it does not check the grammar, but it
//! never panics or reads out of bounds on any input.

use std::fmt;

/// Why a JSON text is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonProblem {
    /// Arrays and objects nest deeper than `max` levels; byte `at` opens the first
    /// level beyond it.
    TooDeep { max: usize, at: usize },
    /// A `\uXXXX` escape is a UTF-16 surrogate without its other half, at byte `at`
    /// (the backslash). `unit` is the escape's value.
    LoneSurrogate { unit: u16, at: usize },
    /// The text ends inside a string or an escape (not valid JSON).
    Truncated,
}

impl fmt::Display for JsonProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonProblem::TooDeep { max, at } => write!(
                f,
                "nests arrays and objects more than {max} levels deep (at byte {at}); the limit is {max}"
            ),
            JsonProblem::LoneSurrogate { unit, at } => write!(
                f,
                "contains the lone surrogate \\u{unit:04x} (at byte {at}); JSON text must be valid Unicode, so a \\uD800-\\uDBFF escape must be followed by a \\uDC00-\\uDFFF one"
            ),
            JsonProblem::Truncated => f.write_str("is not complete JSON text"),
        }
    }
}

/// Checks the JSON text `text`: at most `depth_max` levels of arrays and objects
/// (a scalar is depth 0, `[]` and `{}` are depth 1), and every `\u` surrogate
/// escape paired (a high `\uD800`–`\uDBFF` followed at once by a low
/// `\uDC00`–`\uDFFF`; no low one alone). Raw bytes are not checked for UTF-8: a
/// `&str` or a `RawValue` already is.
pub fn check(text: &[u8], depth_max: usize) -> Result<(), JsonProblem> {
    let mut depth = 0usize;
    let mut i = 0;
    let n = text.len();
    loop {
        // Numbers, literals, commas, colons and whitespace: skipped a table look-up
        // per byte.
        while i < n && CLASS[text[i] as usize] == PLAIN {
            i += 1;
        }
        if i >= n {
            return Ok(());
        }
        match CLASS[text[i] as usize] {
            OPEN => {
                depth += 1;
                if depth > depth_max {
                    return Err(JsonProblem::TooDeep {
                        max: depth_max,
                        at: i,
                    });
                }
            }
            // Valid JSON closes only what it opened; on other text this must not
            // underflow.
            CLOSE => depth = depth.saturating_sub(1),
            _ => i = string_end(text, i + 1)?,
        }
        i += 1;
    }
}

const PLAIN: u8 = 0;
const OPEN: u8 = 1;
const CLOSE: u8 = 2;
const QUOTE: u8 = 3;

/// What each byte outside a string is to `check`.
const CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    t[b'[' as usize] = OPEN;
    t[b'{' as usize] = OPEN;
    t[b']' as usize] = CLOSE;
    t[b'}' as usize] = CLOSE;
    t[b'"' as usize] = QUOTE;
    t
};

/// Bytes that end a run of plain string content: `"` and `\`.
const STRING_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Scans a string whose content starts at `i` (just after its opening quote) and
/// returns the index of its closing quote, checking its `\u` escapes on the way.
#[inline]
fn string_end(text: &[u8], mut i: usize) -> Result<usize, JsonProblem> {
    let n = text.len();
    loop {
        // The common case: a run of plain bytes, eight at a time while no word
        // holds a quote or a backslash.
        while let Some(word) = text.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if has_byte(w, b'"') | has_byte(w, b'\\') != 0 {
                break;
            }
            i += 8;
        }
        while i < n && !STRING_SPECIAL[text[i] as usize] {
            i += 1;
        }
        if i >= n {
            return Err(JsonProblem::Truncated);
        }
        if text[i] == b'"' {
            return Ok(i);
        }
        // A backslash: the escape is the next byte; only `\u` needs a look.
        let Some(&kind) = text.get(i + 1) else {
            return Err(JsonProblem::Truncated);
        };
        if kind != b'u' {
            i += 2;
            continue;
        }
        let unit = hex4(text, i + 2)?;
        match unit {
            0xD800..=0xDBFF => {
                // A high surrogate must be followed at once by `\u` + a low one.
                let paired = text.get(i + 6) == Some(&b'\\')
                    && text.get(i + 7) == Some(&b'u')
                    && matches!(hex4(text, i + 8), Ok(0xDC00..=0xDFFF));
                if !paired {
                    return Err(JsonProblem::LoneSurrogate { unit, at: i });
                }
                i += 12;
            }
            0xDC00..=0xDFFF => return Err(JsonProblem::LoneSurrogate { unit, at: i }),
            _ => i += 6,
        }
    }
}

/// Nonzero exactly when some byte of `w` is `b` (the classic SWAR zero-byte test
/// on `w ^ bbbbbbbb`).
#[inline]
fn has_byte(w: u64, b: u8) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let x = w ^ (LO * b as u64);
    x.wrapping_sub(LO) & !x & HI
}

/// The value of the four hex digits at `i`. Anything but four hex digits cannot
/// come from a `RawValue`; it counts as truncated text.
#[inline]
fn hex4(text: &[u8], i: usize) -> Result<u16, JsonProblem> {
    let Some(digits) = text.get(i..i + 4) else {
        return Err(JsonProblem::Truncated);
    };
    let mut v = 0u16;
    for &d in digits {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(JsonProblem::Truncated),
        };
        v = (v << 4) | x as u16;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_at_the_limit_passes_one_more_fails() {
        for max in [0, 1, 2, 64] {
            assert_eq!(check(nested(max).as_bytes(), max), Ok(()), "max {max}");
            assert_eq!(
                check(nested(max + 1).as_bytes(), max),
                Err(JsonProblem::TooDeep { max, at: max }),
                "max {max}"
            );
        }
        // Objects count like arrays, and siblings do not add up.
        let obj = r#"{"a":{"b":[1,{"c":2}]},"d":[[]]}"#;
        assert_eq!(check(obj.as_bytes(), 4), Ok(()));
        assert!(matches!(
            check(obj.as_bytes(), 3),
            Err(JsonProblem::TooDeep { max: 3, at: 13 })
        ));
        // Scalars are depth 0.
        for scalar in ["1", "null", r#""s""#, "-1.5e3", "true"] {
            assert_eq!(check(scalar.as_bytes(), 0), Ok(()), "{scalar}");
        }
    }

    #[test]
    fn the_issues_poison_payloads() {
        assert!(check(nested(200).as_bytes(), 64).is_err());
        assert!(check(nested(100_000).as_bytes(), 64).is_err());
        assert_eq!(
            check(br#""\ud800""#, 64),
            Err(JsonProblem::LoneSurrogate {
                unit: 0xD800,
                at: 1
            })
        );
        assert_eq!(check(br#"{"ok":1}"#, 64), Ok(()));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let s = format!(
            r#"{{"a":"{}{}","b":"\"[{{"}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert_eq!(check(s.as_bytes(), 1), Ok(()));
        // An escaped quote does not end the string.
        assert_eq!(check(br#"["\"[[[[", 1]"#, 1), Ok(()));
        // An escaped backslash does end an escape: the quote after it closes.
        assert_eq!(check(br#"["\\", [1]]"#, 2), Ok(()));
        assert!(check(br#"["\\", [1]]"#, 1).is_err());
    }

    #[test]
    fn surrogates() {
        let table: &[(&str, Result<(), JsonProblem>)] = &[
            // A pair (U+1F600), in either case of hex digit.
            (r#""\ud83d\ude00""#, Ok(())),
            (r#""\uD83D\uDE00""#, Ok(())),
            (r#""a\ud83d\ude00b\uDBFF\uDFFF""#, Ok(())),
            // Non-surrogate escapes and raw non-ASCII text.
            (r#""\u0000\u00e9\uffff\n\"\\\/""#, Ok(())),
            ("\"\u{1F600}é\"", Ok(())),
            // An escaped backslash before `u` is not an escape.
            (r#""\\ud800""#, Ok(())),
            (r#""\\\\ud800""#, Ok(())),
            // Lone high, at the end and before other text.
            (
                r#""\ud800""#,
                Err(JsonProblem::LoneSurrogate {
                    unit: 0xD800,
                    at: 1,
                }),
            ),
            (
                r#""x\uDBFFy""#,
                Err(JsonProblem::LoneSurrogate {
                    unit: 0xDBFF,
                    at: 2,
                }),
            ),
            // High followed by a non-low escape, by another high, by `\n`.
            (
                r#""\ud800\u0041""#,
                Err(JsonProblem::LoneSurrogate {
                    unit: 0xD800,
                    at: 1,
                }),
            ),
            (
                r#""\ud800\ud800\udc00""#,
                Err(JsonProblem::LoneSurrogate {
                    unit: 0xD800,
                    at: 1,
                }),
            ),
            (
                r#""\ud800\n""#,
                Err(JsonProblem::LoneSurrogate {
                    unit: 0xD800,
                    at: 1,
                }),
            ),
            // Lone low, and a low before a high (the wrong order).
            (
                r#""\udc00""#,
                Err(JsonProblem::LoneSurrogate {
                    unit: 0xDC00,
                    at: 1,
                }),
            ),
            (
                r#""\ude00\ud83d""#,
                Err(JsonProblem::LoneSurrogate {
                    unit: 0xDE00,
                    at: 1,
                }),
            ),
            // In an object key too.
            (
                r#"{"\udfff":1}"#,
                Err(JsonProblem::LoneSurrogate {
                    unit: 0xDFFF,
                    at: 2,
                }),
            ),
        ];
        for (text, want) in table {
            assert_eq!(check(text.as_bytes(), 64), *want, "{text}");
        }
    }

    #[test]
    fn broken_text_is_refused_without_panicking() {
        for text in [r#""abc"#, r#""\"#, r#""\u12"#, r#""\uzzzz""#] {
            assert_eq!(
                check(text.as_bytes(), 64),
                Err(JsonProblem::Truncated),
                "{text}"
            );
        }
        assert!(check(br#""\ud800\u"#, 64).is_err());
        assert_eq!(check(b"]]]", 64), Ok(()));
    }

    /// Arbitrary JSON values, possibly deep, with strings drawn from every char
    /// (surrogate pairs included: serde_json escapes nothing above U+001F, so also
    /// encode some chars as `\u` pairs by hand).
    fn json_value() -> impl Strategy<Value = serde_json_like::V> {
        use serde_json_like::V;
        let leaf = prop_oneof![
            Just(V::Null),
            any::<i64>().prop_map(V::Num),
            any::<String>().prop_map(V::Str),
            any::<char>().prop_map(V::Escaped),
        ];
        leaf.prop_recursive(12, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(V::Arr),
                prop::collection::vec((any::<String>(), inner), 0..4).prop_map(V::Obj),
            ]
        })
    }

    /// A tiny JSON writer, so the tests need no serde_json (the core depends on
    /// no JSON library).
    mod serde_json_like {
        use std::fmt::Write;

        #[derive(Clone, Debug)]
        pub enum V {
            Null,
            Num(i64),
            Str(String),
            /// A one-char string written as `\u` escapes (a pair above U+FFFF).
            Escaped(char),
            Arr(Vec<V>),
            Obj(Vec<(String, V)>),
        }

        impl V {
            pub fn depth(&self) -> usize {
                match self {
                    V::Arr(items) => 1 + items.iter().map(V::depth).max().unwrap_or(0),
                    V::Obj(items) => 1 + items.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
                    _ => 0,
                }
            }

            pub fn write(&self, out: &mut String) {
                match self {
                    V::Null => out.push_str("null"),
                    V::Num(n) => write!(out, "{n}").unwrap(),
                    V::Str(s) => string(s, out),
                    V::Escaped(c) => {
                        out.push('"');
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            write!(out, "\\u{u:04x}").unwrap();
                        }
                        out.push('"');
                    }
                    V::Arr(items) => {
                        out.push('[');
                        for (i, v) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            v.write(out);
                        }
                        out.push(']');
                    }
                    V::Obj(items) => {
                        out.push('{');
                        for (i, (k, v)) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            string(k, out);
                            out.push(':');
                            v.write(out);
                        }
                        out.push('}');
                    }
                }
            }
        }

        fn string(s: &str, out: &mut String) {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
    }

    proptest! {
        /// Valid Unicode JSON passes exactly when its depth is within the limit.
        #[test]
        fn valid_text_passes_iff_within_depth(v in json_value(), max in 0usize..8) {
            let mut text = String::new();
            v.write(&mut text);
            let got = check(text.as_bytes(), max);
            if v.depth() <= max {
                prop_assert_eq!(got, Ok(()), "{}", text);
            } else {
                let is_too_deep = matches!(got, Err(JsonProblem::TooDeep { .. }));
                prop_assert!(is_too_deep, "{} -> {:?}", text, got);
            }
        }

        /// A lone surrogate escape anywhere in a string is found.
        #[test]
        fn a_lone_surrogate_is_found(
            before in "[a-z\\\\\"]{0,5}",
            unit in 0xD800u16..=0xDFFF,
            after in "[a-z]{0,5}",
        ) {
            let before = before.replace('\\', "\\\\").replace('"', "\\\"");
            let text = format!(r#"["{before}\u{unit:04X}{after}"]"#);
            let is_lone = matches!(
                check(text.as_bytes(), 64),
                Err(JsonProblem::LoneSurrogate { unit: u, .. }) if u == unit
            );
            prop_assert!(is_lone, "{}", text);
        }

        /// Any bytes at all: an answer, never a panic.
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..4) {
            let _ = check(&bytes, max);
        }
    }
}
