//! Commands against a real `terraform/local` deployment of five machines (real `nim-agent`
//! processes on loopback, pinned TLS): all machines, a subset, failures, timeouts, the rollout
//! controls, cancel, unreachable machines, async mode, history, the health checker, a backend
//! restart mid-command, and ownership.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};

use wire::status::{DeploymentStatus, MachineStatus};

use crate::helpers::{
    TestApp, alive, app, assert_problem, error_fields, eventually, every_machine, get_command,
    gone, host_pid, json_ok, machine_dir, machines_of, marker, provision, provision_ready,
    read_pid, run_command, send_command, set_link, start, veth, wait_for, wait_for_command,
    wait_for_status,
};

const MACHINES: [&str; 5] = ["local-0", "local-1", "local-2", "local-3", "local-4"];

/// Provisions `local` with five machines and waits until it is ready; returns its id.
async fn ready_fleet(app: &TestApp, token: &str, name: &str) -> String {
    let body = json!({"name": name, "provider": "local", "variables": {"machine_count": 5}});
    provision_ready(app, token, body).await
}

fn machine_names(command: &Value) -> Vec<&str> {
    command["results"].as_array().unwrap().iter().map(|r| r["machine"].as_str().unwrap()).collect()
}

fn statuses(command: &Value) -> Vec<&str> {
    command["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn commands_run_on_all_machines_or_a_subset_and_report_failures_and_timeouts() {
    // A short request time limit: a waiting command must not be cut by it.
    let app = app().provisioning().env("NIM_REQUEST_TIMEOUT_SECS", "2").spawn().await;
    let token = app.token("ops@example.com").await;
    let id = ready_fleet(&app, &token, "fleet").await;
    // The health checker (default interval 30 s) is woken when a deployment becomes ready.
    let ready_at = Instant::now();
    let deployment = wait_for(&app, &token, &id, "the first health check", |d| {
        every_machine(d, MachineStatus::Healthy)
    })
    .await;
    assert!(ready_at.elapsed() < Duration::from_secs(25), "took {:?}", ready_at.elapsed());
    let machines = machines_of(&deployment);
    assert!(
        machines[0].info.as_ref().is_some_and(|i| i["agent_version"].is_string()),
        "{deployment:#?}"
    );

    // Every machine, through a shell; each machine knows its name.
    let all = run_command(
        &app,
        &token,
        &id,
        json!({"shell": "echo hello from $NIM_MACHINE; echo note >&2"}),
    )
    .await;
    assert_eq!(all["status"], "succeeded", "{all:#}");
    assert_eq!(all["summary"]["total"], 5);
    assert_eq!(all["summary"]["succeeded"], 5);
    assert_eq!(machine_names(&all), MACHINES);
    for (result, machine) in all["results"].as_array().unwrap().iter().zip(machines) {
        assert_eq!(result["stdout"], format!("hello from {}\n", machine.name));
        assert_eq!(result["stderr"], "note\n");
        assert_eq!(result["exit_code"], 0);
        assert_eq!(result["address"], format!("{}:7070", machine.public_ip.as_deref().unwrap()));
        assert!(result["duration_ms"].is_u64() && result["error"].is_null(), "{result}");
    }
    assert_eq!(all["request"]["timeout_s"], 60, "defaults are filled in");
    assert_eq!(all["request"]["max_concurrency"], 64);

    // A subset, in the order given; argv runs without a shell.
    let subset = run_command(
        &app,
        &token,
        &id,
        json!({"argv": ["printf", "%s", "$HOME"], "machines": ["local-3", "local-1"]}),
    )
    .await;
    assert_eq!(machine_names(&subset), ["local-3", "local-1"]);
    assert_eq!(subset["results"][0]["stdout"], "$HOME");
    assert_eq!(subset["summary"]["total"], 2);

    // One machine fails: partial, with its exit code.
    let partial = run_command(
        &app,
        &token,
        &id,
        json!({"shell": "if [ \"$NIM_MACHINE\" = local-2 ]; then echo broken >&2; exit 3; fi"}),
    )
    .await;
    assert_eq!(partial["status"], "partial");
    assert_eq!(statuses(&partial), ["succeeded", "succeeded", "failed", "succeeded", "succeeded"]);
    assert_eq!(partial["results"][2]["exit_code"], 3);
    assert_eq!(partial["results"][2]["stderr"], "broken\n");
    assert_eq!(partial["summary"]["failed"], 1);
    assert_eq!(partial["summary"]["succeeded"], 4);

    // Every machine fails: failed (still HTTP 200).
    let failed = run_command(
        &app,
        &token,
        &id,
        json!({"argv": ["false"], "machines": ["local-0", "local-4"]}),
    )
    .await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["results"][1]["exit_code"], 1);

    // A timeout kills the command and keeps what it printed.
    let started = Instant::now();
    let timed_out = run_command(
        &app,
        &token,
        &id,
        json!({"shell": "echo started; sleep 20", "timeout_s": 1, "machines": ["local-0", "local-1"]}),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(timed_out["status"], "timed_out");
    assert_eq!(statuses(&timed_out), ["timed_out", "timed_out"]);
    assert_eq!(timed_out["results"][0]["stdout"], "started\n");
    assert_eq!(timed_out["results"][0]["signal"], 9);

    // Longer than the request time limit (2 s): the waiting call is exempt from it.
    let long =
        run_command(&app, &token, &id, json!({"argv": ["sleep", "3"], "machines": ["local-4"]}))
            .await;
    assert_eq!(long["status"], "succeeded", "{long:#}");

    // Async: 202 at once with the stored, pending command; the result is fetched later.
    let (accepted, location) =
        start(&app, &token, &id, json!({"shell": "sleep 1; echo later"})).await;
    assert_eq!(accepted["status"], "running");
    assert_eq!(accepted["summary"]["pending"], 5);
    let async_id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/infrastructure/{id}/commands/{async_id}"));
    let done = wait_for_command(&app, &token, &id, &async_id, "the async command", |c| {
        c["status"] != "running"
    })
    .await;
    assert_eq!(done["status"], "succeeded");
    assert!(done["results"].as_array().unwrap().iter().all(|r| r["stdout"] == "later\n"));
    assert!(done["finished_at"].is_string());

    // Validation, before anything is stored.
    let unknown = send_command(
        &app,
        &token,
        &id,
        json!({"argv": ["true"], "machines": ["local-1", "web-9", "db"]}),
    )
    .await;
    let problem = assert_problem(unknown, 422, "validation_failed").await;
    assert_eq!(error_fields(&problem), ["machines[1]", "machines[2]"]);
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("\"web-9\""), "{problem}");
    for (body, field) in [
        (json!({"argv": ["true"], "shell": "true"}), "shell"),
        (json!({}), "argv"),
        (json!({"argv": ["true"], "timeout_s": 3601}), "timeout_s"),
        (json!({"argv": ["true"], "max_concurrency": "lots"}), "max_concurrency"),
        (json!({"argv": ["true"], "max_errors": "0%"}), "max_errors"),
        (json!({"argv": ["true"], "machines": []}), "machines"),
        (json!({"argv": ["true"], "bogus": 1}), "bogus"),
    ] {
        let problem = assert_problem(
            send_command(&app, &token, &id, body.clone()).await,
            422,
            "validation_failed",
        )
        .await;
        assert_eq!(error_fields(&problem), [field], "{body}");
    }

    // History: newest first, paginated, summaries without output.
    let history =
        json_ok(app.get(&format!("/infrastructure/{id}/commands"), Some(&token)).await).await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    assert_eq!(items[0]["id"], async_id.as_str());
    assert_eq!(items[6]["id"], all["id"]);
    assert_eq!(items[4]["status"], "partial");
    assert_eq!(items[4]["summary"]["failed"], 1);
    assert!(items[0].get("results").is_none());
    assert!(history["next_before"].is_null());
    let page =
        json_ok(app.get(&format!("/infrastructure/{id}/commands?limit=4"), Some(&token)).await)
            .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 4);
    let before = page["next_before"].as_str().unwrap();
    let rest = json_ok(
        app.get(&format!("/infrastructure/{id}/commands?limit=4&before={before}"), Some(&token))
            .await,
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 3);
    assert_eq!(rest["items"][2]["id"], all["id"]);
    let stored = get_command(&app, &token, &id, all["id"].as_str().unwrap()).await;
    assert_eq!(stored["results"], all["results"]);

    // Another user's deployment and commands do not exist for them.
    let other = app.token("stranger@example.com").await;
    let command_id = all["id"].as_str().unwrap();
    for path in [
        format!("/infrastructure/{id}/commands"),
        format!("/infrastructure/{id}/commands/{command_id}"),
    ] {
        assert_problem(app.get(&path, Some(&other)).await, 404, "not_found").await;
    }
    assert_problem(
        send_command(&app, &other, &id, json!({"argv": ["true"]})).await,
        404,
        "not_found",
    )
    .await;
    let cancel = app
        .post_as(&other, &format!("/infrastructure/{id}/commands/{command_id}/cancel"), &json!({}))
        .await;
    assert_problem(cancel, 404, "not_found").await;
    // And a finished command cannot be cancelled.
    let cancel = app
        .post_as(&token, &format!("/infrastructure/{id}/commands/{command_id}/cancel"), &json!({}))
        .await;
    let problem = assert_problem(cancel, 409, "command_not_running").await;
    assert!(problem["detail"].as_str().unwrap().contains("succeeded"), "{problem}");
}

