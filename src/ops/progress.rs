//! Progress of a long command (`publish`, `dlq replay`): a bar on stderr while it runs, for a
//! person at a terminal; nothing when stderr is a pipe or a file, so scripts and CI logs get no
//! escape codes. The commands only count (`set_total`, `advance`, `note`); whether anything is
//! drawn is decided once, when the CLI makes the [`Progress`]. Then the time it took, for the
//! command's summary line.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar, drawn on stderr or hidden; cleared when finished or dropped (an error is
/// printed on a clean line).
pub struct Progress(ProgressBar);

impl Progress {
    /// Drawn on stderr when stderr is a terminal, hidden otherwise. `items` names what is
    /// counted (`events`, `dead letters`).
    pub(crate) fn on_stderr(items: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        let template =
            format!("{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {items} ({{per_sec:0}}, eta {{eta}}) {{msg}}");
        let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
        Self(ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(style))
    }

    /// Counts and draws nothing (the tests, any caller not at a terminal).
    pub fn hidden() -> Self {
        Self(ProgressBar::hidden())
    }

    /// How many items the run will look at, at most; the bar shows from then on.
    pub(crate) fn set_total(&self, total: u64) {
        self.0.set_length(total);
        if !self.0.is_hidden() {
            // Redrawn while a confirm is awaited, so the elapsed time does not look stuck.
            self.0.enable_steady_tick(Duration::from_millis(200));
        }
    }

    /// One more item done.
    pub(crate) fn advance(&self) {
        self.0.inc(1);
    }

    /// A short note after the counts (e.g. `3 replayed, 1 skipped`).
    pub(crate) fn note(&self, note: String) {
        self.0.set_message(note);
    }

    /// Clears the bar; dropping it does the same.
    pub(crate) fn finish(self) {}
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// `in 2.3s (4350/s)` is written with these: seconds with one decimal…
pub(crate) fn seconds(took: Duration) -> String {
    format!("{:.1}s", took.as_secs_f64())
}

/// …and whole items a second (a run too short to time counts as a millisecond).
pub(crate) fn per_second(items: usize, took: Duration) -> String {
    format!("{:.0}/s", items as f64 / took.as_secs_f64().max(0.001))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_rates_read_at_a_glance() {
        assert_eq!(seconds(Duration::from_millis(2345)), "2.3s");
        assert_eq!(seconds(Duration::ZERO), "0.0s");
        assert_eq!(per_second(10_000, Duration::from_millis(2300)), "4348/s");
        assert_eq!(per_second(5, Duration::ZERO), "5000/s");
    }

    #[test]
    fn a_hidden_bar_counts_and_draws_nothing() {
        let p = Progress::hidden();
        p.set_total(3);
        p.advance();
        p.note("1 replayed".into());
        assert_eq!(p.0.position(), 1);
        assert!(p.0.is_hidden());
        p.finish();
    }
}
