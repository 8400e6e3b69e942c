//! Benchmark, not a test: HTTP throughput and memory of the release `nim-backend`, each figure
//! printed beside a ceiling measured in the same run (this machine is shared and noisy: compare
//! ratios, not figures across runs).
//!
//! - Ceiling: a bare hyper server (2 worker threads, like the backend's runtime on this machine)
//!   answering a fixed 295-byte JSON body, loaded by the same `wrk` command (and, for the
//!   authenticated endpoints, the same request script) as the backend.
//! - The backend as it is deployed: embedded defaults, text logs to a file, 1,000 deployments of
//!   3 machines for 10 users, on SQLite and on Postgres. Postgres's own ceiling is `pgbench` running
//!   the endpoint's queries (the same SQL, prepared, 64 clients).
//! - Memory: RSS from `/proc` idle fresh, idle with 1,000 deployments after the load, and around
//!   100 logins.
//!
//! Every figure is the median of `NIM_BENCH_ROUNDS` (3) interleaved rounds of `NIM_BENCH_SECONDS`
//! (5) each. Needs `wrk` (and `pgbench` for the Postgres ceiling); `./dev bench` installs them.
//! Run: `./dev bench`, or `cargo bench -p backend --bench http`.

// A bench target is its own crate root, like the test binary.
#![allow(unreachable_pub)]

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::Utc;
use nim_backend::{
    domain::{DeploymentStatus, RunKind, RunStatus},
    store::{DeploymentRow, NewMachine, RunRow, Store},
};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::types::Json;
use uuid::Uuid;