#[tokio::test]
async fn max_errors_stops_the_rollout_and_cancel_stops_a_long_command() {
    let app = app().provisioning().spawn().await;
    let token = app.token("rollout@example.com").await;
    let id = ready_fleet(&app, &token, "rollout").await;

    // One machine at a time; after two failures the other three are never sent the command.
    let stopped = run_command(
        &app,
        &token,
        &id,
        json!({
            "shell": "mkdir -p /tmp/markers; touch /tmp/markers/$NIM_MACHINE; exit 1",
            "max_concurrency": 1,
            "max_errors": 2,
        }),
    )
    .await;
    assert_eq!(stopped["status"], "failed", "{stopped:#}");
    assert_eq!(statuses(&stopped), ["failed", "failed", "skipped", "skipped", "skipped"]);
    assert_eq!(stopped["summary"]["skipped"], 3);
    assert!(stopped["results"][2]["error"].as_str().unwrap().contains("max_errors"));
    assert!(stopped["results"][2]["started_at"].is_null());
    let ran: Vec<&str> =
        MACHINES.iter().copied().filter(|m| marker(&app, &id, m, m).exists()).collect();
    assert_eq!(ran, ["local-0", "local-1"], "skipped machines must never run the command");

    // Percentages of the targeted machines: 20% of 5 is one at a time and one error.
    let partial = run_command(
        &app,
        &token,
        &id,
        json!({"shell": "[ \"$NIM_MACHINE\" != local-1 ]", "max_concurrency": "20%", "max_errors": "20%"}),
    )
    .await;
    assert_eq!(partial["status"], "partial");
    assert_eq!(statuses(&partial), ["succeeded", "failed", "skipped", "skipped", "skipped"]);

    // Cancel: two machines run a long command, three wait their turn.
    let (accepted, _) = start(
        &app,
        &token,
        &id,
        json!({
            "shell": "mkdir -p /tmp/markers; echo $$ > /tmp/markers/$NIM_MACHINE.pid; sleep 60",
            "max_concurrency": 2,
        }),
    )
    .await;
    let command_id = accepted["id"].as_str().unwrap().to_owned();
    wait_for_command(&app, &token, &id, &command_id, "two machines to run it", |c| {
        c["summary"]["running"] == 2 && c["summary"]["pending"] == 3
    })
    .await;
    let pids = [
        host_pid(&id, "local-0", read_pid(&marker(&app, &id, "local-0", "local-0.pid")).await),
        host_pid(&id, "local-1", read_pid(&marker(&app, &id, "local-1", "local-1.pid")).await),
    ];
    assert!(pids.iter().all(|pid| alive(*pid)));

    let started = Instant::now();
    let cancel = app
        .post_as(&token, &format!("/infrastructure/{id}/commands/{command_id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    let cancelled = wait_for_command(&app, &token, &id, &command_id, "the cancel", |c| {
        c["status"] != "running"
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "cancel took {:?}", started.elapsed());
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(statuses(&cancelled), ["cancelled"; 5]);
    assert!(cancelled["results"][0]["error"].as_str().unwrap().contains("while it ran"));
    assert!(cancelled["results"][4]["error"].as_str().unwrap().contains("before it was sent"));
    assert!(cancelled["cancel_requested_at"].is_string());
    // The agents killed the running commands' process groups.
    eventually("the cancelled commands to stop", Duration::from_secs(10), || {
        let running: Vec<u32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
        async move { if running.is_empty() { Ok(()) } else { Err(format!("{running:?} run")) } }
    })
    .await;
    assert!(
        !marker(&app, &id, "local-2", "local-2.pid").exists(),
        "a machine not started must never run it"
    );
    let again = app
        .post_as(&token, &format!("/infrastructure/{id}/commands/{command_id}/cancel"), &json!({}))
        .await;
    assert_problem(again, 409, "command_not_running").await;

    // A client that hangs up on a waiting call does not stop its command (cancel does).
    let hung_up = app
        .client
        .post(app.url(&format!("/infrastructure/{id}/command")))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(500))
        .json(&json!({
            "shell": "sleep 2; touch /tmp/markers/finished-anyway",
            "machines": ["local-0"],
        }))
        .send()
        .await;
    assert!(hung_up.is_err_and(|err| err.is_timeout()));
    let history =
        json_ok(app.get(&format!("/infrastructure/{id}/commands?limit=1"), Some(&token)).await)
            .await;
    let abandoned = history["items"][0]["id"].as_str().unwrap().to_owned();
    let finished = wait_for_command(&app, &token, &id, &abandoned, "the abandoned command", |c| {
        c["status"] != "running"
    })
    .await;
    assert_eq!(finished["status"], "succeeded");
    assert!(marker(&app, &id, "local-0", "finished-anyway").exists());
}

