//! The delivery plan the NixOS module writes (`/etc/locket/delivery.toml`,
//! documented in docs/nixos.md, "The delivery plan"), and its consumers resolved
//! into what a delivery needs: folders, modes, owners, parsed templates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::cache::{BootCache, CacheError};
use super::render::{self, RenderError, RenderOptions, TemplateFile};
use super::template::Template;
use crate::client::ClientError;

/// The delivery plan file, as the module writes it. Documented in the
/// module guide (docs/nixos.md, "The delivery plan").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct DeliveryPlan {
    /// Where the watcher writes its status (JSON).
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    /// Where the watcher writes its state as Prometheus text (for
    /// node_exporter's textfile collector).
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
    #[serde(default = "default_systemctl")]
    pub systemctl: PathBuf,
    #[serde(default = "default_systemd_creds")]
    pub systemd_creds: PathBuf,
    /// Folder of the boot cache; consumers opt in with `cache_max_age`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    #[serde(default = "default_cache_key")]
    pub cache_key: String,
    /// The folder that holds the consumers' folders: a folder under it
    /// that a delivery wrote (it holds a manifest) and that no consumer of
    /// this plan uses any more is removed at each delivery.
    #[serde(default)]
    pub prune_under: Option<PathBuf>,
    /// Where the watcher serves `delivery = "socket"` consumers (systemd's
    /// `LoadCredential=ID:<this path>`), when systemd does not hand it the
    /// listening socket (socket activation).
    #[serde(default)]
    pub credential_socket: Option<PathBuf>,
    /// Whose units the plan names: the system manager's (root, NixOS), or
    /// a user's (`systemd --user`, home-manager). A user plan's restarts
    /// go through `systemctl --user`.
    #[serde(default)]
    pub manager: Manager,
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerPlan>,
}

/// The systemd manager a plan's units belong to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    /// PID 1: units under /etc/systemd/system.
    #[default]
    System,
    /// A user's `systemd --user`: its runtime folder is
    /// `$XDG_RUNTIME_DIR`, known only when it runs (home-manager evaluates
    /// without the user's uid), so plan paths start with `%t/` as in unit
    /// files.
    User,
}

/// How a consumer gets its secrets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Files in its folder (`dir`), written by a delivery.
    #[default]
    Files,
    /// From the watcher's memory over the credential socket, when systemd
    /// starts its unit: no file anywhere but the unit's own credentials.
    Socket,
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
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct ConsumerPlan {
    #[serde(default)]
    pub delivery: Delivery,
    /// Its folder (files only).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The unit that asks the credential socket (socket only).
    #[serde(default)]
    pub unit: Option<String>,
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
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
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
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum DeliverError {
    #[error("cannot read the delivery plan {path}: {source}")]
    PlanRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the delivery plan {path}: {source}")]
    PlanParse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
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
    #[error("cannot listen on the credential socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the delivery plan {path} is for a user manager (manager = \"user\"), but XDG_RUNTIME_DIR is not set to an absolute path: run it as a `systemd --user` service, or set XDG_RUNTIME_DIR=/run/user/$(id -u)"
    )]
    RuntimeDir { path: PathBuf },
    #[error("cannot watch for SIGTERM: {0}")]
    Signal(#[source] std::io::Error),
    #[error("render failed: {0}")]
    Folder(RenderError),
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
            Self::PlanRead { .. }
            | Self::PlanParse { .. }
            | Self::Consumer { .. }
            | Self::UnknownConsumer(..)
            | Self::RuntimeDir { .. }
            | Self::NoSuchUnit { .. } => 2,
            Self::Render {
                source: RenderError::Template(_) | RenderError::TemplateName { .. },
                ..
            }
            | Self::Folder(RenderError::Template(_) | RenderError::TemplateName { .. }) => 2,
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
    /// Its name in the plan.
    pub name: String,
    /// The names it reads; empty: every secret the client may read.
    pub secrets: Vec<String>,
    /// Where and how its files are written.
    pub options: RenderOptions,
    /// Units restarted after a change.
    pub restart_units: Vec<String>,
    /// Units reloaded (or restarted) after a change.
    pub reload_units: Vec<String>,
    /// A program and its arguments run after a change.
    pub on_change: Option<Vec<String>>,
    /// How old a boot-cache copy may be to stand in; `None`: no boot cache.
    pub cache_max_age: Option<Duration>,
}

/// The credential ID systemd uses for `secret`: its delivered file name
/// (`/` becomes `_`), as `LoadCredential=` IDs cannot hold a `/`.
pub(crate) fn credential_id(secret: &str) -> String {
    secret.replace('/', "_")
}

/// A consumer served over the credential socket.
#[derive(Debug)]
pub struct SocketConsumer {
    /// Its name in the plan.
    pub name: String,
    /// The unit that asks for its credentials (`app.service`).
    pub unit: String,
    /// The secrets it reads, by name (never empty).
    pub secrets: Vec<String>,
    /// Templates by credential ID, rendered from its secrets when asked.
    pub templates: Vec<(String, Template)>,
    /// Units restarted after a change (systemd reads credentials only at
    /// start).
    pub restart_units: Vec<String>,
    /// A program and its arguments run after a change.
    pub on_change: Option<Vec<String>>,
}

