//! Command output: aligned tables and field lists for people, JSON for scripts, and colour
//! only when stdout is a terminal.

use std::io::IsTerminal;

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
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// Prints a value as one line of compact JSON (for streams of objects, one per line).
    pub fn json_line<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string(value)?);
        Ok(())
    }
}

/// ANSI colour, enabled only when stdout is a terminal (never in pipes, files or tests).
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    enabled: bool,
}

impl Paint {
    /// Colour if stdout is a terminal.
    pub fn stdout() -> Self {
        Self {
            enabled: std::io::stdout().is_terminal(),
        }
    }

    fn wrap(&self, code: &str, text: &str) -> String {
        if self.enabled {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Red text (errors, codes of permanent failures).
    pub fn red(&self, text: &str) -> String {
        self.wrap("31", text)
    }

    /// Yellow text (codes of retryable failures).
    pub fn yellow(&self, text: &str) -> String {
        self.wrap("33", text)
    }

    /// Dimmed text (timestamps, sequence numbers).
    pub fn dim(&self, text: &str) -> String {
        self.wrap("2", text)
    }

    /// Bold text.
    pub fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }
}

/// Renders `name  value` lines with the values aligned; each line ends in a newline.
pub fn fields<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> String {
    let width = pairs
        .iter()
        .map(|(n, _)| n.as_ref().chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (name, value) in pairs {
        let line = format!("{:<width$}  {}", name.as_ref(), value.as_ref());
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Cuts `text` to at most `max` characters (ending in `…` when cut) and flattens newlines.
pub fn truncate(text: &str, max: usize) -> String {
    let flat = text.replace(['\r', '\n'], " ");
    match flat.char_indices().nth(max.saturating_sub(1)) {
        Some((at, _)) if flat.chars().count() > max => format!("{}…", &flat[..at]),
        _ => flat,
    }
}

/// A plain-text table with a header row and left-aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(header: I) -> Self {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells print empty).
    pub fn row<I: IntoIterator<Item = S>, S: ToString>(&mut self, cells: I) {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
    }

    /// Renders the table, each line ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = row.get(i).map(String::as_str).unwrap_or("");
                    format!("{cell:<width$}", width = widths[i])
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
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
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(["NAME", "MESSAGES"]);
        t.row(["INGRESS", "12"]);
        t.row(["DLQ", "0"]);
        assert_eq!(t.render(), "NAME     MESSAGES\nINGRESS  12\nDLQ      0\n");
    }

    #[test]
    fn fields_align_and_truncate_cuts() {
        assert_eq!(fields(&[("a", "1"), ("long", "2")]), "a     1\nlong  2\n");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(truncate("a\nb", 10), "a b");
    }
}
