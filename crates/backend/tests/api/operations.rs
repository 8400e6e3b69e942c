//! Operating the server: one owner per data directory, private files, full and read-only disks,
//! backup and restore, upgrades (forward-only migrations), and a graceful stop under load.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::json;

use wire::status::{DeploymentStatus, RunKind, RunStatus};

use crate::helpers::{
    Reuse, agents, app, assert_problem, backend_command, eventually, get_command, json_ok,
    postgres_requested, provision, provision_ready, spawn_app, start, wait_for, wait_for_apply,
    wait_for_command, wait_for_status,
};

/// Whether this test may mount filesystems (root); otherwise it is skipped, loudly, except under
/// `CI=true`, where it must run.
fn root_or_skip(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "CI=true but {what} needs root");
    eprintln!("\n*** SKIPPING {what}: it mounts filesystems and needs root ***\n");
    false
}

fn sh(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().expect(program);
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// A filesystem mounted for one test at `path`, unmounted when dropped.
struct Mount {
    path: PathBuf,
    /// The ext4 image of a loop mount, in a directory of its own.
    image: Option<(tempfile::TempDir, PathBuf)>,
}

impl Mount {
    /// A tmpfs of `megabytes`.
    fn tmpfs(path: &Path, megabytes: u32) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let size = format!("size={megabytes}m");
        sh("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", path.to_str().unwrap()]);
        Self { path: path.to_owned(), image: None }
    }

    /// An ext4 filesystem on a loop device that turns read-only on its first error, as a real
    /// disk's filesystem does (`errors=remount-ro`). `mount -o remount,ro` is refused (EBUSY)
    /// while a process holds files open for writing, as the server does its database.
    fn ext4(path: &Path, megabytes: u32) -> Self {
        let images = tempfile::tempdir().unwrap();
        let image = images.path().join("disk.img");
        sh("truncate", &["-s", &format!("{megabytes}M"), image.to_str().unwrap()]);
        sh("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        let mount = Self { path: path.to_owned(), image: Some((images, image)) };
        std::fs::create_dir_all(path).unwrap();
        mount.mount_image();
        mount
    }

    fn mount_image(&self) {
        let (_, image) = self.image.as_ref().expect("an ext4 mount");
        let (image, path) = (image.to_str().unwrap(), self.path.to_str().unwrap());
        sh("mount", &["-o", "loop,errors=remount-ro", image, path]);
    }

    /// Makes the filesystem fail as a dying disk would: the kernel turns it read-only.
    fn fail_read_only(&self) {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let device = mounts
            .lines()
            .find_map(|line| {
                let mut fields = line.split(' ');
                let device = fields.next()?;
                (fields.next()? == self.path.to_str()?).then_some(device)
            })
            .expect("mounted");
        let name = Path::new(device).file_name().unwrap().to_str().unwrap();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "nim test").unwrap();
    }

    /// Unmounts the failed filesystem and mounts what its disk holds, writable, as a fresh
    /// filesystem (after an error, only a fresh mount is). The disk is copied to a new image
    /// first: a process that entered a mount namespace of its own while the disk was mounted (a
    /// local machine's `ip netns exec`, a browser's sandbox, started by a test running beside
    /// this one) keeps the failed filesystem alive, and `mount -o loop` of the same image would
    /// reuse its loop device and so get that read-only filesystem back.
    fn remount(&mut self) {
        sh("umount", &[self.path.to_str().unwrap()]);
        let (_, image) = self.image.as_mut().expect("an ext4 mount");
        let copy = image.with_extension("after-crash.img");
        std::fs::copy(&*image, &copy).unwrap();
        *image = copy;
        self.mount_image();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem holding `dir` with one file until it has no space left.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => {
                assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
                break;
            }
        }
    }
    path
}

/// Processes whose working directory is under `dir` (Terraform and its children run in the
/// workspaces).
fn processes_in(dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
            found.push(pid);
        }
    }
    found
}

/// SQLite's own check of a database file.
async fn integrity(path: &Path) -> String {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
    let (result,): (String,) =
        sqlx::query_as("PRAGMA integrity_check").fetch_one(&mut conn).await.unwrap();
    result
}

