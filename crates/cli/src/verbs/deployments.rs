//! The catalog and the deployments: what can be deployed, deploying, listing, showing,
//! finding one by name, destroying.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use uuid::Uuid;
use wire::{
    InfoResponse,
    deployments::{DeploymentView, ProvisionBody, ProvisionResponse},
    status::DeploymentStatus,
};

use super::runs::follow_to_end;
use crate::{
    Ctx, Outcome,
    args::{Deploy, Output},
    client::{Api, Provisioned, Updated},
    output::{self, or_dash, table, time},
    vars,
};

pub(crate) async fn providers(cx: &Ctx, name: Option<&str>) -> anyhow::Result<Outcome> {
    let providers = cx.api.providers().await?;
    let Some(name) = name else {
        output::show(cx.output, &providers, |providers| {
            table(
                ["PROVIDER", "VARIABLES"],
                providers.providers.iter().map(|p| {
                    let names: Vec<_> = p.settable().map(|v| v.name.as_str()).collect();
                    [p.name.clone(), names.join(", ")]
                }),
            )
        })?;
        return Ok(Outcome::Success);
    };
    let provider = find_provider(providers.providers, name)?;
    output::show(cx.output, &provider, |provider| {
        table(
            ["VARIABLE", "TYPE", "DEFAULT", "DESCRIPTION"],
            provider.settable().map(|v| {
                let default = match &v.default {
                    _ if v.required => "(required)".to_owned(),
                    Some(default) => default.to_string(),
                    None => "null".to_owned(),
                };
                let mut description = v.description.clone().unwrap_or_default().replace('\n', " ");
                if v.sensitive {
                    description = format!("(sensitive) {description}");
                }
                [v.name.clone(), v.ty.clone(), default, description]
            }),
        )
    })?;
    Ok(Outcome::Success)
}

fn find_provider(
    providers: Vec<wire::deployments::ProviderView>,
    name: &str,
) -> anyhow::Result<wire::deployments::ProviderView> {
    let names: Vec<String> = providers.iter().map(|p| p.name.clone()).collect();
    providers.into_iter().find(|p| p.name == name).with_context(|| {
        format!("this server has no provider `{name}`; it has: {}", names.join(", "))
    })
}

pub(crate) async fn deploy(cx: &Ctx, deploy: Deploy) -> anyhow::Result<Outcome> {
    let provider = find_provider(cx.api.providers().await?.providers, &deploy.provider)?;
    let variables = vars::collect(&provider, &deploy.var_files, deploy.count, &deploy.vars)?;
    let body =
        ProvisionBody { name: deploy.name.clone(), provider: provider.name.clone(), variables };
    if !deploy.dry_run && deploy.idempotency_key.is_none() && !deploy.allow_duplicate_name {
        // Names need not be unique to the API, but a second live `web` is almost always a
        // mistake (and a second bill), and makes the name ambiguous here.
        let page = cx.api.deployments(Some(&deploy.name), None, 100).await?;
        let existing = page.items.iter().find(|d| d.status != DeploymentStatus::Destroyed);
        if let Some(existing) = existing {
            // A failed one keeps its name until it is retried or destroyed.
            let retry = match existing.status {
                DeploymentStatus::Failed => format!("retry it (`nimctl retry {}`), ", existing.id),
                _ => String::new(),
            };
            anyhow::bail!(
                "you already have a deployment named `{}` ({}, {}); {retry}destroy it, pick \
                 another name, or pass --allow-duplicate-name",
                existing.name,
                existing.id,
                existing.status
            );
        }
    }
    if deploy.dry_run {
        cx.progress.say(format!(
            "==> planning {} on {} (nothing will be created)",
            body.name, body.provider
        ));
    }
    let (response, replayed) =
        match cx.api.provision(&body, deploy.dry_run, deploy.idempotency_key.as_deref()).await? {
            Provisioned::Plan(plan) => return print_plan(cx, &plan),
            Provisioned::Queued { response, replayed } => (response, replayed),
        };
    let id = response.deployment.id;
    if replayed {
        cx.progress
            .say(format!("==> {} already exists for this idempotency key ({id})", body.name));
    } else {
        cx.progress.say(format!("==> {} ({id}) queued on {}", body.name, body.provider));
    }
    queued(cx, id, &response, deploy.detach).await
}

