//! What people see: tables fitted to the terminal by display width, colour only where it
//! belongs (`NO_COLOR`, `CLICOLOR_FORCE`, terminals), progress bars on a terminal's stderr and
//! never in pipes or `--json`, shell completions and man pages. A real terminal is a pty made
//! by util-linux's `script`.

use std::process::Stdio;

use async_nats::jetstream;

use crate::fixtures::seed_many;
use crate::{command, ok, provisioned, stdout};
use switchyard_dlq::DlqCode;

const WIDE_NAME: &str = "株式会社アクメ・グローバル・ホールディングス・国際物流事業本部";

/// Runs the binary in a pseudo-terminal (stdout and stderr both on it) with `env`; returns
/// everything the terminal showed, with `\r\n` back to `\n`.
fn in_terminal(server: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut full = vec!["--server", server];
    full.extend(args);
    run_in_terminal(env!("CARGO_BIN_EXE_switchyard"), &full, env)
}

/// Runs `program` with `args` in a pseudo-terminal (see [`in_terminal`]).
fn run_in_terminal(program: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let quoted: Vec<String> = std::iter::once(program)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut script = std::process::Command::new("script");
    script
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .stdin(Stdio::null());
    for variable in crate::TERMINAL_ENV {
        script.env_remove(variable);
    }
    script
        .env("TERM", "xterm-256color")
        .envs(env.iter().copied());
    let output = script.output().expect("run script(1) from util-linux");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n"),
    )
}

/// Runs the binary with stdout and stderr piped, with `env`.
async fn piped(server: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = command(server, args);
    command.envs(env.iter().copied()).stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().expect("run switchyard"))
        .await
        .unwrap()
}

/// The display column at which `needle` starts in `line` (wide characters count two).
fn column_of(line: &str, needle: &str) -> usize {
    let at = line
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} in {line:?}"));
    console::measure_text_width(&line[..at])
}

#[tokio::test]
async fn tables_fit_80_columns_by_display_width_with_a_wide_character_tenant_name() {
    let server = provisioned().await;
    let url = server.url();
    ok(&url, &["tenants", "enable", "acme", "--name", WIDE_NAME]).await;
    ok(&url, &["tenants", "enable", "globex", "--name", "Globex"]).await;
    ok(&url, &["tenants", "disable", "initech"]).await;

    let narrow = piped(&url, &["tenants", "ls"], &[("COLUMNS", "80")]).await;
    let narrow = stdout(&narrow);
    let lines: Vec<&str> = narrow.lines().collect();
    for line in &lines {
        assert!(
            console::measure_text_width(line) <= 80,
            "{} columns: {line}\n{narrow}",
            console::measure_text_width(line)
        );
    }
    // The 62-column name wraps inside its column; STATUS starts at the same display column
    // on the header and on every row, though "株" is one character and two columns.
    let status = column_of(lines[0], "STATUS");
    for (row, state) in [
        ("acme ", "enabled"),
        ("globex ", "enabled"),
        ("initech ", "disabled"),
    ] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("{row} in\n{narrow}"));
        assert_eq!(column_of(line, state), status, "{narrow}");
    }
    assert!(lines.len() > 4, "the wide name wrapped:\n{narrow}");
    assert!(narrow.contains("株式会社アクメ"), "{narrow}");

    // No width (a pipe, no COLUMNS): one line per row, never wrapped, whatever its length.
    let wide = ok(&url, &["tenants", "ls"]).await;
    assert_eq!(wide.lines().count(), 4, "{wide}");
    assert!(wide.lines().nth(1).unwrap().contains(WIDE_NAME), "{wide}");
    assert!(console::measure_text_width(wide.lines().nth(1).unwrap()) > 80);
}

