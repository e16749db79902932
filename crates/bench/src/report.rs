//! Latency statistics and the printed report.

use std::time::Duration;

use crate::Args;

/// One run's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// What was measured.
    pub name: String,
    /// Messages received at the end.
    pub received: usize,
    /// From the first publish to the last receipt.
    pub elapsed: Duration,
    /// End-to-end latencies, sorted.
    pub latencies: Vec<Duration>,
    /// Peak resident memory per process, in bytes.
    pub peak_rss: Vec<(String, u64)>,
    /// Further figures, one line each.
    pub notes: Vec<String>,
}

impl Figures {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }

    fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Peak resident set size of a process (Linux `VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".to_owned())
}

/// The report, as printed.
pub fn render(args: &Args, raw: &Figures, pipeline: &Figures) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut out = format!(
        "Switchyard benchmark: {} messages of {} bytes over {} tenants, {} publishes in flight, {}\nmachine: {}, {} cores; nats-server {}\n\n",
        args.messages,
        args.payload_bytes,
        args.tenants,
        args.in_flight,
        if args.rate > 0.0 {
            format!("paced at {}/s", args.rate)
        } else {
            "unpaced".to_owned()
        },
        cpu_model(),
        cores,
        switchyard_testkit::PINNED_VERSION.trim()
    );
    out.push_str(&format!(
        "{:<38} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8}\n",
        "run", "received", "msgs/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    ));
    for f in [raw, pipeline] {
        out.push_str(&format!(
            "{:<38} {:>9} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1}\n",
            f.name,
            f.received,
            f.rate(),
            f.percentile(0.5),
            f.percentile(0.9),
            f.percentile(0.99),
            f.percentile(1.0)
        ));
    }
    out.push_str(&format!(
        "\npipeline / raw throughput: {:.2}\n",
        pipeline.rate() / raw.rate().max(1e-9)
    ));
    for note in raw.notes.iter().chain(&pipeline.notes) {
        out.push_str(&format!("{note}\n"));
    }
    out.push_str("\npeak RSS:\n");
    for (name, bytes) in raw.peak_rss.iter().chain(&pipeline.peak_rss) {
        out.push_str(&format!(
            "  {name:<24} {:>8.1} MiB\n",
            *bytes as f64 / 1048576.0
        ));
    }
    out
}
