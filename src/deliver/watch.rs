//! The watcher: the one loop that repeats a delivery (`deliver --watch`
//! for the host's consumers, `render --watch` for one folder), and what it
//! owes consumers after a change: restarts, reloads, on_change commands.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use super::cache::BootCache;
use super::once::{deliver_set, origin, part, union};
use super::plan::{Consumer, DeliverError, DeliveryPlan, SocketConsumer};
use super::render::{self, RenderOptions, RenderReport};
use super::socket::{self, Held};
use crate::client::Client;

/// Checks that every restart and reload target exists, before anything is
/// delivered: a typo is reported at start, not at the first change.
pub async fn check_units(plan: &DeliveryPlan, consumers: &[Consumer]) -> Result<(), DeliverError> {
    let targets = consumers.iter().map(|c| {
        (
            &c.name,
            c.restart_units.iter().chain(&c.reload_units).collect(),
        )
    });
    check_targets(plan, targets).await
}

/// [`check_units`] for socket consumers, whose targets are restarts only.
async fn check_socket_units(
    plan: &DeliveryPlan,
    sockets: &[SocketConsumer],
) -> Result<(), DeliverError> {
    let targets = sockets
        .iter()
        .map(|s| (&s.name, s.restart_units.iter().collect()));
    check_targets(plan, targets).await
}

async fn check_targets(
    plan: &DeliveryPlan,
    targets: impl Iterator<Item = (&String, Vec<&String>)>,
) -> Result<(), DeliverError> {
    for (consumer, units) in targets {
        for unit in units {
            let state = unit_load_state(plan, unit).await;
            if state != "loaded" {
                return Err(DeliverError::NoSuchUnit {
                    consumer: consumer.clone(),
                    unit: unit.clone(),
                    state,
                });
            }
        }
    }
    Ok(())
}

/// systemd's LoadState of `unit` ("loaded", "not-found", …), or why it
/// could not be asked.
async fn unit_load_state(plan: &DeliveryPlan, unit: &str) -> String {
    let out = plan
        .systemctl_command()
        .args(["show", "--property=LoadState", "--value", "--", unit])
        .output()
        .await;
    let state = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        Err(e) => format!("cannot run {}: {e}", plan.systemctl.display()),
    };
    if state.is_empty() {
        "no answer".into()
    } else {
        state
    }
}

/// What the watcher knows, written to the plan's status file after every
/// round (JSON) and summarised in systemd's STATUS=.
#[derive(Debug, Default, serde::Serialize)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct WatchStatus {
    pub rounds: u64,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub last_success_unix: Option<u64>,
    /// The last failure (a fetch, a delivery, or an action), cleared by a
    /// success.
    pub last_error: Option<String>,
    /// Restarts, reloads and on_change commands owed for changes already
    /// delivered, whose last try failed: tried again every round until
    /// they succeed (a change is never acted on silently less than once).
    pub pending: Pending,
    pub consumers: BTreeMap<String, ConsumerStatus>,
}

/// Actions owed for changes already delivered.
#[derive(Debug, Default, serde::Serialize)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct Pending {
    pub restart: BTreeSet<String>,
    pub reload: BTreeSet<String>,
    pub commands: Vec<Vec<String>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.restart.is_empty() && self.reload.is_empty() && self.commands.is_empty()
    }
}

#[derive(Debug, Default, serde::Serialize)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct ConsumerStatus {
    /// "server", "cache <fetched at>", or "not delivered" (its service is
    /// not running).
    pub origin: String,
    pub last_change: Option<String>,
    /// Names only.
    pub last_changed_files: Vec<String>,
    pub changes: u64,
}

/// The one watch loop: runs `round` (first at once when `first_now`), then
/// again every `interval` (±10% when `jitter`, so a fleet of hosts started
/// together spreads its requests), until SIGTERM or SIGINT. Both ways of
/// stopping return `Ok`, even in the middle of a wait: a watch stopped by
/// systemd has done nothing wrong. A round that is running finishes first,
/// so a stop never leaves a delivery half done.
pub async fn repeat(
    interval: Duration,
    jitter: bool,
    first_now: bool,
    mut round: impl AsyncFnMut(),
) -> Result<(), DeliverError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DeliverError::Signal)?;
    if first_now {
        round().await;
    }
    loop {
        let wait = if jitter { jittered(interval) } else { interval };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        round().await;
    }
}