impl DeliveryPlan {
    /// Reads and parses the plan file (it holds no secret).
    pub fn load(path: &Path) -> Result<Self, DeliverError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeliverError::PlanRead {
            path: path.to_owned(),
            source,
        })?;
        // toml's messages quote the offending line; the plan holds no
        // secret (template text is public), so they may be shown.
        let mut plan: Self = toml::from_str(&text).map_err(|source| DeliverError::PlanParse {
            path: path.to_owned(),
            source,
        })?;
        let runtime = match plan.manager {
            Manager::System => PathBuf::from("/run"),
            Manager::User => match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
                Some(dir) if dir.is_absolute() => dir,
                _ => {
                    return Err(DeliverError::RuntimeDir {
                        path: path.to_owned(),
                    });
                }
            },
        };
        plan.expand_runtime_dir(&runtime);
        Ok(plan)
    }

    /// Replaces a leading `%t` (systemd's specifier for the manager's
    /// runtime folder) in every path of the plan with `runtime`.
    fn expand_runtime_dir(&mut self, runtime: &Path) {
        let expand = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix("%t") {
                *p = runtime.join(rest);
            }
        };
        let top = [
            &mut self.status_file,
            &mut self.metrics_file,
            &mut self.cache_dir,
            &mut self.prune_under,
            &mut self.credential_socket,
        ];
        for p in top.into_iter().flatten() {
            expand(p);
        }
        for c in self.consumers.values_mut() {
            for p in [&mut c.dir, &mut c.env_file].into_iter().flatten() {
                expand(p);
            }
        }
    }

    /// `systemctl`, talking to the plan's manager.
    pub fn systemctl_command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.systemctl);
        if self.manager == Manager::User {
            cmd.arg("--user");
        }
        cmd.stdin(std::process::Stdio::null());
        cmd
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
        if let Some(name) = only
            .iter()
            .find(|n| self.consumers[*n].delivery == Delivery::Socket)
        {
            return Err(DeliverError::Consumer {
                consumer: name.clone(),
                detail: "it is served over the credential socket (delivery = \"socket\"): the watcher hands its unit each value when systemd starts it, and there are no files to deliver".to_owned(),
            });
        }
        self.consumers
            .iter()
            .filter(|(name, c)| {
                c.delivery == Delivery::Files && (only.is_empty() || only.contains(name))
            })
            .map(|(name, c)| self.resolve(name, c))
            .collect()
    }

    /// The consumers served over the credential socket, resolved.
    pub fn socket_consumers(&self) -> Result<Vec<SocketConsumer>, DeliverError> {
        self.consumers
            .iter()
            .filter(|(_, c)| c.delivery == Delivery::Socket)
            .map(|(name, c)| self.resolve_socket(name, c))
            .collect()
    }

    fn resolve_socket(&self, name: &str, c: &ConsumerPlan) -> Result<SocketConsumer, DeliverError> {
        let err = |detail: &str| DeliverError::Consumer {
            consumer: name.to_owned(),
            detail: detail.to_owned(),
        };
        if self.credential_socket.is_none() {
            return Err(err(
                "delivery = \"socket\", but the plan has no credential_socket: set the path the watcher listens on",
            ));
        }
        let Some(unit) = &c.unit else {
            return Err(err(
                "delivery = \"socket\" needs unit: the unit whose LoadCredential= asks for the values",
            ));
        };
        if c.secrets.is_empty() {
            return Err(err(
                "delivery = \"socket\" needs the secrets by name (LoadCredential= asks for each): list them",
            ));
        }
        let files_only = [
            ("dir", c.dir.is_some()),
            ("env_file", c.env_file.is_some()),
            ("owner", c.owner.is_some()),
            ("group", c.group.is_some()),
            ("reload_units", !c.reload_units.is_empty()),
            ("cache_max_age", c.cache_max_age.is_some()),
        ];
        if let Some((key, _)) = files_only.iter().find(|(_, set)| *set) {
            return Err(err(&format!(
                "{key} is set, but a delivery = \"socket\" consumer has no files (and systemd reads credentials only when its unit starts): remove it"
            )));
        }
        let mut templates = Vec::new();
        for (file, t) in &c.templates {
            if c.secrets.iter().any(|s| credential_id(s) == *file) {
                return Err(err(&format!(
                    "template {file:?} has the credential ID of a secret: give it another name"
                )));
            }
            let template = Template::parse(&format!("{name}/{file}"), &t.content)
                .map_err(|e| err(&e.to_string()))?;
            templates.push((file.clone(), template));
        }
        Ok(SocketConsumer {
            name: name.to_owned(),
            unit: unit.clone(),
            secrets: c.secrets.clone(),
            templates,
            restart_units: c.restart_units.clone(),
            on_change: c.on_change.clone(),
        })
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
        let Some(dir) = &c.dir else {
            return Err(err(
                "dir is missing: a consumer with delivery = \"files\" needs the folder its files go to".to_owned(),
            ));
        };
        if c.unit.is_some() {
            return Err(err(
                "unit is set, but only a delivery = \"socket\" consumer has one: remove it, or set delivery = \"socket\"".to_owned(),
            ));
        }
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
        if c.cache_max_age.is_some() && self.manager == Manager::User {
            return Err(err(
                "cache_max_age is set, but a user manager's plan has no boot cache (it is sealed with systemd-creds' host key, which is root's): remove it".to_owned(),
            ));
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
                dir: dir.clone(),
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
