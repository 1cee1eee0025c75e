//! Reading a lattice journal (logs, events) from the command line: where `--since` starts
//! it, reading records as they come until the backlog ends (or, following, until ctrl-c),
//! and printing a line at a time to a pipe that may close.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;
use shoal_lattice::records::now_millis;
use shoal_lattice::{Reader, Start};

/// Where reading starts: `since` ago, or the oldest record kept.
pub fn start(since: Option<Duration>) -> Start {
    match since {
        Some(since) => Start::Since(
            now_millis().saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
        ),
        None => Start::Oldest,
    }
}

/// Hands each record to `each`, with whether the backlog has been read by then, until the
/// reader ends (not following) or ctrl-c.
pub async fn read<T: DeserializeOwned + shoal_lattice::journal::Attributed>(
    reader: &mut Reader<T>,
    mut each: impl FnMut(T, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let stop = crate::signals::shutdown();
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            () = &mut stop => return Ok(()),
            next = reader.next() => next,
        };
        let Some(record) = next else { return Ok(()) };
        each(record?, reader.caught_up())?;
    }
}

/// Writes `line` and a line end to `out` at once; a closed pipe (`| head`) ends the process
/// quietly, as it does for other tools.
pub fn print_line(out: &mut impl Write, line: &str) -> anyhow::Result<()> {
    match out
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        result => result.context("cannot write to stdout"),
    }
}
