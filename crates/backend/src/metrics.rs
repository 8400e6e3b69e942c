//! Prometheus metrics: what `GET /metrics` answers, and the small hooks the rest of the code calls
//! to count what it did (`prometheus-client`; text exposition format 0.0.4).
//!
//! The registry is process-wide, like the process it describes: the hooks sit in services that
//! have no handle on the HTTP layer (the run worker, the command rollout, Terraform's runner, the
//! agent client), and one process serves one control plane. Values that the database knows
//! better than any one replica (queued and running runs, machines by health) and the pool's
//! state are read when scraped ([`Snapshot`]), so every replica reports the same queue.
//!
//! On the request path a sample costs two clock reads, a read lock of the label family (an
//! atomic) and the histogram's uncontended lock: no allocation, since route labels are
//! interned once per router ([`HttpRoutes`]).

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::Response,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

/// `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Seconds: a cheap read is well under a millisecond; the request limit is 30 s by default.
const HTTP_BUCKETS: [f64; 15] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];
/// Seconds: a local apply takes seconds, a cloud one minutes, the run timeout is an hour.
const RUN_BUCKETS: [f64; 12] =
    [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0];
/// Seconds: an agent call on a LAN is milliseconds; a command may run for its whole timeout.
const MACHINE_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The route label of a request no route matched (unknown paths), so that scanners probing
/// random paths add one series rather than one per path.
const UNMATCHED: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    /// A route template (`/infrastructure/{id}`), never a raw path: bounded cardinality.
    route: Arc<str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunStateLabels {
    kind: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

/// Every metric of the process; see the README's "Metrics" section for what each means.
struct Metrics {
    registry: Registry,
    http: Family<HttpLabels, Histogram>,
    runs: Family<RunLabels, Histogram>,
    runs_active: Family<RunStateLabels, Gauge>,
    terraform_processes: Gauge,
    commands: Family<OutcomeLabels, Counter>,
    machine_commands: Family<OutcomeLabels, Histogram>,
    machines: Family<HealthLabels, Gauge>,
    db_connections: Family<PoolLabels, Gauge>,
    db_max_connections: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            http: Family::new_with_constructor(|| Histogram::new(HTTP_BUCKETS)),
            runs: Family::new_with_constructor(|| Histogram::new(RUN_BUCKETS)),
            runs_active: Family::default(),
            terraform_processes: Gauge::default(),
            commands: Family::default(),
            machine_commands: Family::new_with_constructor(|| Histogram::new(MACHINE_BUCKETS)),
            machines: Family::default(),
            db_connections: Family::default(),
            db_max_connections: Gauge::default(),
        };
        let mut registry = Registry::default();
        // `process_*` keep their conventional names; everything of ours is `nim_*`.
        registry.register_collector(Box::new(ProcessCollector));
        let nim = registry.sub_registry_with_prefix("nim");
        nim.register(
            "http_request_duration_seconds",
            "HTTP requests by method, route template and status, with their latency (`_count` is the number of requests)",
            metrics.http.clone(),
        );
        nim.register(
            "run_duration_seconds",
            "Finished Terraform runs by kind and outcome, with how long they ran (`_count` is the number of runs)",
            metrics.runs.clone(),
        );
        nim.register(
            "runs",
            "Runs queued or running now, by kind and status (from the database: every replica's)",
            metrics.runs_active.clone(),
        );
        nim.register(
            "terraform_processes",
            "Terraform processes this replica is running now",
            metrics.terraform_processes.clone(),
        );
        nim.register("commands", "Finished commands by outcome", metrics.commands.clone());
        nim.register(
            "machine_command_duration_seconds",
            "Commands run on one machine, by outcome, with each machine's latency (`_count` is the number of machine commands)",
            metrics.machine_commands.clone(),
        );
        nim.register(
            "machines",
            "Machines of live deployments by their last health check (from the database)",
            metrics.machines.clone(),
        );
        nim.register(
            "db_connections",
            "Database pool connections by state (in_use, idle)",
            metrics.db_connections.clone(),
        );
        nim.register(
            "db_max_connections",
            "The database pool's most connections (NIM_DB_MAX_CONNECTIONS)",
            metrics.db_max_connections.clone(),
        );
        Self { registry, ..metrics }
    }
}

