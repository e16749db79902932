//! `switchyard-bench`: measures the whole pipeline (ingress → idempotency → backpressure →
//! egress → a NATS sink) running as separate processes, and raw JetStream (publish → consume
//! → republish one hop → consume) on the same server in the same run, and prints throughput,
//! latency percentiles and each process's peak memory. With `--fairness`, measures instead
//! whether one tenant's flood or slow sink slows another tenant ([`fairness`]).

mod fairness;
mod pipeline;
mod raw;
mod report;

use clap::Parser;

/// What to measure.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Args {
    /// Messages per run.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Tenants the messages are spread over.
    #[arg(long, default_value_t = 3)]
    pub tenants: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 512)]
    pub in_flight: usize,
    /// Publish rate in messages per second (0 = as fast as possible: the latency figures are
    /// then queueing delay; set a rate below capacity to measure the latency of a message).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Directory of the service binaries (default: next to this binary).
    #[arg(long)]
    pub bin_dir: Option<std::path::PathBuf>,
    /// Measure fairness between tenants instead (a quiet tenant alone, during another's flood,
    /// and while a third's sink is slow).
    #[arg(long)]
    pub fairness: bool,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = switchyard_testkit::NatsServer::start().await;
    if args.fairness {
        print!("{}", fairness::run(&server, &args).await?);
        return Ok(());
    }
    let raw = raw::run(&server, &args).await?;
    let pipeline = pipeline::run(&server, &args).await?;
    print!("{}", report::render(&args, &raw, &pipeline));
    Ok(())
}