#[tokio::test]
async fn network_faults_on_one_machine_leave_the_others_working_and_health_recovers() {
    let app = app().provisioning().env("NIM_HEALTH_INTERVAL_SECS", "1").spawn().await;
    let token = app.token("health@example.com").await;
    let id = ready_fleet(&app, &token, "patients").await;

    let healthy = wait_for(&app, &token, &id, "every machine healthy", |d| {
        every_machine(d, MachineStatus::Healthy)
    })
    .await;
    assert_eq!(healthy.degraded, Some(false));
    for machine in machines_of(&healthy) {
        let info = machine.info.as_ref().expect("a healthy machine's info");
        assert!(machine.last_seen_at.is_some(), "{machine:?}");
        assert!(info["hostname"].is_string(), "{machine:?}");
        assert!(info["cpus"].as_u64().unwrap() >= 1);
    }

    // A partition of local-1 (its link down: the machine and its agent keep running), and
    // local-3 losing 30% of the packets it receives.
    set_link(&app, &id, "local-1", false);
    let cut_at = Instant::now();
    lose_packets(&app, &id, "local-3", Some(30));
    let started = Instant::now();
    let command = run_command(&app, &token, &id, json!({"argv": ["true"], "timeout_s": 5})).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert_eq!(command["status"], "partial", "{command:#}");
    // The partitioned machine answers nothing: its connection or its command times out.
    let statuses = statuses(&command);
    assert!(["timed_out", "unreachable"].contains(&statuses[1]), "{command:#}");
    assert_eq!(
        [statuses[0], statuses[2], statuses[3], statuses[4]],
        ["succeeded"; 4],
        "{command:#}"
    );
    assert!(command["results"][1]["error"].is_string(), "{command:#}");
    println!(
        "partition: the command answered in {took:?} (timeout 5 s + the 5 s response margin) with local-1 {}; local-3 with 30% loss took {} ms",
        statuses[1], command["results"][3]["duration_ms"]
    );

    let degraded = wait_for(&app, &token, &id, "local-1 unreachable", |d| {
        d.machines.as_ref().is_some_and(|m| m[1].status == MachineStatus::Unreachable)
    })
    .await;
    println!(
        "health marked the partitioned machine unreachable {:?} after the cut",
        cut_at.elapsed()
    );
    assert_eq!(degraded.degraded, Some(true));
    assert_eq!(
        degraded.status,
        DeploymentStatus::Ready,
        "health never changes the lifecycle status"
    );
    // The last sighting is kept.
    assert!(machines_of(&degraded)[1].last_seen_at.is_some());

    lose_packets(&app, &id, "local-3", None);
    set_link(&app, &id, "local-1", true);
    let healed_at = Instant::now();
    // A successful command is a sign of life: the machine is healthy again at once.
    let again =
        run_command(&app, &token, &id, json!({"argv": ["true"], "machines": ["local-1"]})).await;
    assert_eq!(again["status"], "succeeded", "{again:#}");
    let after_command =
        json_ok(app.get(&format!("/infrastructure/{id}"), Some(&token)).await).await;
    assert_eq!(after_command["machines"][1]["status"], "healthy", "{after_command:#}");
    println!(
        "the link came back; a command succeeded and marked local-1 healthy after {:?}",
        healed_at.elapsed()
    );
    let recovered = wait_for(&app, &token, &id, "every machine healthy again", |d| {
        every_machine(d, MachineStatus::Healthy)
    })
    .await;
    assert_eq!(recovered.degraded, Some(false));
    let all = run_command(&app, &token, &id, json!({"argv": ["true"]})).await;
    assert_eq!(all["status"], "succeeded");

    // Latency on local-2's link (tc netem), where the kernel has it: the command still succeeds,
    // later by at least the delay.
    let link = veth(&app, &id, "local-2");
    let netem = ["qdisc", "add", "dev", link.as_str(), "root", "netem", "delay", "300ms"];
    if Command::new("tc").args(netem).status().is_ok_and(|s| s.success()) {
        let started = Instant::now();
        let slow = run_command(
            &app,
            &token,
            &id,
            json!({"argv": ["true"], "machines": ["local-2"], "timeout_s": 10}),
        )
        .await;
        let took = started.elapsed();
        assert_eq!(slow["status"], "succeeded", "{slow:#}");
        assert!(took >= Duration::from_millis(300), "took {took:?}");
        println!("300 ms of latency: the command on local-2 answered in {took:?}");
        let _ = Command::new("tc").args(["qdisc", "del", "dev", link.as_str(), "root"]).status();
    } else {
        eprintln!(
            "*** SKIPPED the latency case: this kernel has no tc netem (sch_netem); partition and loss were tested ***"
        );
    }
}

