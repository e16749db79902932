//! The server's limits against the declared sizes: every stream's `max_msg_size` must fit the
//! server's `max_payload` (else a message the stream accepts cannot even be published to it),
//! and the DLQ's must exceed every stage stream's by a DLQ record's own headers (else a
//! message a stage holds cannot be dead-lettered). `switchyard provision` refuses, and every
//! service refuses to start, while [`check_server_limits`] finds a problem.

use std::fmt;

use switchyard_dlq::record::RECORD_HEADER_ROOM;

use crate::names::StreamName;
use crate::resolve::{ResolvedStream, ResolvedTopology};

/// The oldest nats-server the declared topology works on, `(major, minor, patch)`: message
/// schedules on `EGRESS` (`allow_msg_schedules`, nats-server 2.12) and per-key TTLs with
/// limit markers on the `idempotency` bucket (2.11).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 0);

/// The nats-server version every test and benchmark runs against (`nats/nats-server.version`,
/// what `make nats-server` installs).
pub const PINNED_SERVER_VERSION: &str = include_str!("../../../nats/nats-server.version");

/// Parses `2.15.1` (a leading `v` and a suffix such as `-beta.1` or `+build` are ignored);
/// `None` when it is not three dot-separated numbers.
pub fn parse_server_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// What the bundled server configs (`nats/server/*.conf`) set, and the fix every problem names.
pub const SERVER_FIX: &str = "set `max_payload: 2MB` in the nats-server config (as nats/server/*.conf do) and restart the server";

/// One way the declared sizes do not fit the server or each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitProblem {
    /// A stream accepts messages larger than the server lets any client publish.
    StreamOverServer {
        /// The stream's declared base name (`INGRESS`, `EGRESS`, …).
        stream: String,
        /// Its `max_msg_size`, in bytes.
        max_msg_size: i64,
        /// The server's `max_payload`, in bytes.
        server_max_payload: usize,
    },
    /// The DLQ cannot hold a record of the largest message a stage stream holds.
    DlqTooSmall {
        /// The DLQ's effective largest message (its `max_msg_size`, capped by the server's
        /// `max_payload`), in bytes.
        dlq_size: usize,
        /// The stage stream with the largest effective message size.
        largest: String,
        /// That stream's effective largest message, in bytes.
        largest_size: usize,
        /// The room a DLQ record's own headers need beyond the message, in bytes.
        room: usize,
    },
}

impl fmt::Display for LimitProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitProblem::StreamOverServer {
                stream,
                max_msg_size,
                server_max_payload,
            } => write!(
                f,
                "the nats-server's max_payload is {server_max_payload} bytes, but stream \
                 {stream} declares max_msg_size {max_msg_size}: messages it accepts could \
                 not be published or dead-lettered; {SERVER_FIX}, or lower {stream}'s \
                 max_msg_size in nats/topology.toml"
            ),
            LimitProblem::DlqTooSmall {
                dlq_size,
                largest,
                largest_size,
                room,
            } => write!(
                f,
                "stream DLQ takes messages of at most {dlq_size} bytes, but stream {largest} \
                 holds messages of up to {largest_size} bytes and a DLQ record needs {room} \
                 bytes more: such a message could not be dead-lettered; raise DLQ's \
                 max_msg_size to at least {} in nats/topology.toml (and the server's \
                 max_payload with it: {SERVER_FIX})",
                largest_size.saturating_add(*room)
            ),
        }
    }
}

impl LimitProblem {
    /// The problem in one short clause, without the fix (for a table row):
    /// `stream EGRESS: max_msg_size 1114112 > the server's max_payload 1048576`.
    pub fn summary(&self) -> String {
        match self {
            LimitProblem::StreamOverServer {
                stream,
                max_msg_size,
                server_max_payload,
            } => format!(
                "stream {stream}: max_msg_size {max_msg_size} > the server's max_payload \
                 {server_max_payload}"
            ),
            LimitProblem::DlqTooSmall {
                dlq_size,
                largest,
                largest_size,
                room,
            } => format!(
                "stream DLQ: messages of up to {dlq_size} bytes < {largest}'s {largest_size} + \
                 {room} for a DLQ record"
            ),
        }
    }
}

/// The server's limits do not fit the declared sizes (what a service refuses to start on).
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ServerLimitError {
    /// Every problem found (at least one).
    pub problems: Vec<LimitProblem>,
}

/// The largest message a stream really stores: its `max_msg_size` (≤ 0: unlimited), capped
/// by the server's `max_payload`.
fn effective_size(stream: &ResolvedStream, server_max_payload: usize) -> usize {
    match usize::try_from(stream.config.max_message_size) {
        Ok(size) if size > 0 => size.min(server_max_payload),
        _ => server_max_payload,
    }
}