#[tokio::test]
async fn colour_only_on_a_terminal_never_with_no_color_always_with_clicolor_force() {
    let server = provisioned().await;
    let url = server.url();
    ok(&url, &["tenants", "enable", "acme"]).await;
    let args = ["tenants", "ls"];

    let (code, shown) = in_terminal(&url, &args, &[]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("\x1b["), "a terminal gets colour: {shown:?}");

    let (code, shown) = in_terminal(&url, &args, &[("NO_COLOR", "1")]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        !shown.contains('\x1b'),
        "NO_COLOR removes colour: {shown:?}"
    );
    assert!(shown.contains("acme"), "{shown:?}");

    let plain = ok(&url, &args).await;
    assert!(!plain.contains('\x1b'), "a pipe gets none: {plain:?}");
    let forced = stdout(&piped(&url, &args, &[("CLICOLOR_FORCE", "1")]).await);
    assert!(
        forced.contains("\x1b["),
        "CLICOLOR_FORCE colours a pipe: {forced:?}"
    );
    let both = stdout(&piped(&url, &args, &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]).await);
    assert!(!both.contains('\x1b'), "NO_COLOR wins: {both:?}");

    // Colour never reaches --json, even forced or on a terminal.
    let (_, json) = in_terminal(
        &url,
        &["tenants", "ls", "--json"],
        &[("CLICOLOR_FORCE", "1")],
    );
    assert!(!json.contains('\x1b'), "{json:?}");
}

#[tokio::test]
async fn progress_shows_on_a_terminal_and_never_in_pipes_or_json() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    seed_many(&js, "acme", 1, 300, DlqCode::NoRoute).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    // A terminal: the bar is drawn on stderr while the export runs, then cleared.
    let on_terminal = file("terminal.ndjson");
    let (code, shown) = in_terminal(&url, &["dlq", "export", "--file", &on_terminal], &[]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("exported 300 entries"), "{shown}");
    assert!(
        shown.contains("exported") && shown.matches("exported").count() >= 2,
        "the counter was drawn before the summary: {shown:?}"
    );

    // A pipe: stderr holds nothing, stdout only the summary.
    let in_pipe = file("pipe.ndjson");
    let output = piped(&url, &["dlq", "export", "--file", &in_pipe], &[]).await;
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "",
        "no bar in a pipe"
    );
    assert!(stdout(&output).starts_with("exported 300 entries to "));

    // --json on a terminal: no bar either.
    let json_file = file("json.ndjson");
    let (code, shown) = in_terminal(
        &url,
        &["dlq", "export", "--file", &json_file, "--json"],
        &[],
    );
    assert_eq!(code, Some(0), "{shown}");
    let report: serde_json::Value = serde_json::from_str(shown.trim()).expect("only JSON");
    assert_eq!(report["exported"], 300);

    // Purge, on a terminal, draws its bar too and removes every entry.
    let (code, shown) = in_terminal(&url, &["dlq", "purge", "--all", "--yes"], &[]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("deleting"), "{shown:?}");
    assert!(shown.contains("removed 300 entries"), "{shown}");
}

