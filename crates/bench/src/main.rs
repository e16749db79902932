//! `switchyard-bench`: measures the whole pipeline (ingress → idempotency → backpressure →
//! egress → a NATS sink, each stage a separate process) next to what JetStream itself can do
//! for the same work, on the same server(s) in the same invocation ([`reference`]): one
//! windowed hop, and the ideal 4-hop pipeline, whose throughput is the headline ratio.
//!
//! One comparison per (tenant count, payload size) given, each on fresh servers; several
//! print a summary. `--replicas` runs several processes per stage, `--cluster` a 3-node
//! cluster with R3 streams, `--fairness` the fairness run between tenants ([`fairness`]),
//! `--consumer-layout` JetStream's cost per message for many tenants' consumers on one shared
//! stream, on 16 shard streams and on a stream per tenant ([`layout`]), `--stage-latency` each
//! stage's share of a pipeline run's latency ([`stages`]).

mod console;
mod fairness;
mod layout;
mod pipeline;
mod reference;
mod report;
mod servers;
mod stages;
mod traffic;

use clap::Parser;

use crate::report::{Figures, Machine};
use crate::servers::Servers;
use crate::traffic::Traffic;

/// What to measure.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Args {
    /// Messages per run (at least 100; fewer for large payloads: see --max-run-bytes).
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Payload sizes in bytes, comma-separated: one comparison per size
    /// (e.g. 256,4096,65536,1048576).
    #[arg(long, value_delimiter = ',', default_value = "256")]
    pub payload_bytes: Vec<usize>,
    /// Most payload bytes one run publishes: a size whose --messages would pass it sends
    /// fewer messages (at least 100).
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    pub max_run_bytes: usize,
    /// Tenants the messages are spread over, comma-separated: one comparison per count
    /// (e.g. 3,100,1000).
    #[arg(long, value_delimiter = ',', default_value = "3")]
    pub tenants: Vec<usize>,
    /// Publishes in flight at once (fewer for large payloads: at most 8 MiB in flight).
    #[arg(long, default_value_t = 512)]
    pub in_flight: usize,
    /// Publish rate in messages per second (0 = as fast as possible: the latency figures are
    /// then queueing delay; set a rate below capacity to measure the latency of a message).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Processes per pipeline stage.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Run on a 3-node cluster (on this machine) with every stream and bucket R3.
    #[arg(long)]
    pub cluster: bool,
    /// Messages each reference relay keeps in flight (at most 8 MiB).
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Which runs each comparison makes, comma-separated (fewer to profile one, say; the
    /// ratios need the pipeline and a reference).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "one-hop,ideal,pipeline,pipeline-encrypted"
    )]
    pub runs: Vec<Run>,
    /// Have the services record and export their spans to this OTLP/HTTP endpoint (to
    /// measure what tracing costs; nothing need listen there). Default: none, as deployed
    /// without `telemetry.otlp_endpoint`.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Pipeline runs: also time each message at every stage's input (a subscription of the
    /// benchmark's own on the stages' subjects) and print when it got there and each stage's
    /// share of the median latency. The subscription's copies cost nats-server a little, so
    /// the run is a little slower than without it.
    #[arg(long)]
    pub stage_latency: bool,
    /// Directory of the service binaries (default: next to this binary).
    #[arg(long)]
    pub bin_dir: Option<std::path::PathBuf>,
    /// Measure the web console's DLQ page instead, with this many DLQ entries stored (e.g.
    /// 100000), and the console process's memory (`switchyard` is started from --bin-dir).
    #[arg(long, value_name = "ENTRIES")]
    pub console_dlq: Option<u64>,
    /// Measure fairness between tenants instead (a quiet tenant alone, during another's flood,
    /// and while a third's sink is slow).
    #[arg(long)]
    pub fairness: bool,
    /// Measure what nats-server spends per message for `--tenants` tenants read through one
    /// shared work-queue stream with a consumer per tenant, 16 shard streams, and a stream per
    /// tenant (JetStream alone; uses `--messages`, the first `--payload-bytes`, `--rate`,
    /// `--in-flight`, `--max-run-bytes`, `--cluster`; no service runs, so `--runs`,
    /// `--replicas`, `--window`, `--bin-dir` and `--otlp-endpoint` do not apply).
    #[arg(long, conflicts_with_all = ["fairness", "console_dlq"])]
    pub consumer_layout: bool,
    /// Fairness: the quiet tenant's rate, messages per second.
    #[arg(long, default_value_t = 20.0)]
    pub fairness_quiet_rate: f64,
    /// Fairness: the length of each phase, in seconds.
    #[arg(long, default_value_t = 20)]
    pub fairness_secs: u64,
    /// Fairness: messages the flooding tenant publishes.
    #[arg(long, default_value_t = 50_000)]
    pub fairness_flood: usize,
}

