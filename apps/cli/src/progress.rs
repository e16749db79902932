//! Progress bars (`indicatif`) for operations that can take more than a second: replay,
//! export, import, purge, provision, a followed replay job.
//!
//! A bar is drawn on stderr, so stdout stays what the command prints (a table, lines, an
//! export on `--file -`); it is hidden with `--json` and whenever stderr is not a terminal
//! (a pipe, a file, CI), so scripts and logs never see it. Its colour follows the same rules
//! as the rest of the output (`NO_COLOR`, `CLICOLOR_FORCE`: see [`crate::output`]).

use std::borrow::Cow;
use std::fmt::Display;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Output;

/// How often a spinner turns while nothing else changes.
const TICK: Duration = Duration::from_millis(120);

/// A progress bar or counter on stderr; finishing or dropping it clears it.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// Whether bars show at all for this command: not with `--json`, only on a terminal.
    fn shown(out: &Output) -> bool {
        !out.is_json() && std::io::stderr().is_terminal()
    }

    fn new(out: &Output, bar: ProgressBar, template: &str) -> Self {
        if Self::shown(out) {
            console::set_colors_enabled_stderr(
                anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never,
            );
            bar.set_draw_target(ProgressDrawTarget::stderr());
        } else {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        // The templates are constants of this module: a bad one is a bug caught by its tests.
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(TICK);
        Self { bar }
    }

    /// A bar of `len` steps: `replaying [=====>    ] 2500/5000 50% 498/s eta 5s`.
    pub fn bar(out: &Output, len: u64, what: impl Into<Cow<'static, str>>) -> Self {
        let progress = Self::new(out, ProgressBar::new(len), BAR);
        progress.bar.set_message(what);
        progress
    }

    /// A bar of bytes, its total set later with [`Self::set`]:
    /// `DLQ [=====>    ] 1.2 MiB/4.0 MiB 30% 12 MiB/s eta 1s`.
    pub fn bytes(out: &Output, what: impl Into<Cow<'static, str>>) -> Self {
        let progress = Self::new(out, ProgressBar::new(0), BYTES);
        progress.bar.set_message(what);
        progress
    }

    /// A counter of steps whose number is not known in advance: `⠋ exporting 1234 entries`.
    pub fn counter(out: &Output, what: impl Into<Cow<'static, str>>) -> Self {
        let progress = Self::new(out, ProgressBar::no_length(), COUNTER);
        progress.bar.set_message(what);
        progress
    }

    /// Runs one step that may take a while under a spinner (`⠋ reading the DLQ (2s)`),
    /// cleared when the step ends, however it ends.
    pub async fn during<T>(
        out: &Output,
        what: impl Into<Cow<'static, str>>,
        step: impl std::future::Future<Output = T>,
    ) -> T {
        let spinner = Self::new(out, ProgressBar::no_length(), SPINNER);
        spinner.bar.set_message(what);
        let done = step.await;
        spinner.finish();
        done
    }

    /// Whether the bar is drawn (`--json` and non-terminals hide it).
    pub fn is_shown(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Prints a warning on stderr without tearing the bar.
    pub fn warn(&self, line: impl Display) {
        self.bar.suspend(|| anstream::eprintln!("{line}"));
    }

    /// A bar that is never drawn (where the command's own output is on the terminal: an export
    /// to stdout).
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
        }
    }

    /// Counts `n` more steps done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the steps done and the total (a followed job's progress).
    pub fn set(&self, done: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
    }

    /// Changes the label.
    pub fn set_message(&self, what: impl Into<Cow<'static, str>>) {
        self.bar.set_message(what);
    }

    /// Prints a line on stdout without tearing the bar (it is redrawn below the line).
    pub fn println(&self, line: impl Display) {
        self.bar.suspend(|| anstream::println!("{line}"));
    }

    /// Clears the bar; what the command prints next stands alone.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

const BAR: &str = "{msg} [{bar:30.cyan/blue}] {pos}/{len} {percent}% {per_sec} eta {eta}";
const BYTES: &str =
    "{msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {percent}% {bytes_per_sec} eta {eta}";
const COUNTER: &str = "{spinner} {msg} {pos} {per_sec}";
const SPINNER: &str = "{spinner} {msg} ({elapsed})";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_parse() {
        for template in [BAR, BYTES, COUNTER, SPINNER] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn json_output_never_draws_a_bar() {
        let progress = Progress::bar(&Output::new(true), 10, "replaying");
        assert!(progress.bar.is_hidden());
    }
}
