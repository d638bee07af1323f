//! Threads that work behind the log (the row writer, the log's readers, the
//! log-line writer) run at a lower CPU priority than the request threads,
//! the flusher and sled's I/O threads, which every acknowledgement waits
//! for. On a machine with fewer cores than busy threads, a row batch or a
//! reader's step that holds a core for milliseconds would otherwise delay
//! a group-commit round, and with it every booking in flight. When there is
//! spare CPU they get all of it; when there is not, they fall a little
//! behind and catch up in larger batches.

/// How much nicer than the process background threads are (nice values
/// stop at 19). Under Linux's fair scheduler a thread 10 nicer than another
/// gets about a tenth of the CPU the other gets while both are runnable.
pub const BACKGROUND_NICE_INCREMENT: i32 = 10;

/// Makes the calling thread [`BACKGROUND_NICE_INCREMENT`] nicer (on Linux a
/// nice value belongs to one thread, so the others keep theirs). Where that
/// is refused or unsupported the thread keeps its priority: it is an
/// optimisation, never a condition for working.
pub fn run_in_background() {
    if let Err(error) = rustix::process::nice(BACKGROUND_NICE_INCREMENT) {
        tracing::debug!(%error, "cannot lower a background thread's priority");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The calling thread's nice value, from /proc (field 19 of its stat,
    /// counted after the parenthesised name, which may hold spaces).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_background_thread_runs_at_the_background_nice_and_others_keep_theirs() {
        let before = own_nice();
        let background = std::thread::spawn(|| {
            super::run_in_background();
            own_nice()
        });
        assert_eq!(background.join().unwrap(), (before + super::BACKGROUND_NICE_INCREMENT).min(19));
        assert_eq!(own_nice(), before, "only the thread that asked is lowered");
    }
}
