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
        let refused = store.queue_run_and_move(&run, &[Ready], Provisioning, now()).await;
        assert!(matches!(refused, Err(StoreError::IllegalMove(_))), "{refused:?}");
        assert!(store.find_run(ready, run.id).await.unwrap().is_none(), "no run was queued");
        // A deployment that is not failed (any more) does not move, and its run is not kept.
        let moved = store.queue_run_and_move(&run, &[Failed], Provisioning, now()).await;
        assert!(!moved.unwrap());
        assert_eq!(status_of(&store, ready).await, Ready);
        assert!(store.find_run(ready, run.id).await.unwrap().is_none(), "the insert rolled back");

        let (failed, _) = deployment_with_run(&store, Failed, RunStatus::Failed).await;
        let retry = RunRow::queued(failed, RunKind::Apply, 0, now());
        assert!(store.queue_run_and_move(&retry, &[Failed], Provisioning, now()).await.unwrap());
        assert_eq!(status_of(&store, failed).await, Provisioning);
        assert_eq!(run_status_of(&store, &retry).await, RunStatus::Queued);
        // A second retry meets the first one's active run.
        let again = RunRow::queued(failed, RunKind::Apply, 0, now());
        let refused = store.queue_run_and_move(&again, &[Provisioning], Provisioning, now()).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict("runs_one_active_per_deployment"))),
            "{refused:?}"
        );
    }
}
