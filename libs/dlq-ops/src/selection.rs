//! Which DLQ entries an operation covers: one [`Selection`] for the CLI's filters (`ls`,
//! `export`, `replay`, `purge`, …) and for replay jobs, whose record stores it as JSON.
//!
//! Tenant, stage and platform narrow the subjects read (the DLQ subject filter); the code, the
//! destination and the time range are checked per entry. Or the selection lists DLQ sequences
//! instead.

use async_nats::jetstream::consumer::DeliverPolicy;
use serde::{Deserialize, Serialize};
use switchyard_dlq::{DlqCode, DlqEntry};
use switchyard_envelope::{Destination, headers};
use switchyard_keys::{PlatformId, Stage, TenantId};
use switchyard_subjects::{DlqFilter, Namespace};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Which entries: a filter (tenant, stage, platform, code, destination, time range) or an explicit list of
/// DLQ sequences. Its JSON is the `selection` of a replay job record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Only this tenant's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// Only entries dead-lettered by this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// Only this platform's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformId>,
    /// Only entries with this code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<DlqCode>,
    /// Only the fanned-out copies of this destination (`Switchyard-Destination` of the
    /// original message: a destination id, or `_route`): what a destination failed to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// Only entries stored at or after this time.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<OffsetDateTime>,
    /// Only entries stored at or before this time.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<OffsetDateTime>,
    /// Exactly these DLQ sequences (ascending, no duplicates); the filters above must be
    /// empty when this is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<u64>,
}

/// A time for people and tables: RFC 3339 in UTC, to the second (how a selection describes
/// its time range, and how the CLI shows every time).
pub fn show_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_default()
}

impl Selection {
    /// Exactly these sequences, sorted and without duplicates.
    pub fn listed(mut seqs: Vec<u64>) -> Self {
        seqs.sort_unstable();
        seqs.dedup();
        Self {
            seqs,
            ..Self::default()
        }
    }

    /// Whether it lists sequences (rather than filtering).
    pub fn is_listed(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// Whether any filter (subject, code or time) is set.
    pub fn is_filtered(&self) -> bool {
        self.tenant.is_some()
            || self.stage.is_some()
            || self.platform.is_some()
            || self.code.is_some()
            || self.destination.is_some()
            || self.since.is_some()
            || self.until.is_some()
    }

    /// Listed sequences (ascending, no duplicates) or filters, not both — but for the tenant:
    /// listed sequences may name the tenant they must belong to (the management API's jobs do;
    /// a listed entry of another tenant is then skipped).
    pub fn validate(&self) -> Result<(), String> {
        if self.is_listed() {
            let beyond_tenant = Selection {
                tenant: None,
                ..self.clone()
            };
            if beyond_tenant.is_filtered() {
                return Err(
                    "a job lists sequences or has filters (but a tenant), not both".to_owned(),
                );
            }
            if !self.seqs.windows(2).all(|w| w[0] < w[1]) {
                return Err("listed sequences must be ascending without duplicates".to_owned());
            }
        }
        Ok(())
    }

    /// The subject part of the filter.
    pub fn subjects(&self) -> DlqFilter {
        DlqFilter {
            tenant: self.tenant.clone(),
            stage: self.stage,
            platform: self.platform.clone(),
        }
    }

    /// The DLQ subject filter a read goes through.
    pub fn subject_filter(&self, ns: &Namespace) -> String {
        ns.dlq_filter(&self.subjects())
    }

    /// Where an ordered read of the filter starts: the first entry, or the first stored at
    /// `since`.
    pub fn start(&self) -> DeliverPolicy {
        self.since.map_or(DeliverPolicy::All, |start_time| {
            DeliverPolicy::ByStartTime { start_time }
        })
    }

    /// Whether an entry read through the subject filter also passes the code, destination and
    /// time checks.
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        self.code.is_none_or(|c| c == entry.record.code)
            && self.destination.as_ref().is_none_or(|d| {
                entry
                    .original_headers
                    .get(headers::DESTINATION)
                    .is_some_and(|v| v.as_str() == d.as_str())
            })
            && self.in_time(entry.stored_at)
    }

    /// Whether a check needs a readable record (a code or a destination): a DLQ message that is
    /// not a valid record then never matches, while with subject and time filters alone it goes
    /// with the rest.
    pub fn reads_records(&self) -> bool {
        self.code.is_some() || self.destination.is_some()
    }

    /// Refuses a time range nothing can be inside: `since` after `until`.
    ///
    /// # Errors
    /// The message, naming both times.
    pub fn check_time_range(&self) -> Result<(), String> {
        match (self.since, self.until) {
            (Some(since), Some(until)) if since > until => Err(format!(
                "since ({}) is after until ({}): nothing can match",
                show_time(since),
                show_time(until)
            )),
            _ => Ok(()),
        }
    }

    /// Whether a time of storage is inside `since`/`until`.
    pub fn in_time(&self, stored_at: OffsetDateTime) -> bool {
        self.since.is_none_or(|t| stored_at >= t) && self.until.is_none_or(|t| stored_at <= t)
    }

