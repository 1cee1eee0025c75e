//! Running `wrk` and reading its `--latency` report.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;

/// What wrk reported.
pub struct Load {
    pub requests_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
}

/// Drives `url` with wrk for `seconds` and reads its report.
pub fn run(threads: u32, connections: u32, seconds: u64, url: &str) -> anyhow::Result<Load> {
    let output = Command::new("wrk")
        .args([
            format!("-t{threads}"),
            format!("-c{connections}"),
            format!("-d{seconds}s"),
            "--latency".to_owned(),
            url.to_owned(),
        ])
        .output()
        .context("cannot run wrk (apt install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse(&text).with_context(|| format!("cannot read wrk's report:\n{text}"))
}

/// Reads requests/s, p50, p99 and errors from wrk's `--latency` report.
pub fn parse(report: &str) -> Option<Load> {
    let mut requests_per_second = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0;
    for line in report.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(value)) => requests_per_second = value.parse().ok(),
            (Some("50%"), Some(value)) => p50 = parse_latency(value),
            (Some("99%"), Some(value)) => p99 = parse_latency(value),
            _ => {}
        }
        if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += count.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(socket) = line.strip_prefix("Socket errors:") {
            errors += socket
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(Load {
        requests_per_second: requests_per_second?,
        p50: p50?,
        p99: p99?,
        errors,
    })
}

/// Parses wrk's latency figures: `245.00us`, `1.23ms`, `2.01s`, `1.05m`.
fn parse_latency(value: &str) -> Option<Duration> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let report = "Running 10s test @ http://127.0.0.1:1/\n  2 threads and 32 connections\n  Latency Distribution\n     50%  245.00us\n     75%    1.10ms\n     90%    2.00ms\n     99%    3.50ms\n  123 requests in 10.00s, 1.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  12345.67\nTransfer/sec:      1.00MB\n";
        let load = parse(report).unwrap();
        assert!((load.requests_per_second - 12345.67).abs() < 1e-6);
        assert_eq!(load.p50, Duration::from_micros(245));
        assert_eq!(load.p99, Duration::from_micros(3500));
        assert_eq!(load.errors, 7);
    }
}
