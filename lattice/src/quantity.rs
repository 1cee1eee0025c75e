//! Quantities in manifests and records, written the way Kubernetes users write them:
//! memory as `64Mi` or `1G`, CPU as `250m` or `0.5`, durations as `5s` or `1m30s`.
//!
//! Each type parses from a string (or a plain number), serializes back to its canonical
//! string, and says in its parse error what a valid value looks like.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Memory(pub u64);

/// A CPU quantity in millicores (1000 = one core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millicores(pub u32);

/// A span of time, written like `5s`, `500ms` or `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub Duration);

impl FromStr for Memory {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
            return value
                .parse()
                .map(Memory)
                .map_err(|_| format!("{value:?} is too large"));
        }
        value
            .parse::<bytesize::ByteSize>()
            .map(|size| Memory(size.as_u64()))
            .map_err(|_| {
                format!("{value:?} is not a memory size; use a size like 64Mi, 1Gi or 512M")
            })
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "Ti"),
            (1 << 30, "Gi"),
            (1 << 20, "Mi"),
            (1 << 10, "Ki"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for Millicores {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let millicores = match value.strip_suffix('m') {
            Some(millis) => millis.parse::<u32>().ok(),
            None => value
                .parse::<f64>()
                .ok()
                .filter(|cores| cores.is_finite() && *cores > 0.0 && *cores <= 1_000_000.0)
                .map(|cores| (cores * 1000.0).round() as u32),
        };
        match millicores {
            Some(millicores) if millicores > 0 => Ok(Millicores(millicores)),
            _ => Err(format!(
                "{value:?} is not a CPU quantity; use millicores like 250m, or cores like 0.5"
            )),
        }
    }
}

impl fmt::Display for Millicores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.0)
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        humantime::parse_duration(value.trim())
            .map(Span)
            .map_err(|_| {
                format!("{value:?} is not a duration; use a duration like 5s, 500ms or 1m")
            })
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Serde for types written as strings, also accepting plain numbers (bytes for memory,
/// cores for CPU, seconds for spans).
macro_rules! string_serde {
    ($type:ty, $number:expr) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Text(String),
                    Number(serde_json::Number),
                }
                let text = match Raw::deserialize(deserializer)? {
                    Raw::Text(text) => text,
                    Raw::Number(number) => $number(number.to_string()),
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_serde!(Memory, |number: String| number);
string_serde!(Millicores, |number: String| number);
string_serde!(Span, |number: String| format!("{number}s"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_kubernetes_and_iec_units() {
        assert_eq!("64Mi".parse::<Memory>().unwrap(), Memory(64 << 20));
        assert_eq!("1Gi".parse::<Memory>().unwrap(), Memory(1 << 30));
        assert_eq!("512".parse::<Memory>().unwrap(), Memory(512));
        assert_eq!("100MiB".parse::<Memory>().unwrap(), Memory(100 << 20));
        assert!("64Q".parse::<Memory>().unwrap_err().contains("64Mi"));
        assert_eq!(Memory(64 << 20).to_string(), "64Mi");
        assert_eq!(Memory(1000).to_string(), "1000");
    }

    #[test]
    fn cpu_reads_millicores_and_cores() {
        assert_eq!("250m".parse::<Millicores>().unwrap(), Millicores(250));
        assert_eq!("0.5".parse::<Millicores>().unwrap(), Millicores(500));
        assert_eq!("2".parse::<Millicores>().unwrap(), Millicores(2000));
        for bad in ["0", "0m", "-1", "lots", "1.5x"] {
            assert!(bad.parse::<Millicores>().is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities_round_trip_through_serde_and_accept_numbers() {
        let memory: Memory = serde_json::from_str("\"64Mi\"").unwrap();
        assert_eq!(serde_json::to_string(&memory).unwrap(), "\"64Mi\"");
        let cpu: Millicores = serde_json::from_str("2").unwrap();
        assert_eq!(cpu, Millicores(2000));
        let span: Span = serde_json::from_str("\"1m30s\"").unwrap();
        assert_eq!(span.0, Duration::from_secs(90));
        let span: Span = serde_json::from_str("5").unwrap();
        assert_eq!(span.0, Duration::from_secs(5));
    }
}