/// The route templates of one router, interned so that a request's label is an `Arc` clone.
#[derive(Debug, Clone)]
pub struct HttpRoutes {
    routes: Arc<HashMap<Box<str>, Arc<str>>>,
    unmatched: Arc<str>,
}

impl HttpRoutes {
    /// The templates the router serves (its OpenAPI paths).
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a str>) -> Self {
        let routes = templates.into_iter().map(|t| (Box::from(t), Arc::from(t))).collect();
        Self { routes: Arc::new(routes), unmatched: Arc::from(UNMATCHED) }
    }

    fn label(&self, matched: Option<&MatchedPath>) -> Arc<str> {
        matched.and_then(|path| self.routes.get(path.as_str())).unwrap_or(&self.unmatched).clone()
    }
}

/// Middleware: one latency sample per request, by method, route template and status. It sits
/// inside the router's layers, where axum has put the matched route in the request.
pub async fn track_http(routes: HttpRoutes, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = routes.label(request.extensions().get::<MatchedPath>());
    let response = next.run(request).await;
    let labels = HttpLabels { method, route, status: response.status().as_u16() };
    METRICS.http.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Hook: a run ended (`outcome` is its final status, or `interrupted` when it was re-queued).
pub fn run_finished(kind: &'static str, outcome: &'static str, ran_for: Duration) {
    METRICS.runs.get_or_create(&RunLabels { kind, outcome }).observe(ran_for.as_secs_f64());
}

/// Hook: a command ended with this rolled-up status.
pub fn command_finished(outcome: &'static str) {
    METRICS.commands.get_or_create(&OutcomeLabels { outcome }).inc();
}

/// Hook: one machine's part of a command (or any agent exec) ended.
pub fn machine_command_finished(outcome: &'static str, took: Duration) {
    METRICS.machine_commands.get_or_create(&OutcomeLabels { outcome }).observe(took.as_secs_f64());
}

/// Hook: a Terraform process started; it counts as live until the guard is dropped.
pub fn terraform_started() -> TerraformProcess {
    METRICS.terraform_processes.inc();
    TerraformProcess(())
}

/// One live Terraform process in `nim_terraform_processes`.
#[derive(Debug)]
pub struct TerraformProcess(());

impl Drop for TerraformProcess {
    fn drop(&mut self) {
        METRICS.terraform_processes.dec();
    }
}

/// What a scrape reads from the database and the pool just before encoding.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `(kind, status, count)` of queued and running runs; `None` when the database did not
    /// answer (the previous values stay).
    pub runs: Option<Vec<(String, String, i64)>>,
    /// `(health, count)` of machines of deployments not destroyed.
    pub machines: Option<Vec<(String, i64)>>,
    pub pool: PoolState,
}

/// The database pool as the scrape found it.
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolState {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// The vocabularies of the scrape-time gauges: every series is written each scrape, zero
/// included, so a count that drops to nothing reads 0 rather than its last value.
const RUN_KINDS: [&str; 2] = ["apply", "destroy"];
const ACTIVE_RUN_STATUSES: [&str; 2] = ["queued", "running"];
const HEALTH: [&str; 3] = ["healthy", "unreachable", "unknown"];

/// The exposition text of every metric, after applying the scrape-time `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let metrics = &*METRICS;
    if let Some(runs) = &snapshot.runs {
        for kind in RUN_KINDS {
            for status in ACTIVE_RUN_STATUSES {
                let count = runs
                    .iter()
                    .filter(|(k, s, _)| k == kind && s == status)
                    .map(|(_, _, n)| *n)
                    .sum();
                metrics.runs_active.get_or_create(&RunStateLabels { kind, status }).set(count);
            }
        }
    }
    if let Some(machines) = &snapshot.machines {
        for health in HEALTH {
            let count = machines.iter().filter(|(h, _)| h == health).map(|(_, n)| *n).sum();
            metrics.machines.get_or_create(&HealthLabels { health }).set(count);
        }
    }
    let pool = snapshot.pool;
    let in_use = i64::from(pool.open.saturating_sub(pool.idle));
    metrics.db_connections.get_or_create(&PoolLabels { state: "in_use" }).set(in_use);
    metrics.db_connections.get_or_create(&PoolLabels { state: "idle" }).set(i64::from(pool.idle));
    metrics.db_max_connections.set(i64::from(pool.max));
    let mut text = String::with_capacity(16 * 1024);
    // Writing to a `String` cannot fail; an encoder error would be a bug in a label.
    if let Err(err) =
        prometheus_client::encoding::prometheus_text::encode(&mut text, &metrics.registry)
    {
        tracing::error!(error = %err, "failed to encode the metrics");
    }
    text
}

