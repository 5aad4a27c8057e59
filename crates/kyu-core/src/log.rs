//! Job logs: the lines a running job writes (a command's stderr, a
//! handler's `ctx.log`), kept per attempt, bounded, and kept as long as
//! the job.

use crate::validate;

/// Most bytes of log kept per attempt; older lines give way.
pub const MAX_ATTEMPT_BYTES: i64 = 1 << 20;
/// Longest line kept; longer ones are cut, with a marker.
pub const MAX_LINE_BYTES: usize = 16 << 10;

/// A line as stored: NUL characters replaced, cut at [`MAX_LINE_BYTES`]
/// (on a character boundary) with an ellipsis.
pub fn clean_line(line: &str) -> String {
    let line = validate::printable(line);
    if line.len() <= MAX_LINE_BYTES {
        return line.into_owned();
    }
    let mut end = MAX_LINE_BYTES - 3;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

/// How many of the oldest lines (their lengths, oldest first) must go so
/// that an attempt holding `total` bytes keeps at most [`MAX_ATTEMPT_BYTES`].
pub fn lines_to_drop(total: i64, oldest: &[i64]) -> usize {
    let mut left = total;
    let mut n = 0;
    for len in oldest {
        if left <= MAX_ATTEMPT_BYTES {
            break;
        }
        left -= len;
        n += 1;
    }
    n
}

/// The line shown in place of `dropped` lines that gave way.
pub fn dropped_marker(dropped: i64) -> String {
    format!("[kyu: {dropped} earlier lines of this attempt were dropped to keep its log under {} KiB]", MAX_ATTEMPT_BYTES >> 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cleaned_and_bounded() {
        assert_eq!(clean_line("a\u{0}b"), "a\u{FFFD}b");
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = clean_line(&long);
        assert!(cut.len() <= MAX_LINE_BYTES && cut.ends_with("..."));
        assert_eq!(lines_to_drop(MAX_ATTEMPT_BYTES, &[10, 10]), 0);
        assert_eq!(lines_to_drop(MAX_ATTEMPT_BYTES + 15, &[10, 10, 10]), 2);
    }
}
