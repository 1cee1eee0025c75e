//! A guest's stdout and stderr cut into lines for a [`LineSink`] (on a lattice host: the
//! app's logs). Writing never blocks the guest: a sink that cannot keep up drops lines, it
//! does not hold the request up.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use shoal_lattice::Output;
use shoal_lattice::logs::MAX_LINE;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamResult};

/// Where a guest's output lines go. Called on the guest's thread: it must not block.
pub trait LineSink: Send + Sync + 'static {
    /// One line of `output`, without its line end.
    fn line(&self, output: Output, line: &str);
}

/// A shared [`LineSink`] in [`crate::guest::GuestOptions`].
#[derive(Clone)]
pub struct GuestOutput(pub Arc<dyn LineSink>);

impl std::fmt::Debug for GuestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestOutput")
    }
}

impl GuestOutput {
    /// The WASI stream for `output`, one per store.
    pub(crate) fn stream(&self, output: Output) -> LineStream {
        LineStream {
            sink: Arc::clone(&self.0),
            output,
        }
    }
}

/// What a store is given as stdout or stderr: each stream it opens is a fresh [`Lines`].
pub(crate) struct LineStream {
    sink: Arc<dyn LineSink>,
    output: Output,
}

impl IsTerminal for LineStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LineStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.lines())
    }

    // Lines are cut synchronously: no adapter task per stream.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.lines())
    }
}

impl LineStream {
    fn lines(&self) -> Lines {
        Lines {
            sink: Arc::clone(&self.sink),
            output: self.output,
            pending: Vec::new(),
        }
    }
}

/// Collects bytes until a line end (or [`MAX_LINE`]) and hands each line to the sink; what
/// is left when the stream goes away (the request ended mid-line) is a line too.
pub(crate) struct Lines {
    sink: Arc<dyn LineSink>,
    output: Output,
    pending: Vec<u8>,
}

impl Lines {
    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|byte| *byte == b'\n') {
            self.push(&bytes[..end]);
            self.emit();
            bytes = &bytes[end + 1..];
        }
        self.push(bytes);
    }

    /// Adds to the line; a line at [`MAX_LINE`] that gets more bytes is cut there first, so
    /// an endless line is never kept whole in memory.
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.pending.len() == MAX_LINE {
                self.emit();
            }
            let room = MAX_LINE - self.pending.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.pending.extend_from_slice(now);
            bytes = rest;
        }
    }

    fn emit(&mut self) {
        let line = self.pending.strip_suffix(b"\r").unwrap_or(&self.pending);
        self.sink.line(self.output, &String::from_utf8_lossy(line));
        self.pending.clear();
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl AsyncWrite for Lines {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait::async_trait]
impl Pollable for Lines {
    async fn ready(&mut self) {}
}

impl OutputStream for Lines {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(Output, String)>>);

    impl LineSink for Collect {
        fn line(&self, output: Output, line: &str) {
            self.0.lock().unwrap().push((output, line.to_owned()));
        }
    }

    fn lines_of(writes: &[&[u8]]) -> Vec<String> {
        let sink = Arc::new(Collect::default());
        let output = GuestOutput(sink.clone());
        let mut lines = output.stream(Output::Stderr).lines();
        for write in writes {
            lines.take(write);
        }
        drop(lines);
        let collected = sink.0.lock().unwrap();
        assert!(
            collected
                .iter()
                .all(|(output, _)| *output == Output::Stderr)
        );
        collected.iter().map(|(_, line)| line.clone()).collect()
    }

    #[test]
    fn writes_are_cut_into_lines_whatever_their_pieces() {
        assert_eq!(
            lines_of(&[b"one\ntw", b"o\r\n", b"", b"\nthree"]),
            ["one", "two", "", "three"]
        );
        assert_eq!(lines_of(&[b"caf\xc3", b"\xa9\n"]), ["café"]);
        assert!(lines_of(&[]).is_empty());
    }

    #[test]
    fn an_endless_line_is_cut_at_the_limit() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let lines = lines_of(&[&long[..100], &long[100..], b"\n"]);
        assert_eq!(
            lines.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 10]
        );
        let exact = vec![b'x'; MAX_LINE];
        assert_eq!(lines_of(&[&exact, b"\nnext\n"]).len(), 2);
    }
}
