//! The watched directory (`--promotions-dir`), its pure part: the layout,
//! which entries are files to load, their names once loaded or failed, and
//! what the upload's answer means for the file. The I/O is [`crate::watcher`].
//!
//! ```text
//! <dir>/name.csv                 a complete file: taken (a writer writes `.name.csv`, or elsewhere, then renames)
//! <dir>/.loading/name.csv        claimed by a command instance, which holds an exclusive lock on it while loading
//! <dir>/done/g<n>.name.csv       loaded as generation n (202)
//! <dir>/failed/<ms>.name.csv     refused, with <ms>.name.csv.error holding the one-line reason
//! ```

use std::ffi::OsStr;

/// Files claimed by an instance and being loaded.
pub const LOADING: &str = ".loading";
/// Files loaded, each named after its generation.
pub const DONE: &str = "done";
/// Files refused, each beside its `.error`.
pub const FAILED: &str = "failed";
/// The suffix of a failed file's reason.
pub const ERROR_SUFFIX: &str = ".error";

/// Whether a directory entry named `name` is a file to load: a regular file
/// (`is_file`, not following a symbolic link) whose name is UTF-8 and does
/// not start with `.` (a file being written, or the directory's own).
pub fn is_candidate(name: &OsStr, is_file: bool) -> bool {
    is_file && name.to_str().is_some_and(|n| !n.is_empty() && !n.starts_with('.'))
}

/// The name in `done/` of `name`, loaded as `generation`.
pub fn done_name(name: &str, generation: i64) -> String {
    format!("g{generation}.{name}")
}

/// The name in `failed/` of `name`, refused at `at_ms` (unix milliseconds:
/// a file of the same name may fail again later).
pub fn failed_name(name: &str, at_ms: i64) -> String {
    format!("{at_ms}.{name}")
}

/// The reason as one line: its lines joined, trimmed.
pub fn one_line(reason: &str) -> String {
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What became of a file, from the upload's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted as this generation: to `done/`.
    Done(i64),
    /// Refused for what the file holds (a malformed line, no lines, a body
    /// too slow): to `failed/` with this reason. Loading it again fails again.
    Failed(String),
    /// Not loaded for a reason that may pass (the broker down, overload):
    /// left in `.loading/`, unlocked, to be taken again.
    Retry(String),
}

/// The outcome of an upload answered `status` with `body`.
pub fn outcome(status: u16, body: &str) -> Outcome {
    #[derive(serde::Deserialize)]
    struct Accepted {
        generation: i64,
    }
    match status {
        200..=299 => match serde_json::from_str::<Accepted>(body) {
            Ok(a) => Outcome::Done(a.generation),
            // Accepted, but not as this workload answers: a bug; keep the file for a person to look at.
            Err(_) => Outcome::Failed(format!("accepted ({status}) with an unexpected answer: {}", one_line(body))),
        },
        // Refused for what it holds (a 401 would be a bug: the watcher authorizes itself).
        400..=499 => Outcome::Failed(one_line(body)),
        _ => Outcome::Retry(format!("{status}: {}", one_line(body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_regular_files_are_taken() {
        assert!(is_candidate(OsStr::new("promotions.csv"), true));
        assert!(!is_candidate(OsStr::new(".promotions.csv"), true), "being written");
        assert!(!is_candidate(OsStr::new(LOADING), false));
        assert!(!is_candidate(OsStr::new("done"), false), "a directory");
        assert!(!is_candidate(OsStr::new("link.csv"), false), "not a regular file");
    }

    #[test]
    fn loaded_and_failed_names_never_clash_for_a_name_dropped_again() {
        assert_eq!(done_name("p.csv", 42), "g42.p.csv");
        assert_ne!(done_name("p.csv", 42), done_name("p.csv", 43));
        assert_eq!(failed_name("p.csv", 1_700_000_000_123), "1700000000123.p.csv");
        assert_eq!(
            one_line("line 3: bad UUID `x`\n(generation 9 failed)\n"),
            "line 3: bad UUID `x` (generation 9 failed)"
        );
    }

    #[test]
    fn the_answer_decides_where_the_file_goes() {
        assert_eq!(outcome(202, r#"{"generation":17}"#), Outcome::Done(17));
        assert_eq!(
            outcome(400, "line 2: expected 3 fields (generation 5 failed)\n"),
            Outcome::Failed("line 2: expected 3 fields (generation 5 failed)".into())
        );
        assert!(matches!(outcome(408, "the upload appended nothing"), Outcome::Failed(_)));
        assert!(matches!(outcome(503, "upload not accepted: broker down"), Outcome::Retry(_)));
        assert!(matches!(outcome(202, "??"), Outcome::Failed(_)));
    }
}
