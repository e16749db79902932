//! What the DLQ commands select, on top of the shared non-consuming reader
//! ([`switchyard_dlq_ops::DlqReader`]) and selection ([`Selection`]).

use switchyard_dlq::{DlqCode, DlqError};
use switchyard_dlq_ops::Selection;

use super::{FilterArgs, TimeArgs};

/// What `replay` and `purge` act on: explicit sequences, or a filter.
#[derive(Debug, Clone)]
pub enum Target {
    /// These sequences (no confirmation needed).
    Seqs(Vec<u64>),
    /// Whatever matches (needs `--yes` or a confirmation).
    Filter(Selection),
}

impl Target {
    /// Sequences or filters, never both; `--all` stands for "no filter" explicitly.
    pub fn new(
        seqs: &[u64],
        filters: &FilterArgs,
        times: &TimeArgs,
        all: bool,
    ) -> anyhow::Result<Self> {
        let filtered = filters.any() || times.since.is_some() || times.until.is_some();
        if !seqs.is_empty() {
            if filtered || all {
                anyhow::bail!("give entry sequences or filters (or --all), not both");
            }
            return Ok(Self::Seqs(seqs.to_vec()));
        }
        if !filtered && !all {
            anyhow::bail!(
                "select entries: give sequences, or filters (--tenant, --stage, --platform, --code, --since, --until), or --all for every entry"
            );
        }
        Ok(Self::Filter(filters.selection(times)?))
    }
}

/// Reports a stored message that is not a valid DLQ record.
pub fn warn_malformed(seq: u64, err: &DlqError) {
    eprintln!(
        "warning: DLQ entry {seq} is not a valid DLQ record: {}",
        crate::output::printable(&err.to_string())
    );
}

/// `true` for the codes whose entries replay can fix once the cause is fixed (shown in colour).
pub fn retryable(code: DlqCode) -> bool {
    matches!(
        code,
        DlqCode::RetriesExhausted
            | DlqCode::ExhaustedDeliveries
            | DlqCode::Terminated
            | DlqCode::NoRoute
            | DlqCode::InvalidRoute
            | DlqCode::UnknownTenant
            | DlqCode::TenantDisabled
            | DlqCode::DeadlineExceeded
            | DlqCode::UnsupportedSchema
    )
}

/// A DLQ code for a table or a line: yellow when replay can fix it once its cause is fixed
/// ([`retryable`]), red when it cannot.
pub fn code_cell(code: DlqCode) -> String {
    let style = if retryable(code) {
        crate::output::style::WARN
    } else {
        crate::output::style::BAD
    };
    crate::output::paint(style, code.as_str())
}
