//! Durations on the command line (`5s`, `1m30s`, `2h`), bounded so that no flag can make a
//! deadline overflow: ten years is longer than anything Shoal waits for.

use std::time::Duration;

/// The longest duration a flag takes.
const LONGEST: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a flag's duration, refusing ones past ten years.
pub fn parse(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value.trim())
        .map_err(|_| format!("{value:?} is not a duration; use a duration like 5s, 500ms or 1m"))?;
    if duration > LONGEST {
        return Err(format!("{value:?} is longer than ten years"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_are_bounded() {
        assert_eq!(
            super::parse("1m30s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert!(super::parse("18446744073709551615s").is_err());
        assert!(super::parse("soon").is_err());
    }
}