/// One run of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Run {
    /// One windowed JetStream hop.
    OneHop,
    /// The ideal 4-hop JetStream pipeline (the headline ratio's reference).
    Ideal,
    /// Switchyard's pipeline, its services as processes.
    Pipeline,
    /// The same with payload encryption on for every tenant (sealed at ingress, opened at
    /// egress), on servers of its own started like the plain run's.
    PipelineEncrypted,
}

impl Args {
    /// Messages a run of `payload_bytes` messages publishes: `--messages`, fewer when that
    /// would pass `--max-run-bytes`, never under 100.
    pub fn messages_for(&self, payload_bytes: usize) -> usize {
        self.messages
            .min(self.max_run_bytes / payload_bytes.max(1))
            .max(100)
    }
}

/// One comparison: the references and the pipeline on fresh servers.
async fn compare(
    args: &Args,
    tenants: usize,
    payload_bytes: usize,
) -> anyhow::Result<Vec<Figures>> {
    let servers = Servers::start(args.cluster).await;
    let machine = Machine::detect(servers.describe());
    let traffic = Traffic::of(args, payload_bytes);
    let target = reference::Target {
        urls: servers.urls(),
        replicas: servers.replicas(),
        run: "r".to_owned(),
        processes: servers.processes(),
    };
    let mut runs = Vec::new();
    if args.runs.contains(&Run::OneHop) {
        runs.push(reference::one_hop(&target, &traffic, tenants).await?);
    }
    if args.runs.contains(&Run::Ideal) {
        runs.push(reference::ideal(&target, &traffic, tenants).await?);
    }
    if args.runs.contains(&Run::Pipeline) {
        runs.push(pipeline::run(&servers, args, &traffic, tenants, false).await?);
    }
    if args.runs.contains(&Run::PipelineEncrypted) {
        // Fresh servers, as the plain run had: the plain run's idempotency claims and streams
        // would otherwise weigh on this one alone.
        let fresh = if args.runs.contains(&Run::Pipeline) {
            Some(Servers::start(args.cluster).await)
        } else {
            None
        };
        let servers = fresh.as_ref().unwrap_or(&servers);
        runs.push(pipeline::run(servers, args, &traffic, tenants, true).await?);
    }
    let title = format!(
        "Switchyard benchmark: {} messages of {} bytes over {} tenants, {} publishes in flight, {}; {} process(es) per stage",
        traffic.messages,
        payload_bytes,
        tenants,
        traffic.in_flight,
        if args.rate > 0.0 {
            format!("paced at {}/s", args.rate)
        } else {
            "unpaced".to_owned()
        },
        args.replicas.max(1),
    );
    println!("{}", report::render(&title, &machine, &runs));
    Ok(runs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(entries) = args.console_dlq {
        return console::run(entries, args.bin_dir.clone()).await;
    }
    if args.consumer_layout {
        layout::run(&args).await?;
        return Ok(());
    }
    if args.fairness {
        let servers = Servers::start(args.cluster).await;
        print!("{}", fairness::run(&servers, &args).await?);
        return Ok(());
    }
    let mut summary = Vec::new();
    for &tenants in &args.tenants {
        for &payload_bytes in &args.payload_bytes {
            let runs = compare(&args, tenants, payload_bytes).await?;
            summary.push((tenants, payload_bytes, runs));
        }
    }
    if summary.len() > 1 {
        print!("{}", report::summary(&summary));
    }
    Ok(())
}
