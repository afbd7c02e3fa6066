//! An error as one line of text: its message and every source below it, joined by ": " (the
//! sources say what happened: refused, reset, which filter failed).

use std::error::Error;

/// `err: its source: its source's source: …`.
pub(crate) fn with_sources(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