/// The watcher of a delivery plan: every `interval` (±10% jitter) one
/// request for every delivered consumer and every socket consumer, then
/// one restart/reload/command per change. Serves the socket consumers'
/// credentials from memory meanwhile (`socket`). Tells systemd it is ready
/// after the first round. Returns on SIGTERM or SIGINT.
pub async fn watch(
    client: &Client,
    plan: &DeliveryPlan,
    consumers: &[Consumer],
    sockets: &[SocketConsumer],
    interval: Duration,
) -> Result<(), DeliverError> {
    check_units(plan, consumers).await?;
    check_socket_units(plan, sockets).await?;
    let listener = match (&plan.credential_socket, sockets.is_empty()) {
        (Some(path), false) => Some(socket::listen(path)?),
        _ => None,
    };
    super::prune(plan);
    let held = Held::default();
    let rounds = watch_rounds(client, plan, consumers, sockets, &held, interval);
    match listener {
        None => rounds.await,
        Some(listener) => tokio::select! {
            done = rounds => done,
            () = socket::serve(listener, sockets, &held, client) => Ok(()),
        },
    }
}

async fn watch_rounds(
    client: &Client,
    plan: &DeliveryPlan,
    consumers: &[Consumer],
    sockets: &[SocketConsumer],
    held: &Held,
    interval: Duration,
) -> Result<(), DeliverError> {
    let cache = plan.cache();
    let mut status = WatchStatus::default();
    // When each consumer's cached copy was last rewritten: a copy is
    // renewed at least every quarter of its max age, so a boot soon after
    // a long quiet spell still finds a fresh one.
    let mut cache_written: BTreeMap<String, SystemTime> = BTreeMap::new();
    let mut first = true;
    repeat(interval, true, true, async || {
        round(
            client,
            plan,
            consumers,
            (sockets, held),
            cache.as_ref(),
            &mut status,
            &mut cache_written,
        )
        .await;
        publish(plan, &status, interval);
        if first {
            crate::systemd::notify(crate::systemd::NotifyState::Ready);
            first = false;
        }
    })
    .await
}

/// `render`: fetches `names` and renders them into `options.dir` once.
pub async fn render_folder(
    client: &Client,
    names: &[String],
    options: &RenderOptions,
) -> Result<RenderReport, DeliverError> {
    let secrets = client.fetch(names).await?;
    let report = render::render(&secrets, options).map_err(DeliverError::Folder)?;
    tracing::info!(
        "{}: {} written, {} unchanged, {} removed",
        options.dir.display(),
        report.written.len(),
        report.unchanged.len(),
        report.removed.len()
    );
    Ok(report)
}