const USERS: usize = 10;
const DEPLOYMENTS: usize = 1_000;
const MACHINES: usize = 3;
const CONNECTIONS: u32 = 64;
const LOGINS: usize = 100;
const PASSWORD: &str = "correct horse battery";
/// What the ceiling answers: 295 bytes of JSON, about the size of a small deployment view.
const CEILING_BODY: &str = concat!(
    r#"{"id":"0190a6c1-7b7e-7d2a-9c1e-3f5a6b7c8d9e","name":"bbbbbbbbbbb","provider":"local","#,
    r#""status":"ready","status_reason":null,"variables":{"machine_count":3},"#,
    r#""created_at":"2026-12-01T00:00:00Z","updated_at":"2026-12-01T00:00:00Z","degraded":false,"#,
    r#""machines":[],"latest_run":null,"next_before":null}"#
);

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|arg| arg == "--bench") {
        // `cargo test --all-targets` builds and runs benches without `--bench`: nothing to check.
        return Ok(());
    }
    assert_eq!(CEILING_BODY.len(), 295, "the ceiling's body is 295 bytes");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let rounds: usize = env_or("NIM_BENCH_ROUNDS", 3);
    let seconds: u64 = env_or("NIM_BENCH_SECONDS", 5);
    let work = tempfile::tempdir()?;
    let ceiling = start_ceiling()?;
    let ceiling_url = format!("http://{ceiling}");

    let sqlite = Backend::start(work.path().join("sqlite"), None).await?;
    let fresh_rss = rss_kib(sqlite.child.id());
    let sqlite_seed = sqlite.seed().await?;
    let postgres_db = match std::env::var("NIM_BENCH_POSTGRES").as_deref() {
        Ok("0") => None,
        _ => PostgresDb::create().await,
    };
    let postgres = match &postgres_db {
        Some(db) => {
            let backend =
                Backend::start(work.path().join("postgres"), Some(db.url.clone())).await?;
            let seed = backend.seed().await?;
            Some((backend, seed))
        }
        None => None,
    };

    let get_script = work.path().join("get.lua");
    let list_script = work.path().join("list.lua");
    let scripts = |seed: &Seed, tag: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
        let get = work.path().join(format!("get-{tag}.lua"));
        let list = work.path().join(format!("list-{tag}.lua"));
        std::fs::write(&get, wrk_script(&seed.by_id))?;
        std::fs::write(&list, wrk_script(&seed.lists))?;
        Ok((get, list))
    };
    let (sqlite_get, sqlite_list) = scripts(&sqlite_seed, "sqlite")?;
    std::fs::copy(&sqlite_get, &get_script)?;
    std::fs::copy(&sqlite_list, &list_script)?;
    let postgres_scripts = match &postgres {
        Some((_, seed)) => Some(scripts(seed, "postgres")?),
        None => None,
    };

    if std::env::var_os("NIM_BENCH_HOLD").is_some() {
        // For profiling by hand: the seeded server stays up with its wrk scripts.
        println!(
            "holding: pid {} at {} (scripts {} {})",
            sqlite.child.id(),
            sqlite.url(),
            sqlite_get.display(),
            sqlite_list.display()
        );
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    println!(
        "HTTP: wrk -t2 -c{CONNECTIONS} -d{seconds}s --latency, median of {rounds} interleaved \
         rounds; {DEPLOYMENTS} deployments of {MACHINES} machines for {USERS} users\n"
    );
    let mut samples: Vec<(String, Vec<WrkResult>)> = Vec::new();
    let mut record =
        |label: &str, result: WrkResult| match samples.iter_mut().find(|(l, _)| l == label) {
            Some((_, list)) => list.push(result),
            None => samples.push((label.to_owned(), vec![result])),
        };
    let mut pg_samples: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        record("ceiling: bare hyper", wrk(&ceiling_url, None, seconds)?);
        record("ceiling: bare hyper, scripted", wrk(&ceiling_url, Some(&get_script), seconds)?);
        let mut targets = vec![("sqlite", &sqlite, &sqlite_get, &sqlite_list)];
        if let (Some((backend, _)), Some((get, list))) = (&postgres, &postgres_scripts) {
            targets.push(("postgres", backend, get, list));
        }
        for (tag, backend, get, list) in targets {
            let base = backend.url();
            record(
                &format!("{tag}: GET /healthz"),
                wrk(&format!("{base}/healthz"), None, seconds)?,
            );
            record(&format!("{tag}: GET /infrastructure/{{id}}"), wrk(&base, Some(get), seconds)?);
            record(
                &format!("{tag}: GET /infrastructure?limit=50"),
                wrk(&base, Some(list), seconds)?,
            );
        }
        if let (Some(db), Some((_, seed))) = (&postgres_db, &postgres) {
            for (label, sql) in [
                ("pgbench: the queries of GET /infrastructure/{id}", &seed.get_sql),
                ("pgbench: the queries of GET /infrastructure?limit=50", &seed.list_sql),
            ] {
                let tps = pgbench(db, sql, work.path(), seconds)?;
                match pg_samples.iter_mut().find(|(l, _)| l == label) {
                    Some((_, list)) => list.push(tps),
                    None => pg_samples.push((label.to_owned(), vec![tps])),
                }
            }
        }
    }

    let medians: Vec<(String, WrkResult)> =
        samples.into_iter().map(|(label, list)| (label, WrkResult::median(list))).collect();
    let find = |label: &str| medians.iter().find(|(l, _)| l == label).map(|(_, r)| *r);
    let plain = find("ceiling: bare hyper").context("ceiling measured")?;
    let scripted = find("ceiling: bare hyper, scripted").context("scripted ceiling measured")?;
    let pg_median = |label: &str| {
        pg_samples.iter().find(|(l, _)| l == label).map(|(_, list)| median_f64(list.clone()))
    };
    let mut table = String::new();
    writeln!(table, "| endpoint | req/s | vs bare hyper | p99 | database ceiling | vs database |")?;
    writeln!(table, "|---|---:|---:|---:|---:|---:|")?;
    writeln!(
        table,
        "| bare hyper (ceiling) | {:.0} | 100% | {:.1} ms | | |",
        plain.rps, plain.p99_ms
    )?;
    writeln!(
        table,
        "| bare hyper, wrk running the request script (ceiling of scripted rows) | {:.0} | 100% | {:.1} ms | | |",
        scripted.rps, scripted.p99_ms
    )?;
    for (label, result) in &medians {
        if label.starts_with("ceiling") {
            continue;
        }
        let ceiling = if label.ends_with("/healthz") { plain } else { scripted };
        let database = if label.starts_with("postgres: GET /infrastructure/{id}") {
            pg_median("pgbench: the queries of GET /infrastructure/{id}")
        } else if label.starts_with("postgres: GET /infrastructure?") {
            pg_median("pgbench: the queries of GET /infrastructure?limit=50")
        } else {
            None
        };
        let (db_col, db_ratio) = match database {
            Some(tps) => (format!("{tps:.0} tps"), format!("{:.0}%", 100.0 * result.rps / tps)),
            None => (String::new(), String::new()),
        };
        writeln!(
            table,
            "| {label} | {:.0} | {:.1}% | {:.1} ms | {db_col} | {db_ratio} |",
            result.rps,
            100.0 * result.rps / ceiling.rps,
            result.p99_ms
        )?;
    }
    if postgres_db.is_none() {
        writeln!(table, "\n(no Postgres at {}: its rows are missing)", postgres_server())?;
    }
    println!("{table}");

    // Memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded_rss = rss_kib(sqlite.child.id());
    let before = rss_kib(sqlite.child.id());
    let client = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    for i in 0..LOGINS {
        let email = format!("user{}@bench.example", i % USERS);
        let response = client
            .post(format!("{}/auth/login", sqlite.url()))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("login {i} answered {}", response.status());
        }
    }
    let login_time = started.elapsed();
    let after = rss_kib(sqlite.child.id());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = rss_kib(sqlite.child.id());
    println!("Memory (VmRSS of the SQLite backend):\n");
    println!("| what | RSS | goal |");
    println!("|---|---:|---|");
    println!("| idle, fresh (no deployments) | {} | |", mib(fresh_rss));
    println!(
        "| idle with {DEPLOYMENTS} deployments, 2 s after the HTTP load | {} | ≤ 15 MiB |",
        mib(loaded_rss)
    );
    println!(
        "| after {LOGINS} logins, one after another ({:.0} ms each) | {} (started at {}) | within 10 MiB of the start |",
        login_time.as_secs_f64() * 1000.0 / LOGINS as f64,
        mib(after),
        mib(before)
    );
    println!("| 5 s later | {} | |", mib(settled));
    if let Some((backend, _)) = &postgres {
        println!(
            "| Postgres backend, idle after the HTTP load | {} | |",
            mib(rss_kib(backend.child.id()))
        );
    }
    drop(postgres);
    drop(postgres_db);
    Ok(())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[derive(Debug, Clone, Copy)]
