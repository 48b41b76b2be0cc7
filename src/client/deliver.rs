//! Delivery to consuming services: the plan the NixOS module writes
//! (`/etc/locket/delivery.toml`), one round of fetching and rendering, and
//! the host's one watcher that repeats the round and restarts, reloads or
//! notifies consumers whose values changed.
//!
//! Why one watcher per host and one request per round: the server sees one
//! signed request per host per interval however many consumers the host
//! runs, and all consumers move to a new set at the same moment. Why
//! compare content: a consumer is restarted only when a value it reads
//! changed (`RenderReport::changed`), at most once per round however many
//! of its secrets changed, and a unit that several consumers name is
//! restarted once, so changes that arrive together cause one restart.
//!
//! The watcher refreshes only consumers whose folder is delivered (it has a
//! manifest): a stopped consumer's fetch unit removed its folder, and the
//! watcher must not put secrets back on disk for a service that is not
//! running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::cache::{self, BootCache, CacheError};
use super::render::{self, RenderError, RenderOptions, RenderReport, TemplateFile};
use super::template::Template;
use super::{Client, ClientError};
use crate::secret::SecretValue;

/// The delivery plan file, as the module writes it. Documented in the
/// README ("Delivery plan").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Where the watcher writes its status (JSON).
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    #[serde(default = "default_systemctl")]
    pub systemctl: PathBuf,
    #[serde(default = "default_systemd_creds")]
    pub systemd_creds: PathBuf,
    /// Folder of the boot cache; consumers opt in with `cache_max_age`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    #[serde(default = "default_cache_key")]
    pub cache_key: String,
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerPlan>,
}

fn default_systemctl() -> PathBuf {
    "systemctl".into()
}
fn default_systemd_creds() -> PathBuf {
    "systemd-creds".into()
}
fn default_cache_key() -> String {
    "auto".into()
}
fn default_mode() -> String {
    "0400".into()
}

/// One consumer of the plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerPlan {
    pub dir: PathBuf,
    /// Empty: every secret the client may read.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub env_file: Option<PathBuf>,
    #[serde(default)]
    pub restart_units: Vec<String>,
    #[serde(default)]
    pub reload_units: Vec<String>,
    /// A program and its arguments, run after a change.
    #[serde(default)]
    pub on_change: Option<Vec<String>>,
    /// Keep an encrypted copy for boots without a server, at most this old.
    #[serde(default, with = "humantime_serde")]
    pub cache_max_age: Option<Duration>,
    #[serde(default)]
    pub templates: BTreeMap<String, TemplatePlan>,
}

/// A template of a consumer: its text (no secret in it) and file mode.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatePlan {
    pub content: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

/// A delivery problem. Messages name the consumer, the file or the unit,
/// never a value.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("cannot read the delivery plan {path}: {detail}")]
    Plan { path: PathBuf, detail: String },
    #[error("delivery plan: consumer {consumer}: {detail}")]
    Consumer { consumer: String, detail: String },
    #[error("no consumer {0:?} in the delivery plan; it lists: {1}")]
    UnknownConsumer(String, String),
    #[error(
        "consumer {consumer}: restart/reload target {unit} does not exist (systemctl: {state}); fix restartUnits/reloadUnits. Nothing was delivered or restarted"
    )]
    NoSuchUnit {
        consumer: String,
        unit: String,
        state: String,
    },
    #[error("consumer {consumer}: {source}")]
    Render {
        consumer: String,
        source: RenderError,
    },
    #[error("consumer {consumer}: {fetch}; and no cached copy can stand in: {cache}")]
    NoCache {
        consumer: String,
        fetch: String,
        cache: Box<CacheError>,
    },
    #[error(transparent)]
    Fetch(#[from] ClientError),
    #[error("consumer {consumer}: secret {name:?} was not in the server's answer")]
    Missing { consumer: String, name: String },
}

impl DeliverError {
    /// The client's exit codes: 2 for a plan that cannot work, the
    /// fetch's own code for a failed fetch, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Plan { .. }
            | Self::Consumer { .. }
            | Self::UnknownConsumer(..)
            | Self::NoSuchUnit { .. } => 2,
            Self::Render {
                source: RenderError::Template(_) | RenderError::TemplateName { .. },
                ..
            } => 2,
            Self::Fetch(e) => e.exit_code(),
            _ => 1,
        }
    }
}

