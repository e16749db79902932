//! Figures of one run, the machine they come from, and the printed report.

use std::time::Duration;

use crate::traffic::Traffic;

/// One run's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// What was measured.
    pub name: String,
    /// Messages published.
    pub sent: usize,
    /// Messages received at the end.
    pub received: usize,
    /// Payload bytes of each message.
    pub payload_bytes: usize,
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
    /// The figures of `traffic` received with `latencies` (sorted) within `elapsed`.
    pub fn new(name: &str, traffic: &Traffic, latencies: Vec<Duration>, elapsed: Duration) -> Self {
        Self {
            name: name.to_owned(),
            sent: traffic.messages,
            received: latencies.len(),
            payload_bytes: traffic.payload_bytes,
            elapsed,
            latencies,
            peak_rss: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The `p` quantile of the latencies (0..=1), in milliseconds; NaN without any.
    pub fn percentile(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies, p)
    }

    /// Messages per second received.
    pub fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload megabytes (10⁶ bytes) per second received.
    pub fn megabytes_per_sec(&self) -> f64 {
        self.rate() * self.payload_bytes as f64 / 1e6
    }
}

/// The `p` quantile (0..=1) of `sorted` latencies, in milliseconds; NaN when empty.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// Peak resident set size of a process (Linux `VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size of a process (Linux `VmRSS`), in bytes.
pub fn current_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) a process has used so far (`/proc/<pid>/stat`, in clock ticks of
/// 1/100 s, the Linux default).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), closed by ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time used so far by each named process, summed per name (several replicas of a stage).
pub fn cpu_times(processes: &[(String, u32)]) -> Vec<(String, Duration)> {
    let mut out: Vec<(String, Duration)> = Vec::new();
    for (name, pid) in processes {
        let used = cpu_time(*pid).unwrap_or_default();
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += used,
            None => out.push((name.clone(), used)),
        }
    }
    out
}

/// CPU microseconds per delivered message, per process name, between two [`cpu_times`]
/// samples, and their total.
pub fn cpu_per_message(
    before: &[(String, Duration)],
    after: &[(String, Duration)],
    messages: usize,
) -> String {
    let mut total = 0.0;
    let parts: Vec<String> = after
        .iter()
        .map(|(name, used)| {
            let start = before
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| *d)
                .unwrap_or_default();
            let micros = used.saturating_sub(start).as_secs_f64() * 1e6 / messages.max(1) as f64;
            total += micros;
            format!("{name} {micros:.0}")
        })
        .collect();
    format!(
        "CPU µs per delivered message: {} (total {total:.0})",
        parts.join(", ")
    )
}

/// The machine a report's figures come from.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Cores this process may use.
    pub cores: usize,
    /// The servers: one node or a cluster.
    pub servers: String,
}

impl Machine {
    /// This machine, running `servers`.
    pub fn detect(servers: &str) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_else(|| "unknown cpu".to_owned());
        Self {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            servers: servers.to_owned(),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine: {}, {} cores; nats-server {} ({})",
            self.cpu,
            self.cores,
            switchyard_testkit::PINNED_VERSION.trim(),
            self.servers
        )
    }
}

/// The table of `runs` under `title`, then the ratios of each pipeline run to the runs before
/// it, then each run's notes and peak memory.
pub fn render(title: &str, machine: &Machine, runs: &[Figures]) -> String {
    let mut out = format!("{title}\n{machine}\n\n");
    out.push_str(&format!(
        "{:<38} {:>13} {:>9} {:>8} {:>7} {:>7} {:>7} {:>8}\n",
        "run", "received", "msgs/s", "MB/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    ));
    for f in runs {
        out.push_str(&format!(
            "{:<38} {:>13} {:>9.0} {:>8.1} {:>7.1} {:>7.1} {:>7.1} {:>8.1}\n",
            f.name,
            format!("{}/{}", f.received, f.sent),
            f.rate(),
            f.megabytes_per_sec(),
            f.percentile(0.5),
            f.percentile(0.9),
            f.percentile(0.99),
            f.percentile(1.0)
        ));
    }
    // Each pipeline run against every run before it (the references, and the plain pipeline
    // for the encrypted one).
    for (i, pipeline) in runs.iter().enumerate() {
        if !pipeline.name.starts_with(PIPELINE) || i == 0 {
            continue;
        }
        out.push('\n');
        for reference in runs[..i].iter().rev() {
            out.push_str(&format!(
                "{} / {}: {:.2} of the throughput, p50 latency {:+.1} ms\n",
                pipeline.name,
                reference.name,
                pipeline.rate() / reference.rate().max(1e-9),
                pipeline.percentile(0.5) - reference.percentile(0.5)
            ));
        }
    }
    for f in runs {
        for note in &f.notes {
            out.push_str(&format!("{note}\n"));
        }
    }
    let peaks: Vec<_> = runs.iter().flat_map(|f| &f.peak_rss).collect();
    if !peaks.is_empty() {
        out.push_str("\npeak RSS:\n");
        for (name, bytes) in peaks {
            out.push_str(&format!(
                "  {name:<28} {:>8.1} MiB\n",
                *bytes as f64 / 1048576.0
            ));
        }
    }
    out
}

/// The name every pipeline run's figures start with.
pub const PIPELINE: &str = "Switchyard pipeline";

/// The name of the ideal 4-hop reference's figures.
pub const IDEAL: &str = "JetStream ideal, 4 hops + KV create";

/// One line per comparison (tenants, payload bytes, its runs: the references, then the
/// pipeline): the pipeline's throughput, its ratio to the ideal 4-hop reference, and to the
/// first comparison's pipeline.
pub fn summary(comparisons: &[(usize, usize, Vec<Figures>)]) -> String {
    let mut out = format!(
        "summary\n{:>8} {:>9} {:>11} {:>9} {:>11} {:>9} {:>11} {:>9}\n",
        "tenants", "bytes", "pipeline/s", "MB/s", "ideal/s", "MB/s", "/ ideal", "/ first"
    );
    let first = comparisons
        .first()
        .and_then(|(_, _, runs)| runs.iter().find(|f| f.name.starts_with(PIPELINE)))
        .map_or(f64::NAN, Figures::rate);
    for (tenants, bytes, runs) in comparisons {
        let pipeline = runs.iter().find(|f| f.name.starts_with(PIPELINE));
        let ideal = runs.iter().find(|f| f.name.starts_with(IDEAL));
        let (Some(pipeline), Some(ideal)) = (pipeline, ideal) else {
            out.push_str(&format!(
                "{tenants:>8} {bytes:>9}  (needs the pipeline and the ideal runs)\n"
            ));
            continue;
        };
        out.push_str(&format!(
            "{tenants:>8} {bytes:>9} {:>11.0} {:>9.1} {:>11.0} {:>9.1} {:>11.2} {:>9.2}\n",
            pipeline.rate(),
            pipeline.megabytes_per_sec(),
            ideal.rate(),
            ideal.megabytes_per_sec(),
            pipeline.rate() / ideal.rate().max(1e-9),
            pipeline.rate() / first
        ));
    }
    out
}
