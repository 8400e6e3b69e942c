//! Provisioning with real Terraform against `terraform/local` (real `nim-agent` machines on
//! loopback): the lifecycle, events, dry runs, validation, idempotency, cancel, ownership, and
//! crash recovery.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use wire::{
    events::RunEvent,
    status::{DeploymentStatus, MachineStatus, RunKind, RunStatus},
};

use crate::helpers::{
    agent_answers, agents, app, assert_no_trace, assert_problem, error_fields, every_machine,
    json_ok, machines_of, provision, read_events_until_finished, run_kinds, wait_for,
    wait_for_apply, wait_for_status,
};

#[tokio::test]
async fn three_local_machines_become_ready_and_destroy_removes_them() {
    let app = app().provisioning().spawn().await;
    let token = app.token("fleet@example.com").await;
    let created = provision(
        &app,
        &token,
        json!({"name": "fleet", "provider": "local", "variables": {"machine_count": 3}}),
    )
    .await;
    assert_eq!(created["deployment"]["status"], "pending");
    assert_eq!(created["run"]["status"], "queued");
    assert_eq!(created["run"]["kind"], "apply");
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();

    let ready = wait_for_status(&app, &token, &id, DeploymentStatus::Ready).await;
    let machines = machines_of(&ready);
    assert_eq!(machines.len(), 3, "{ready:#?}");
    let names: Vec<_> = machines.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["local-0", "local-1", "local-2"]);
    let mut addresses = Vec::new();
    for machine in machines {
        // Each machine has its own address in the deployment's subnet.
        let address = machine.public_ip.as_deref().unwrap();
        assert!(address.starts_with("10.213."), "{machine:#?}");
        assert_eq!(machine.private_ip.as_deref(), Some(address));
        assert!(agent_answers(address).await, "agent at {address} does not answer");
        addresses.push(address.to_owned());
        // `ready` comes with each machine's health and facts, not `unknown`.
        assert_eq!(machine.status, MachineStatus::Healthy, "{machine:#?}");
        assert!(machine.last_seen_at.is_some(), "{machine:#?}");
        let cpus = machine.info.as_ref().and_then(|info| info["cpus"].as_u64());
        assert!(cpus.is_some_and(|cpus| cpus >= 1), "{machine:#?}");
    }
    assert_eq!(agents(&app).len(), 3);
    let run = ready.latest_run.as_ref().expect("the apply");
    assert_eq!(run.status, RunStatus::Succeeded);
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 3);
    // Three machines and their network.
    assert_eq!((run.progress.done, run.progress.total), (4, 4));
    // Secrets never come back (read raw: the typed view would drop a field it does not know).
    let text = app.get(&format!("/infrastructure/{id}"), Some(&token)).await.text().await.unwrap();
    assert!(!text.contains("BEGIN") && !text.contains("agent_token"), "{text}");

    let destroying = app.delete_as(&token, &format!("/infrastructure/{id}")).await;
    assert_eq!(destroying.status(), StatusCode::ACCEPTED);
    let destroyed = wait_for_status(&app, &token, &id, DeploymentStatus::Destroyed).await;
    assert!(machines_of(&destroyed).is_empty(), "{destroyed:#?}");
    assert!(agents(&app).is_empty(), "agents left after destroy: {:?}", agents(&app));
    for address in &addresses {
        assert!(!agent_answers(address).await, "{address} still answers");
    }
    // Every trace is gone: disks, namespaces, the bridge.
    assert_no_trace(&app, &id);
    // Destroyed is final.
    let again = app.delete_as(&token, &format!("/infrastructure/{id}")).await;
    assert_problem(again, 409, "conflict").await;

    let kinds = run_kinds(&app, &token, &id).await;
    assert_eq!(
        kinds,
        [(RunKind::Destroy, RunStatus::Succeeded), (RunKind::Apply, RunStatus::Succeeded)]
    );
}

