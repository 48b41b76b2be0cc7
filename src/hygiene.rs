//! Process hygiene for programs that hold secrets: no core dumps, and no
//! ptrace or `/proc/<pid>/mem` access by other processes of the same user
//! (both follow from `PR_SET_DUMPABLE = 0`).

use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};

/// Turns off core dumps for this process. Returns a warning to log when the
/// system refuses (the program still runs).
pub fn no_core_dumps() -> Option<String> {
    let problems: Vec<String> = [
        prctl::set_dumpable(false).map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}")),
        setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("setrlimit(RLIMIT_CORE): {e}")),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "could not turn off core dumps ({}); a crash could write secrets to disk",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    fn is_dumpable() -> bool {
        nix::sys::prctl::get_dumpable().expect("PR_GET_DUMPABLE")
    }

    #[test]
    fn the_process_becomes_non_dumpable() {
        // This marks the unit-test process itself, which is harmless.
        assert!(is_dumpable());
        assert_eq!(super::no_core_dumps(), None);
        assert!(!is_dumpable());
    }
}