#[tokio::test]
async fn a_second_server_on_an_embedded_data_directory_exits_at_once_naming_the_first() {
    let first = app().bare().spawn().await;
    let data = first.dir.path().join("data");
    let started = Instant::now();
    let (output, _) = app().bare().env("NIM_DATA_DIR", data.to_str().unwrap()).run(&[]).await;
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    assert!(stderr.contains(&format!("(pid {})", first.pid())), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(data.join("nim.lock")).unwrap().trim(),
        first.pid().to_string()
    );
    // The first one is unaffected.
    json_ok(first.get("/readyz", None).await).await;
}

#[tokio::test]
async fn postgres_replicas_may_share_a_data_directory() {
    let Some(database) = nim_backend::store::testing::PostgresDatabase::create().await else {
        return;
    };
    let first = app().postgres(&database.url).spawn().await;
    let data = first.dir.path().join("data");
    let second =
        app().postgres(&database.url).env("NIM_DATA_DIR", data.to_str().unwrap()).spawn().await;
    json_ok(first.get("/readyz", None).await).await;
    json_ok(second.get("/readyz", None).await).await;
}

/// Every file and directory under `dir` is private to its owner; returns how many were checked.
fn assert_private(dir: &Path) -> usize {
    let mut checked = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        if metadata.file_type().is_symlink() {
            continue;
        }
        let mode = metadata.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        checked += 1;
        if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    checked
}