/// Drops `percent` of the packets a machine receives (nftables in its own namespace, which the
/// machine cannot change), or stops dropping them.
fn lose_packets(app: &TestApp, id: &str, machine: &str, percent: Option<u32>) {
    let env = std::fs::read_to_string(machine_dir(app, id, machine).join("sandbox.env")).unwrap();
    let netns = env.lines().find_map(|l| l.strip_prefix("NETNS=")).unwrap();
    let rules = match percent {
        Some(p) => format!(
            "table inet nim_fault {{\n  chain input {{\n    type filter hook input priority -10;\n    numgen random mod 100 < {p} drop\n  }}\n}}\n"
        ),
        None => "delete table inet nim_fault\n".to_owned(),
    };
    let mut nft = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    let status = nft.wait().unwrap();
    assert!(status.success(), "nft {rules}");
}

#[tokio::test]
async fn a_backend_restart_leaves_a_running_command_interrupted_with_what_had_finished() {
    let mut first = app().provisioning().spawn().await;
    let token = first.token("restart@example.com").await;
    let id = ready_fleet(&first, &token, "phoenix").await;
    let (accepted, _) =
        start(&first, &token, &id, json!({"shell": "[ \"$NIM_MACHINE\" = local-0 ] || sleep 60"}))
            .await;
    let command_id = accepted["id"].as_str().unwrap().to_owned();
    wait_for_command(&first, &token, &id, &command_id, "local-0 to finish", |c| {
        c["results"][0]["status"] == "succeeded" && c["summary"]["running"] == 4
    })
    .await;
    first.kill9();

    let second = app().provisioning().dir(first.into_dir()).spawn().await;
    let command = get_command(&second, &token, &id, &command_id).await;
    assert_eq!(command["status"], "interrupted", "{command:#}");
    assert_eq!(
        statuses(&command),
        ["succeeded", "interrupted", "interrupted", "interrupted", "interrupted"]
    );
    assert!(command["results"][1]["error"].as_str().unwrap().contains("backend stopped"));
    assert!(command["finished_at"].is_string());

    // The machines outlived the backend; the next command runs.
    let next = run_command(&second, &token, &id, json!({"argv": ["true"]})).await;
    assert_eq!(next["status"], "succeeded", "{next:#}");
}