/// `process_*` from `/proc/self`, read at each scrape (the names client libraries use, so the
/// usual dashboards work). Absent where `/proc` is not mounted.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else { return Ok(()) };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", stats.rss_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", stats.vsize_bytes),
            ("process_open_fds", "Number of open file descriptors", stats.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", stats.max_fds),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                stats.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    open_fds: f64,
    max_fds: f64,
    start_time_seconds: f64,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        use nix::unistd::{SysconfVar, sysconf};
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten()? as f64;
        let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten()? as f64;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
            text.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        })?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| parse_max_open_files(&limits))
            .unwrap_or(f64::INFINITY);
        Self::parse_stat(&stat, ticks, page, boot_time, open_fds, max_fds)
    }

    /// `/proc/self/stat`'s fields after the command name, which may itself hold spaces and
    /// parentheses: utime and stime (14, 15), starttime (22), vsize (23), rss (24), 1-based.
    fn parse_stat(
        stat: &str,
        ticks: f64,
        page: f64,
        boot_time: f64,
        open_fds: f64,
        max_fds: f64,
    ) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        // `rest` starts at field 3 (state).
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            start_time_seconds: boot_time + field(22)? / ticks,
            vsize_bytes: field(23)?,
            rss_bytes: field(24)? * page,
            open_fds,
            max_fds,
        })
    }
}

fn parse_max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (nim (back) end) S 1 4242 4242 0 -1 4194560 3000 0 0 0 250 50 0 0 20 0 \
                    9 0 1000 123456789 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let stats = ProcessStats::parse_stat(stat, 100.0, 4096.0, 1_700_000_000.0, 7.0, 1024.0)
            .expect("parses");
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.start_time_seconds, 1_700_000_010.0);
        assert_eq!(stats.vsize_bytes, 123_456_789.0);
        assert_eq!(stats.rss_bytes, 2000.0 * 4096.0);
        assert_eq!(stats.open_fds, 7.0);
    }

    #[test]
    fn the_soft_open_files_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn the_process_itself_is_readable_and_every_family_is_rendered() {
        let stats = ProcessStats::read().expect("/proc/self is readable on Linux");
        assert!(stats.rss_bytes > 0.0 && stats.open_fds >= 3.0, "{stats:?}");
        run_finished("apply", "succeeded", Duration::from_secs(3));
        command_finished("succeeded");
        machine_command_finished("succeeded", Duration::from_millis(20));
        let live = terraform_started();
        let snapshot = Snapshot {
            runs: Some(vec![("apply".into(), "queued".into(), 2)]),
            machines: Some(vec![("healthy".into(), 3)]),
            pool: PoolState { open: 3, idle: 1, max: 8 },
        };
        let text = render(&snapshot);
        drop(live);
        for line in [
            "nim_runs{kind=\"apply\",status=\"queued\"} 2",
            "nim_runs{kind=\"destroy\",status=\"running\"} 0",
            "nim_machines{health=\"healthy\"} 3",
            "nim_machines{health=\"unreachable\"} 0",
            "nim_db_connections{state=\"in_use\"} 2",
            "nim_db_connections{state=\"idle\"} 1",
            "nim_db_max_connections 8",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE nim_run_duration_seconds histogram",
            "# TYPE nim_machine_command_duration_seconds histogram",
            "# TYPE nim_commands_total counter",
            "# TYPE nim_terraform_processes gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(
            text.contains("nim_run_duration_seconds_count{kind=\"apply\",outcome=\"succeeded\"} ")
        );
    }
}