pub(crate) async fn list(
    cx: &Ctx,
    status: Option<DeploymentStatus>,
    limit: u32,
) -> anyhow::Result<Outcome> {
    let page = cx.api.deployments(None, status, limit).await?;
    output::show(cx.output, &page, |page| {
        table(
            ["ID", "NAME", "PROVIDER", "STATUS", "CREATED"],
            page.items.iter().map(|d| {
                [
                    d.id.to_string(),
                    d.name.clone(),
                    d.provider.clone(),
                    d.status.to_string(),
                    time(Some(d.created_at)),
                ]
            }),
        )
    })?;
    Ok(Outcome::Success)
}

pub(crate) fn show_deployment(cx: &Ctx, view: &DeploymentView) -> anyhow::Result<()> {
    if cx.output == Output::Json {
        return output::json(view);
    }
    println!("{} ({})", view.name, view.id);
    println!("provider:  {}", view.provider);
    let degraded =
        if view.degraded == Some(true) { " (degraded: some agents do not answer)" } else { "" };
    println!("status:    {}{degraded}", view.status);
    if let Some(reason) = &view.status_reason {
        println!("reason:    {reason}");
    }
    if let Some(run) = &view.latest_run {
        println!(
            "last run:  {} {} ({}/{} resources) {}",
            run.kind,
            run.status,
            run.progress.done,
            run.progress.total,
            time(run.finished_at.or(run.started_at).or(Some(run.created_at)))
        );
    }
    let machines = view.machines.as_deref().unwrap_or_default();
    if !machines.is_empty() {
        println!();
        print!(
            "{}",
            table(
                ["MACHINE", "PUBLIC IP", "PRIVATE IP", "AGENT", "HEALTH", "LAST SEEN", "SYSTEM"],
                machines.iter().map(|m| {
                    let address = match (&m.public_ip, m.agent_port) {
                        (Some(ip), Some(port)) => format!("{ip}:{port}"),
                        (Some(ip), None) => ip.clone(),
                        _ => "-".to_owned(),
                    };
                    [
                        m.name.clone(),
                        or_dash(m.public_ip.as_ref()),
                        or_dash(m.private_ip.as_ref()),
                        address,
                        m.status.to_string(),
                        time(m.last_seen_at),
                        system(m.info.as_ref()),
                    ]
                })
            )
        );
    }
    Ok(())
}

/// What the agent last reported of its machine: `Ubuntu 24.04.1 LTS, 4 CPU, 15.5 GiB, 1x NVIDIA A10G`.
fn system(info: Option<&serde_json::Value>) -> String {
    let info = info.and_then(|info| serde_json::from_value::<InfoResponse>(info.clone()).ok());
    let Some(info) = info else { return "-".to_owned() };
    let gib = info.memory_total_bytes as f64 / f64::from(1u32 << 30);
    let mut text = format!("{}, {} CPU, {gib:.1} GiB", info.os, info.cpus);
    if let Some(gpu) = info.gpus.first() {
        text.push_str(&format!(", {}x {}", info.gpus.len(), gpu.name));
    }
    text
}

/// A deployment by id, or by name: the one live deployment of that name, else the newest.
pub(crate) async fn resolve(api: &Api, reference: &str) -> anyhow::Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(reference) {
        return Ok(id);
    }
    let page = api.deployments(Some(reference), None, 100).await?;
    let live: Vec<_> =
        page.items.iter().filter(|d| d.status != DeploymentStatus::Destroyed).collect();
    match live.as_slice() {
        [one] => Ok(one.id),
        [] => page.items.first().map(|d| d.id).with_context(|| {
            format!("you have no deployment named `{reference}` (see `nimctl list`)")
        }),
        many => {
            let ids: Vec<String> =
                many.iter().map(|d| format!("{} ({})", d.id, d.status)).collect();
            anyhow::bail!(
                "{} deployments are named `{reference}`; give an id: {}",
                many.len(),
                ids.join(", ")
            )
        }
    }
}