#[tokio::test]
async fn commands_need_a_ready_deployment() {
    let app = app().provisioning().spawn().await;
    let token = app.token("early@example.com").await;
    let created = provision(
        &app,
        &token,
        json!({"name": "broken", "provider": "failing", "variables": {"reason": "no"}}),
    )
    .await;
    let id = created["deployment"]["id"].as_str().unwrap();
    wait_for_status(&app, &token, id, DeploymentStatus::Failed).await;
    let problem = assert_problem(
        send_command(&app, &token, id, json!({"argv": ["true"]})).await,
        409,
        "deployment_not_ready",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("the deployment is failed"), "{problem}");
    let missing = "0190c0de-0000-7000-8000-000000000000";
    assert_problem(
        send_command(&app, &token, missing, json!({"argv": ["true"]})).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn sigterm_interrupts_running_commands_and_records_them_before_exiting() {
    let mut first = app().provisioning().spawn().await;
    let token = first.token("sigterm@example.com").await;
    let id = ready_fleet(&first, &token, "graceful").await;
    let (accepted, _) = start(
        &first,
        &token,
        &id,
        json!({"shell": "mkdir -p /tmp/markers; echo $$ > /tmp/markers/$NIM_MACHINE.pid; sleep 60"}),
    )
    .await;
    let command_id = accepted["id"].as_str().unwrap().to_owned();
    wait_for_command(&first, &token, &id, &command_id, "every machine to run it", |c| {
        c["summary"]["running"] == 5
    })
    .await;
    let pid =
        host_pid(&id, "local-4", read_pid(&marker(&first, &id, "local-4", "local-4.pid")).await);

    let started = Instant::now();
    assert!(first.terminate().await.success());
    assert!(started.elapsed() < Duration::from_secs(30), "shutdown took {:?}", started.elapsed());
    gone(pid, "the interrupted command").await;

    let second = app().provisioning().dir(first.into_dir()).spawn().await;
    let command = get_command(&second, &token, &id, &command_id).await;
    assert_eq!(command["status"], "interrupted", "{command:#}");
    assert_eq!(statuses(&command), ["interrupted"; 5]);
    let error = command["results"][0]["error"].as_str().unwrap();
    assert!(error.contains("shut down while it ran"), "{error}");
}
