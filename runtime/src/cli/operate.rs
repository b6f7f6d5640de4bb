//! The CLI of the people on call: `wharf status`, `wharf dlq ...` and
//! `wharf processors ...`, each with `--json` and human tables. They read
//! the admin API's answers as its own types (`wharf::api`).

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf::admin::client::AdminClient;
use wharf::api::{
    DryRun, JobState, JobView, MessageView, NEXT_CURSOR, ProcessorView, Selection, StoreView,
    TenantView,
};

use super::{AdminArgs, block_on};

/// The filters of `wharf dlq list|replay|purge`.
#[derive(clap::Args, Debug, Default)]
pub struct FilterArgs {
    /// From this time on: RFC 3339, or a duration ago (`30m`).
    #[arg(long)]
    since: Option<String>,
    /// Before this time: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Statuses, classes or kinds, comma-separated: `503`, `5xx`, `transport`, `handler`.
    #[arg(long)]
    status: Option<String>,
    /// Only what this processor dead-lettered.
    #[arg(long)]
    processor: Option<String>,
}

impl FilterArgs {
    fn query(&self) -> String {
        let mut q = String::new();
        for (key, value) in [
            ("since", &self.since),
            ("until", &self.until),
            ("status", &self.status),
            ("processor", &self.processor),
        ] {
            if let Some(v) = value {
                q.push_str(&format!("&{key}={}", encode(v)));
            }
        }
        q
    }
}

