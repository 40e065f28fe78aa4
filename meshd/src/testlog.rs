//! For tests of what meshd logs: run a closure under a subscriber that writes into a buffer,
//! formatted as the daemon's own (no colour, no target), and get the text back.

use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `f`'s result and what it logged at `max` or above, on this thread.
pub(crate) fn capture<T>(max: tracing::Level, f: impl FnOnce() -> T) -> (T, String) {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(max)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = buffer.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (out, String::from_utf8_lossy(&text).into_owned())
}