#[tokio::test]
async fn run_events_stream_over_sse_in_order_and_resume_after_last_event_id() {
    let app = app().provisioning().spawn().await;
    let token = app.token("events@example.com").await;
    let created = provision(
        &app,
        &token,
        json!({"name": "watched", "provider": "local", "variables": {"machine_count": 2}}),
    )
    .await;
    let id = created["deployment"]["id"].as_str().unwrap();
    let response = app
        .client
        .get(app.url(&format!("/infrastructure/{id}/events")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = read_events_until_finished(response).await;

    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {ids:?}");
    let typed: Vec<RunEvent> =
        events.iter().map(|e| e.event().unwrap_or_else(|err| panic!("{err}: {e:?}"))).collect();
    let RunEvent::Status(first) = &typed[0] else { panic!("first event: {:?}", typed[0]) };
    assert_eq!(first.deployment_status, DeploymentStatus::Provisioning);
    // The plan sets the total and the apply keeps it: it never starts again from zero. Two
    // machines and their network.
    let progress: Vec<(u64, u64)> = typed
        .iter()
        .filter_map(|e| match e {
            RunEvent::Progress(p) => Some((p.done, p.total)),
            _ => None,
        })
        .collect();
    assert_eq!(
        progress,
        [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3), (3, 3)],
        "progress: {progress:?}"
    );
    assert!(typed.iter().any(|e| matches!(
        e,
        RunEvent::Log(log) if log.resource.as_deref() == Some("terraform_data.machine[1]")
    )));
    let Some(RunEvent::RunFinished(finished)) = typed.last() else {
        panic!("last event: {:?}", typed.last())
    };
    assert_eq!(finished.status, RunStatus::Succeeded);
    assert_eq!(finished.run_id.to_string(), created["run"]["id"].as_str().unwrap());

    // Resuming after an event replays exactly what came after it.
    let resume_after = events[events.len() / 2].id;
    let resumed = app
        .client
        .get(app.url(&format!("/infrastructure/{id}/events")))
        .bearer_auth(&token)
        .header("last-event-id", resume_after.to_string())
        .send()
        .await
        .unwrap();
    let replayed = read_events_until_finished(resumed).await;
    assert_eq!(replayed.first().unwrap().id, events[events.len() / 2 + 1].id);
    assert_eq!(replayed.len(), events.len() - events.len() / 2 - 1);

    // The stored log of the run holds the same events.
    let run_id = created["run"]["id"].as_str().unwrap();
    let run =
        json_ok(app.get(&format!("/infrastructure/{id}/runs/{run_id}"), Some(&token)).await).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["events"].as_array().unwrap().len(), events.len());
}

#[tokio::test]
async fn a_dry_run_plans_and_creates_nothing() {
    let app = app().provisioning().spawn().await;
    let token = app.token("dry@example.com").await;
    let response = app
        .post_as(
            &token,
            "/provision?dry_run=true",
            &json!({"name": "maybe", "provider": "local", "variables": {"machine_count": 2}}),
        )
        .await;
    let plan = json_ok(response).await;
    assert_eq!(plan["add"], 3, "two machines and their network");
    assert_eq!(plan["change"], 0);
    assert_eq!(plan["destroy"], 0);
    let addresses: Vec<_> = plan["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["address"].as_str().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        addresses,
        [
            ("terraform_data.machine[0]", "create"),
            ("terraform_data.machine[1]", "create"),
            ("terraform_data.network", "create")
        ]
    );

    let list = json_ok(app.get("/infrastructure", Some(&token)).await).await;
    assert_eq!(list["items"], json!([]));
    assert!(agents(&app).is_empty());
    let deployments_dir = app.dir.path().join("data/deployments");
    assert!(
        !deployments_dir.exists() || std::fs::read_dir(&deployments_dir).unwrap().next().is_none()
    );

    // Terraform's own validation surfaces as a 422 with its message.
    let response = app
        .post_as(
            &token,
            "/provision?dry_run=true",
            &json!({"name": "maybe", "provider": "local", "variables": {"machine_count": 500}}),
        )
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    assert_eq!(error_fields(&problem), ["variables.machine_count"]);
    // The module's `validation` blocks answer before Terraform runs, with the module's message.
    let response = app
        .post_as(
            &token,
            "/provision?dry_run=true",
            &json!({"name": "maybe", "provider": "local", "variables": {"machine_count": 0}}),
        )
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    assert_eq!(error_fields(&problem), ["variables.machine_count"]);
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert_eq!(message, "machine_count must be a whole number from 1 to 50.");
    // A condition the backend does not evaluate (`startswith`) is Terraform's: its plan refuses
    // the value, and the answer carries the module's message.
    let response = app
        .post_as(
            &token,
            "/provision?dry_run=true",
            &json!({"name": "maybe", "provider": "failing", "variables": {"reason": "r", "motto": "nope"}}),
        )
        .await;
    let problem = assert_problem(response, 422, "plan_failed").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("motto must start with \"ok\""), "{problem}");
}

