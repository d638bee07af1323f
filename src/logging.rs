//! Log lines leave the request path through a bounded queue: the thread
//! that formats a line hands it to a writer thread instead of writing to
//! stderr itself (a write system call per request line costs more than the
//! rest of a small request). If the queue is full, lines are dropped and
//! counted rather than slowing requests down. Under load the writer gathers
//! lines for a few milliseconds between writes, so neither it nor the
//! request threads pay a wake-up and a system call per line.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines waiting for the writer, at most.
const QUEUE_LINES_MAX: usize = 65_536;

/// After writing what was queued, the writer waits this long before looking
/// again (blocking only when the queue was empty).
const GATHER: Duration = Duration::from_millis(5);

/// The `MakeWriter` handed to tracing.
#[derive(Clone)]
pub struct Logs {
    sender: SyncSender<Vec<u8>>,
    state: Arc<State>,
}

struct State {
    waiting: AtomicUsize,
    dropped: AtomicU64,
}

/// One log line being formatted; sent when dropped.
pub struct Line {
    buffer: Vec<u8>,
    logs: Logs,
}

impl Logs {
    /// Starts the writer thread (writing to stderr).
    pub fn start() -> std::io::Result<Logs> {
        let (sender, receiver) = sync_channel(QUEUE_LINES_MAX);
        let state = Arc::new(State { waiting: AtomicUsize::new(0), dropped: AtomicU64::new(0) });
        let writer_state = state.clone();
        std::thread::Builder::new().name("log-writer".into()).spawn(move || write_lines(&receiver, &writer_state))?;
        Ok(Logs { sender, state })
    }

    /// Waits (bounded) until every queued line is written.
    pub fn drain(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.state.waiting.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn write_lines(receiver: &Receiver<Vec<u8>>, state: &State) {
    graph::background::run_in_background();
    let mut stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let mut reported_drops = 0;
    while let Ok(line) = receiver.recv() {
        let _ = stderr.write_all(&line);
        let mut written = 1;
        // Write everything queued, then gather for a moment while lines
        // keep coming; go back to blocking once a look finds none. Lines
        // count as written (for `drain`) once flushed.
        loop {
            while let Ok(line) = receiver.try_recv() {
                let _ = stderr.write_all(&line);
                written += 1;
            }
            let dropped = state.dropped.load(Ordering::Relaxed);
            if dropped > reported_drops {
                let _ = writeln!(
                    stderr,
                    "marquee: {} log lines dropped (the log writer fell behind)",
                    dropped - reported_drops
                );
                reported_drops = dropped;
            }
            let _ = stderr.flush();
            state.waiting.fetch_sub(written, Ordering::AcqRel);
            if written == 0 {
                break;
            }
            written = 0;
            std::thread::sleep(GATHER);
        }
    }
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        self.logs.state.waiting.fetch_add(1, Ordering::AcqRel);
        match self.logs.sender.try_send(std::mem::take(&mut self.buffer)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.logs.state.waiting.fetch_sub(1, Ordering::AcqRel);
                self.logs.state.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { buffer: Vec::with_capacity(256), logs: self.clone() }
    }
}