/// Percent-encodes a query value (RFC 3339 times carry `+` and `:`).
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqAction {
    /// List a store's messages, oldest first, with why each failed.
    List {
        store: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many (1..=1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Start after this cursor (printed at the end of a full page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one message: headers, body and failure trail.
    Show { store: String, id: String },
    /// Move messages back to the store they came from (or --to-store).
    Replay {
        store: String,
        #[command(flatten)]
        select: SelectArgs,
        /// Where they go (default: the store each was dead-lettered from).
        #[arg(long)]
        to_store: Option<String>,
    },
    /// Remove messages for good.
    Purge {
        store: String,
        #[command(flatten)]
        select: SelectArgs,
    },
}

/// Which messages a replay or purge takes, and how it asks.
#[derive(clap::Args, Debug)]
pub struct SelectArgs {
    /// These message ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    ids: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Every message in the store.
    #[arg(long)]
    all: bool,
    /// Only say how many would be touched.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

impl SelectArgs {
    fn selection(&self, to_store: Option<String>) -> Selection {
        Selection {
            ids: (!self.ids.is_empty()).then(|| self.ids.clone()),
            since: self.filter.since.clone(),
            until: self.filter.until.clone(),
            status: self.filter.status.clone(),
            processor: self.filter.processor.clone(),
            all: self.all,
            to_store,
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum ProcessorAction {
    /// Start a deactivated processor again (or only one blocked key).
    Activate {
        name: String,
        /// Only this blocked key (`--key ''`: the messages without one).
        #[arg(long)]
        key: Option<String>,
    },
    /// Stop a processor after the attempt in flight; its messages stay.
    Deactivate { name: String },
}

/// One admin call, its answer read as `T`, and the answer's headers.
async fn call<T: DeserializeOwned>(
    client: &AdminClient,
    method: Method,
    path: &str,
    body: Option<&Selection>,
) -> anyhow::Result<(T, http::HeaderMap)> {
    let body = body
        .map(|b| serde_json::to_vec(b).map(|bytes| ("application/json", bytes)))
        .transpose()?;
    let (_, headers, value) = client.send_with_headers(method, path, body).await?;
    let typed = serde_json::from_value(value)
        .with_context(|| format!("the admin API answered {path} with something unexpected"))?;
    Ok((typed, headers))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `wharf dlq list --json`: a page and the cursor of the next.
#[derive(Serialize)]
struct MessagePage {
    messages: Vec<MessageView>,
    next_cursor: Option<String>,
}

/// A one-line summary of why a message failed.
fn why(m: &MessageView) -> String {
    match &m.failure {
        None => "-".to_owned(),
        Some(f) => {
            let what = f
                .last_status
                .map_or_else(|| f.last_error.clone(), |s| s.to_string());
            format!("{what} after {} attempt(s) by {}", f.attempts, f.processor)
        }
    }
}

/// Cuts `text` to `max` characters for a table cell.
fn cell(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

pub fn dlq(action: &DlqAction, json: bool, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.client()?;
    match action {
        DlqAction::List {
            store,
            filter,
            limit,
            cursor,
        } => {
            let mut path = format!("/stores/{store}/messages?limit={limit}{}", filter.query());
            if let Some(c) = cursor {
                path.push_str(&format!("&cursor={}", encode(c)));
            }
            let path = admin.scoped(&path);
            let (messages, headers): (Vec<MessageView>, _) =
                block_on(call(&client, Method::GET, &path, None))?;
            let next = headers
                .get(NEXT_CURSOR)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if json {
                return print_json(&MessagePage {
                    messages,
                    next_cursor: next,
                });
            }
            if messages.is_empty() {
                println!("no messages in {store} match");
                return Ok(());
            }
            println!(
                "{:<36}  {:<24}  {:<24}  WHY",
                "ID", "DEAD-LETTERED", "RECEIVED"
            );
            for m in &messages {
                let dead = m
                    .failure
                    .as_ref()
                    .and_then(|f| f.dead_lettered_at.clone())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<36}  {:<24}  {:<24}  {}",
                    m.id,
                    dead,
                    m.received_at.as_deref().unwrap_or("-"),
                    cell(&why(m), 80)
                );
            }
            if let Some(next) = next {
                println!("more: --cursor {next}");
            }
            Ok(())
        }
        DlqAction::Show { store, id } => {
            let path = admin.scoped(&format!("/stores/{store}/messages/{}", encode(id)));
            let (m, _): (MessageView, _) = block_on(call(&client, Method::GET, &path, None))?;
            if json {
                return print_json(&m);
            }
            println!("{} {} (id {})", m.method, m.path, m.id);
            println!("received {}", m.received_at.as_deref().unwrap_or("-"));
            for (name, value) in &m.headers {
                println!("  {name}: {value}");
            }
            let kind = if m.body_base64 { " (base64)" } else { "" };
            println!("body{kind}:\n{}", m.body);
            if let Some(f) = &m.failure {
                println!(
                    "dead-lettered {} by {} (from store {}) after {} attempt(s) to {}",
                    f.dead_lettered_at.as_deref().unwrap_or("-"),
                    f.processor,
                    f.store,
                    f.attempts,
                    f.endpoint
                );
                println!("last failure: {}", f.last_error);
                if let Some(body) = &f.last_response_body {
                    let more = if f.last_response_truncated {
                        " (truncated)"
                    } else {
                        ""
                    };
                    println!("last response body{more}: {body}");
                }
                for a in &f.attempt_log {
                    println!(
                        "  {}  {}",
                        a.at.as_deref().unwrap_or("-"),
                        cell(&a.error, 100)
                    );
                }
            }
            Ok(())
        }
        DlqAction::Replay {
            store,
            select,
            to_store,
        } => {
            let selection = select.selection(to_store.clone());
            let path = admin.scoped(&format!("/stores/{store}/replay"));
            move_or_purge(&client, &path, &selection, select, json, "replay", store)
        }
        DlqAction::Purge { store, select } => {
            let selection = select.selection(None);
            let path = admin.scoped(&format!("/stores/{store}/messages"));
            move_or_purge(&client, &path, &selection, select, json, "purge", store)
        }
    }
}

/// Asks on the terminal; false unless the answer is yes.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("{question}: not asked, stdin is not a terminal; give --yes to go ahead");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn move_or_purge(
    client: &AdminClient,
    path: &str,
    selection: &Selection,
    select: &SelectArgs,
    json: bool,
    verb: &str,
    store: &str,
) -> anyhow::Result<()> {
    let method = if verb == "replay" {
        Method::POST
    } else {
        Method::DELETE
    };
    let dry_path = format!("{path}?dry_run=true");
    let (dry, _): (DryRun, _) = block_on(call(client, method.clone(), &dry_path, Some(selection)))?;
    if select.dry_run {
        if json {
            return print_json(&dry);
        }
        println!("{verb} would touch {} message(s) of {store}", dry.matched);
        for (target, n) in &dry.targets {
            println!("  {n} to {target}");
        }
        if dry.in_flight > 0 {
            println!("  {} in flight now would be left", dry.in_flight);
        }
        return Ok(());
    }
    if dry.matched == 0 {
        if json {
            return print_json(&dry);
        }
        println!("no messages of {store} match; nothing to {verb}");
        return Ok(());
    }
    if !select.yes {
        let whither = if dry.targets.is_empty() {
            String::new()
        } else {
            let targets: Vec<String> = dry.targets.keys().cloned().collect();
            format!(" to {}", targets.join(", "))
        };
        if !confirm(&format!(
            "{verb} {} message(s) of {store}{whither}?",
            dry.matched
        ))? {
            println!("nothing done");
            return Ok(());
        }
    }
    let (job, _): (JobView, _) = block_on(call(client, method, path, Some(selection)))?;
    let job = block_on(follow(client, path, job, !json))?;
    if json {
        return print_json(&job);
    }
    let moved = if verb == "replay" { "moved" } else { "removed" };
    println!(
        "{verb} {:?}: {} of {} {moved}{}{}",
        job.state,
        job.done,
        job.total.unwrap_or(0),
        if job.in_flight > 0 {
            format!(", {} in flight left", job.in_flight)
        } else {
            String::new()
        },
        job.error
            .as_deref()
            .map(|e| format!("; {e}"))
            .unwrap_or_default()
    );
    if job.state != JobState::Succeeded {
        bail!("the {verb} did not finish: {:?}", job.state);
    }
    Ok(())
}

/// Polls a job until it ends, with a progress bar (rate and ETA) on a terminal.
async fn follow(
    client: &AdminClient,
    started_at: &str,
    mut job: JobView,
    show: bool,
) -> anyhow::Result<JobView> {
    // `/stores/{s}/replay` and `/tenants/{t}/stores/...`: the jobs are beside `stores`.
    let base = started_at
        .split("/stores/")
        .next()
        .unwrap_or_default()
        .to_owned();
    let path = format!("{base}/jobs/{}", job.id);
    let bar = if show && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(job.total.unwrap_or(0))
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} ETA {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while job.state == JobState::Running {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (latest, _): (JobView, _) = call(client, Method::GET, &path, None).await?;
        job = latest;
        if let Some(total) = job.total {
            bar.set_length(total);
        }
        bar.set_position(job.done);
    }
    bar.finish_and_clear();
    Ok(job)
}

pub fn processors(action: &ProcessorAction, json: bool, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.client()?;
    let (name, path) = match action {
        ProcessorAction::Activate { name, key } => {
            let key = key
                .as_deref()
                .map(|k| format!("?key={}", encode(k)))
                .unwrap_or_default();
            (name, format!("/processors/{name}/activate{key}"))
        }
        ProcessorAction::Deactivate { name } => (name, format!("/processors/{name}/deactivate")),
    };
    let (view, _): (ProcessorView, _) =
        block_on(call(&client, Method::POST, &admin.scoped(&path), None))?;
    if json {
        return print_json(&view);
    }
    println!("{name}: {}", view.state);
    Ok(())
}

/// `wharf status --json`: each tenant the token sees.
#[derive(Serialize)]
struct Status {
    tenants: Vec<TenantStatus>,
}

#[derive(Serialize)]
struct TenantStatus {
    tenant: String,
    stores: Vec<StoreView>,
    processors: Vec<ProcessorStatus>,
}

/// A processor in `wharf status --json`: its view and the messages it
/// forwarded in the second between two samples.
#[derive(Serialize)]
struct ProcessorStatus {
    #[serde(flatten)]
    view: ProcessorView,
    forward_rate: u64,
}

/// `wharf status`: for each tenant the token sees (or `--tenant`'s), its
/// stores with depth and its processors with state, last failure and
/// forward rate (two samples a second apart).
pub fn status(json: bool, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.client()?;
    let tenants = block_on(async {
        let names: Vec<String> = match &admin.tenant {
            Some(one) => vec![one.clone()],
            None => {
                let (all, _): (Vec<TenantView>, _) =
                    call(&client, Method::GET, "/tenants", None).await?;
                all.into_iter().map(|t| t.name).collect()
            }
        };
        // Every tenant's paths under /tenants/{t}: a tenant token reaches
        // its own there, the default tenant's included.
        let base = |t: &str| format!("/tenants/{t}");
        let mut sampled = Vec::with_capacity(names.len());
        for name in names {
            let (stores, _): (Vec<StoreView>, _) = call(
                &client,
                Method::GET,
                &format!("{}/stores", base(&name)),
                None,
            )
            .await?;
            let (before, _): (Vec<ProcessorView>, _) = call(
                &client,
                Method::GET,
                &format!("{}/processors", base(&name)),
                None,
            )
            .await?;
            sampled.push((name, stores, before));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut tenants = Vec::with_capacity(sampled.len());
        for (tenant, stores, before) in sampled {
            let (after, _): (Vec<ProcessorView>, _) = call(
                &client,
                Method::GET,
                &format!("{}/processors", base(&tenant)),
                None,
            )
            .await?;
            let processors = after
                .into_iter()
                .map(|view| {
                    let was = before
                        .iter()
                        .find(|b| b.name == view.name)
                        .map_or(0, |b| b.forwarded);
                    let forward_rate = view.forwarded.saturating_sub(was);
                    ProcessorStatus { view, forward_rate }
                })
                .collect();
            tenants.push(TenantStatus {
                tenant,
                stores,
                processors,
            });
        }
        anyhow::Ok(tenants)
    })?;
    if json {
        return print_json(&Status { tenants });
    }
    for (n, t) in tenants.iter().enumerate() {
        if n > 0 {
            println!();
        }
        print_tenant(t);
    }
    Ok(())
}

fn print_tenant(t: &TenantStatus) {
    println!("tenant {}", t.tenant);
    println!(
        "\n{:<24} {:<9} {:>10}  CONNECTED",
        "STORE", "BACKEND", "DEPTH"
    );
    for s in &t.stores {
        println!(
            "{:<24} {:<9} {:>10}  {}",
            cell(&s.name, 24),
            s.backend.as_deref().unwrap_or("?"),
            s.depth.map_or_else(|| "-".to_owned(), |d| d.to_string()),
            if s.connected == Some(true) {
                "yes"
            } else {
                "no"
            }
        );
    }
    println!(
        "\n{:<24} {:<12} {:>8} {:>10} {:>8}  LAST FAILURE",
        "PROCESSOR", "STATE", "MSG/S", "FORWARDED", "DEAD"
    );
    for p in &t.processors {
        let v = &p.view;
        let failure = v
            .deactivated_reason
            .as_deref()
            .or(v.last_failure.as_deref())
            .unwrap_or("-");
        println!(
            "{:<24} {:<12} {:>8} {:>10} {:>8}  {}",
            cell(&v.name, 24),
            v.state,
            p.forward_rate,
            v.forwarded,
            v.dead_lettered,
            cell(failure, 80)
        );
    }
}
