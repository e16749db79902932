//! Asking an operator to confirm a destructive operation, and refusing when nobody can answer.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;

/// Refuses up front when a confirmation would be needed (`yes` is false) but stdin is not a
/// terminal, so a script never blocks on a prompt nor proceeds without an explicit `--yes`.
pub fn ensure_can_confirm(action: &str, yes: bool) -> anyhow::Result<()> {
    if !yes && !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to {action} without confirmation: stdin is not a terminal; pass --yes to confirm"
        );
    }
    Ok(())
}

/// Asks `question` on stderr and reads the answer from stdin; only `y` or `yes` confirms.
pub fn confirm(question: &str) -> anyhow::Result<bool> {
    let mut stderr = std::io::stderr();
    write!(stderr, "{question} [y/N] ").context("writing the prompt")?;
    stderr.flush().context("writing the prompt")?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
