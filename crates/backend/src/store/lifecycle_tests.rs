//! The store against the transition tables, on every database this machine offers: for every
//! pair of states, a move the table allows happens and one it does not changes nothing.

use uuid::Uuid;

use super::{
    RunRow, Store, StoreError,
    testing::{deployment_row, stores},
};
use crate::domain::{DeploymentStatus, Lifecycle, RunKind, RunStatus, now};

/// A deployment in `status` whose one run is in `run_status`.
async fn deployment_with_run(
    store: &Store,
    status: DeploymentStatus,
    run_status: RunStatus,
) -> (Uuid, RunRow) {
    let row = deployment_row(status);
    let mut run = RunRow::queued(row.id, RunKind::Apply, 0, row.created_at);
    run.status = run_status;
    store.create_deployment(&row, &run).await.unwrap();
    (row.id, run)
}

async fn status_of(store: &Store, id: Uuid) -> DeploymentStatus {
    store.deployment(id).await.unwrap().unwrap().status
}

async fn run_status_of(store: &Store, run: &RunRow) -> RunStatus {
    store.find_run(run.deployment_id, run.id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn a_deployment_moves_only_along_the_table() {
    use DeploymentStatus::Pending;
    for (store, _guard) in stores().await {
        for &actual in DeploymentStatus::ALL {
            for &to in DeploymentStatus::ALL {
                let legal = actual.can_move_to(to);
                let pair = format!("{actual} → {to}");

                // Asked for by name: an illegal pair is refused before anything is written.
                let (id, _) = deployment_with_run(&store, actual, RunStatus::Queued).await;
                match store.transition_deployment(id, &[actual], to, Some("why"), now()).await {
                    Ok(moved) => assert!(legal && moved, "{pair} moved: {moved}"),
                    Err(StoreError::IllegalMove(_)) => assert!(!legal, "{pair} was refused"),
                    Err(other) => panic!("{pair}: {other}"),
                }
                let expected = if legal { to } else { actual };
                assert_eq!(status_of(&store, id).await, expected, "{pair}");

                // Asked for from every legal source while the deployment is elsewhere (another
                // writer moved it first): the conditional UPDATE changes nothing.
                let sources = DeploymentStatus::sources(to);
                if sources.is_empty() {
                    assert_eq!(to, Pending, "only `pending` is never entered by a move");
                    continue;
                }
                let (id, _) = deployment_with_run(&store, actual, RunStatus::Queued).await;
                let moved =
                    store.transition_deployment(id, &sources, to, None, now()).await.unwrap();
                assert_eq!(moved, legal, "{pair} from its sources");
                assert_eq!(status_of(&store, id).await, expected, "{pair} from its sources");
            }
        }
    }
}

#[tokio::test]
async fn a_run_ending_moves_its_deployment_only_along_the_table() {
    for (store, _guard) in stores().await {
        for &actual in DeploymentStatus::ALL {
            for (end, to) in [
                (RunStatus::Succeeded, DeploymentStatus::Ready),
                (RunStatus::Succeeded, DeploymentStatus::Destroyed),
                (RunStatus::Failed, DeploymentStatus::Failed),
            ] {
                let pair = format!("{actual} → {to}");
                let (id, run) = deployment_with_run(&store, actual, RunStatus::Running).await;
                let finished =
                    store.finish_run(run.id, end, None, (to, Some("why")), now()).await.unwrap();
                // The run is over whatever its deployment says.
                assert!(finished, "{pair}");
                assert_eq!(run_status_of(&store, &run).await, end, "{pair}");
                let expected = if actual.can_move_to(to) { to } else { actual };
                assert_eq!(status_of(&store, id).await, expected, "{pair}");
            }
        }
    }
}

#[tokio::test]
async fn cancelling_a_queued_run_fails_its_deployment_only_along_the_table() {
    for (store, _guard) in stores().await {
        for &actual in DeploymentStatus::ALL {
            let (id, run) = deployment_with_run(&store, actual, RunStatus::Queued).await;
            let cancelled = store.request_cancel(id, run.id, now()).await.unwrap().unwrap();
            assert_eq!(cancelled.status, RunStatus::Cancelled, "{actual}");
            let failed = DeploymentStatus::Failed;
            let expected = if actual.can_move_to(failed) { failed } else { actual };
            assert_eq!(status_of(&store, id).await, expected, "{actual}");
        }
    }
}

#[tokio::test]
async fn a_run_moves_only_along_the_table() {
    for (store, _guard) in stores().await {
        assert!(RunStatus::sources(RunStatus::Queued).is_empty(), "runs are queued by insert");
        for &from in RunStatus::ALL {
            for &to in RunStatus::ALL {
                if to == RunStatus::Queued {
                    continue;
                }
                let pair = format!("{from} → {to}");
                let (id, run) =
                    deployment_with_run(&store, DeploymentStatus::Provisioning, from).await;
                let at = now();
                match to {
                    RunStatus::Running => {
                        let lease = at + chrono::Duration::seconds(60);
                        let claimed = store.claim_next_run("w", lease, at).await.unwrap();
                        assert_eq!(claimed.map(|r| r.id), from.can_move_to(to).then_some(run.id));
                    }
                    _ => {
                        if to == RunStatus::Cancelled {
                            store.request_cancel(id, run.id, at).await.unwrap();
                        }
                        let end = (DeploymentStatus::Failed, None);
                        store.finish_run(run.id, to, None, end, at).await.unwrap();
                    }
                }
                let expected = if from.can_move_to(to) { to } else { from };
                assert_eq!(run_status_of(&store, &run).await, expected, "{pair}");
                // Leave no queued run behind for the next pair's claim.
                if expected == RunStatus::Queued {
                    store.request_cancel(id, run.id, at).await.unwrap();
                }
            }
        }
        // A run is never ended into an active state.
        let (_, run) =
            deployment_with_run(&store, DeploymentStatus::Provisioning, RunStatus::Running).await;
        for active in [RunStatus::Queued, RunStatus::Running] {
            let end = (DeploymentStatus::Failed, None);
            let refused = store.finish_run(run.id, active, None, end, now()).await;
            assert!(matches!(refused, Err(StoreError::IllegalMove(_))), "{active}");
        }
        assert_eq!(run_status_of(&store, &run).await, RunStatus::Running);
    }
}

#[tokio::test]
async fn only_a_running_run_is_requeued() {
    for (store, _guard) in stores().await {
        for &from in RunStatus::ALL {
            let (id, run) = deployment_with_run(&store, DeploymentStatus::Provisioning, from).await;
            let at = now();
            let next = RunRow::queued(id, RunKind::Apply, 1, at);
            let requeued = store.requeue_run(run.id, "gone", &next, at).await.unwrap();
            let legal = from.can_move_to(RunStatus::Interrupted);
            assert_eq!(requeued, legal, "{from}");
            let expected = if legal { RunStatus::Interrupted } else { from };
            assert_eq!(run_status_of(&store, &run).await, expected, "{from}");
            let queued_next = store.find_run(id, next.id).await.unwrap();
            assert_eq!(queued_next.map(|r| r.status), legal.then_some(RunStatus::Queued), "{from}");
            if legal {
                store.request_cancel(id, next.id, at).await.unwrap();
            } else if from == RunStatus::Queued {
                store.request_cancel(id, run.id, at).await.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn concurrent_claims_take_each_run_once_and_a_lone_claim_takes_the_oldest() {
    for (store, _guard) in stores().await {
        let mut queued = Vec::new();
        for _ in 0..6 {
            let (_, run) =
                deployment_with_run(&store, DeploymentStatus::Pending, RunStatus::Queued).await;
            queued.push(run.id);
        }
        let at = now();
        let lease = at + chrono::Duration::seconds(60);
        // Six claims at once from three workers: each run exactly once.
        let claims = (0..6).map(|i| {
            let store = store.clone();
            async move { store.claim_next_run(&format!("w{}", i % 3), lease, at).await.unwrap() }
        });
        let claimed: Vec<RunRow> =
            futures_util::future::join_all(claims).await.into_iter().flatten().collect();
        let mut ids: Vec<Uuid> = claimed.iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(ids, queued, "every run claimed once");
        assert!(claimed.iter().all(|r| r.status == RunStatus::Running && r.lease_owner.is_some()));
        assert!(store.claim_next_run("w0", lease, at).await.unwrap().is_none());
        // One at a time, the oldest queued run goes first.
        let (_, older) =
            deployment_with_run(&store, DeploymentStatus::Pending, RunStatus::Queued).await;
        deployment_with_run(&store, DeploymentStatus::Pending, RunStatus::Queued).await;
        let first = store.claim_next_run("w0", lease, at).await.unwrap().unwrap();
        assert_eq!(first.id, older.id);
    }
}

#[tokio::test]
async fn only_the_lease_holder_renews_and_a_lapsed_lease_makes_a_run_stale() {
    for (store, _guard) in stores().await {
        deployment_with_run(&store, DeploymentStatus::Pending, RunStatus::Queued).await;
        let at = now();
        let lease = at + chrono::Duration::seconds(10);
        let run = store.claim_next_run("holder", lease, at).await.unwrap().unwrap();
        assert!(!store.renew_lease(run.id, "intruder", lease).await.unwrap());
        assert!(store.stale_runs(at, false, Some("other")).await.unwrap().is_empty());
        // Its own name finds its leftovers at once; anyone finds them once the lease lapses.
        let mine = store.stale_runs(at, false, Some("holder")).await.unwrap();
        assert_eq!(mine.iter().map(|r| r.id).collect::<Vec<_>>(), [run.id]);
        let lapsed = lease + chrono::Duration::seconds(1);
        assert_eq!(store.stale_runs(lapsed, false, None).await.unwrap().len(), 1);
        // Renewed by its holder, it is live again at that time.
        let renewed = lapsed + chrono::Duration::seconds(60);
        assert!(store.renew_lease(run.id, "holder", renewed).await.unwrap());
        assert!(store.stale_runs(lapsed, false, None).await.unwrap().is_empty());
        // A finished run holds no lease to renew.
        let end = (DeploymentStatus::Failed, None);
        assert!(store.finish_run(run.id, RunStatus::Failed, None, end, now()).await.unwrap());
        assert!(!store.renew_lease(run.id, "holder", renewed).await.unwrap());
    }
}

#[tokio::test]
async fn a_deployment_has_at_most_one_active_run() {
    for (store, _guard) in stores().await {
        let (id, run) =
            deployment_with_run(&store, DeploymentStatus::Ready, RunStatus::Queued).await;
        let second = RunRow::queued(id, RunKind::Destroy, 0, now());
        let refused = store.queue_destroy(&second, now()).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict("runs_one_active_per_deployment"))),
            "{refused:?}"
        );
        assert_eq!(status_of(&store, id).await, DeploymentStatus::Ready, "nothing moved");
        store.request_cancel(id, run.id, now()).await.unwrap();
        // With the first run over, the destroy is queued and the deployment moves (the cancel
        // of a queued run on a ready deployment does not fail it: `ready → failed` is no move).
        let destroy = RunRow::queued(id, RunKind::Destroy, 0, now());
        assert!(store.queue_destroy(&destroy, now()).await.unwrap());
        assert_eq!(status_of(&store, id).await, DeploymentStatus::Destroying);
    }
}

#[tokio::test]
async fn a_retry_moves_only_a_failed_deployment_and_queues_its_run_with_the_move() {
    use DeploymentStatus::{Failed, Provisioning, Ready};
    for (store, _guard) in stores().await {
        // Asked to move along a row the table lacks: refused before anything is written.
        let (ready, _) = deployment_with_run(&store, Ready, RunStatus::Succeeded).await;
        let run = RunRow::queued(ready, RunKind::Apply, 0, now());
        let refused = store.queue_run_and_move(&run, &[Ready], Provisioning, None, now()).await;
        assert!(matches!(refused, Err(StoreError::IllegalMove(_))), "{refused:?}");
        assert!(store.find_run(ready, run.id).await.unwrap().is_none(), "no run was queued");
        // A deployment that is not failed (any more) does not move, and its run is not kept.
        let moved = store.queue_run_and_move(&run, &[Failed], Provisioning, None, now()).await;
        assert!(!moved.unwrap());
        assert_eq!(status_of(&store, ready).await, Ready);
        assert!(store.find_run(ready, run.id).await.unwrap().is_none(), "the insert rolled back");

        let (failed, _) = deployment_with_run(&store, Failed, RunStatus::Failed).await;
        let retry = RunRow::queued(failed, RunKind::Apply, 0, now());
        assert!(
            store.queue_run_and_move(&retry, &[Failed], Provisioning, None, now()).await.unwrap()
        );
        assert_eq!(status_of(&store, failed).await, Provisioning);
        assert_eq!(run_status_of(&store, &retry).await, RunStatus::Queued);
        // A second retry meets the first one's active run.
        let again = RunRow::queued(failed, RunKind::Apply, 0, now());
        let refused =
            store.queue_run_and_move(&again, &[Provisioning], Provisioning, None, now()).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict("runs_one_active_per_deployment"))),
            "{refused:?}"
        );
    }
}

