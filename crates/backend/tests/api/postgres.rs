//! Postgres-only behaviour: Supabase's row-level security policies, surviving a database outage,
//! and several replicas sharing one database. These need a Postgres server (`TEST_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432`); without one they say so loudly and skip, except
//! under `CI=true`, where they fail.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use nim_backend::store::testing::{PostgresDatabase, postgres_server};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use tokio::{net::TcpListener, task::AbortHandle};

use wire::{
    events::{RunEvent, StatusEvent},
    status::DeploymentStatus,
};

use crate::helpers::{
    agents, alive, app, assert_problem, eventually, gone, host_pid, json_ok, machines_of, marker,
    provision, read_events_until_finished, read_pid, start, wait_for, wait_for_command,
    wait_for_status,
};

/// Makes a plain Postgres look like a Supabase database where it matters to our policies: the
/// `anon` and `authenticated` roles and `auth.uid()` reading the request's JWT claims.
async fn impersonate_supabase(url: &str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    for role in ["anon", "authenticated"] {
        sqlx::query(&format!(
            "DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    sqlx::query("CREATE SCHEMA IF NOT EXISTS auth").execute(&mut conn).await.unwrap();
    sqlx::query(
        "CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$ \
         SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''), \
         (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid $$",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("GRANT USAGE ON SCHEMA auth TO anon, authenticated")
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Runs `sql` as a frontend user would through supabase-js: role `authenticated`, `sub` = `user`.
async fn as_user(
    url: &str,
    user: &str,
    sql: &str,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE authenticated").execute(&mut *tx).await.unwrap();
    sqlx::query("SELECT set_config('request.jwt.claims', $1, true)")
        .bind(json!({"sub": user, "role": "authenticated"}).to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sql).fetch_all(&mut *tx).await
}

#[tokio::test]
async fn supabase_users_read_only_their_own_rows_and_never_secrets() {
    let Some(database) = PostgresDatabase::create().await else { return };
    impersonate_supabase(&database.url).await;
    let app = app().provisioning().postgres(&database.url).spawn().await;
    let alice = app.signed_in_user("alice@example.com").await;
    let bob = app.signed_in_user("bob@example.com").await;
    let alice_id = alice["user"]["id"].as_str().unwrap().to_owned();
    let bob_id = bob["user"]["id"].as_str().unwrap().to_owned();
    for (session, name) in [(&alice, "alices"), (&bob, "bobs")] {
        let token = session["access_token"].as_str().unwrap();
        let created = provision(
            &app,
            token,
            json!({"name": name, "provider": "failing", "variables": {"reason": "x"}}),
        )
        .await;
        wait_for_status(
            &app,
            token,
            created["deployment"]["id"].as_str().unwrap(),
            DeploymentStatus::Failed,
        )
        .await;
    }

    let rows = as_user(
        &database.url,
        &alice_id,
        "SELECT name, owner_id::text AS owner FROM nim.deployments",
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<String, _>("name"), "alices");
    assert_eq!(rows[0].get::<String, _>("owner"), alice_id);
    let runs = as_user(&database.url, &bob_id, "SELECT r.id FROM nim.runs r").await.unwrap();
    assert_eq!(runs.len(), 1, "bob sees exactly his one run");
    let events =
        as_user(&database.url, &bob_id, "SELECT DISTINCT deployment_id FROM nim.run_events")
            .await
            .unwrap();
    assert_eq!(events.len(), 1);
    let stranger = uuid::Uuid::new_v4().to_string();
    assert!(
        as_user(&database.url, &stranger, "SELECT id FROM nim.deployments")
            .await
            .unwrap()
            .is_empty()
    );

    // Secrets and the built-in auth tables are out of reach; nothing is writable.
    for sql in [
        "SELECT secrets FROM nim.deployments",
        "SELECT tls_cert FROM nim.deployments",
        "SELECT * FROM nim.deployments",
        "SELECT * FROM nim.users",
        "SELECT * FROM nim.refresh_tokens",
        "UPDATE nim.deployments SET status = 'ready'",
        "DELETE FROM nim.runs",
        "INSERT INTO nim.commands (id, deployment_id, owner_id, request, status, created_at) \
         SELECT gen_random_uuid(), id, owner_id, '{}', 'running', now() FROM nim.deployments",
    ] {
        let err = as_user(&database.url, &alice_id, sql).await.expect_err(sql);
        assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
    }
}

/// A TCP proxy in front of the Postgres server that a test can cut and restore.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (up_, connections_) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if !up_.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused as it opens
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections_.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, up, connections }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

// The proxy runs in this test's runtime while `spawn` blocks a thread waiting for the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_503s_and_the_server_recovers_without_a_restart() {
    let Some(database) = PostgresDatabase::create().await else { return };
    let server = postgres_server();
    let target = server.rsplit('@').next().unwrap().trim_start_matches("postgres://").to_owned();
    let proxy = Proxy::start(target.clone()).await;
    let url = database.url.replace(&target, &proxy.addr.to_string());
    let app = app().postgres(&url).env("NIM_DB_MAX_CONNECTIONS", "4").spawn().await;
    let token = app.token("outage@example.com").await;
    json_ok(app.get("/readyz", None).await).await;

    proxy.cut();
    let started = Instant::now();
    assert_problem(app.get("/readyz", None).await, 503, "database_unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(10), "readyz took {:?}", started.elapsed());
    assert_problem(app.get("/infrastructure", Some(&token)).await, 503, "database_unavailable")
        .await;
    assert_problem(
        app.log_in("outage@example.com", "correct horse battery").await,
        503,
        "auth_unavailable",
    )
    .await;
    // Liveness is not readiness: the process itself is fine.
    json_ok(app.get("/healthz", None).await).await;

    proxy.restore();
    eventually("/readyz to recover", Duration::from_secs(30), || async {
        let status = app.get("/readyz", None).await.status();
        if status == StatusCode::OK { Ok(()) } else { Err(status.to_string()) }
    })
    .await;
    let list = json_ok(app.get("/infrastructure", Some(&token)).await).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn two_replicas_share_the_work_and_take_over_from_a_killed_one() {
    let Some(database) = PostgresDatabase::create().await else { return };
    let machines = tempfile::tempdir().unwrap();
    let replica = |name: &str| {
        app()
            .provisioning()
            .postgres(&database.url)
            .env("NIM_REPLICA_NAME", name)
            .env("NIM_RUN_LEASE_SECS", "4")
            .env("NIM_MAX_CONCURRENT_RUNS", "3")
            // Replicas on one host share the local machines' directory.
            .env("NIM_LOCAL_MACHINES_DIR", machines.path().to_string_lossy())
            .spawn()
    };
    let a = replica("replica-a").await;
    let mut b = replica("replica-b").await;
    let token = a.token("fleet@example.com").await;

    // Ten deployments through alternating replicas; every machine boots for 3 s.
    let mut ids = Vec::new();
    for i in 0..10 {
        let via = if i % 2 == 0 { &a } else { &b };
        let created = provision(via, &token, json!({"name": format!("d{i}"), "provider": "local", "variables": {"boot_delay_seconds": 3}})).await;
        ids.push(created["deployment"]["id"].as_str().unwrap().to_owned());
    }
    // Every deployment's events, as replica A's SSE streams them, whoever runs them.
    let streams: Vec<_> = ids
        .iter()
        .map(|id| {
            let request = a
                .client
                .get(a.url(&format!("/infrastructure/{id}/events")))
                .bearer_auth(&token)
                .send();
            async move { read_events_until_finished(request.await.unwrap()).await }
        })
        .map(tokio::spawn)
        .collect();

    // Kill B while it runs something: find a run B holds.
    let victim = eventually("replica B to run something", Duration::from_secs(60), || async {
        for id in &ids {
            let deployment =
                json_ok(a.get(&format!("/infrastructure/{id}"), Some(&token)).await).await;
            let run = &deployment["latest_run"];
            if run["status"] == "running" {
                let detail = json_ok(
                    a.get(
                        &format!("/infrastructure/{id}/runs/{}", run["id"].as_str().unwrap()),
                        Some(&token),
                    )
                    .await,
                )
                .await;
                if detail["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["data"]["worker"] == "replica-b")
                {
                    return Ok(id.clone());
                }
            }
        }
        Err("no run held by replica-b".to_owned())
    })
    .await;
    b.kill9();

    for id in &ids {
        let ready = wait_for_status(&a, &token, id, DeploymentStatus::Ready).await;
        assert_eq!(machines_of(&ready).len(), 1);
    }
    // A's event streams saw runs executing on B (before it died) and on A.
    let mut workers_seen = HashSet::new();
    for stream in streams {
        for event in stream.await.unwrap() {
            if let Ok(RunEvent::Status(StatusEvent { worker: Some(worker), .. })) = event.event() {
                workers_seen.insert(worker);
            }
        }
    }
    assert!(
        workers_seen.contains("replica-b") && workers_seen.contains("replica-a"),
        "{workers_seen:?}"
    );

    // Each run executed once: one `terraform apply` per run; the killed one was re-queued once.
    let mut interrupted = 0;
    for id in &ids {
        let runs = json_ok(a.get(&format!("/infrastructure/{id}/runs"), Some(&token)).await).await;
        for run in runs["items"].as_array().unwrap() {
            let detail = json_ok(
                a.get(
                    &format!("/infrastructure/{id}/runs/{}", run["id"].as_str().unwrap()),
                    Some(&token),
                )
                .await,
            )
            .await;
            let applies = detail["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["data"]["message"] == "terraform apply")
                .count();
            assert!(applies <= 1, "run {} ran apply {applies} times", run["id"]);
            match run["status"].as_str().unwrap() {
                "succeeded" => assert_eq!(applies, 1),
                "interrupted" => interrupted += 1,
                other => panic!("unexpected run status {other}"),
            }
        }
        let statuses: HashMap<_, _> = runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["status"].as_str().unwrap().to_owned(), r["attempt"].clone()))
            .collect();
        if id == &victim {
            assert_eq!(statuses.get("interrupted"), Some(&json!(0)), "{runs:#}");
            assert_eq!(statuses.get("succeeded"), Some(&json!(1)), "{runs:#}");
        }
    }
    assert!(interrupted >= 1);
    println!(
        "two replicas: 10 deployments ready; replica-b killed (-9) while running {victim}; \
         workers seen on replica-a's SSE: {workers_seen:?}; interrupted runs re-queued: {interrupted}; \
         every run applied at most once"
    );

    // Exactly one agent per deployment, whoever started it.
    // Both replicas' machines are in the one machines directory they share.
    let running = agents(&a).len();
    assert_eq!(running, 10, "exactly one agent per deployment");
    for id in &ids {
        a.delete_as(&token, &format!("/infrastructure/{id}")).await;
    }
    for id in &ids {
        wait_for_status(&a, &token, id, DeploymentStatus::Destroyed).await;
    }
    assert_eq!(agents(&a).len(), 0);
}

#[tokio::test]
async fn a_command_cancelled_through_another_replica_stops_on_the_replica_running_it() {
    let Some(database) = PostgresDatabase::create().await else { return };
    let machines = tempfile::tempdir().unwrap();
    let replica = |name: &str| {
        app()
            .provisioning()
            .postgres(&database.url)
            .env("NIM_REPLICA_NAME", name)
            // Replicas on one host share the local machines' directory.
            .env("NIM_LOCAL_MACHINES_DIR", machines.path().to_string_lossy())
            .spawn()
    };
    let a = replica("replica-a").await;
    let b = replica("replica-b").await;
    let token = a.token("cancel-anywhere@example.com").await;
    let body = json!({"name": "one", "provider": "local", "variables": {"machine_count": 1}});
    let id = provision(&a, &token, body).await["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&a, &token, &id, DeploymentStatus::Ready).await;

    // Replica A runs the command (it took the request); the cancel goes to replica B.
    let body = json!({"shell": "mkdir -p /tmp/markers; echo $$ > /tmp/markers/$NIM_MACHINE.pid; sleep 60"});
    let (accepted, _) = start(&a, &token, &id, body).await;
    let command_id = accepted["id"].as_str().unwrap().to_owned();
    let pid = host_pid(&id, "local-0", read_pid(&marker(&a, &id, "local-0", "local-0.pid")).await);
    assert!(alive(pid));

    let started = Instant::now();
    let path = format!("/infrastructure/{id}/commands/{command_id}/cancel");
    assert_eq!(b.post_as(&token, &path, &json!({})).await.status(), StatusCode::ACCEPTED);
    let cancelled =
        wait_for_command(&b, &token, &id, &command_id, "the cancel", |c| c["status"] != "running")
            .await;
    assert!(started.elapsed() < Duration::from_secs(10), "cancel took {:?}", started.elapsed());
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    assert_eq!(cancelled["results"][0]["status"], "cancelled");
    assert!(cancelled["results"][0]["error"].as_str().unwrap().contains("while it ran"));
    // Replica A stopped the call, and the agent killed the command's process group.
    gone(pid, "the cancelled command").await;
}

#[tokio::test]
async fn a_new_deployments_state_waits_for_terraforms_creation_lock_instead_of_failing() {
    let Some(database) = PostgresDatabase::create().await else { return };
    let app = app().provisioning().postgres(&database.url).spawn().await;
    let token = app.token("creation-lock@example.com").await;
    // Every other deployment's plan and apply take the pg backend's creation lock (advisory key
    // -1) for an instant; here it is held on purpose while a new deployment creates its state.
    let mut holder = PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(-1)").execute(&mut holder).await.unwrap();
    let created =
        provision(&app, &token, json!({"name": "w", "provider": "local", "variables": {}})).await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    let run_id = created["run"]["id"].as_str().unwrap().to_owned();
    eventually("the run to reach the workspace step", Duration::from_secs(60), || async {
        let run =
            json_ok(app.get(&format!("/infrastructure/{id}/runs/{run_id}"), Some(&token)).await)
                .await;
        let events = run["events"].as_array().unwrap();
        if events.iter().any(|e| e["data"]["message"] == "terraform workspace") {
            return Ok(());
        }
        assert!(["queued", "running"].contains(&run["status"].as_str().unwrap()), "{run:#}");
        Err(format!("{run:#}"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query("SELECT pg_advisory_unlock(-1)").execute(&mut holder).await.unwrap();

    let deployment = wait_for(&app, &token, &id, "the apply to end", |d| {
        ![DeploymentStatus::Pending, DeploymentStatus::Provisioning].contains(&d.status)
    })
    .await;
    let run =
        json_ok(app.get(&format!("/infrastructure/{id}/runs/{run_id}"), Some(&token)).await).await;
    assert_eq!(
        deployment.status,
        DeploymentStatus::Ready,
        "{deployment:#?}\nthe run's log: {run:#}"
    );
    // It did meet the lock, and said so in the run's log.
    let retried = run["events"].as_array().unwrap().iter().any(|e| {
        e["data"]["message"].as_str().is_some_and(|m| {
            m.contains("Already locked for workspace creation") && m.contains("trying again in")
        })
    });
    assert!(retried, "{run:#}");
}