/// Checks the declared streams (the shared ones and the per-tenant templates) against the
/// server's `max_payload` (`async_nats::Client::server_info().max_payload`) and the DLQ against
/// the stage streams; returns every problem (none: the sizes fit).
pub fn check_server_limits(
    server_max_payload: usize,
    topology: &ResolvedTopology,
) -> Vec<LimitProblem> {
    // One entry per declaration: a sharded one's shards share its sizes.
    let streams = || {
        topology
            .streams
            .iter()
            .chain(&topology.tenant_streams)
            .filter(|s| s.shard.is_none_or(|shard| shard.index() == 0))
    };
    let mut problems: Vec<LimitProblem> = streams()
        .filter(|s| {
            usize::try_from(s.config.max_message_size).is_ok_and(|size| size > server_max_payload)
        })
        .map(|s| LimitProblem::StreamOverServer {
            stream: s.base.clone(),
            max_msg_size: i64::from(s.config.max_message_size),
            server_max_payload,
        })
        .collect();
    let dlq = streams().find(|s| s.base == StreamName::Dlq.base());
    // The streams whose messages a stage may dead-letter (not the DLQ, not the advisories).
    let largest = streams()
        .filter(|s| StreamName::from_base(&s.base).is_some_and(|n| n.stage().is_some()))
        .map(|s| (s, effective_size(s, server_max_payload)))
        // The first declared of the largest (`max_by_key` keeps the last).
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .max_by_key(|(_, size)| *size);
    if let (Some(dlq), Some((largest, largest_size))) = (dlq, largest) {
        let dlq_size = effective_size(dlq, server_max_payload);
        if dlq_size < largest_size.saturating_add(RECORD_HEADER_ROOM) {
            problems.push(LimitProblem::DlqTooSmall {
                dlq_size,
                largest: largest.base.clone(),
                largest_size,
                room: RECORD_HEADER_ROOM,
            });
        }
    }
    problems
}

/// [`check_server_limits`] against the server `client` is connected to (what every service
/// runs at start-up, right after resolving the topology). A client that has not yet received
/// the server's `INFO` (`max_payload` 0) is not checked.
pub fn check_server(
    client: &async_nats::Client,
    topology: &ResolvedTopology,
) -> Result<(), ServerLimitError> {
    let max_payload = client.server_info().max_payload;
    if max_payload == 0 {
        return Ok(());
    }
    let problems = check_server_limits(max_payload, topology);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ServerLimitError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_parse_with_prefixes_and_suffixes_and_order_numerically() {
        assert_eq!(parse_server_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_server_version("v2.12.0-beta.1"), Some((2, 12, 0)));
        assert_eq!(
            parse_server_version(PINNED_SERVER_VERSION),
            Some((2, 15, 1))
        );
        assert_eq!(parse_server_version("2.15"), None);
        assert_eq!(parse_server_version("2.x.1"), None);
        assert!(parse_server_version("2.9.25").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_server_version("2.10.0").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_server_version(PINNED_SERVER_VERSION).unwrap() >= MIN_SERVER_VERSION);
    }
    use crate::{Topology, TopologyOptions};

    fn declared() -> ResolvedTopology {
        ResolvedTopology::resolve(&Topology::embedded().unwrap(), &TopologyOptions::default())
    }

    fn set_size(topology: &mut ResolvedTopology, base: &str, size: i32) {
        for s in topology
            .streams
            .iter_mut()
            .chain(topology.tenant_streams.iter_mut())
        {
            if s.base == base {
                s.config.max_message_size = size;
            }
        }
    }

    #[test]
    fn the_declared_sizes_fit_the_bundled_2mb_server() {
        assert_eq!(check_server_limits(2 * 1024 * 1024, &declared()), vec![]);
    }

    #[test]
    fn a_stock_1mib_server_is_refused_naming_every_stream_and_the_fix() {
        let problems = check_server_limits(1024 * 1024, &declared());
        let over: Vec<&str> = problems
            .iter()
            .filter_map(|p| match p {
                LimitProblem::StreamOverServer { stream, .. } => Some(stream.as_str()),
                LimitProblem::DlqTooSmall { .. } => None,
            })
            .collect();
        for stream in ["INGRESS", "IDEMPOTENCY", "BACKPRESSURE", "EGRESS", "DLQ"] {
            assert_eq!(
                over.iter().filter(|s| **s == stream).count(),
                1,
                "{stream} once in {problems:?}"
            );
        }
        // Capped by the server, the DLQ is no larger than the stage streams.
        assert!(
            problems
                .iter()
                .any(|p| matches!(p, LimitProblem::DlqTooSmall { .. }))
        );
        let text = problems[0].to_string();
        assert!(text.contains("max_payload is 1048576 bytes"), "{text}");
        assert!(text.contains("max_payload: 2MB"), "{text}");
    }

    #[test]
    fn a_dlq_without_room_for_the_record_headers_is_refused() {
        let mut topology = declared();
        set_size(&mut topology, "DLQ", 1_114_112 + 1000);
        let problems = check_server_limits(2 * 1024 * 1024, &topology);
        assert_eq!(
            problems,
            vec![LimitProblem::DlqTooSmall {
                dlq_size: 1_115_112,
                largest: "IDEMPOTENCY".into(),
                largest_size: 1_114_112,
                room: RECORD_HEADER_ROOM,
            }]
        );
        assert!(problems[0].to_string().contains("at least 1179648"));
    }

    #[test]
    fn an_unlimited_stage_stream_counts_as_the_server_limit() {
        let mut topology = declared();
        set_size(&mut topology, "EGRESS", -1);
        let problems = check_server_limits(2 * 1024 * 1024, &topology);
        assert!(
            matches!(&problems[..], [LimitProblem::DlqTooSmall { largest, largest_size, .. }]
                if largest == "EGRESS" && *largest_size == 2 * 1024 * 1024),
            "{problems:?}"
        );
    }
}