#[tokio::test]
async fn a_failing_module_fails_the_deployment_with_terraforms_message() {
    let app = app().provisioning().spawn().await;
    let token = app.token("fail@example.com").await;
    let created = provision(
        &app,
        &token,
        json!({"name": "doomed", "provider": "failing", "variables": {"reason": "disk on fire"}}),
    )
    .await;
    let id = created["deployment"]["id"].as_str().unwrap();
    let failed = wait_for_status(&app, &token, id, DeploymentStatus::Failed).await;
    let reason = failed.status_reason.as_deref().unwrap();
    assert!(reason.starts_with("terraform apply failed"), "{reason}");
    assert!(reason.contains("disk on fire"), "{reason}");
    assert_eq!(failed.latest_run.as_ref().unwrap().status, RunStatus::Failed);
    // A failed deployment can still be destroyed.
    assert_eq!(
        app.delete_as(&token, &format!("/infrastructure/{id}")).await.status(),
        StatusCode::ACCEPTED
    );
    wait_for_status(&app, &token, id, DeploymentStatus::Destroyed).await;
}

#[tokio::test]
async fn provision_validates_everything_before_anything_runs() {
    let app = app().provisioning().spawn().await;
    let token = app.token("validate@example.com").await;
    let cases = [
        (json!({"name": "Bad_Name", "provider": "local"}), vec!["name"]),
        (json!({"name": "", "provider": "local"}), vec!["name"]),
        (json!({"name": "ok", "provider": "../x"}), vec!["provider"]),
        (
            json!({"name": "ok", "provider": "local", "variables": {"nope": 1}}),
            vec!["variables.nope"],
        ),
        (
            json!({"name": "ok", "provider": "local", "variables": {"machine_count": "three"}}),
            vec!["variables.machine_count"],
        ),
        (
            json!({"name": "ok", "provider": "local", "variables": {"agent_token": "mine"}}),
            vec!["variables.agent_token"],
        ),
        (
            json!({"name": "ok", "provider": "local", "variables": {"deployment_id": "x"}}),
            vec!["variables.deployment_id"],
        ),
        (json!({"name": "ok", "provider": "failing"}), vec!["variables.reason"]),
        (
            json!({"name": "ok", "provider": "failing", "variables": {"reason": ["a"]}}),
            vec!["variables.reason"],
        ),
        (json!({"provider": "local"}), vec!["name"]),
        // The module's own `validation` blocks, evaluated before anything is queued.
        (
            json!({"name": "ok", "provider": "local", "variables": {"memory_mb": 32}}),
            vec!["variables.memory_mb"],
        ),
        (
            json!({"name": "ok", "provider": "local", "variables": {"machine_count": 5, "boot_delay_seconds": 601}}),
            vec!["variables.boot_delay_seconds"],
        ),
        (json!({"name": "ok", "provider": "local", "extra": true}), vec!["extra"]),
    ];
    for (body, fields) in cases {
        let response = app.post_as(&token, "/provision", &body).await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(error_fields(&problem), fields, "for {body}");
    }
    // Counts a module refuses: zero, negative, fractional, too many, too large for any integer.
    for count in
        [json!(0), json!(-1), json!(3.5), json!(51), json!(1e308), json!(18446744073709551616.0)]
    {
        let body =
            json!({"name": "ok", "provider": "local", "variables": {"machine_count": count}});
        let problem = assert_problem(
            app.post_as(&token, "/provision", &body).await,
            422,
            "validation_failed",
        )
        .await;
        assert_eq!(error_fields(&problem), ["variables.machine_count"], "for {count}");
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert_eq!(message, "machine_count must be a whole number from 1 to 50.", "for {count}");
    }
    let response =
        app.post_as(&token, "/provision", &json!({"name": "ok", "provider": "../x"})).await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("valid providers: envdump, failing, flaky, local"), "{message}");

    let unauthenticated =
        app.post_json("/provision", &json!({"name": "ok", "provider": "local"})).await;
    assert_problem(unauthenticated, 401, "no_authorization").await;
    // Nothing was created by any of it.
    assert_eq!(json_ok(app.get("/infrastructure", Some(&token)).await).await["items"], json!([]));
}