/// `render --watch`: renders again every `interval` (exactly: one folder
/// on one host has no fleet to spread), and runs `on_change`, a shell
/// command line, once per change. A failed fetch or render keeps the
/// files as they are and is tried again at the next interval. Returns on
/// SIGTERM or SIGINT.
pub async fn watch_folder(
    client: &Client,
    names: &[String],
    options: &RenderOptions,
    interval: Duration,
    on_change: Option<&str>,
) -> Result<(), DeliverError> {
    repeat(interval, false, false, async || {
        match render_folder(client, names, options).await {
            Ok(report) if report.changed() => {
                if let Some(cmd) = on_change {
                    let argv = ["/bin/sh".to_owned(), "-c".to_owned(), cmd.to_owned()];
                    if let Err(e) = run_command(&argv).await {
                        tracing::warn!("--on-change: {e}");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("{e}; keeping the files as they are and retrying in {interval:?}")
            }
        }
    })
    .await
}

fn jittered(interval: Duration) -> Duration {
    let r = crate::crypto::random_bytes::<4>()
        .map(u32::from_le_bytes)
        .unwrap_or(u32::MAX / 2);
    let factor = 0.9 + 0.2 * (f64::from(r) / f64::from(u32::MAX));
    interval.mul_f64(factor)
}

async fn round(
    client: &Client,
    plan: &DeliveryPlan,
    consumers: &[Consumer],
    (sockets, held): (&[SocketConsumer], &Held),
    cache: Option<&BootCache>,
    status: &mut WatchStatus,
    cache_written: &mut BTreeMap<String, SystemTime>,
) {
    let now = SystemTime::now();
    status.rounds += 1;
    status.last_attempt = Some(crate::clock::timestamp(now));
    let delivered: Vec<&Consumer> = consumers
        .iter()
        .filter(|c| c.options.dir.join(render::MANIFEST).exists())
        .collect();
    for c in consumers {
        let entry = status.consumers.entry(c.name.clone()).or_default();
        entry.origin = origin(c)
            .filter(|_| delivered.iter().any(|d| d.name == c.name))
            .unwrap_or_else(|| "not delivered".into());
    }
    for s in sockets {
        status.consumers.entry(s.name.clone()).or_default().origin = "credential socket".into();
    }
    if delivered.is_empty() && sockets.is_empty() {
        status.last_error = None;
        return;
    }
    let names = if delivered.is_empty() {
        BTreeSet::new()
    } else {
        union(&delivered).into_iter().collect::<BTreeSet<String>>()
    };
    // An empty union of file consumers asks for every granted secret,
    // which covers the socket consumers too.
    let names: Vec<String> = if !delivered.is_empty() && names.is_empty() {
        Vec::new()
    } else {
        names
            .into_iter()
            .chain(sockets.iter().flat_map(|s| s.secrets.iter().cloned()))
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect()
    };
    let all = match client.fetch(&names).await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(
                "{e}; keeping every consumer's files as they are and trying again at the next round"
            );
            status.last_error = Some(e.to_string());
            // Owed actions do not wait for the server.
            if let Some(e) = act(plan, &mut status.pending).await {
                status.last_error = Some(e);
            }
            return;
        }
    };
    let mut failed = None;
    for c in delivered {
        let due = c.cache_max_age.is_some_and(|max| {
            cache_written
                .get(&c.name)
                .is_none_or(|t| now.duration_since(*t).unwrap_or_default() >= max / 4)
        });
        let result = match part(c, &all) {
            // The folder may have gone since the check above (its
            // consumer stopping): then nothing is written.
            Ok(set) => deliver_set(c, &set, cache, due, true).await,
            Err(e) => Err(e),
        };
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}; its files are as they were");
                failed = Some(e.to_string());
                continue;
            }
        };
        if due || report.changed() {
            cache_written.insert(c.name.clone(), now);
        }
        let entry = status.consumers.entry(c.name.clone()).or_default();
        entry.origin = "server".into();
        if !report.changed() {
            continue;
        }
        let mut files = report.written.clone();
        files.extend(report.removed.iter().map(|f| format!("{f} (removed)")));
        tracing::info!("consumer {}: changed: {}", c.name, files.join(", "));
        entry.changes += 1;
        entry.last_change = Some(crate::clock::timestamp(now));
        entry.last_changed_files = files;
        let pending = &mut status.pending;
        pending.restart.extend(c.restart_units.iter().cloned());
        pending.reload.extend(c.reload_units.iter().cloned());
        if let Some(cmd) = &c.on_change
            && !pending.commands.contains(cmd)
        {
            pending.commands.push(cmd.clone());
        }
    }
    for s in sockets {
        let set = match all.select(&s.secrets) {
            Ok(set) => set,
            Err(name) => {
                let e = DeliverError::Missing {
                    consumer: s.name.clone(),
                    name,
                };
                tracing::error!(
                    "{e}; its unit keeps what it read, and the socket keeps the values it held"
                );
                failed = Some(e.to_string());
                continue;
            }
        };
        if !held.replace(&s.name, set) {
            continue;
        }
        tracing::info!("consumer {} (credential socket): changed", s.name);
        let entry = status.consumers.entry(s.name.clone()).or_default();
        entry.changes += 1;
        entry.last_change = Some(crate::clock::timestamp(now));
        let pending = &mut status.pending;
        pending.restart.extend(s.restart_units.iter().cloned());
        if let Some(cmd) = &s.on_change
            && !pending.commands.contains(cmd)
        {
            pending.commands.push(cmd.clone());
        }
    }
    if let Some(e) = act(plan, &mut status.pending).await {
        failed = Some(e);
    }
    status.last_error = failed;
    if status.last_error.is_none() {
        status.last_success = Some(crate::clock::timestamp(now));
        status.last_success_unix = now
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
    }
}