#[tokio::test]
async fn completions_and_man_pages_come_from_the_command_definitions() {
    for (shell, marker) in [
        ("bash", "_switchyard()"),
        ("zsh", "#compdef switchyard"),
        ("fish", "complete -c switchyard"),
    ] {
        let script = ok("nats://127.0.0.1:1", &["completions", shell]).await;
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["replay", "doctor", "dry-run"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let written = ok(
        "nats://127.0.0.1:1",
        &["man", "--dir", dir.path().to_str().unwrap()],
    )
    .await;
    assert!(written.starts_with("wrote "), "{written}");
    for page in [
        "switchyard.1",
        "switchyard-dlq-replay.1",
        "switchyard-doctor.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is a man page");
    }
    let replay = std::fs::read_to_string(dir.path().join("switchyard-dlq-replay.1")).unwrap();
    assert!(replay.contains("dry\\-run"), "{replay}");
}

#[tokio::test]
async fn status_watch_redraws_in_place_on_a_terminal_and_streams_snapshots_elsewhere() {
    let server = provisioned().await;
    let url = server.url();

    // A terminal: the screen is cleared before each snapshot; Ctrl-C (SIGINT) exits 0.
    let (code, shown) =
        in_terminal_with_timeout(&url, &["status", "--watch", "--interval", "1"], "2.5");
    assert_eq!(code, Some(0), "Ctrl-C ends the watch cleanly: {shown}");
    assert!(
        shown.matches("\x1b[2J").count() >= 2,
        "cleared and redrawn at least twice: {shown:?}"
    );
    assert!(shown.matches("Ctrl-C to stop").count() >= 2, "{shown:?}");
    assert!(shown.contains("IDEMPOTENCY"), "{shown:?}");

    // --json: one JSON object per line and per refresh, never a clear-screen.
    let (code, shown) = in_terminal_with_timeout(
        &url,
        &["status", "--watch", "--interval", "1", "--json"],
        "2.5",
    );
    assert_eq!(code, Some(0), "{shown}");
    let snapshots: Vec<serde_json::Value> = shown
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(snapshots.len() >= 2, "{shown}");
    assert_eq!(snapshots[0]["streams"][0]["name"], "IDEMPOTENCY");

    // A pipe: snapshots one after another, each under a `--- <time>` line.
    let output = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            std::process::Command::new("timeout")
                .args(["--preserve-status", "-s", "INT", "2.5"])
                .arg(env!("CARGO_BIN_EXE_switchyard"))
                .args(["--server", &url, "status", "--watch", "--interval", "1"])
                .env_remove("COLUMNS")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(
        text.matches("\n--- ").count() + usize::from(text.starts_with("--- ")) >= 2,
        "{text}"
    );
    assert!(!text.contains('\x1b'), "{text:?}");
}

/// [`in_terminal`], interrupted with SIGINT (Ctrl-C) after `seconds`.
fn in_terminal_with_timeout(server: &str, args: &[&str], seconds: &str) -> (Option<i32>, String) {
    let mut wrapped = vec!["--preserve-status", "-s", "INT", seconds];
    wrapped.push(env!("CARGO_BIN_EXE_switchyard"));
    wrapped.extend(["--server", server]);
    wrapped.extend(args);
    run_in_terminal("timeout", &wrapped, &[])
}

#[tokio::test]
async fn text_from_outside_can_neither_fake_a_row_nor_hide_in_invisible_characters() {
    let server = provisioned().await;
    let url = server.url();
    ok(&url, &["tenants", "enable", "acme"]).await;
    // A record written straight to KV (not through the CLI's checks) with a name that tries
    // to add a row, colour the screen and reverse the text.
    let js = jetstream::new(server.client().await);
    let tenants = js.get_key_value("tenants").await.unwrap();
    tenants
        .put(
            "mallory",
            r#"{"enabled":true,"name":"x\nevil    enabled  default\u001b[31m\u202egnp.exe"}"#
                .into(),
        )
        .await
        .unwrap();
    let listed = ok(&url, &["tenants", "ls"]).await;
    assert_eq!(listed.lines().count(), 3, "one line per tenant: {listed}");
    let row = listed.lines().find(|l| l.starts_with("mallory")).unwrap();
    assert!(row.contains(r"x\nevil"), "{row}");
    assert!(
        row.contains(r"\u{1b}[31m") && row.contains(r"\u{202e}"),
        "{row}"
    );
    assert!(
        !listed.contains('\x1b') && !listed.contains('\u{202e}'),
        "{listed:?}"
    );

    // The CLI itself refuses such names.
    for name in [
        "two\nlines",
        "Glo\u{202E}xeb",
        "zero\u{200B}width",
        "\u{1b}]0;owned\u{7}",
    ] {
        let err = crate::fails(&url, &["tenants", "enable", "acme", "--name", name]).await;
        assert!(
            err.contains("control or invisible formatting characters"),
            "{err}"
        );
        // The refused value is quoted back escaped, never raw.
        assert!(
            !err.contains('\u{1b}') && !err.contains('\u{202E}'),
            "{err:?}"
        );
    }
    // And a name can be removed again.
    ok(&url, &["tenants", "enable", "acme", "--name", "Acme"]).await;
    ok(&url, &["tenants", "enable", "acme", "--no-name"]).await;
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["tenants", "get", "acme", "--json"]).await).unwrap();
    assert_eq!(json, serde_json::json!({"tenant": "acme", "enabled": true}));
}

/// Runs the binary with `args`, reads its first line of output (`| head -1`), closes the pipe
/// and waits for it to end (at most 20 s); returns its exit status and stderr.
async fn first_line_then_close(url: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::BufRead;

    let mut child = command(url, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty(), "{args:?} printed nothing");
    let what = format!("{args:?}");
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{what} kept running after its reader left");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_watch_a_tail_and_an_export_end_quietly_when_their_reader_goes_away() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    seed_many(&js, "acme", 1, 3000, DlqCode::NoRoute).await;
    for args in [
        &["status", "--watch", "--interval", "1"][..],
        &["status", "--watch", "--interval", "1", "--json"],
        &["dlq", "tail", "--all"],
        &["dlq", "export", "--file", "-"],
    ] {
        let (status, stderr) = first_line_then_close(&url, args).await;
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