#[tokio::test]
async fn an_idempotency_key_returns_the_original_deployment() {
    let app = app().provisioning().spawn().await;
    let token = app.token("idem@example.com").await;
    let body = json!({"name": "once", "provider": "local", "variables": {"machine_count": 1}});
    let send = |body: Value, key: &'static str| {
        app.client
            .post(app.url("/provision"))
            .bearer_auth(&token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send(body.clone(), "key-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let second = send(body.clone(), "key-1").await.unwrap();
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["deployment"]["id"], second["deployment"]["id"]);
    assert_eq!(first["run"]["id"], second["run"]["id"]);

    let mut changed = body.clone();
    changed["variables"]["machine_count"] = json!(2);
    assert_problem(send(changed, "key-1").await.unwrap(), 422, "idempotency_key_reused").await;
    let bad_key = app
        .client
        .post(app.url("/provision"))
        .bearer_auth(&token)
        .header("idempotency-key", "has space")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(bad_key, 400, "invalid_idempotency_key").await;

    let list = json_ok(app.get("/infrastructure", Some(&token)).await).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let id = first["deployment"]["id"].as_str().unwrap();
    wait_for_status(&app, &token, id, DeploymentStatus::Ready).await;
    app.delete_as(&token, &format!("/infrastructure/{id}")).await;
    wait_for_status(&app, &token, id, DeploymentStatus::Destroyed).await;
}

#[tokio::test]
async fn another_users_deployment_is_404_everywhere() {
    let app = app().provisioning().spawn().await;
    let owner = app.token("owner@example.com").await;
    let other = app.token("other@example.com").await;
    let created = provision(
        &app,
        &owner,
        json!({"name": "mine", "provider": "failing", "variables": {"reason": "x"}}),
    )
    .await;
    let id = created["deployment"]["id"].as_str().unwrap();
    let run_id = created["run"]["id"].as_str().unwrap();

    for path in [
        format!("/infrastructure/{id}"),
        format!("/infrastructure/{id}/runs"),
        format!("/infrastructure/{id}/runs/{run_id}"),
        format!("/infrastructure/{id}/events"),
    ] {
        assert_problem(app.get(&path, Some(&other)).await, 404, "not_found").await;
    }
    assert_problem(app.delete_as(&other, &format!("/infrastructure/{id}")).await, 404, "not_found")
        .await;
    let cancel = app
        .post_as(&other, &format!("/infrastructure/{id}/runs/{run_id}/cancel"), &json!({}))
        .await;
    assert_problem(cancel, 404, "not_found").await;
    let retry = app.post_as(&other, &format!("/infrastructure/{id}/retry"), &json!({})).await;
    assert_problem(retry, 404, "not_found").await;
    assert_eq!(json_ok(app.get("/infrastructure", Some(&other)).await).await["items"], json!([]));
    // A malformed id is simply not found.
    assert_problem(app.get("/infrastructure/not-a-uuid", Some(&owner)).await, 404, "not_found")
        .await;

    let list = json_ok(app.get("/infrastructure?status=failed&limit=5", Some(&owner)).await).await;
    assert!(list["items"].as_array().unwrap().iter().all(|d| d["status"] == "failed"));
    let named = json_ok(app.get("/infrastructure?name=mine", Some(&owner)).await).await;
    assert_eq!(named["items"].as_array().unwrap().len(), 1);
    assert_eq!(named["items"][0]["id"], id);
    let unnamed = json_ok(app.get("/infrastructure?name=yours", Some(&owner)).await).await;
    assert_eq!(unnamed["items"], json!([]));
    assert_problem(
        app.get("/infrastructure?status=bogus", Some(&owner)).await,
        400,
        "invalid_query",
    )
    .await;
    assert_problem(app.get("/infrastructure?limit=0", Some(&owner)).await, 400, "invalid_query")
        .await;
}

#[tokio::test]
async fn cancelling_a_running_apply_fails_the_deployment_and_destroy_still_works() {
    let app = app().provisioning().spawn().await;
    let token = app.token("cancel@example.com").await;
    // Machines that take a minute to boot keep the apply busy in local-exec.
    let created = provision(&app, &token, json!({"name": "slow", "provider": "local", "variables": {"machine_count": 2, "boot_delay_seconds": 60}})).await;
    let id = created["deployment"]["id"].as_str().unwrap();
    let run_id = created["run"]["id"].as_str().unwrap();
    wait_for_apply(&app, &token, id, RunKind::Apply, 3).await;

    // A second run cannot start while this one is active.
    assert_problem(app.delete_as(&token, &format!("/infrastructure/{id}")).await, 409, "conflict")
        .await;

    let started = Instant::now();
    let cancel = app
        .post_as(&token, &format!("/infrastructure/{id}/runs/{run_id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    let failed = wait_for_status(&app, &token, id, DeploymentStatus::Failed).await;
    assert!(started.elapsed() < Duration::from_secs(40), "cancel took {:?}", started.elapsed());
    assert_eq!(failed.latest_run.as_ref().unwrap().status, RunStatus::Cancelled);
    assert_eq!(failed.status_reason.as_deref(), Some("the apply was cancelled"));
    let again = app
        .post_as(&token, &format!("/infrastructure/{id}/runs/{run_id}/cancel"), &json!({}))
        .await;
    assert_problem(again, 409, "conflict").await;
    // No terraform or sleeping provisioner of this deployment survives the cancel.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leftovers: Vec<_> = crate::helpers::processes_mentioning(&app.dir.path().to_string_lossy())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| !String::from_utf8_lossy(&c).contains("nim-backend"))
        })
        .collect();
    assert!(leftovers.is_empty(), "processes left after cancel: {leftovers:?}");

    assert_eq!(
        app.delete_as(&token, &format!("/infrastructure/{id}")).await.status(),
        StatusCode::ACCEPTED
    );
    wait_for_status(&app, &token, id, DeploymentStatus::Destroyed).await;
    assert!(agents(&app).is_empty());
    // Machines the cancelled apply had begun to start are gone too, though Terraform never
    // recorded them.
    assert_no_trace(&app, id);
}

#[tokio::test]
async fn a_backend_killed_mid_destroy_finishes_it_after_restart_and_leaves_nothing() {
    let mut first = app().provisioning().spawn().await;
    let token = first.token("halfway@example.com").await;
    let created = provision(
        &first,
        &token,
        json!({"name": "halfway", "provider": "local", "variables": {"machine_count": 2}}),
    )
    .await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&first, &token, &id, DeploymentStatus::Ready).await;
    // A command that ignores SIGTERM keeps each machine's stop waiting (3 s, then SIGKILL): a
    // window in which the destroy is surely under way.
    let stubborn = json!({"shell": "trap '' TERM; sleep 120", "timeout_s": 300});
    let response =
        first.post_as(&token, &format!("/infrastructure/{id}/command?wait=false"), &stubborn).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        first.delete_as(&token, &format!("/infrastructure/{id}")).await.status(),
        StatusCode::ACCEPTED
    );
    wait_for_apply(&first, &token, &id, RunKind::Destroy, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill9();

    let second = app().provisioning().dir(first.into_dir()).spawn().await;
    let destroyed = wait_for_status(&second, &token, &id, DeploymentStatus::Destroyed).await;
    assert!(machines_of(&destroyed).is_empty(), "{destroyed:#?}");
    // The destroy was cut short and run again to its end.
    let runs = run_kinds(&second, &token, &id).await;
    assert_eq!(
        runs[..2],
        [(RunKind::Destroy, RunStatus::Succeeded), (RunKind::Destroy, RunStatus::Interrupted)],
        "{runs:?}"
    );
    assert!(agents(&second).is_empty(), "agents left: {:?}", agents(&second));
    assert_no_trace(&second, &id);
}

