//! What a registry change grants and takes away, before it is applied:
//! `locket plan`, and the server's log lines when a reload applies one.
//!
//! It compares two validated registries client by client: clients added
//! and removed; per client, grants (exact names and patterns, as written)
//! gained and lost, keys and networks added and removed. Given the secrets
//! each config's sources hold, it also resolves the grants into the names
//! each client may newly read or no longer read (so a new source whose
//! names match an old glob shows too). Names only, never values.

use std::collections::BTreeSet;
use std::fmt;

use crate::registry::{RegisteredClient, Registry};
use crate::store::ServedSet;

/// The differences between two registries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GrantPlan {
    /// In client-name order.
    pub changes: Vec<ClientChange>,
}

/// How one client changes.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientChange {
    /// A client that is new.
    Added {
        /// Its name.
        name: String,
        /// Its keys, as configured.
        keys: Vec<String>,
        /// The networks it may call from.
        networks: Vec<String>,
        /// The grant patterns.
        grants: Vec<String>,
        /// The names it may read, when resolved against a secret set.
        names: Option<Vec<String>>,
    },
    /// A client that is gone.
    Removed {
        /// Its name.
        name: String,
        /// The names it could read, when resolved against a secret set.
        names: Option<Vec<String>>,
    },
    /// A client whose keys, networks or grants change.
    Changed {
        /// Its name.
        name: String,
        /// Grant patterns added and removed.
        grants: Diff,
        /// Keys added and removed.
        keys: Diff,
        /// Networks added and removed.
        networks: Diff,
        /// Secret names it may newly read and no longer read, when resolved.
        names: Option<Diff>,
    },
}

/// What one list gains and loses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// In the new config only.
    pub added: Vec<String>,
    /// In the old config only.
    pub removed: Vec<String>,
}

