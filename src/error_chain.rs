//! An error and its causes, as one line.
//!
//! The library keeps causes as `source()`s (a caller can match on what
//! went wrong); the binaries show an error with [`error_chain`]. Many
//! messages already quote their cause (`"{path}: {source}"`), so a cause
//! whose text is already in the line is not repeated.

use std::error::Error;

/// `e`, then each cause that adds something, joined by `": "`.
pub fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);
    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let e = Outer(Middle(std::io::Error::other("disk full")));
        // "disk full" is quoted by the middle's message: not repeated.
        assert_eq!(error_chain(&e), "outer: middle: disk full");
    }
}
