//! `switchyard dlq show <seq>`: one entry in full, read with a direct get (the stream has
//! `allow_direct`): the record, the original headers, the payload (pretty-printed when it is
//! JSON) and the attempt history.

use anstream::print;
use std::collections::BTreeMap;
use std::process::ExitCode;

use async_nats::HeaderMap;
use serde_json::json;
use switchyard_dlq::DlqEntry;
use switchyard_dlq_ops::DlqReader;
use switchyard_envelope::PayloadView;

use crate::output::{Output, Table, fields, printable, printable_text};
use crate::parse::show_time;

/// Arguments of `dlq show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The entry's DLQ stream sequence (from `dlq ls` or `dlq tail`).
    pub seq: u64,
}

/// Headers as `Name: value` lines, sorted by name.
fn header_lines(headers: &HeaderMap) -> String {
    let mut sorted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        sorted
            .entry(name.to_owned())
            .or_default()
            .extend(values.iter().map(|v| v.as_str().to_owned()));
    }
    if sorted.is_empty() {
        return "  (none)\n".to_owned();
    }
    let mut out = String::new();
    for (name, values) in sorted {
        for value in values {
            out.push_str(&format!(
                "  {}: {}\n",
                printable(&name),
                printable(value.as_str())
            ));
        }
    }
    out
}

/// The payload for people: pretty JSON when it parses as JSON, text as is, else base64.
pub fn payload_text(payload: &[u8]) -> String {
    let view = PayloadView::of(payload);
    let body = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(view.data);
    format!(
        "payload ({}, {} bytes)\n{}\n",
        view.encoding,
        view.bytes,
        printable_text(&body)
    )
}

/// Renders an entry in full.
pub fn render(entry: &DlqEntry) -> String {
    let r = &entry.record;
    let mut pairs = vec![
        ("seq", entry.seq.to_string()),
        ("stored", show_time(entry.stored_at)),
        ("subject", entry.subject.clone()),
        (
            "tenant",
            r.tenant
                .as_ref()
                .map_or("_ (unknown)".into(), ToString::to_string),
        ),
        ("stage", r.stage.to_string()),
        (
            "platform",
            r.platform
                .as_ref()
                .map_or("_ (unknown)".into(), ToString::to_string),
        ),
        ("code", r.code.to_string()),
        ("reason", r.reason.clone()),
        ("attempts", r.attempts.to_string()),
        ("first failure", show_time(r.first_failure)),
        ("last failure", show_time(r.last_failure)),
        (
            "source",
            format!(
                "{} seq {} ({})",
                r.source_stream, r.source_seq, r.source_subject
            ),
        ),
    ];
    if let Some(id) = &entry.original_msg_id {
        pairs.push(("original msg id", id.clone()));
    }
    let mut out = fields(&pairs);
    out.push_str("\nheaders\n");
    out.push_str(&header_lines(&entry.original_headers));
    out.push('\n');
    out.push_str(&payload_text(&entry.payload));
    out.push('\n');
    if r.history.is_empty() {
        out.push_str("attempt history: none\n");
    } else {
        out.push_str("attempt history\n");
        let mut table = Table::new(["AT", "OUTCOME", "STATUS", "DURATION", "ERROR"]);
        for a in &r.history {
            table.row([
                show_time(a.at),
                a.outcome.clone(),
                a.status.map_or("-".into(), |s| s.to_string()),
                format!("{} ms", a.duration_ms),
                a.error.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

/// Runs `dlq show`.
pub async fn run(reader: &DlqReader, args: &ShowArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let Some(message) = reader.get(args.seq).await? else {
        anyhow::bail!("no DLQ entry with seq {}", args.seq);
    };
    match reader.entry_of(&message) {
        Ok(entry) if out.is_json() => out.json(&entry.view())?,
        Ok(entry) => print!("{}", render(&entry)),
        Err(err) => {
            // Still show what is stored: an operator needs to see a broken entry to purge it.
            eprintln!(
                "warning: entry {} is not a valid DLQ record: {err:#}",
                args.seq
            );
            if out.is_json() {
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (name, values) in message.headers.iter() {
                    let name: &str = name.as_ref();
                    headers
                        .entry(name.to_owned())
                        .or_default()
                        .extend(values.iter().map(|v| v.as_str().to_owned()));
                }
                out.json(&json!({
                    "seq": message.sequence,
                    "stored_at": show_time(message.time),
                    "subject": message.subject.as_str(),
                    "error": format!("{err:#}"),
                    "headers": headers,
                    "payload": PayloadView::of(&message.payload),
                }))?;
            } else {
                let pairs = [
                    ("seq", message.sequence.to_string()),
                    ("stored", show_time(message.time)),
                    ("subject", message.subject.to_string()),
                    ("error", format!("{err:#}")),
                ];
                print!(
                    "{}\nheaders\n{}\n{}",
                    fields(&pairs),
                    header_lines(&message.headers),
                    payload_text(&message.payload)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