#[tokio::test]
async fn an_sqlite_database_of_the_first_schema_upgrades_keeping_every_run_and_event() {
    use secrecy::SecretString;
    use sqlx::{Connection, sqlite::SqliteConnection};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    // The database as the first release left it: migration 1 only, a run with its log.
    let mut first = sqlx::migrate!("migrations/sqlite");
    first.migrations = first.migrations.iter().filter(|m| m.version == 1).cloned().collect();
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    first.run(&mut conn).await.unwrap();
    let id = Uuid::now_v7();
    let run_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO deployments (id, owner_id, name, provider, status, secrets, tls_cert, created_at, updated_at) \
         VALUES ($1, $2, 'old', 'local', 'ready', x'00', 'cert', '2026-11-30T00:00:00Z', '2026-11-30T00:00:00Z')",
    )
    .bind(id)
    .bind(Uuid::new_v4())
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO runs (id, deployment_id, kind, status, created_at) VALUES ($1, $2, 'apply', 'succeeded', '2026-11-30T00:00:00Z')",
    )
    .bind(run_id)
    .bind(id)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO run_events (run_id, deployment_id, seq, at, kind, data) VALUES ($1, $2, 1, '2026-11-30T00:00:00Z', 'log', '{}')",
    )
    .bind(run_id)
    .bind(id)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let store = Store::connect(&SecretString::from(url), 2).await.unwrap();
    let run = store.find_run(id, run_id).await.unwrap().expect("the run survives");
    assert_eq!((run.kind, run.status), (RunKind::Apply, RunStatus::Succeeded));
    assert_eq!(run.inputs, None);
    assert_eq!(store.run_events(run_id).await.unwrap().len(), 1, "its log survives");
    // The new kinds are accepted.
    let update = RunRow::applying(id, RunKind::Update, Default::default(), now());
    assert!(
        store
            .queue_run_and_move(
                &update,
                &[DeploymentStatus::Ready],
                DeploymentStatus::Updating,
                None,
                now()
            )
            .await
            .unwrap()
    );
    // Deleting the deployment still cascades: the pool's connections have foreign keys on.
    let super::Db::Sqlite(pool) = &store.db else { unreachable!("an SQLite store") };
    sqlx::query("DELETE FROM deployments WHERE id = $1").bind(id).execute(pool).await.unwrap();
    assert!(store.run_events(run_id).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_update_writes_its_values_with_its_run_and_a_key_is_used_once() {
    use serde_json::json;
    use sqlx::types::Json;
    use wire::deployments::RunInputs;

    use super::NewValues;
    for (store, _guard) in stores().await {
        let (id, _) =
            deployment_with_run(&store, DeploymentStatus::Ready, RunStatus::Succeeded).await;
        let values = NewValues {
            variables: Json(json!({"machine_count": 5}).as_object().unwrap().clone()),
            secrets: vec![9, 9],
        };
        let inputs = RunInputs { variables: values.variables.0.clone(), ..Default::default() };
        let mut run = RunRow::applying(id, RunKind::Update, inputs.clone(), now());
        run.idempotency = Some(("k1".into(), vec![1]));
        let from = [DeploymentStatus::Ready, DeploymentStatus::Failed];
        assert!(
            store
                .queue_run_and_move(&run, &from, DeploymentStatus::Updating, Some(&values), now())
                .await
                .unwrap()
        );
        let row = store.deployment(id).await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.variables.0["machine_count"].clone(), row.secrets),
            (DeploymentStatus::Updating, json!(5), vec![9, 9])
        );
        let (found, hash) = store.find_run_by_idempotency_key(id, "k1").await.unwrap().unwrap();
        assert_eq!(
            (found.id, found.inputs.map(|i| i.0), hash),
            (run.id, Some(inputs), Some(vec![1]))
        );
        assert!(store.find_run_by_idempotency_key(id, "k2").await.unwrap().is_none());

        // Nothing is written when the run cannot be queued (a run is active, the key is used).
        let other = NewValues { variables: Json(Default::default()), secrets: vec![0] };
        let mut again = RunRow::applying(id, RunKind::Update, Default::default(), now());
        again.idempotency = Some(("k1".into(), vec![2]));
        let refused = store
            .queue_run_and_move(&again, &from, DeploymentStatus::Updating, Some(&other), now())
            .await;
        assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
        assert_eq!(store.deployment(id).await.unwrap().unwrap().secrets, vec![9, 9]);
    }
}