pub(crate) async fn destroy(
    cx: &Ctx,
    reference: &str,
    yes: bool,
    detach: bool,
) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let view = cx.api.deployment(id).await?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("not destroying {} without confirmation; pass --yes", view.name);
        }
        let machines = view.machines.as_ref().map_or(0, Vec::len);
        eprint!(
            "Destroy {} ({id}) and its {machines} machine(s) on {}? Type its name to confirm: ",
            view.name, view.provider
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).context("failed to read the answer")?;
        if answer.trim() != view.name {
            eprintln!("not destroyed");
            return Ok(Outcome::Failure);
        }
    }
    let response = cx.api.destroy(id).await?;
    cx.progress.say(format!("==> destroying {} ({id})", view.name));
    queued(cx, id, &response, detach).await
}

/// Prints what a dry run would do.
fn print_plan(cx: &Ctx, plan: &wire::deployments::PlanSummary) -> anyhow::Result<Outcome> {
    match cx.output {
        Output::Json => output::json(plan)?,
        Output::Table => {
            print!(
                "{}",
                table(
                    ["ACTION", "RESOURCE"],
                    plan.resources.iter().map(|r| [r.action.clone(), r.address.clone()])
                )
            );
            println!(
                "Plan: {} to add, {} to change, {} to destroy.",
                plan.add, plan.change, plan.destroy
            );
        }
    }
    Ok(Outcome::Success)
}

/// Changes a deployment's variables (`KEY=VALUE`, `KEY=null` to reset, or a machine count) and
/// follows the update to the machines table.
pub(crate) async fn update(
    cx: &Ctx,
    reference: &str,
    vars: &[String],
    count: Option<u32>,
    dry_run: bool,
    detach: bool,
) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let view = cx.api.deployment(id).await?;
    let provider = find_provider(cx.api.providers().await?.providers, &view.provider)?;
    let (resets, given): (Vec<&String>, Vec<&String>) =
        vars.iter().partition(|var| var.split_once('=').is_some_and(|(_, v)| v.trim() == "null"));
    let given: Vec<String> = given.into_iter().cloned().collect();
    let mut variables = vars::collect(&provider, &[] as &[&str], count, &given)?;
    for reset in resets {
        let (name, _) = reset.split_once('=').unwrap_or_default();
        variables.insert(name.trim().to_owned(), serde_json::Value::Null);
    }
    if dry_run {
        cx.progress.say(format!("==> planning the change of {} (nothing will change)", view.name));
    }
    match cx.api.update(id, variables, dry_run).await? {
        Updated::Plan(plan) => print_plan(cx, &plan),
        Updated::Unchanged => {
            cx.progress.say(format!("==> {} already has these values; nothing to do", view.name));
            Ok(Outcome::Success)
        }
        Updated::Queued(response) => {
            cx.progress.say(format!("==> updating {} ({id})", view.name));
            queued(cx, id, &response, detach).await
        }
    }
}

/// Replaces one machine of a deployment and follows the run to the machines table.
pub(crate) async fn replace(
    cx: &Ctx,
    reference: &str,
    machine: &str,
    detach: bool,
) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let response = cx.api.replace(id, machine).await?;
    cx.progress.say(format!("==> replacing {machine} of {} ({id})", response.deployment.name));
    queued(cx, id, &response, detach).await
}

/// Queues a failed deployment's last apply again and follows it to the machines table.
pub(crate) async fn retry(cx: &Ctx, reference: &str, detach: bool) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let response = cx.api.retry(id).await?;
    cx.progress.say(format!("==> retrying the apply of {} ({id})", response.deployment.name));
    queued(cx, id, &response, detach).await
}

/// A run was queued: prints it and returns (`detach`), or follows it to its end.
async fn queued(
    cx: &Ctx,
    id: Uuid,
    response: &ProvisionResponse,
    detach: bool,
) -> anyhow::Result<Outcome> {
    if detach {
        match cx.output {
            Output::Json => output::json(response)?,
            Output::Table => println!("{id}"),
        }
        return Ok(Outcome::Success);
    }
    follow_to_end(cx, id, response.run.id).await
}