#[tokio::test]
async fn everything_under_the_data_directory_is_private_whatever_the_umask_and_readable_secrets_are_fixed()
 {
    // The server inherits the test's umask; make it as permissive as can be while it starts.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let first = app().bare().provisioning().spawn().await;
    nix::sys::stat::umask(old);
    // A failed run leaves a workspace with Terraform's own files (.terraform, state).
    let token = first.token("private@example.com").await;
    let created = provision(
        &first,
        &token,
        json!({"name": "f", "provider": "failing", "variables": {"reason": "no"}}),
    )
    .await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&first, &token, &id, DeploymentStatus::Failed).await;
    let data = first.dir.path().join("data");
    for name in ["nim.db", "nim.db-wal", "nim.db-shm", "jwt-secret", "encryption-key", "nim.lock"] {
        assert!(data.join(name).exists(), "{name}");
    }
    assert!(data.join(format!("deployments/{id}/modules/failing")).is_dir());
    let checked = assert_private(&data);
    println!("{checked} files and directories under the data directory, all private");

    // Files made readable by others (an older version, a careless copy) are fixed at start.
    let reuse = first.into_dir();
    let data = reuse.dir.path().join("data");
    for (name, mode) in
        [("", 0o755), ("nim.db", 0o644), ("jwt-secret", 0o644), ("encryption-key", 0o640)]
    {
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let second = app().bare().provisioning().dir(reuse).spawn().await;
    assert_private(&second.dir.path().join("data"));
    // The generated secrets still work: the first server's token is valid.
    json_ok(second.get("/auth/me", Some(&token)).await).await;
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_version_is_refused_with_a_clear_message() {
    let first = spawn_app().await;
    first.token("upgrade@example.com").await;
    let reuse = first.into_dir();
    // What a newer nim-backend would leave: a migration this binary does not ship.
    let insert = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                  VALUES (99990101000000, 'from the future', TRUE, $1, 0)";
    match reuse.database_url() {
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let insert = insert.replace("_sqlx_migrations", "nim._sqlx_migrations");
            sqlx::query(&insert).bind(vec![0u8]).execute(&pool).await.unwrap();
            pool.close().await;
        }
        None => {
            let path = reuse.dir.path().join("data/nim.db");
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
            let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
            sqlx::query(insert).bind(vec![0u8]).execute(&mut conn).await.unwrap();
        }
    }
    let (output, _) = app().dir(reuse).run(&[]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(stderr.contains("was migrated by a newer nim-backend"), "{stderr}");
    assert!(stderr.contains("99990101000000"), "{stderr}");
    assert!(stderr.contains(env!("CARGO_PKG_VERSION")), "{stderr}");
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_the_deployment_and_its_machines_answer_commands() {
    // No configured secrets: the generated ones in the data directory are part of the backup.
    let first = app().bare().provisioning().spawn().await;
    let token = first.token("backup@example.com").await;
    let body = json!({"name": "kept", "provider": "local", "variables": {"machine_count": 2}});
    let id = provision_ready(&first, &token, body).await;

    let output = backend_command(first.dir.path()).args(["backup", "backup"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    println!("{stdout}");
    let backup = first.dir.path().join("backup");
    let state = backup.join(format!("deployments/{id}/modules/local/terraform.tfstate"));
    assert!(state.is_file(), "the Terraform state is in the backup");
    assert!(!backup.join(format!("deployments/{id}/modules/local/.terraform")).exists());
    assert_private(&backup);
    // While the server runs, a restore is refused, naming it.
    let output = backend_command(first.dir.path()).args(["restore", "backup"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");

    // The data directory is lost; the machines (like VMs) keep running.
    let reuse = first.into_dir();
    std::fs::remove_dir_all(reuse.dir.path().join("data")).unwrap();
    let output = backend_command(reuse.dir.path()).args(["restore", "backup"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    println!("{}", String::from_utf8_lossy(&output.stdout));

    let second = app().bare().provisioning().dir(reuse).spawn().await;
    // The restored signing key still accepts the old token; the deployment is there.
    let deployment =
        json_ok(second.get(&format!("/infrastructure/{id}"), Some(&token)).await).await;
    assert_eq!(deployment["status"], "ready", "{deployment:#}");
    assert_eq!(deployment["machines"].as_array().unwrap().len(), 2);
    // Its machines answer commands (the restored encryption key opens their tokens).
    let response = second
        .client
        .post(second.url(&format!("/infrastructure/{id}/command")))
        .bearer_auth(&token)
        .json(&json!({"argv": ["echo", "restored"]}))
        .send()
        .await
        .unwrap();
    let command = json_ok(response).await;
    assert_eq!(command["status"], "succeeded", "{command:#}");
    assert_eq!(command["results"][0]["stdout"], "restored\n");
    // And the restored state lets Terraform destroy what it made.
    second.delete_as(&token, &format!("/infrastructure/{id}")).await;
    wait_for_status(&second, &token, &id, DeploymentStatus::Destroyed).await;
    assert!(agents(&second).is_empty());
}

/// A server (with provisioning) whose data directory is a 64 MiB filesystem of its own, and a
/// signed-in user's token; `None` when the test cannot mount (not root).
async fn on_own_disk(
    what: &str,
    mount: fn(&Path, u32) -> Mount,
) -> Option<(Mount, crate::helpers::TestApp, String)> {
    if !root_or_skip(what) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = mount(&dir.path().join("data"), 64);
    let app = app().provisioning().dir(Reuse::from(dir)).spawn().await;
    let token = app.token("disk@example.com").await;
    Some((mount, app, token))
}

#[tokio::test]
async fn a_full_data_disk_refuses_writes_with_503_keeps_reads_and_recovers_without_a_restart() {
    let Some((_mount, app, token)) = on_own_disk("the full-disk test", Mount::tmpfs).await else {
        return;
    };
    let data = app.dir.path().join("data");
    let body = json!({"name": "slow", "provider": "slow", "variables": {"seconds": 6}});
    let created = provision(&app, &token, body).await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_apply(&app, &token, &id, RunKind::Apply, 1).await;

    let filler = fill(&data);
    // The workspaces are on the full disk: a dry run cannot write its own.
    let plan = json!({"name": "plan", "provider": "slow", "variables": {}});
    let response = app.post_as(&token, "/provision?dry_run=true", &plan).await;
    assert_problem(response, 503, "storage_unavailable").await;
    if !postgres_requested() {
        // So is the database: writes answer 503 (a few may still fit in the WAL's free pages).
        let mut refused = None;
        for attempt in 0..50 {
            let response = app.sign_up(&format!("w{attempt}@example.com"), "correct horse").await;
            if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                refused = Some(assert_problem(response, 503, "storage_unavailable").await);
                break;
            }
            assert_eq!(response.status(), StatusCode::CREATED);
        }
        println!("refused: {}", refused.expect("a write was refused"));
    }
    // Reads keep working.
    json_ok(app.get("/auth/me", Some(&token)).await).await;
    let seen = json_ok(app.get(&format!("/infrastructure/{id}"), Some(&token)).await).await;
    assert_eq!(seen["name"], "slow");

    // The apply cannot save its state and ends; its end is recorded once space returns.
    eventually("terraform to stop", Duration::from_secs(60), || {
        let running = processes_in(&data);
        async move { if running.is_empty() { Ok(()) } else { Err(format!("pids {running:?}")) } }
    })
    .await;
    std::fs::remove_file(filler).unwrap();
    let failed = wait_for(&app, &token, &id, "the run's end", |d| {
        d.latest_run.as_ref().is_some_and(|r| r.status != RunStatus::Running)
            && d.status != DeploymentStatus::Provisioning
    })
    .await;
    let run = failed.latest_run.as_ref().expect("the apply");
    println!("run: {} — {:?}", run.status, run.error);
    assert_eq!(run.status, RunStatus::Failed, "{failed:#?}");
    assert_eq!(failed.status, DeploymentStatus::Failed);
    // With Postgres the state is not on that disk: the apply succeeds and its fixture
    // machine's agent never answers. On SQLite the state cannot be saved.
    let error = run.error.as_deref().unwrap();
    if !postgres_requested() {
        assert!(error.contains("terraform apply failed"), "{error}");
    }

    // Everything works again, without a restart.
    assert_eq!(app.sign_up("after@example.com", "correct horse").await.status(), 201);
    app.delete_as(&token, &format!("/infrastructure/{id}")).await;
    wait_for_status(&app, &token, &id, DeploymentStatus::Destroyed).await;
    if !postgres_requested() {
        let reuse = app.into_dir();
        assert_eq!(integrity(&reuse.dir.path().join("data/nim.db")).await, "ok");
    }
}

#[tokio::test]
async fn a_data_disk_turned_read_only_refuses_writes_keeps_reads_and_loses_nothing() {
    let Some((mut mount, server, token)) =
        on_own_disk("the read-only disk test", Mount::ext4).await
    else {
        return;
    };

    // With `synchronous=NORMAL`, commits of the last moment before a disk fails (like a power
    // cut) may be lost, never half-applied; what was on disk stays intact.
    sh("sync", &[]);
    mount.fail_read_only();
    let plan = json!({"name": "plan", "provider": "slow", "variables": {}});
    let response = server.post_as(&token, "/provision?dry_run=true", &plan).await;
    assert_problem(response, 503, "storage_unavailable").await;
    if !postgres_requested() {
        let response = server.sign_up("refused@example.com", "correct horse").await;
        let problem = assert_problem(response, 503, "storage_unavailable").await;
        println!("refused: {problem}");
    }
    json_ok(server.get("/auth/me", Some(&token)).await).await;
    json_ok(server.get("/infrastructure", Some(&token)).await).await;

    // After a crash and a fresh mount, nothing was lost or corrupted.
    let reuse = server.into_dir();
    mount.remount();
    if !postgres_requested() {
        assert_eq!(integrity(&reuse.dir.path().join("data/nim.db")).await, "ok");
    }
    let second = app().provisioning().dir(reuse).spawn().await;
    json_ok(second.get("/auth/me", Some(&token)).await).await;
    assert_eq!(second.sign_up("later@example.com", "correct horse").await.status(), 201);
    drop(second);
}

/// How one request under load ended.
#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    /// No connection: the server no longer listens.
    refused: AtomicUsize,
    /// The connection closed (or was reset) before any byte of an answer: not processed.
    closed: AtomicUsize,
    /// An answer cut short, or no answer at all within the client's time limit.
    broken: AtomicUsize,
    /// What the broken ones were.
    broken_errors: std::sync::Mutex<Vec<String>>,
}

fn before_any_answer(err: &reqwest::Error) -> bool {
    let text = format!("{err:?}");
    // `SendRequest`: the connection failed as the request went out; `Canceled`: hyper's
    // dispatcher dropped the queued request because its connection was reset first. Either way
    // `send()` failed, so no response head arrived.
    (text.contains("SendRequest") || text.contains("Canceled"))
        && (text.contains("IncompleteMessage") || text.contains("ConnectionReset"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answers_or_cleanly_closes_every_request_and_records_what_was_running() {
    const GRACE_SECS: u64 = 20;
    let mut first =
        app().provisioning().env("NIM_SHUTDOWN_GRACE_SECS", GRACE_SECS.to_string()).spawn().await;
    let token = first.token("load@example.com").await;
    let body = json!({"name": "fleet", "provider": "local", "variables": {"machine_count": 2}});
    let fleet = provision_ready(&first, &token, body).await;
    let (command, _) = start(&first, &token, &fleet, json!({"shell": "sleep 120"})).await;
    let command_id = command["id"].as_str().unwrap().to_owned();
    wait_for_command(&first, &token, &fleet, &command_id, "both machines to run it", |c| {
        c["summary"]["running"] == 2
    })
    .await;
    let slow = provision(
        &first,
        &token,
        json!({"name": "slow", "provider": "slow", "variables": {"seconds": 300}}),
    )
    .await;
    let slow = slow["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_apply(&first, &token, &slow, RunKind::Apply, 1).await;

    // An event stream, which must end cleanly too.
    let events = first
        .client
        .get(first.url(&format!("/infrastructure/{slow}/events")))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let events = tokio::spawn(async move {
        let mut events = events;
        loop {
            match events.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(err) => return Err(err.to_string()),
            }
        }
    });

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(GRACE_SECS + 10))
        .build()
        .unwrap();
    let paths = [
        format!("/infrastructure/{fleet}"),
        "/infrastructure".to_owned(),
        format!("/infrastructure/{fleet}/commands"),
        format!("/infrastructure/{slow}/runs"),
        "/auth/me".to_owned(),
    ];
    let mut clients = Vec::new();
    for n in 0..200 {
        let (client, tally, stop, token) =
            (client.clone(), tally.clone(), stop.clone(), token.clone());
        let url = first.url(&paths[n % paths.len()]);
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (counter, refused) = match client.get(&url).bearer_auth(&token).send().await {
                    Ok(response) => match response.bytes().await {
                        Ok(_) => (&tally.answered, false),
                        Err(err) => {
                            tally.broken_errors.lock().unwrap().push(format!("{err:?}"));
                            (&tally.broken, false)
                        }
                    },
                    Err(err) if err.is_connect() => (&tally.refused, true),
                    // Closed before any byte of an answer came back: an idle keep-alive
                    // connection the server closed as the request went out (hyper's
                    // IncompleteMessage), or one the kernel reset because the server never read
                    // the request (still in the accept queue, or on a connection being closed).
                    // The request was not processed. Anything else (a timeout, a cut head or
                    // body) counts as broken.
                    Err(err) if before_any_answer(&err) => (&tally.closed, false),
                    Err(err) => {
                        tally.broken_errors.lock().unwrap().push(format!("{err:?}"));
                        (&tally.broken, false)
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if refused {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    // Let the load build up, then stop the server in the middle of it.
    while tally.answered.load(Ordering::Relaxed) < 400 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = tally.answered.load(Ordering::Relaxed);
    first.send_sigterm();
    let signalled = Instant::now();
    let status = eventually("the server to exit", Duration::from_secs(GRACE_SECS + 5), || {
        let exited = first.exit_status();
        async move { exited.ok_or_else(|| "still running".to_owned()) }
    })
    .await;
    let took = signalled.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let count = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
    println!(
        "SIGTERM under load: exited {status} after {took:?} (grace {GRACE_SECS} s); answered {} ({before} before the signal), refused {}, closed before any answer {}, broken {}",
        count(&tally.answered),
        count(&tally.refused),
        count(&tally.closed),
        count(&tally.broken)
    );
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(GRACE_SECS), "took {took:?}");
    let broken = tally.broken_errors.lock().unwrap().clone();
    assert_eq!(count(&tally.broken), 0, "half answers or hung requests: {broken:#?}");
    assert!(count(&tally.answered) > before, "requests in flight at the signal were answered");
    assert_eq!(events.await.unwrap(), Ok(()), "the event stream ended cleanly");

    // After a restart: the command is recorded interrupted, the run interrupted and re-queued.
    let second = app().provisioning().dir(first.into_dir()).spawn().await;
    let command = get_command(&second, &token, &fleet, &command_id).await;
    assert_eq!(command["status"], "interrupted", "{command:#}");
    let runs =
        json_ok(second.get(&format!("/infrastructure/{slow}/runs"), Some(&token)).await).await;
    let interrupted = runs["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(interrupted["status"], "interrupted", "{runs:#}");
    assert!(interrupted["error"].as_str().unwrap().contains("shut down"), "{interrupted}");
    let resumed = wait_for(&second, &token, &slow, "the re-queued run", |d| {
        d.latest_run.as_ref().is_some_and(|r| r.status == RunStatus::Running)
    })
    .await;
    let run_id = resumed.latest_run.as_ref().unwrap().id;
    second
        .post_as(&token, &format!("/infrastructure/{slow}/runs/{run_id}/cancel"), &json!({}))
        .await;
    wait_for_status(&second, &token, &slow, DeploymentStatus::Failed).await;
    second.delete_as(&token, &format!("/infrastructure/{fleet}")).await;
    wait_for_status(&second, &token, &fleet, DeploymentStatus::Destroyed).await;
    assert!(agents(&second).is_empty());
}