#[tokio::test]
async fn syncing_machines_keeps_the_rows_of_those_that_stay() {
    use super::NewMachine;
    use crate::domain::MachineStatus;
    let machine = |name: &str, ip: &str| NewMachine {
        name: name.into(),
        public_ip: Some(ip.into()),
        private_ip: None,
        agent_port: None,
        resource: Some(format!("terraform_data.machine[{name}]")),
    };
    for (store, _guard) in stores().await {
        let (id, _) =
            deployment_with_run(&store, DeploymentStatus::Ready, RunStatus::Succeeded).await;
        store
            .sync_machines(id, &[machine("m-0", "a"), machine("m-1", "b")], &[], now())
            .await
            .unwrap();
        for machine in store.list_machines(id).await.unwrap() {
            store
                .record_machine_health(machine.id, MachineStatus::Healthy, None, now())
                .await
                .unwrap();
        }
        let before = store.list_machines(id).await.unwrap();

        // Scale 2 → 3, m-1's address changed: m-0 and m-1 keep their rows and health.
        let three = [machine("m-0", "a"), machine("m-1", "b2"), machine("m-2", "c")];
        store.sync_machines(id, &three, &[], now()).await.unwrap();
        let after = store.list_machines(id).await.unwrap();
        assert_eq!(after.len(), 3);
        assert_eq!((after[0].id, after[0].status), (before[0].id, MachineStatus::Healthy));
        assert_eq!((after[1].id, after[1].public_ip.as_deref()), (before[1].id, Some("b2")));
        assert_eq!(after[2].status, MachineStatus::Unknown);

        // m-1 replaced: a new row; scale to 1: only m-0 is left, still its first row.
        store.sync_machines(id, &three, &["m-1".into()], now()).await.unwrap();
        let replaced = store.list_machines(id).await.unwrap();
        assert_ne!(replaced[1].id, before[1].id);
        assert_eq!(replaced[1].status, MachineStatus::Unknown);
        store.sync_machines(id, &three[..1], &[], now()).await.unwrap();
        let one = store.list_machines(id).await.unwrap();
        assert_eq!(one.iter().map(|m| m.id).collect::<Vec<_>>(), [before[0].id]);
        assert_eq!(
            store.find_machine(id, "m-0").await.unwrap().unwrap().resource.as_deref(),
            Some("terraform_data.machine[m-0]")
        );
        assert!(store.find_machine(id, "m-2").await.unwrap().is_none());
    }
}
