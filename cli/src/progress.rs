//! Progress bars for blob transfers; drawn only on a terminal and only for large blobs.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use shoal_oci::progress::Progress;

/// Blobs below this size transfer too quickly for a bar to help.
const MIN_SIZE_FOR_A_BAR: u64 = 1024 * 1024;

/// One bar at a time, on stderr; indicatif hides it when stderr is not a terminal.
#[derive(Default)]
pub struct Bars {
    current: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn begin(&self, label: &str, total: u64) {
        if total < MIN_SIZE_FOR_A_BAR {
            return;
        }
        let bar = ProgressBar::new(total).with_message(label.to_owned());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        if let Ok(mut current) = self.current.lock() {
            *current = Some(bar);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(current) = self.current.lock()
            && let Some(bar) = current.as_ref()
        {
            bar.inc(bytes);
        }
    }

    fn end(&self) {
        if let Ok(mut current) = self.current.lock()
            && let Some(bar) = current.take()
        {
            bar.finish_and_clear();
        }
    }
}