fn parse_mode(consumer: &str, text: &str) -> Result<u32, DeliverError> {
    let bad = || DeliverError::Consumer {
        consumer: consumer.to_owned(),
        detail: format!("mode {text:?} is not an octal mode like 0400 or 0440"),
    };
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8).map_err(|_| bad())?;
    if mode & !0o770 != 0 || mode & 0o400 == 0 {
        return Err(bad());
    }
    Ok(mode)
}

/// A consumer ready to deliver: its plan resolved (users, modes, parsed
/// templates).
#[derive(Debug)]
pub struct Consumer {
    pub name: String,
    pub secrets: Vec<String>,
    pub options: RenderOptions,
    pub restart_units: Vec<String>,
    pub reload_units: Vec<String>,
    pub on_change: Option<Vec<String>>,
    pub cache_max_age: Option<Duration>,
}

impl Plan {
    pub fn load(path: &Path) -> Result<Self, DeliverError> {
        let fail = |detail: String| DeliverError::Plan {
            path: path.to_owned(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        // toml's messages quote the offending line; the plan holds no
        // secret (template text is public), so they may be shown.
        toml::from_str(&text).map_err(|e| fail(e.to_string()))
    }

    /// The boot cache, when the plan has a folder for it.
    pub fn cache(&self) -> Option<BootCache> {
        self.cache_dir.as_ref().map(|dir| BootCache {
            dir: dir.clone(),
            systemd_creds: self.systemd_creds.clone(),
            key: self.cache_key.clone(),
        })
    }

    /// The named consumers (all when `only` is empty), resolved.
    pub fn consumers(&self, only: &[String]) -> Result<Vec<Consumer>, DeliverError> {
        for name in only {
            if !self.consumers.contains_key(name) {
                return Err(DeliverError::UnknownConsumer(
                    name.clone(),
                    self.consumers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                ));
            }
        }
        self.consumers
            .iter()
            .filter(|(name, _)| only.is_empty() || only.contains(name))
            .map(|(name, c)| self.resolve(name, c))
            .collect()
    }

    fn resolve(&self, name: &str, c: &ConsumerPlan) -> Result<Consumer, DeliverError> {
        let err = |detail: String| DeliverError::Consumer {
            consumer: name.to_owned(),
            detail,
        };
        let user = |u: &Option<String>| {
            u.as_deref()
                .map(render::lookup_user)
                .transpose()
                .map_err(|e| err(e.to_string()))
        };
        let group = |g: &Option<String>| {
            g.as_deref()
                .map(render::lookup_group)
                .transpose()
                .map_err(|e| err(e.to_string()))
        };
        let mode = parse_mode(name, &c.mode)?;
        let (owner, grp) = (user(&c.owner)?, group(&c.group)?);
        let mut templates = Vec::new();
        for (file, t) in &c.templates {
            templates.push(TemplateFile {
                file: file.clone(),
                template: Template::parse(&format!("{name}/{file}"), &t.content)
                    .map_err(|e| err(e.to_string()))?,
                mode: t
                    .mode
                    .as_deref()
                    .map_or(Ok(mode), |m| parse_mode(name, m))?,
                owner: if t.owner.is_some() {
                    user(&t.owner)?
                } else {
                    owner
                },
                group: if t.group.is_some() {
                    group(&t.group)?
                } else {
                    grp
                },
            });
        }
        if c.cache_max_age.is_some() && self.cache_dir.is_none() {
            return Err(err(
                "cache_max_age is set but the plan has no cache_dir".to_owned()
            ));
        }
        Ok(Consumer {
            name: name.to_owned(),
            secrets: c.secrets.clone(),
            options: RenderOptions {
                dir: c.dir.clone(),
                mode,
                owner,
                group: grp,
                env_file: c.env_file.clone(),
                templates,
            },
            restart_units: c.restart_units.clone(),
            reload_units: c.reload_units.clone(),
            on_change: c.on_change.clone(),
            cache_max_age: c.cache_max_age,
        })
    }
}

/// The names one request asks for: the union of the consumers' names, or
/// every granted secret when one of them asks for all.
fn union(consumers: &[&Consumer]) -> Vec<String> {
    if consumers.iter().any(|c| c.secrets.is_empty()) {
        return Vec::new();
    }
    let set: BTreeSet<&String> = consumers.iter().flat_map(|c| &c.secrets).collect();
    set.into_iter().cloned().collect()
}

/// `consumer`'s part of an answer.
fn part(
    consumer: &Consumer,
    all: &[(String, SecretValue)],
) -> Result<Vec<(String, SecretValue)>, DeliverError> {
    if consumer.secrets.is_empty() {
        return Ok(all.to_vec());
    }
    consumer
        .secrets
        .iter()
        .map(|name| {
            all.iter()
                .find(|(n, _)| n == name)
                .cloned()
                .ok_or_else(|| DeliverError::Missing {
                    consumer: consumer.name.clone(),
                    name: name.clone(),
                })
        })
        .collect()
}

/// Whether a fetch failed because no server answered (the only case in
/// which the boot cache may stand in; a denial or a pin mismatch is an
/// answer, and never falls back, with one server or with several).
fn no_server_answered(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::AllFailed {
            unanswered: true,
            ..
        } | ClientError::Unreachable { .. }
    )
}

/// Where a consumer's files came from, kept beside its manifest so the
/// watcher can say so after a boot on the cache.
const ORIGIN: &str = ".locket-origin";

fn write_origin(consumer: &Consumer, text: &str) {
    if let Err(e) = render::write_marker(&consumer.options, ORIGIN, text) {
        tracing::warn!("consumer {}: {e}", consumer.name);
    }
}

/// What a consumer's folder says about where its files came from.
pub fn origin(consumer: &Consumer) -> Option<String> {
    render::read_marker(&consumer.options, ORIGIN)
}

/// Renders `secrets` for `consumer` and keeps the boot cache current.
async fn deliver_set(
    consumer: &Consumer,
    secrets: &[(String, SecretValue)],
    cache: Option<&BootCache>,
    cache_due: bool,
    refresh: bool,
) -> Result<RenderReport, DeliverError> {
    let render = if refresh {
        render::render_existing
    } else {
        render::render
    };
    let report = render(secrets, &consumer.options).map_err(|source| DeliverError::Render {
        consumer: consumer.name.clone(),
        source,
    })?;
    write_origin(consumer, "server");
    if let (Some(cache), Some(_)) = (cache, consumer.cache_max_age)
        && (cache_due || report.changed())
        && let Err(e) = cache
            .store(&consumer.name, secrets, SystemTime::now())
            .await
    {
        // The delivery itself succeeded; a boot without a server would
        // use an older copy (or none).
        tracing::warn!("consumer {}: {e}", consumer.name);
    }
    Ok(report)
}

/// One delivery for the fetch unit of `consumers` (before they start): one
/// request; when no server answers, each consumer with a boot cache gets
/// its cached copy if it is recent enough. Runs no restart actions.
pub async fn deliver_once(
    client: &Client,
    plan: &Plan,
    consumers: &[Consumer],
) -> Result<(), DeliverError> {
    let refs: Vec<&Consumer> = consumers.iter().collect();
    let cache = plan.cache();
    let fetched = client.fetch(&union(&refs)).await;
    let mut first_error = None;
    match fetched {
        Ok(all) => {
            for c in consumers {
                let result = match part(c, &all) {
                    Ok(set) => deliver_set(c, &set, cache.as_ref(), true, false).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(report) => tracing::info!(
                        "{}: {} written, {} unchanged, {} removed",
                        c.name,
                        report.written.len(),
                        report.unchanged.len(),
                        report.removed.len()
                    ),
                    Err(e) => {
                        tracing::error!("{e}");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        Err(e) if no_server_answered(&e) => {
            // Each consumer with a boot cache gets its copy; any other
            // consumer (or one whose copy cannot stand in) fails with the
            // fetch's own error, after every consumer had its chance.
            let mut any_failed = false;
            for c in consumers {
                match from_cache(c, cache.as_ref(), &e).await {
                    Ok(true) => {}
                    Ok(false) => any_failed = true,
                    Err(err) => {
                        tracing::error!("{err}");
                        any_failed = true;
                    }
                }
            }
            if any_failed {
                return Err(e.into());
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    first_error.map_or(Ok(()), Err)
}

/// Delivers `consumer`'s cached copy after `fetch` failed. `Ok(false)`:
/// it has no boot cache.
async fn from_cache(
    consumer: &Consumer,
    cache: Option<&BootCache>,
    fetch: &ClientError,
) -> Result<bool, DeliverError> {
    let (Some(cache), Some(max_age)) = (cache, consumer.cache_max_age) else {
        return Ok(false);
    };
    let cached = cache
        .load(&consumer.name, max_age)
        .await
        .map_err(|e| DeliverError::NoCache {
            consumer: consumer.name.clone(),
            fetch: fetch.to_string(),
            cache: Box::new(e),
        })?;
    render::render(&cached.secrets, &consumer.options).map_err(|source| DeliverError::Render {
        consumer: consumer.name.clone(),
        source,
    })?;
    let age = SystemTime::now()
        .duration_since(cached.fetched_at)
        .unwrap_or_default();
    write_origin(
        consumer,
        &format!("cache {}", cache::timestamp(cached.fetched_at)),
    );
    tracing::warn!(
        "consumer {}: no server answered ({fetch}); delivered the cached copy fetched at {} ({} ago, cache_max_age {}). The next successful fetch replaces it",
        consumer.name,
        cache::timestamp(cached.fetched_at),
        cache::human(age),
        cache::human(max_age)
    );
    Ok(true)
}

/// Checks that every restart and reload target exists, before anything is
/// delivered: a typo is reported at start, not at the first change.
pub async fn check_units(plan: &Plan, consumers: &[Consumer]) -> Result<(), DeliverError> {
    for c in consumers {
        for unit in c.restart_units.iter().chain(&c.reload_units) {
            let out = tokio::process::Command::new(&plan.systemctl)
                .args(["show", "--property=LoadState", "--value", "--", unit])
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            let state = match out {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => format!("cannot run {}: {e}", plan.systemctl.display()),
            };
            if state != "loaded" {
                return Err(DeliverError::NoSuchUnit {
                    consumer: c.name.clone(),
                    unit: unit.clone(),
                    state: if state.is_empty() {
                        "no answer".into()
                    } else {
                        state
                    },
                });
            }
        }
    }
    Ok(())
}

/// What the watcher knows, written to the plan's status file after every
/// round (JSON) and summarised in systemd's STATUS=.
#[derive(Debug, Default, serde::Serialize)]
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
pub struct ConsumerStatus {
    /// "server", "cache <fetched at>", or "not delivered" (its service is
    /// not running).
    pub origin: String,
    pub last_change: Option<String>,
    /// Names only.
    pub last_changed_files: Vec<String>,
    pub changes: u64,
}

/// The watcher: every `interval` (±10% jitter) one request for every
/// delivered consumer, then one restart/reload/command per change. Returns
/// on SIGTERM or SIGINT.
pub async fn watch(
    client: &Client,
    plan: &Plan,
    consumers: &[Consumer],
    interval: Duration,
) -> Result<(), DeliverError> {
    use tokio::signal::unix::{SignalKind, signal};
    check_units(plan, consumers).await?;
    let cache = plan.cache();
    let mut status = WatchStatus::default();
    // When each consumer's cached copy was last rewritten: a copy is
    // renewed at least every quarter of its max age, so a boot soon after
    // a long quiet spell still finds a fresh one.
    let mut cache_written: BTreeMap<String, SystemTime> = BTreeMap::new();
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| ClientError::Local(e.to_string()))?;
    let mut first = true;
    loop {
        round(
            client,
            plan,
            consumers,
            cache.as_ref(),
            &mut status,
            &mut cache_written,
        )
        .await;
        publish(plan, &status);
        if first {
            crate::systemd::notify(crate::systemd::NotifyState::Ready);
            first = false;
        }
        tokio::select! {
            () = tokio::time::sleep(jittered(interval)) => {}
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
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
    plan: &Plan,
    consumers: &[Consumer],
    cache: Option<&BootCache>,
    status: &mut WatchStatus,
    cache_written: &mut BTreeMap<String, SystemTime>,
) {
    let now = SystemTime::now();
    status.rounds += 1;
    status.last_attempt = Some(cache::timestamp(now));
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
    if delivered.is_empty() {
        status.last_error = None;
        return;
    }
    let all = match client.fetch(&union(&delivered)).await {
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
        entry.last_change = Some(cache::timestamp(now));
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
    if let Some(e) = act(plan, &mut status.pending).await {
        failed = Some(e);
    }
    status.last_error = failed;
    if status.last_error.is_none() {
        status.last_success = Some(cache::timestamp(now));
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
async fn act(plan: &Plan, pending: &mut Pending) -> Option<String> {
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

async fn systemctl(plan: &Plan, verb: &str, units: &[String]) -> Result<(), String> {
    tracing::info!("systemctl {verb} {}", units.join(" "));
    match tokio::process::Command::new(&plan.systemctl)
        .arg(verb)
        .arg("--")
        .args(units)
        .stdin(std::process::Stdio::null())
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
fn publish(plan: &Plan, status: &WatchStatus) {
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
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!("cannot write the status file {}: {e}", path.display());
    }
}