struct WrkResult {
    rps: f64,
    p99_ms: f64,
}

impl WrkResult {
    fn median(list: Vec<Self>) -> Self {
        Self {
            rps: median_f64(list.iter().map(|r| r.rps).collect()),
            p99_ms: median_f64(list.iter().map(|r| r.p99_ms).collect()),
        }
    }
}

/// A `wrk` request script cycling through `(path, token)` pairs.
fn wrk_script(requests: &[(String, String)]) -> String {
    let mut script = String::from("local requests = {\n");
    for (path, token) in requests {
        let _ = writeln!(
            script,
            "  wrk.format(\"GET\", \"{path}\", {{Authorization = \"Bearer {token}\"}}),"
        );
    }
    script.push_str(
        "}\nlocal i = 0\nrequest = function()\n  i = i % #requests + 1\n  return requests[i]\nend\n",
    );
    script
}

fn wrk(url: &str, script: Option<&Path>, seconds: u64) -> anyhow::Result<WrkResult> {
    let mut command = Command::new("wrk");
    command.args(["-t2", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s"), "--latency"]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command.arg(url).output().context("wrk runs (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw errors against {url}: {line}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no Requests/sec: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .and_then(parse_duration_ms)
        .with_context(|| format!("wrk printed no 99% latency: {text}"))?;
    Ok(WrkResult { rps, p99_ms: p99 })
}

fn parse_duration_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// The bare hyper server, on its own runtime of 2 worker threads.
fn start_ceiling() -> anyhow::Result<SocketAddr> {
    use hyper::{
        Request, Response, body::Incoming, header, server::conn::http1, service::service_fn,
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("ceiling runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("ceiling listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = service_fn(|_: Request<Incoming>| async {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header(header::CONTENT_TYPE, "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                    CEILING_BODY.as_bytes(),
                                )))
                                .expect("a response"),
                        )
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    Ok(addr)
}

/// What the load needs: `(path, token)` pairs and, for pgbench, the endpoint's SQL.
struct Seed {
    by_id: Vec<(String, String)>,
    lists: Vec<(String, String)>,
    get_sql: String,
    list_sql: String,
}

/// The release `nim-backend`, as deployed: embedded defaults, text logs to a file.
struct Backend {
    child: Child,
    addr: SocketAddr,
    database_url: String,
}

impl Backend {
    async fn start(dir: PathBuf, database_url: Option<String>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let database_url = database_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.join("data/nim.db").display()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_nim-backend"));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("NIM_")
                || key.starts_with("SUPABASE_")
                || key == "DATABASE_URL"
                || key == "RUST_LOG"
            {
                command.env_remove(&*key);
            }
        }
        command
            .current_dir(&dir)
            .env("NIM_LISTEN", addr.to_string())
            .env("NIM_DATA_DIR", dir.join("data"))
            .env("NIM_AUTH_RATE_LIMIT_PER_MINUTE", "100000")
            // The seeded machines are fiction; the health checker must leave them alone.
            .env("NIM_HEALTH_INTERVAL_SECS", "86400")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if database_url.starts_with("postgres") {
            // Replicas share these; the embedded mode makes its own in the data directory.
            command
                .env("DATABASE_URL", &database_url)
                .env("NIM_JWT_SECRET", "b".repeat(48))
                .env("NIM_ENCRYPTION_KEY", "bmltLWludGVncmF0aW9uLXRlc3RzLWtleS0zMmJ5dGU=");
        }
        let child = command.spawn().context("nim-backend starts")?;
        let backend = Self { child, addr, database_url };
        let client = reqwest::Client::builder().no_proxy().build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", backend.url())).send().await {
                if response.status().is_success() {
                    return Ok(backend);
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                bail!("nim-backend did not come up:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// 10 users through the API, then 1,000 ready deployments of 3 machines (each with a finished
    /// run) written through the backend's own store.
    async fn seed(&self) -> anyhow::Result<Seed> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let mut users = Vec::new();
        for i in 0..USERS {
            let response: Value = client
                .post(format!("{}/auth/signup", self.url()))
                .json(&json!({"email": format!("user{i}@bench.example"), "password": PASSWORD}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let token =
                response["session"]["access_token"].as_str().context("an access token")?.to_owned();
            let id: Uuid = response["user"]["id"].as_str().context("a user id")?.parse()?;
            users.push((id, token));
        }
        let store = Store::connect(&SecretString::from(self.database_url.clone()), 4).await?;
        let mut by_id = Vec::new();
        let now = Utc::now();
        for i in 0..DEPLOYMENTS {
            let (owner, token) = &users[i % USERS];
            let id = Uuid::now_v7();
            let deployment = DeploymentRow {
                id,
                owner_id: *owner,
                name: format!("bench-{i}"),
                provider: "local".into(),
                status: DeploymentStatus::Ready,
                status_reason: None,
                variables: Json(
                    json!({"machine_count": MACHINES, "memory_mb": 512, "name_prefix": "bench"})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ),
                backend_variables: Json(serde_json::Map::new()),
                secrets: vec![0; 600],
                tls_cert: "-".repeat(600),
                idempotency_key: None,
                request_hash: None,
                created_at: now,
                updated_at: now,
            };
            let mut run = RunRow::queued(id, RunKind::Apply, 0, now);
            run.status = RunStatus::Succeeded;
            run.progress_done = 10;
            run.progress_total = 10;
            run.started_at = Some(now);
            run.finished_at = Some(now);
            store.create_deployment(&deployment, &run).await?;
            let machines: Vec<NewMachine> = (0..MACHINES)
                .map(|m| NewMachine {
                    name: format!("bench-{m}"),
                    public_ip: Some("127.0.0.1".into()),
                    private_ip: Some("127.0.0.1".into()),
                    agent_port: Some(9),
                    resource: Some(format!("terraform_data.machine[{m}]")),
                })
                .collect();
            store.sync_machines(id, &machines, &[], now).await?;
            if by_id.len() < 1_000 {
                by_id.push((format!("/infrastructure/{id}"), token.clone()));
            }
        }
        store.close().await;
        let lists = users
            .iter()
            .map(|(_, token)| ("/infrastructure?limit=50".to_owned(), token.clone()))
            .collect();
        let (owner, _) = &users[0];
        let some_id = by_id[0].0.trim_start_matches("/infrastructure/").to_owned();
        Ok(Seed {
            by_id,
            lists,
            get_sql: nim_backend::store::bench_sql::get_deployment(&some_id, &owner.to_string()),
            list_sql: nim_backend::store::bench_sql::list_deployments(&owner.to_string(), 50),
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database of this run, dropped with it.
struct PostgresDb {
    url: String,
    name: String,
}

impl PostgresDb {
    async fn create() -> Option<Self> {
        let server = postgres_server();
        let admin = sqlx::PgPool::connect(&format!("{server}/postgres")).await.ok()?;
        let name = format!("nim_bench_{}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.ok()?;
        admin.close().await;
        Some(Self { url: format!("{server}/{name}"), name })
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(format!("{}/postgres", postgres_server()))
            .args(["-qc", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .status();
    }
}

/// Transactions per second of `sql` run by pgbench: 64 clients, 2 threads, prepared statements.
fn pgbench(db: &PostgresDb, sql: &str, dir: &Path, seconds: u64) -> anyhow::Result<f64> {
    let script = dir.join("pgbench.sql");
    std::fs::write(&script, sql)?;
    let output = Command::new("pgbench")
        .env("PGOPTIONS", format!("-c search_path={}", nim_backend::store::PG_SCHEMA))
        .args(["-n", "-M", "prepared", "-j2", &format!("-c{CONNECTIONS}"), &format!("-T{seconds}")])
        .arg("-f")
        .arg(&script)
        .arg(&db.url)
        .output()
        .context("pgbench runs")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .with_context(|| format!("pgbench printed no tps: {text}"))
}
