//! `switchyard completions <shell>` and `switchyard man --dir <dir>`: shell completions and
//! man pages generated from the clap definitions themselves (clap_complete, clap_mangen), so
//! they never fall behind the commands. `make install-cli` installs both.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use crate::Cli;

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The folder to write the pages to (created if missing): `switchyard.1` and one page per
    /// subcommand (`switchyard-dlq-replay.1`).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout (a reader that stops early, as
/// `| head` does, is not an error).
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "switchyard", &mut script);
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(err).context("writing the completion script"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Writes a man page for `switchyard` and for each of its subcommands, at every depth.
pub fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut command = Cli::command();
    command.build();
    let written = write_pages(&command, "switchyard", &args.dir)?;
    println!("wrote {written} man pages to {}", args.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes `name.1` for `command` (built: its display name is `switchyard-dlq-replay`, its
/// synopsis `switchyard dlq replay`) and recurses into its subcommands (but `help`); returns how
/// many pages were written.
fn write_pages(command: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<usize> {
    let path = dir.join(format!("{name}.1"));
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    clap_mangen::Man::new(command.clone())
        .title(name)
        .render(&mut file)
        .with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        written += write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(written)
}