    /// `tenant=acme code=no_route`, `seqs 4,7,9`, or `every entry`.
    pub fn describe(&self) -> String {
        if self.is_listed() {
            let shown: Vec<String> = self.seqs.iter().take(5).map(u64::to_string).collect();
            let more = if self.seqs.len() > 5 { ",…" } else { "" };
            let tenant = self
                .tenant
                .as_ref()
                .map_or(String::new(), |t| format!("tenant={t} "));
            return format!("{tenant}seqs {}{more}", shown.join(","));
        }
        let mut parts = Vec::new();
        if let Some(t) = &self.tenant {
            parts.push(format!("tenant={t}"));
        }
        if let Some(s) = self.stage {
            parts.push(format!("stage={s}"));
        }
        if let Some(p) = &self.platform {
            parts.push(format!("platform={p}"));
        }
        if let Some(c) = self.code {
            parts.push(format!("code={c}"));
        }
        if let Some(d) = &self.destination {
            parts.push(format!("destination={d}"));
        }
        if let Some(t) = self.since {
            parts.push(format!("since={}", show_time(t)));
        }
        if let Some(t) = self.until {
            parts.push(format!("until={}", show_time(t)));
        }
        if parts.is_empty() {
            "every entry".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_range_with_since_after_until_is_refused_naming_both() {
        let at = |secs| Some(OffsetDateTime::from_unix_timestamp(secs).unwrap());
        let range = |since, until| Selection {
            since,
            until,
            ..Selection::default()
        };
        let error = range(at(2_000), at(1_000)).check_time_range().unwrap_err();
        assert!(
            error.contains("since (") && error.contains("is after until ("),
            "{error}"
        );
        for fine in [
            range(at(1_000), at(2_000)),
            range(at(1_000), at(1_000)),
            range(at(1_000), None),
            range(None, at(1_000)),
        ] {
            assert!(fine.check_time_range().is_ok());
        }
    }

    #[test]
    fn the_job_record_json_shape_is_kept() {
        let selection = Selection {
            tenant: Some(TenantId::new("acme").unwrap()),
            code: Some(DlqCode::NoRoute),
            since: Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()),
            ..Selection::default()
        };
        let json = serde_json::to_string(&selection).unwrap();
        assert_eq!(
            json,
            r#"{"tenant":"acme","code":"no_route","since":"2023-11-14T22:13:20Z"}"#
        );
        assert_eq!(serde_json::from_str::<Selection>(&json).unwrap(), selection);
        assert_eq!(
            selection.describe(),
            "tenant=acme code=no_route since=2023-11-14T22:13:20Z"
        );
        let listed = Selection::listed(vec![9, 4, 7, 4]);
        assert_eq!(
            serde_json::to_string(&listed).unwrap(),
            r#"{"seqs":[4,7,9]}"#
        );
        assert_eq!(listed.describe(), "seqs 4,7,9");
        assert!(listed.validate().is_ok());
        assert!(serde_json::from_str::<Selection>(r#"{"bogus":1}"#).is_err());
    }

    #[test]
    fn a_destination_filter_takes_only_that_destinations_copies() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let entry = |destination: Option<&str>| {
            let mut original = async_nats::HeaderMap::new();
            if let Some(d) = destination {
                original.insert(headers::DESTINATION, d);
            }
            DlqEntry {
                seq: 1,
                stored_at: at,
                subject: "dlq.v1.acme.egress.shop".into(),
                record: switchyard_dlq::DeadLetter {
                    stage: Stage::Egress,
                    code: DlqCode::RetriesExhausted,
                    reason: "down".into(),
                    tenant: Some(TenantId::new("acme").unwrap()),
                    platform: None,
                    attempts: 3,
                    first_failure: at,
                    last_failure: at,
                    source_stream: "EGRESS".into(),
                    source_seq: 9,
                    source_time: Some(at),
                    source_subject: "egress.v1.acme.ops.shop".into(),
                    history: Vec::new(),
                },
                original_headers: original,
                original_msg_id: None,
                headers_dropped: None,
                payload: bytes::Bytes::from_static(b"x"),
            }
        };
        let crm = Selection {
            destination: Some("crm".parse().unwrap()),
            ..Selection::default()
        };
        assert!(crm.matches(&entry(Some("crm"))));
        assert!(!crm.matches(&entry(Some("orders"))));
        assert!(!crm.matches(&entry(None)));
        assert!(crm.is_filtered() && crm.reads_records());
        assert_eq!(crm.describe(), "destination=crm");
        let route = Selection {
            destination: Some("_route".parse().unwrap()),
            ..Selection::default()
        };
        assert!(route.matches(&entry(Some("_route"))));
        assert_eq!(
            serde_json::to_string(&route).unwrap(),
            r#"{"destination":"_route"}"#
        );
        assert!(Selection::default().matches(&entry(Some("crm"))));
    }

    #[test]
    fn listed_sequences_and_filters_do_not_mix() {
        let mut both = Selection::listed(vec![3, 4]);
        both.code = Some(DlqCode::NoRoute);
        assert!(both.validate().is_err());
        let unsorted = Selection {
            seqs: vec![4, 3],
            ..Selection::default()
        };
        assert!(unsorted.validate().is_err());
        assert_eq!(Selection::default().describe(), "every entry");
        // The tenant the listed entries must belong to is not a filter.
        let mut owned = Selection::listed(vec![3, 4]);
        owned.tenant = Some(TenantId::new("acme").unwrap());
        assert!(owned.validate().is_ok());
        assert_eq!(owned.describe(), "tenant=acme seqs 3,4");
    }
}