#[tokio::test]
async fn a_backend_killed_mid_apply_resumes_the_run_once_after_restart() {
    let mut first = app().provisioning().spawn().await;
    let token = first.token("crash@example.com").await;
    // Machines boot for 10 s: a window the test cannot miss on a loaded machine.
    let created = provision(&first, &token, json!({"name": "phoenix", "provider": "local", "variables": {"machine_count": 2, "boot_delay_seconds": 10}})).await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_apply(&first, &token, &id, RunKind::Apply, 3).await;
    first.kill9();

    let second = app().provisioning().dir(first.into_dir()).spawn().await;
    let ready = wait_for_status(&second, &token, &id, DeploymentStatus::Ready).await;
    assert_eq!(machines_of(&ready).len(), 2);
    let runs = json_ok(second.get(&format!("/infrastructure/{id}/runs"), Some(&token)).await).await;
    let runs: Vec<_> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].clone(), r["attempt"].clone()))
        .collect();
    assert_eq!(runs, [(json!("succeeded"), json!(1)), (json!("interrupted"), json!(0))]);
    // Exactly the two machines' agents run: none was leaked by the interrupted apply.
    assert_eq!(agents(&second).len(), 2, "agents: {:?}", agents(&second));
    for machine in machines_of(&ready) {
        assert!(agent_answers(machine.public_ip.as_deref().unwrap()).await);
    }

    second.delete_as(&token, &format!("/infrastructure/{id}")).await;
    wait_for_status(&second, &token, &id, DeploymentStatus::Destroyed).await;
    assert!(agents(&second).is_empty());
}