/// Runs what is owed: one `try-restart` for every unit to restart, one
/// `try-reload-or-restart` for the rest (a unit both restarted and reloaded
/// is only restarted), each distinct on_change command once. What fails
/// stays owed; the error says what and that it is tried again.
async fn act(plan: &DeliveryPlan, pending: &mut Pending) -> Option<String> {
    if pending.is_empty() {
        return None;
    }
    let mut errors = Vec::new();
    let restart: Vec<String> = pending.restart.iter().cloned().collect();
    let reload: Vec<String> = pending
        .reload
        .difference(&pending.restart)
        .cloned()
        .collect();
    if !restart.is_empty() {
        match systemctl(plan, "try-restart", &restart).await {
            Ok(()) => pending.restart.clear(),
            Err(e) => errors.push(e),
        }
    }
    if !reload.is_empty() {
        match systemctl(plan, "try-reload-or-restart", &reload).await {
            Ok(()) => pending.reload.clear(),
            Err(e) => errors.push(e),
        }
    } else if pending.restart.is_empty() {
        pending.reload.clear();
    }
    let mut still = Vec::new();
    for cmd in std::mem::take(&mut pending.commands) {
        if let Err(e) = run_command(&cmd).await {
            errors.push(e);
            still.push(cmd);
        }
    }
    pending.commands = still;
    if errors.is_empty() {
        return None;
    }
    let text = format!("{}; tried again at the next round", errors.join("; "));
    tracing::warn!("{text}");
    Some(text)
}

async fn systemctl(plan: &DeliveryPlan, verb: &str, units: &[String]) -> Result<(), String> {
    tracing::info!("systemctl {verb} {}", units.join(" "));
    match plan
        .systemctl_command()
        .arg(verb)
        .arg("--")
        .args(units)
        .status()
        .await
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "systemctl {verb} {} exited with {s}",
            units.join(" ")
        )),
        Err(e) => Err(format!("cannot run {}: {e}", plan.systemctl.display())),
    }
}

/// Runs `cmd` (a program and its arguments) once, with no input.
async fn run_command(cmd: &[String]) -> Result<(), String> {
    let Some((program, args)) = cmd.split_first() else {
        return Ok(());
    };
    match tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .status()
        .await
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("on_change command {program} exited with {s}")),
        Err(e) => Err(format!("cannot run on_change command {program}: {e}")),
    }
}

/// Writes the status file (atomically) and tells systemd.
fn publish(plan: &DeliveryPlan, status: &WatchStatus, interval: Duration) {
    let summary = format!(
        "last success {}; {} round(s){}",
        status.last_success.as_deref().unwrap_or("never"),
        status.rounds,
        status
            .consumers
            .iter()
            .filter(|(_, c)| c.origin.starts_with("cache"))
            .map(|(n, c)| format!("; {n} on the boot {}", c.origin))
            .collect::<String>()
    );
    crate::systemd::notify(crate::systemd::NotifyState::Status(&summary));
    let Some(path) = &plan.status_file else {
        return;
    };
    let Ok(json) = serde_json::to_vec_pretty(status) else {
        return;
    };
    // Names, times and counts only: readable by monitoring.
    if let Err(e) = crate::fsutil::replace(path, &json, crate::fsutil::Access::mode(0o644)) {
        tracing::warn!("cannot write the status file: {e}");
    }
    if let Some(path) = &plan.metrics_file {
        let text = metrics_text(status, interval);
        if let Err(e) =
            crate::fsutil::replace(path, text.as_bytes(), crate::fsutil::Access::mode(0o644))
        {
            tracing::warn!("cannot write the metrics file: {e}");
        }
    }
}

/// The watcher's state in Prometheus' text format, for node_exporter's
/// textfile collector: the watcher serves no HTTP, and an alert on "no
/// successful round for three intervals" needs the time of the last one.
/// Consumer names are the plan's, never a secret's.
fn metrics_text(status: &WatchStatus, interval: Duration) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "locket_watch_rounds_total",
        "counter",
        "Rounds the watcher made since it started",
        &one(status.rounds.to_string()),
    );
    metric(
        "locket_watch_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last round that delivered every consumer (0: none yet)",
        &one(status.last_success_unix.unwrap_or(0).to_string()),
    );
    metric(
        "locket_watch_interval_seconds",
        "gauge",
        "The watcher's interval between rounds",
        &one(interval.as_secs().to_string()),
    );
    let pending =
        status.pending.restart.len() + status.pending.reload.len() + status.pending.commands.len();
    metric(
        "locket_watch_pending_actions",
        "gauge",
        "Restarts, reloads and commands owed for delivered changes whose last try failed",
        &one(pending.to_string()),
    );
    let on_cache: Vec<(String, String)> = status
        .consumers
        .iter()
        .map(|(name, c)| {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            (
                format!("{{consumer=\"{escaped}\"}}"),
                u8::from(c.origin.starts_with("cache")).to_string(),
            )
        })
        .collect();
    metric(
        "locket_watch_consumer_on_cache",
        "gauge",
        "1 while the consumer's files came from the boot cache, not a server",
        &on_cache,
    );
    out
}
