//! The one duration grammar of the API: hours, minutes and seconds, in that order, each
//! optional but at least one present, e.g. `90s`, `15m`, `720h`, `1h30m`.
//!
//! It is a strict subset of Go's `time.ParseDuration`, which is what CEL's `duration()` parses,
//! so a value that passes the schema [`PATTERN`] also passes CEL, and [`parse`] reads exactly the
//! strings the pattern accepts. Days (`d`) are not part of it because CEL does not know them.
//! Digit counts are bounded so that no accepted value overflows CEL's duration range.

use std::time::Duration;

/// The grammar as a regular expression (RE2/JSON Schema/`regex` dialect).
pub const PATTERN: &str =
    r"^(?:[0-9]{1,6}h(?:[0-9]{1,7}m)?(?:[0-9]{1,7}s)?|[0-9]{1,7}m(?:[0-9]{1,7}s)?|[0-9]{1,7}s)$";

/// Longest string the grammar accepts (`999999h9999999m9999999s`).
pub const MAX_LEN: usize = 23;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string does not follow the grammar.
    #[error(
        "{0:?} is not a duration: use hours, minutes and seconds in that order, e.g. 90s, 15m, 720h, 1h30m"
    )]
    Malformed(String),
}

/// Parses a duration in the API grammar. Zero (`0s`) parses; positivity is the caller's rule.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed(text.to_owned());
    let mut rest = text.as_bytes();
    let mut total: u64 = 0;
    // Units must appear in this order, each at most once, with these digit limits.
    let units: [(u8, u64, usize); 3] = [(b'h', 3600, 6), (b'm', 60, 7), (b's', 1, 7)];
    let mut next_unit = 0;
    if rest.is_empty() {
        return Err(malformed());
    }
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let unit = *rest.get(digits).ok_or_else(malformed)?;
        let position = units[next_unit..]
            .iter()
            .position(|(u, _, _)| *u == unit)
            .ok_or_else(malformed)?;
        let (_, seconds_per_unit, max_digits) = units[next_unit + position];
        if digits == 0 || digits > max_digits {
            return Err(malformed());
        }
        let value: u64 = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(malformed)?;
        total += value * seconds_per_unit;
        next_unit += position + 1;
        rest = &rest[digits + 1..];
    }
    Ok(Duration::from_secs(total))
}

/// Formats a whole number of seconds in the grammar, largest units first (`5400s` → `1h30m`).
pub fn format(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_examples() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_cel_or_the_schema_would_refuse() {
        for bad in [
            "",
            "1d",
            "30",
            "m",
            "1m1h",
            "1s1m",
            "1h1h",
            "1.5h",
            "-1s",
            " 1s",
            "1s ",
            "1H",
            "1ms",
            "1µs",
            "1234567h",
            "12345678s",
            "+1s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn error_message_names_the_value_and_the_grammar() {
        let message = parse("7d").unwrap_err().to_string();
        assert!(
            message.contains("\"7d\"") && message.contains("720h"),
            "{message}"
        );
    }

    #[test]
    fn longest_value_fits_max_len() {
        assert_eq!("999999h9999999m9999999s".len(), MAX_LEN);
        assert!(parse("999999h9999999m9999999s").is_ok());
    }

    proptest! {
        /// The hand-written parser and the schema pattern accept exactly the same strings.
        #[test]
        fn parser_agrees_with_pattern(text in "[0-9hms.d -]{0,12}") {
            let re = regex::Regex::new(PATTERN).unwrap();
            prop_assert_eq!(parse(&text).is_ok(), re.is_match(&text), "{:?}", text);
        }

        #[test]
        fn parser_agrees_with_pattern_on_well_shaped_input(
            h in proptest::option::of(0u64..2_000_000),
            m in proptest::option::of(0u64..20_000_000),
            s in proptest::option::of(0u64..20_000_000),
        ) {
            let mut text = String::new();
            if let Some(h) = h { text.push_str(&format!("{h}h")); }
            if let Some(m) = m { text.push_str(&format!("{m}m")); }
            if let Some(s) = s { text.push_str(&format!("{s}s")); }
            let re = regex::Regex::new(PATTERN).unwrap();
            prop_assert_eq!(parse(&text).is_ok(), re.is_match(&text), "{:?}", text);
        }

        #[test]
        fn format_round_trips(secs in 0u64..(999_999 * 3600)) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
