//! Command output: tables and field lists for people, JSON for scripts.
//!
//! - Tables are laid out by `comfy-table`, which measures cells by their display width (a CJK
//!   character takes two columns) and, on a terminal, fits the table to its width by wrapping
//!   the widest cells. The width is the terminal's, or `COLUMNS` when set (the shell's
//!   convention; it also lets a script or a test ask for a width); without either (a pipe, a
//!   file) rows are never wrapped, so `grep` and `awk` see one row per line.
//! - Colour goes through `anstream`, which writes it only where it belongs: never when
//!   `NO_COLOR` is set (<https://no-color.org>), always when `CLICOLOR_FORCE` is set, and
//!   otherwise only to a terminal.
//! - Text that comes from outside (payloads, headers, sink responses, tenants' names) is made
//!   printable first ([`printable`]): a control character is shown escaped (`\u{1b}`), never
//!   sent to the operator's terminal, where it could move the cursor or rewrite the screen.
//! - `--json` output is printed as it is serialised, byte for byte.

use anstyle::{AnsiColor, Style};
use comfy_table::{ContentArrangement, TableComponent};
use serde::Serialize;

/// Where and how a command prints.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    /// Tables by default; JSON with `--json`.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether JSON was asked for.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints a value as pretty JSON.
    pub fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(value)?))
    }

    /// Prints a value as one line of compact JSON (for streams of objects, one per line).
    pub fn json_line<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        write_stdout(&format!("{}\n", serde_json::to_string(value)?))
    }
}

/// Writes `text` to stdout (colour kept or stripped as for all output). A reader that went away (`… --json | head -1`) ends the
/// process quietly with status 0, as a Unix tool killed by SIGPIPE would, instead of a panic.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;

    // Through anstream, so a human line's colour is kept or stripped like any output (JSON
    // never holds an escape code, so it passes unchanged).
    let mut stdout = anstream::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => Err(anyhow::Error::new(err).context("writing to stdout")),
    }
}

/// The styles the CLI uses, by meaning.
pub mod style {
    use super::{AnsiColor, Style};

    /// Column titles.
    pub const HEADER: Style = Style::new().bold();
    /// Healthy: `ok`, `created`, `delivered`.
    pub const GOOD: Style = AnsiColor::Green.on_default();
    /// Needs a look: drift, retryable failures, warnings.
    pub const WARN: Style = AnsiColor::Yellow.on_default();
    /// Broken or permanent: `missing`, `fail`, permanent DLQ codes.
    pub const BAD: Style = AnsiColor::Red.on_default().bold();
    /// Secondary: timestamps, sequence numbers.
    pub const DIM: Style = Style::new().dimmed();
    /// Emphasis.
    pub const BOLD: Style = Style::new().bold();
}

/// `text` made printable (see [`printable`]) and wrapped in `style`'s escape codes (stripped
/// again on output when colour is off).
pub fn paint(style: Style, text: &str) -> String {
    format!("{style}{}{style:#}", printable(text))
}

/// `text` for one line (a table cell, a field, a message): every control character — newlines
/// and tabs included — and every invisible formatting character (a bidirectional override, a
/// zero-width space: [`switchyard_keys::display`]) shown escaped (`\u{1b}`, `\n`,
/// `\u{202e}`), so text from outside can neither drive the terminal nor fake a row.
pub fn printable(text: &str) -> String {
    escaped(text, |c| c.is_control())
}

/// [`printable`] for text of several lines (a payload body): newlines and tabs are kept.
pub fn printable_text(text: &str) -> String {
    escaped(text, |c| c.is_control() && c != '\n' && c != '\t')
}

fn escaped(text: &str, control: impl Fn(char) -> bool) -> String {
    let needs_escape = |c: char| control(c) || switchyard_keys::display::is_invisible_format(c);
    if !text.chars().any(needs_escape) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The width to fit tables to: `COLUMNS` when it holds a number, else the terminal's; `None`
/// when stdout is not a terminal.
pub fn terminal_width() -> Option<u16> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<u16>().ok())
        .filter(|c| *c > 0)
        .or_else(|| {
            console::Term::stdout()
                .size_checked()
                .map(|(_rows, columns)| columns)
                .filter(|c| *c > 0)
        })
}

/// Cuts `text` to at most `max` characters (ending in `…` when cut) and flattens newlines.
pub fn truncate(text: &str, max: usize) -> String {
    let flat = text.replace(['\r', '\n'], " ");
    match flat.char_indices().nth(max.saturating_sub(1)) {
        Some((at, _)) if flat.chars().count() > max => format!("{}…", &flat[..at]),
        _ => flat,
    }
}

/// A table with a header row and left-aligned columns two spaces apart, no borders (the look
/// of `kubectl get` and `nats stream ls --names`), fitted to [`terminal_width`].
#[derive(Debug)]
pub struct Table {
    inner: comfy_table::Table,
    width: Option<u16>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(header: I) -> Self {
        let mut inner = bare_table();
        inner.set_header(
            header
                .into_iter()
                .map(|title| paint(style::HEADER, title.as_ref()))
                .collect::<Vec<_>>(),
        );
        Self {
            inner,
            width: terminal_width(),
        }
    }

