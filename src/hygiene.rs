//! Process hygiene for programs that hold secrets: no core dumps, and no
//! ptrace or /proc/<pid>/mem access by other processes of the same user
//! (both follow from `PR_SET_DUMPABLE = 0`).

/// Turns off core dumps for this process. Returns a warning to log when the
/// system refuses (the program still runs).
pub fn no_core_dumps() -> Option<String> {
    // SAFETY: prctl and setrlimit with valid arguments have no memory effects.
    let dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let core = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) };
    match (dumpable, core) {
        (0, 0) => None,
        _ => Some(format!(
            "could not turn off core dumps ({}); a crash could write secrets to disk",
            std::io::Error::last_os_error()
        )),
    }
}

/// Whether this process is marked non-dumpable.
pub fn is_dumpable() -> bool {
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_becomes_non_dumpable() {
        // This marks the unit-test process itself, which is harmless.
        assert!(super::is_dumpable());
        assert_eq!(super::no_core_dumps(), None);
        assert!(!super::is_dumpable());
    }
}