impl Diff {
    fn between(old: &BTreeSet<String>, new: &BTreeSet<String>) -> Self {
        Self {
            added: new.difference(old).cloned().collect(),
            removed: old.difference(new).cloned().collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl GrantPlan {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

fn keys(c: &RegisteredClient) -> BTreeSet<String> {
    c.keys.iter().map(crate::keys::public_line).collect()
}

fn networks(c: &RegisteredClient) -> BTreeSet<String> {
    c.networks.iter().map(ToString::to_string).collect()
}

fn grants(c: &RegisteredClient) -> BTreeSet<String> {
    c.grants().iter().cloned().collect()
}

fn readable(c: &RegisteredClient, set: &ServedSet) -> BTreeSet<String> {
    c.readable(set)
        .into_iter()
        .map(|(n, _)| n.to_owned())
        .collect()
}

/// The plan from `old` to `new`; with `sets` (the secrets of the old
/// config's sources, then the new one's), each registry's grants are also
/// resolved against its own set.
pub(crate) fn plan(
    old: &Registry,
    new: &Registry,
    sets: Option<(&ServedSet, &ServedSet)>,
) -> GrantPlan {
    let all: BTreeSet<&str> = old
        .iter()
        .chain(new.iter())
        .map(|c| c.name.as_str())
        .collect();
    let changes = all
        .into_iter()
        .filter_map(|name| match (old.get(name), new.get(name)) {
            (None, Some(c)) => Some(ClientChange::Added {
                name: name.to_owned(),
                keys: keys(c).into_iter().collect(),
                networks: networks(c).into_iter().collect(),
                grants: grants(c).into_iter().collect(),
                names: sets.map(|(_, set)| readable(c, set).into_iter().collect()),
            }),
            (Some(c), None) => Some(ClientChange::Removed {
                name: name.to_owned(),
                names: sets.map(|(set, _)| readable(c, set).into_iter().collect()),
            }),
            (Some(o), Some(n)) => {
                let change = ClientChange::Changed {
                    name: name.to_owned(),
                    grants: Diff::between(&grants(o), &grants(n)),
                    keys: Diff::between(&keys(o), &keys(n)),
                    networks: Diff::between(&networks(o), &networks(n)),
                    names: sets.map(|(os, ns)| Diff::between(&readable(o, os), &readable(n, ns))),
                };
                match &change {
                    ClientChange::Changed {
                        grants,
                        keys,
                        networks,
                        names,
                        ..
                    } if grants.is_empty()
                        && keys.is_empty()
                        && networks.is_empty()
                        && names.as_ref().is_none_or(Diff::is_empty) =>
                    {
                        None
                    }
                    _ => Some(change),
                }
            }
            (None, None) => None,
        })
        .collect();
    GrantPlan { changes }
}

impl ClientChange {
    /// The client's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Added { name, .. } | Self::Removed { name, .. } | Self::Changed { name, .. } => {
                name
            }
        }
    }

    /// The change on one line (for the server's log).
    pub fn one_line(&self) -> String {
        let mut parts = Vec::new();
        match self {
            Self::Added {
                keys,
                networks,
                grants,
                ..
            } => {
                parts.push("added".to_owned());
                parts.push(format!("{} key(s)", keys.len()));
                parts.push(format!("networks {}", list(networks)));
                parts.push(format!("grants {}", list(grants)));
            }
            Self::Removed { .. } => parts.push("removed".to_owned()),
            Self::Changed {
                grants,
                keys,
                networks,
                ..
            } => {
                for (what, d) in [("grants", grants), ("keys", keys), ("networks", networks)] {
                    if !d.added.is_empty() {
                        parts.push(format!("{what} added {}", d.added.join(", ")));
                    }
                    if !d.removed.is_empty() {
                        parts.push(format!("{what} removed {}", d.removed.join(", ")));
                    }
                }
            }
        }
        parts.join("; ")
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn diff(f: &mut fmt::Formatter<'_>, what: &str, d: &Diff) -> fmt::Result {
    if !d.added.is_empty() {
        writeln!(f, "    {what} added: {}", d.added.join(", "))?;
    }
    if !d.removed.is_empty() {
        writeln!(f, "    {what} removed: {}", d.removed.join(", "))?;
    }
    Ok(())
}

/// One line per client, then indented details: `+` added, `-` removed,
/// `~` changed.
impl fmt::Display for GrantPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return writeln!(f, "no changes");
        }
        for change in &self.changes {
            match change {
                ClientChange::Added {
                    name,
                    keys,
                    networks,
                    grants,
                    names,
                } => {
                    writeln!(f, "+ client {name}")?;
                    writeln!(f, "    keys: {}", list(keys))?;
                    writeln!(f, "    networks: {}", list(networks))?;
                    writeln!(f, "    grants: {}", list(grants))?;
                    if let Some(names) = names {
                        writeln!(f, "    may read: {}", list(names))?;
                    }
                }
                ClientChange::Removed { name, names } => {
                    writeln!(f, "- client {name}")?;
                    if let Some(names) = names {
                        writeln!(f, "    could read: {}", list(names))?;
                    }
                }
                ClientChange::Changed {
                    name,
                    grants,
                    keys,
                    networks,
                    names,
                } => {
                    writeln!(f, "~ client {name}")?;
                    diff(f, "grants", grants)?;
                    if let Some(names) = names {
                        if !names.added.is_empty() {
                            writeln!(f, "    may newly read: {}", names.added.join(", "))?;
                        }
                        if !names.removed.is_empty() {
                            writeln!(f, "    may no longer read: {}", names.removed.join(", "))?;
                        }
                    }
                    diff(f, "keys", keys)?;
                    diff(f, "networks", networks)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::registry::ClientEntry;

    fn registry(clients: &[(&str, u8, &[&str], &[&str])]) -> Registry {
        let map: BTreeMap<String, ClientEntry> = clients
            .iter()
            .map(|(name, seed, networks, secrets)| {
                (
                    (*name).to_owned(),
                    ClientEntry {
                        keys: vec![crate::keys::ClientKey::from_seed(&[*seed; 32]).public_line()],
                        networks: networks.iter().map(|s| (*s).to_owned()).collect(),
                        secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
                    },
                )
            })
            .collect();
        Registry::from_config(&map).unwrap()
    }

    #[test]
    fn every_kind_of_change_is_named_and_nothing_else() {
        let old = registry(&[
            ("same", 1, &["10.0.0.1"], &["A"]),
            ("web", 2, &["10.0.0.2"], &["DB_*", "OLD"]),
            ("gone", 3, &["10.0.0.3"], &["A"]),
        ]);
        let new = registry(&[
            ("same", 1, &["10.0.0.1/32"], &["A"]),
            ("web", 4, &["10.0.0.2", "10.0.1.0/24"], &["DB_*", "NEW"]),
            ("fresh", 5, &["10.0.0.5"], &["B"]),
        ]);
        let set = ServedSet::new(
            ["A", "B", "DB_PASSWORD", "NEW", "OLD"]
                .into_iter()
                .map(|n| (n.to_owned(), crate::secret::SecretValue::from("v")))
                .collect(),
        );
        let p = plan(&old, &new, Some((&set, &set)));
        let names: Vec<&str> = p
            .changes
            .iter()
            .map(|c| match c {
                ClientChange::Added { name, .. }
                | ClientChange::Removed { name, .. }
                | ClientChange::Changed { name, .. } => name.as_str(),
            })
            .collect();
        assert_eq!(names, ["fresh", "gone", "web"], "`same` did not change");
        let text = p.to_string();
        for line in [
            "+ client fresh",
            "    may read: B",
            "- client gone",
            "    could read: A",
            "~ client web",
            "    grants added: NEW",
            "    grants removed: OLD",
            "    may newly read: NEW",
            "    may no longer read: OLD",
            "    networks added: 10.0.1.0/24",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(text.contains("    keys added: ed25519:"), "{text}");
        assert!(
            !text.contains("=v") && !text.contains(": v"),
            "no value: {text}"
        );
        assert!(plan(&old, &old, Some((&set, &set))).is_empty());
        // The same registry over a source set that gained a name its glob
        // matches: the client may newly read it.
        let more = ServedSet::new(
            ["A", "DB_PASSWORD", "DB_USER"]
                .into_iter()
                .map(|n| (n.to_owned(), crate::secret::SecretValue::from("v")))
                .collect(),
        );
        let text = plan(&old, &old, Some((&set, &more))).to_string();
        assert!(
            text.contains(
                "~ client web\n    may newly read: DB_USER\n    may no longer read: OLD\n"
            ),
            "{text}"
        );
        assert_eq!(plan(&old, &old, None).to_string(), "no changes\n");
    }
}

/// Why `locket plan` could not compare two configs.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum PlanError {
    /// A config that does not load.
    #[error("{}: {source}", path.display())]
    Config {
        path: std::path::PathBuf,
        source: crate::config::ConfigError,
    },
    /// No running server's config could be found or trusted.
    #[error(transparent)]
    Discover(#[from] crate::discover::DiscoverError),
    /// A source failed while resolving grants into names (`--resolve`).
    #[error("{}: {source}", path.display())]
    Source {
        path: std::path::PathBuf,
        source: Box<crate::source::SourceError>,
    },
}

/// A plan between two config files.
#[derive(Debug)]
pub struct FilePlan {
    /// The old side: `against`, or the running server's config.
    pub old_path: std::path::PathBuf,
    /// The new config file.
    pub new_path: std::path::PathBuf,
    /// What changes.
    pub plan: GrantPlan,
}

impl fmt::Display for FilePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan: {} -> {}",
            self.old_path.display(),
            self.new_path.display()
        )?;
        write!(f, "{}", self.plan)
    }
}

/// Plans the change from `against` (or, without it, the config of the
/// running server this process can trust: see [`crate::discover`]) to
/// `new`. With `resolve`, both sides' sources are loaded so that grants
/// resolve to names; a discovered config is read only through its checked
/// handle, since resolving runs its `command` sources.
pub async fn plan_files(
    new: &std::path::Path,
    against: Option<&std::path::Path>,
    resolve: bool,
) -> Result<FilePlan, PlanError> {
    use crate::config::server::ServerConfig;
    let load = |path: &std::path::Path| {
        ServerConfig::load(path).map_err(|source| PlanError::Config {
            path: path.to_owned(),
            source,
        })
    };
    let (old_path, old) = match against {
        Some(path) => (path.to_owned(), load(path)?),
        None => {
            let running = crate::discover::running_server_config()?;
            let old =
                ServerConfig::from_file_text(&running.path, &running.text).map_err(|source| {
                    PlanError::Config {
                        path: running.path.clone(),
                        source,
                    }
                })?;
            (running.path, old)
        }
    };
    let new_checked = load(new)?;
    let resolved = |config: &ServerConfig, path: &std::path::Path| {
        let sources = config.sources.clone();
        let path = path.to_owned();
        async move {
            crate::source::load_all(&sources)
                .await
                .map(|(set, _)| set)
                .map_err(|source| PlanError::Source {
                    path,
                    source: Box::new(source),
                })
        }
    };
    let sets = if resolve {
        Some((
            resolved(&old.config, &old_path).await?,
            resolved(&new_checked.config, new).await?,
        ))
    } else {
        None
    };
    let plan = plan(
        &old.registry,
        &new_checked.registry,
        sets.as_ref().map(|(o, n)| (o, n)),
    );
    Ok(FilePlan {
        old_path,
        new_path: new.to_owned(),
        plan,
    })
}