#[tokio::test]
async fn sigterm_during_a_run_interrupts_it_cleanly_and_the_next_start_resumes_it() {
    let mut first = app().provisioning().spawn().await;
    let token = first.token("term@example.com").await;
    let created = provision(&first, &token, json!({"name": "graceful", "provider": "local", "variables": {"machine_count": 1, "boot_delay_seconds": 60}})).await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_apply(&first, &token, &id, RunKind::Apply, 2).await;
    let started = Instant::now();
    let status = first.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "shutdown took {:?}", started.elapsed());

    // Restarted with fast machines: the re-queued apply completes.
    let second = app().provisioning().dir(first.into_dir()).spawn().await;
    let runs = json_ok(second.get(&format!("/infrastructure/{id}/runs"), Some(&token)).await).await;
    let first_run = runs["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(first_run["status"], "interrupted", "{runs:#}");
    assert!(first_run["error"].as_str().unwrap().contains("shut down"), "{first_run}");
    // The re-queued run keeps the module's variables (60 s boot): cancel it and destroy.
    let next = wait_for(&second, &token, &id, "the re-queued run", |d| {
        d.latest_run.as_ref().is_some_and(|r| r.status == RunStatus::Running)
    })
    .await;
    let next_run = next.latest_run.as_ref().unwrap();
    let next_id = next_run.id;
    assert_eq!(next_run.attempt, 0, "a shutdown does not use up the crash retry");
    second
        .post_as(&token, &format!("/infrastructure/{id}/runs/{next_id}/cancel"), &json!({}))
        .await;
    wait_for_status(&second, &token, &id, DeploymentStatus::Failed).await;
    second.delete_as(&token, &format!("/infrastructure/{id}")).await;
    wait_for_status(&second, &token, &id, DeploymentStatus::Destroyed).await;
    assert!(agents(&second).is_empty());
}

#[tokio::test]
async fn a_run_over_its_time_limit_is_stopped_and_fails_the_deployment() {
    let app = app().provisioning().env("NIM_RUN_TIMEOUT", "10").spawn().await;
    let token = app.token("timeout@example.com").await;
    let created = provision(
        &app,
        &token,
        json!({"name": "sluggish", "provider": "local", "variables": {"boot_delay_seconds": 120}}),
    )
    .await;
    let id = created["deployment"]["id"].as_str().unwrap();
    let failed = wait_for_status(&app, &token, id, DeploymentStatus::Failed).await;
    assert_eq!(failed.status_reason.as_deref(), Some("the apply timed out after 10 s"));
    assert_eq!(failed.latest_run.as_ref().unwrap().status, RunStatus::Failed);
    app.delete_as(&token, &format!("/infrastructure/{id}")).await;
    wait_for_status(&app, &token, id, DeploymentStatus::Destroyed).await;
    assert!(agents(&app).is_empty());
}

#[tokio::test]
async fn a_retry_runs_a_failed_apply_again_keeping_what_it_made() {
    let app = app().provisioning().spawn().await;
    let token = app.token("retry@example.com").await;
    let body = json!({"name": "again", "provider": "flaky", "variables": {"machine_count": 2}});
    let created = provision(&app, &token, body).await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    let failed = wait_for_status(&app, &token, &id, DeploymentStatus::Failed).await;
    let reason = failed.status_reason.as_deref().unwrap();
    assert!(reason.contains("failing once on purpose"), "{reason}");
    // The failed apply made both machines before it failed.
    let mut made = agents(&app);
    made.sort_unstable();
    assert_eq!(made.len(), 2, "agents after the failed apply: {made:?}");

    // Nothing to retry while another user asks, or without a token.
    let path = format!("/infrastructure/{id}/retry");
    assert_problem(app.post_json(&path, &json!({})).await, 401, "no_authorization").await;

    let response = app.post_as(&token, &path, &json!({})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let queued: Value = response.json().await.unwrap();
    assert_eq!(queued["run"]["kind"], "apply");
    assert_eq!(queued["run"]["status"], "queued");
    assert_eq!(queued["deployment"]["status"], "provisioning");
    assert!(queued["deployment"]["status_reason"].is_null(), "{queued:#}");
    // A second retry while the first is queued or running is a conflict, not a second run.
    assert_problem(app.post_as(&token, &path, &json!({})).await, 409, "conflict").await;

    let ready = wait_for_status(&app, &token, &id, DeploymentStatus::Ready).await;
    assert_eq!(machines_of(&ready).len(), 2);
    assert!(every_machine(&ready, MachineStatus::Healthy), "{ready:#?}");
    // What the failed apply made was kept: the same agent processes, none added.
    let mut after = agents(&app);
    after.sort_unstable();
    assert_eq!(after, made, "the retry replaced or added machines");
    let runs = run_kinds(&app, &token, &id).await;
    assert_eq!(
        runs,
        [(RunKind::Apply, RunStatus::Succeeded), (RunKind::Apply, RunStatus::Failed)],
        "{runs:?}"
    );

    // Only a failed deployment is retried.
    let problem =
        assert_problem(app.post_as(&token, &path, &json!({})).await, 409, "conflict").await;
    assert!(problem["detail"].as_str().unwrap().contains("only a failed deployment"), "{problem}");
    app.delete_as(&token, &format!("/infrastructure/{id}")).await;
    wait_for_status(&app, &token, &id, DeploymentStatus::Destroyed).await;
    assert_problem(app.post_as(&token, &path, &json!({})).await, 409, "conflict").await;
    assert!(agents(&app).is_empty());
    let missing = format!("/infrastructure/{}/retry", uuid::Uuid::new_v4());
    assert_problem(app.post_as(&token, &missing, &json!({})).await, 404, "not_found").await;
}
