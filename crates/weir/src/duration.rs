//! Parsing of the CLI's durations: a bare number is milliseconds; `ms`, `s`, `m`
//! and `h` suffixes name the unit (`500ms`, `1.5s`, `5m`). And of its rates:
//! `10000/s`, `600/m`, `5/h`, or a bare number per second.

use std::time::Duration;

/// Longest duration any flag accepts (a year); bounds the arithmetic below.
const DURATION_MS_MAX: f64 = 366.0 * 24.0 * 3600.0 * 1000.0;

/// Parses `500`, `500ms`, `10s`, `1.5s`, `5m` or `2h`. Used as a clap value parser.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a duration (expected e.g. 500ms, 10s, 5m)"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (bad number `{number}`)"))?;
    let unit_ms = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    let ms = value * unit_ms;
    if !ms.is_finite() || ms > DURATION_MS_MAX {
        return Err(format!("`{text}` is too long (at most a year)"));
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

/// A request rate: `requests` per `per` (a second, a minute or an hour).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    pub per: Duration,
}

/// Parses `10000/s`, `600/m`, `5/h`, or a bare `10000` (per second). Used as a
/// clap value parser.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let (number, per) = rate_parts(text)?;
    let requests: u32 = number.parse().map_err(|_| {
        format!(
            "`{text}` is not a rate (expected a whole number of requests, e.g. 10000/s, 600/m, 5/h)"
        )
    })?;
    if requests == 0 {
        return Err(format!("`{text}`: the rate must be at least 1 request"));
    }
    Ok(Rate { requests, per })
}

/// Parses a queue's dispatch rate in tasks per second: `50/s`, `600/m`, `10/h`,
/// or a bare number (per second); fractions are allowed (`0.5/s`).
pub fn parse_per_second(text: &str) -> Result<f64, String> {
    let (number, per) = rate_parts(text)?;
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n / per.as_secs_f64()),
        _ => Err(format!("`{text}` is not a rate (e.g. 50/s, 600/m, 10/h)")),
    }
}

/// A rate's number (trimmed) and the span it is per (`/s`, `/m`, `/h`; none is
/// per second).
fn rate_parts(text: &str) -> Result<(&str, Duration), String> {
    let t = text.trim();
    let (number, unit) = t.split_once('/').unwrap_or((t, "s"));
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `/{other}` (use /s, /m or /h)"
            ))
        }
    };
    Ok((number.trim(), per))
}

/// A duration as a person would write it back: `30s`, `5m`, `1500ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = as_ms(d);
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// A duration flag's value in whole milliseconds, for the wire.
pub fn as_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn per_second_rates() {
        use super::parse_per_second;
        assert_eq!(parse_per_second("50/s"), Ok(50.0));
        assert_eq!(parse_per_second("600/m"), Ok(10.0));
        assert_eq!(parse_per_second("18/h"), Ok(0.005));
        assert_eq!(parse_per_second("0.5"), Ok(0.5));
        for bad in ["0/s", "-1/s", "x/s", "5/d", "inf", "NaN/s", ""] {
            assert!(parse_per_second(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        use super::{parse_rate, Rate};
        use std::time::Duration;
        let rate = |requests, secs| Rate {
            requests,
            per: Duration::from_secs(secs),
        };
        assert_eq!(parse_rate("10000/s"), Ok(rate(10_000, 1)));
        assert_eq!(parse_rate("10000"), Ok(rate(10_000, 1)));
        assert_eq!(parse_rate(" 600 / m "), Ok(rate(600, 60)));
        assert_eq!(parse_rate("5/h"), Ok(rate(5, 3600)));
        for bad in [
            "",
            "/s",
            "0/s",
            "0",
            "1.5/s",
            "-1/s",
            "10/d",
            "10/",
            "ten/s",
            "4294967296/s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} was accepted");
        }
    }

    use super::*;

    #[test]
    fn accepts() {
        let cases = [
            ("0", 0),
            ("500", 500),
            ("500ms", 500),
            ("10s", 10_000),
            ("1.5s", 1_500),
            ("5m", 300_000),
            ("2h", 7_200_000),
            (" 7 s ", 7_000),
            ("0.5ms", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(
                as_ms(parse_duration(text).unwrap()),
                ms,
                "{text} should be {ms} ms"
            );
        }
        assert_eq!(parse_duration("0.5ms").unwrap(), Duration::from_micros(500));
    }

    #[test]
    fn formats_back() {
        for (text, shown) in [
            ("30s", "30s"),
            ("20ms", "20ms"),
            ("1.5s", "1500ms"),
            ("5m", "5m"),
            ("120m", "2h"),
            ("0", "0s"),
        ] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), shown);
        }
    }

    #[test]
    fn rejects() {
        for text in [
            "",
            "s",
            "-5s",
            "10x",
            "1.2.3s",
            "5 minutes",
            "9999999h",
            "ms10",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} should be refused");
        }
    }
}