    /// Fits the table to `width` columns instead of the terminal's.
    pub fn with_width(mut self, width: Option<u16>) -> Self {
        self.width = width;
        self
    }

    /// Adds a row of plain cells (made printable; missing cells print empty).
    pub fn row<I: IntoIterator<Item = S>, S: ToString>(&mut self, cells: I) {
        self.inner.add_row(
            cells
                .into_iter()
                .map(|c| printable(&c.to_string()))
                .collect::<Vec<_>>(),
        );
    }

    /// Adds a row of cells already made printable and styled with [`paint`].
    pub fn painted_row(&mut self, cells: Vec<String>) {
        self.inner.add_row(cells);
    }

    /// Renders the table, each line ending in a newline, without trailing spaces.
    pub fn render(&mut self) -> String {
        let columns = self.inner.column_count();
        for (i, column) in self.inner.column_iter_mut().enumerate() {
            // Two spaces between columns, none after the last.
            column.set_padding((0, if i + 1 < columns { 2 } else { 0 }));
        }
        match self.width {
            Some(width) => {
                self.inner
                    .set_width(width)
                    .set_content_arrangement(ContentArrangement::Dynamic);
            }
            None => {
                self.inner
                    .set_content_arrangement(ContentArrangement::Disabled);
            }
        }
        let mut out = String::new();
        for line in self.inner.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A comfy-table without borders or lines of any kind.
fn bare_table() -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    for component in TableComponent::iter() {
        table.remove_style(component);
    }
    table
}

/// Renders `name  value` lines with the values aligned (by display width, values made
/// printable and wrapped to the terminal); each line ends in a newline.
pub fn fields<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> String {
    let mut table = Table {
        inner: bare_table(),
        width: terminal_width(),
    };
    for (name, value) in pairs {
        table.row([name.as_ref(), value.as_ref()]);
    }
    table.render()
}

/// An error with its sources, `outer: inner: …` (what `{:#}` prints for an `anyhow::Error`),
/// for errors shown in place in a table or JSON.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn plain(text: &str) -> String {
        let mut out = Vec::new();
        let mut stream = anstream::StripStream::new(&mut out);
        stream.write_all(text.as_bytes()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn columns_align_two_spaces_apart_without_trailing_spaces() {
        let mut t = Table::new(["NAME", "MESSAGES"]).with_width(None);
        t.row(["INGRESS", "12"]);
        t.row(["DLQ", "0"]);
        assert_eq!(
            plain(&t.render()),
            "NAME     MESSAGES\nINGRESS  12\nDLQ      0\n"
        );
    }

    #[test]
    fn wide_characters_align_by_display_width() {
        let mut t = Table::new(["TENANT", "NAME", "STATUS"]).with_width(None);
        t.row(["acme", "株式会社アクメ", "enabled"]);
        t.row(["globex", "Globex", "disabled"]);
        let rendered = plain(&t.render());
        let lines: Vec<&str> = rendered.lines().collect();
        // "株式会社アクメ" is 7 characters but 14 columns wide.
        assert_eq!(lines[1], "acme    株式会社アクメ  enabled");
        assert_eq!(lines[2], "globex  Globex          disabled");
    }

    #[test]
    fn a_narrow_width_wraps_the_widest_cell_and_no_line_is_longer() {
        let mut t = Table::new(["SEQ", "REASON"]).with_width(Some(30));
        t.row(["1", &"connection refused by the sink ".repeat(3)]);
        let rendered = plain(&t.render());
        assert!(rendered.lines().count() > 2, "{rendered}");
        for line in rendered.lines() {
            assert!(console::measure_text_width(line) <= 30, "{rendered}");
        }
    }

    #[test]
    fn control_characters_are_shown_escaped_never_sent() {
        assert_eq!(printable("ok\x1b[2Jbad\r"), "ok\\u{1b}[2Jbad\\r");
        assert_eq!(printable("fake\nrow\tcell"), "fake\\nrow\\tcell");
        assert_eq!(printable("Glo\u{202E}xeb"), "Glo\\u{202e}xeb");
        assert_eq!(printable_text("two\nlines\tand tab"), "two\nlines\tand tab");
        assert_eq!(printable_text("a\u{200B}b\x07"), "a\\u{200b}b\\u{7}");
        let mut t = Table::new(["A"]).with_width(None);
        t.row(["\x1b]0;owned\x07"]);
        assert!(!t.render().contains("\x1b]"), "no raw escape in a cell");
    }

    #[test]
    fn fields_align_and_truncate_cuts() {
        assert_eq!(
            plain(&fields(&[("a", "1"), ("long", "2")])),
            "a     1\nlong  2\n"
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(truncate("a\nb", 10), "a b");
    }
}
