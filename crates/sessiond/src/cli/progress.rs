//! Progress of long CLI work (`session purge`): a live progress line (`indicatif`) when
//! stderr is a terminal; otherwise (cron, a pipe, a log file) one plain line a second, so a
//! log shows the work moving without a line per item; and a summary at the end.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// Progress of one piece of work, counted in `unit`s (e.g. "session(s) removed").
#[derive(Debug)]
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    plain: Plain,
}

impl Progress {
    /// Starts reporting `what` (e.g. `purge`).
    pub(super) fn start(what: &'static str, unit: &'static str) -> Self {
        let plain = Plain::new(what, unit, Instant::now());
        if !std::io::stderr().is_terminal() {
            return Self { bar: None, plain };
        }
        // Drawn only once styled and labelled.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix}: {human_pos} {msg} ({per_sec}, {elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(what);
        bar.set_message(unit);
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(100));
        Self {
            bar: Some(bar),
            plain,
        }
    }

    /// `n` more done.
    pub(super) fn add(&mut self, n: u64) {
        match &self.bar {
            Some(bar) => {
                self.plain.done += n;
                bar.inc(n);
            }
            None => {
                if let Some(line) = self.plain.add(n, Instant::now()) {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// Ends the progress display; the summary: how many, how long, at what rate.
    pub(super) fn finish(self) -> Summary {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.plain.summary(Instant::now())
    }
}

/// The plain progress lines, as a function of the time (so tests need no clock).
#[derive(Debug)]
pub(super) struct Plain {
    what: &'static str,
    unit: &'static str,
    started: Instant,
    next_line: Instant,
    done: u64,
}

impl Plain {
    pub(super) fn new(what: &'static str, unit: &'static str, now: Instant) -> Self {
        Self {
            what,
            unit,
            started: now,
            next_line: now + PLAIN_EVERY,
            done: 0,
        }
    }

    /// Counts `n` more; the line to write, when a second or more has passed since the last.
    pub(super) fn add(&mut self, n: u64, now: Instant) -> Option<String> {
        self.done += n;
        if now < self.next_line {
            return None;
        }
        self.next_line = now + PLAIN_EVERY;
        let elapsed = now - self.started;
        Some(format!(
            "sessiond: {}: {} {} so far ({}/s, {:.0?})",
            self.what,
            self.done,
            self.unit,
            rate(self.done, elapsed),
            elapsed
        ))
    }

    pub(super) fn summary(&self, now: Instant) -> Summary {
        Summary {
            done: self.done,
            elapsed: now - self.started,
        }
    }
}

/// What the work came to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Summary {
    pub(super) done: u64,
    pub(super) elapsed: Duration,
}

impl Summary {
    /// `in 1.20s (8333/s)`.
    pub(super) fn timing(&self) -> String {
        format!(
            "in {:.2?} ({}/s)",
            self.elapsed,
            rate(self.done, self.elapsed)
        )
    }
}

/// Items a second, whole.
fn rate(done: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return done;
    }
    (done as f64 / secs).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_come_once_a_second_then_a_summary() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = Plain::new("purge", "session(s) removed", t0);
        assert_eq!(p.add(1000, at(10)), None, "nothing in the first second");
        assert_eq!(p.add(1000, at(900)), None);
        assert_eq!(
            p.add(1000, at(1000)).as_deref(),
            Some("sessiond: purge: 3000 session(s) removed so far (3000/s, 1s)")
        );
        assert_eq!(p.add(1000, at(1500)), None, "not twice within a second");
        let line = p.add(2000, at(2100)).unwrap();
        assert!(
            line.contains("6000 session(s) removed so far (2857/s"),
            "{line}"
        );
        let s = p.summary(at(2500));
        assert_eq!(s.done, 6000);
        assert_eq!(s.timing(), "in 2.50s (2400/s)");
        let empty = Plain::new("purge", "x", t0).summary(t0);
        assert_eq!(empty.timing(), "in 0.00ns (0/s)");
    }
}
