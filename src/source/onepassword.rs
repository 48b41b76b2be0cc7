//! 1Password, two ways: the `op` CLI with a service account, and a
//! 1Password Connect server over its REST API. Every item of the configured
//! vault becomes secrets named `<item title>/<field label>` (so a client
//! granted `"<service>/*"` reads one item, as the original locket did with
//! one item per service). Tokens come from files and never reach a command
//! line or a log.
//!
//! Reads cost: 1Password limits service accounts per hour and per account
//! per day, and past a limit every integration of the account is refused.
//! So a round lists the vault once and gets only the items that are new or
//! whose `version` (or `updated_at`) changed; items that are gone are
//! dropped. An unchanged round is one list. Each item read is remembered
//! at once ([`SourceMemory`]), so a round cut short (a rate limit, a budget,
//! a failure) never reads it again. Gets run `concurrency` at a time.
//!
//! Requests are counted as 1Password counts them ("Use service accounts
//! with 1Password CLI", section "Commands that make multiple requests",
//! developer.1password.com/docs/service-accounts/use-with-1password-cli):
//! `op item list --vault` costs 3 requests with a vault name and 2 with a
//! vault id, `op item get` 3. The first list names the vault's id in every
//! item, so later lists use the id. Connect answers from its own synced
//! copy: one HTTP request is one request, and the vault's id is looked up
//! once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::memory::{Budget, CachedField, CachedItem, HOUR, Hold, SourceMemory};
use super::{BoxFuture, LoadError, Loaded, SettingError, Source};
use crate::secret::SecretValue;
use crate::secret_set::SecretSet;

/// What 1Password counts for each `op` call (see the module docs).
pub(crate) const OP_LIST_BY_NAME: u32 = 3;
pub(crate) const OP_LIST_BY_ID: u32 = 2;
pub(crate) const OP_GET: u32 = 3;

/// The budget of an `op` source when its config sets none: well inside a
/// Teams account (1,000 reads per hour per token, 5,000 requests per day
/// for the whole account), so a failover pair still leaves most of the
/// account's day to other integrations.
pub(crate) const DEFAULT_CLI_BUDGET: Budget = Budget {
    per_hour: Some(800),
    per_day: Some(1500),
};

/// What a rate-limited source says, at the first refusal and while it waits.
const RATE_LIMITED: &str = "1Password answered \"Too many requests\"; the last good values are served and no request is made until the limit resets";

/// Gets at once, when the config does not say.
pub(crate) const DEFAULT_CONCURRENCY: usize = 8;

/// The share of `reads_per_day` that unchanged rounds may use; the rest is
/// kept for changed items and a first load.
const PACING_SHARE: u32 = 4;

/// `type = "onepassword-cli"`: 1Password through the `op` CLI and a
/// service-account token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct OnepasswordCliSource {
    pub vault: String,
    pub token_file: PathBuf,
    /// The `op` program (a name looked up in PATH, or a path).
    #[serde(default = "op")]
    pub op: String,
    #[serde(default = "super::ten_seconds", with = "humantime_serde")]
    pub timeout: Duration,
    /// 1Password requests this source may make per hour and per day
    /// (0: no limit); default 800 and 1500, well inside a Teams account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads_per_day: Option<u32>,
    /// Items read at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Secret names mapped to 1Password references
    /// (`DB_PASSWORD = "op://prod/postgres/password"`): the source then
    /// serves only these, and reads only the items they name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub references: BTreeMap<String, String>,
}

fn op() -> String {
    "op".into()
}

/// `type = "onepassword-connect"`: a 1Password Connect server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct OnepasswordConnectSource {
    pub url: String,
    pub vault: String,
    pub token_file: PathBuf,
    #[serde(default = "super::ten_seconds", with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests per hour and per day (default: no limit; Connect answers
    /// from its own synced copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads_per_day: Option<u32>,
    /// Items read at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// As for `onepassword-cli`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub references: BTreeMap<String, String>,
}

/// A configured budget: unset is `default`, 0 is no limit.
fn budget(per_hour: Option<u32>, per_day: Option<u32>, default: Budget) -> Budget {
    let pick = |set: Option<u32>, default: Option<u32>| match set {
        Some(0) => None,
        Some(n) => Some(n),
        None => default,
    };
    Budget {
        per_hour: pick(per_hour, default.per_hour),
        per_day: pick(per_day, default.per_day),
    }
}

/// The checks both kinds share (no I/O).
fn validate(
    timeout: Duration,
    concurrency: Option<usize>,
    vault: &str,
    references: &BTreeMap<String, String>,
) -> Result<(), SettingError> {
    if timeout.is_zero() {
        return Err(SettingError("`timeout` must be more than 0s".into()));
    }
    if let Some(n) = concurrency
        && !(1..=64).contains(&n)
    {
        return Err(SettingError(format!(
            "concurrency = {n} is out of range: use 1 to 64 (default {DEFAULT_CONCURRENCY})"
        )));
    }
    check_references(vault, references).map_err(SettingError)
}

impl Source for OnepasswordCliSource {
    fn describe(&self) -> String {
        format!("onepassword-cli vault {:?}", self.vault)
    }

    fn validate(&self) -> Result<(), SettingError> {
        validate(
            self.timeout,
            self.concurrency,
            &self.vault,
            &self.references,
        )
    }

    fn resolve_paths(&mut self, base: &Path) {
        super::resolve_path(base, &mut self.token_file);
    }

    fn budget(&self) -> Budget {
        budget(self.reads_per_hour, self.reads_per_day, DEFAULT_CLI_BUDGET)
    }

    fn load<'a>(&'a self, memory: &'a mut SourceMemory) -> BoxFuture<'a, Loaded> {
        let limits = Limits {
            budget: self.budget(),
            concurrency: self.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            timeout: self.timeout,
        };
        Box::pin(load_cli(
            &self.op,
            &self.vault,
            &self.token_file,
            limits,
            &self.references,
            memory,
        ))
    }
}

impl Source for OnepasswordConnectSource {
    fn describe(&self) -> String {
        format!("onepassword-connect {} vault {:?}", self.url, self.vault)
    }

    fn validate(&self) -> Result<(), SettingError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(SettingError(format!(
                "url {:?} must start with http:// or https://",
                self.url
            )));
        }
        validate(
            self.timeout,
            self.concurrency,
            &self.vault,
            &self.references,
        )
    }

    fn resolve_paths(&mut self, base: &Path) {
        super::resolve_path(base, &mut self.token_file);
    }

    fn budget(&self) -> Budget {
        budget(self.reads_per_hour, self.reads_per_day, Budget::default())
    }

    fn load<'a>(&'a self, memory: &'a mut SourceMemory) -> BoxFuture<'a, Loaded> {
        let limits = Limits {
            budget: self.budget(),
            concurrency: self.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            timeout: self.timeout,
        };
        Box::pin(load_connect(
            &self.url,
            &self.vault,
            &self.token_file,
            limits,
            &self.references,
            memory,
        ))
    }
}

/// How a 1Password source reads: its budget and how many gets at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub budget: Budget,
    pub concurrency: usize,
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct ItemSummary {
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    version: u64,
    #[serde(default, alias = "updatedAt")]
    updated_at: String,
    #[serde(default)]
    vault: Option<VaultRef>,
}

#[derive(Deserialize)]
struct VaultRef {
    #[serde(default)]
    id: String,
}

#[derive(Deserialize)]
struct Field {
    #[serde(default)]
    id: String,
    #[serde(default)]
    label: String,
    /// `op` gives `{id, label}`, Connect `{id}` (the label is in the
    /// item's `sections`).
    #[serde(default)]
    section: Option<SectionRef>,
    /// Read as any JSON value, so that a number or boolean is served as
    /// text and a type mismatch never makes serde quote the value.
    #[serde(default)]
    value: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct SectionRef {
    #[serde(default)]
    id: String,
    #[serde(default)]
    label: Option<String>,
}

/// Parses 1Password JSON. serde's messages can quote the offending value,
/// which may be a secret: report only where the problem is.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, LoadError> {
    serde_json::from_slice(bytes).map_err(|e| {
        LoadError::Format(format!(
            "{what} is not the expected JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    title: String,
    #[serde(default)]
    sections: Vec<SectionRef>,
    #[serde(default)]
    fields: Vec<Field>,
}

#[derive(Deserialize)]
struct Vault {
    id: String,
    #[serde(default)]
    name: String,
}

/// Reads a token file (trimmed), in zeroizing memory.
pub(crate) fn read_token(path: &Path) -> Result<Zeroizing<String>, LoadError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        LoadError::OnePassword(format!("cannot read token_file {}: {e}", path.display()))
    })?);
    let token = Zeroizing::new(text.trim().to_owned());
    if token.is_empty() {
        return Err(LoadError::OnePassword(format!(
            "token_file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// Where each secret name came from (item title, field label), so that two
/// fields making one name are an error that names both.
type Origins = std::collections::BTreeMap<String, (String, String)>;

/// An item as remembered: its title and the fields that have a value,
/// with their sections' labels.
fn cached(version: (u64, String), item: Item) -> CachedItem {
    let mut fields = Vec::new();
    for field in item.fields {
        let value = match field.value {
            Some(serde_json::Value::String(s)) => SecretValue::new(s),
            Some(serde_json::Value::Number(n)) => SecretValue::new(n.to_string()),
            Some(serde_json::Value::Bool(b)) => SecretValue::new(b.to_string()),
            _ => continue,
        };
        let section = field.section.unwrap_or_default();
        let section_label = section
            .label
            .or_else(|| {
                item.sections
                    .iter()
                    .find(|s| s.id == section.id)
                    .and_then(|s| s.label.clone())
            })
            .unwrap_or_default();
        fields.push(CachedField {
            id: field.id,
            label: field.label,
            section_id: section.id,
            section_label,
            value,
        });
    }
    CachedItem {
        version,
        title: item.title,
        fields,
    }
}

/// The secrets of the items in `order` (the vault's listing), as
/// `<title>/<label>` (the field's id when it has no label); two fields
/// making one name are an error naming both.
fn assemble(order: &[String], memory: &SourceMemory) -> Result<SecretSet, LoadError> {
    let mut out = SecretSet::new();
    let mut origins = Origins::new();
    for id in order {
        let Some(item) = memory.items.get(id) else {
            continue;
        };
        for field in &item.fields {
            let label = if field.label.is_empty() {
                &field.id
            } else {
                &field.label
            };
            if label.is_empty() {
                continue;
            }
            let title = &item.title;
            let name = format!("{title}/{label}");
            if let Some((other_item, other_field)) =
                origins.insert(name.clone(), (title.clone(), label.clone()))
            {
                return Err(LoadError::OnePassword(format!(
                    "item {other_item:?} field {other_field:?} and item {title:?} field {label:?} both make the secret name {name:?}; rename one of them in 1Password, or name the secrets with `references`"
                )));
            }
            out.push(name, field.value.clone());
        }
    }
    Ok(out)
}

/// A secret reference in 1Password's syntax,
/// `op://<vault>/<item>/[<section>/]<field>`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub vault: String,
    pub item: String,
    pub section: Option<String>,
    pub field: String,
}

impl Reference {
    /// Parses `text`; the error says what is wrong, naming the reference.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("reference {text:?} {why}; write op://<vault>/<item>/[<section>/]<field>")
        };
        let rest = text
            .strip_prefix("op://")
            .ok_or_else(|| bad("does not start with op://"))?;
        if rest.contains('?') {
            return Err(format!(
                "reference {text:?} has query parameters (?attribute=...), which locket does not support: it serves stored values, not one-time codes"
            ));
        }
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(bad("has an empty part"));
        }
        match parts.as_slice() {
            [vault, item, field] => Ok(Self {
                vault: (*vault).into(),
                item: (*item).into(),
                section: None,
                field: (*field).into(),
            }),
            [vault, item, section, field] => Ok(Self {
                vault: (*vault).into(),
                item: (*item).into(),
                section: Some((*section).into()),
                field: (*field).into(),
            }),
            _ => Err(bad(
                "does not have 3 or 4 parts (a name with a `/` must be given by its id)",
            )),
        }
    }
}

/// Checks `references` against the source's vault (no I/O).
pub(crate) fn check_references(
    vault: &str,
    references: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    for (name, text) in references {
        if !crate::protocol::valid_secret_name(name) {
            return Err(format!(
                "references: {name:?} is not a usable secret name (empty, longer than 256 bytes or with control characters)"
            ));
        }
        let r = Reference::parse(text)?;
        if !r.vault.eq_ignore_ascii_case(vault) {
            return Err(format!(
                "reference {text:?} (for {name}) names vault {:?}, but this source reads vault {vault:?}; use one source per vault",
                r.vault
            ));
        }
    }
    Ok(())
}

/// The items `references` name, by id, from a listing: each must name one
/// item (by title, case-insensitive, or by id); the error names the
/// reference.
fn referenced_items(
    references: &std::collections::BTreeMap<String, String>,
    items: &[ItemSummary],
) -> Result<std::collections::BTreeSet<String>, LoadError> {
    let mut ids = std::collections::BTreeSet::new();
    for text in references.values() {
        let r = Reference::parse(text).map_err(LoadError::OnePassword)?;
        let matching: Vec<&ItemSummary> = items
            .iter()
            .filter(|i| i.id == r.item || i.title.eq_ignore_ascii_case(&r.item))
            .collect();
        match matching.as_slice() {
            [one] => {
                ids.insert(one.id.clone());
            }
            [] => {
                return Err(LoadError::OnePassword(format!(
                    "reference {text:?} names item {:?}, which the vault does not hold",
                    r.item
                )));
            }
            more => {
                return Err(LoadError::OnePassword(format!(
                    "reference {text:?} is ambiguous: {} items are titled {:?}; use the item's id in the reference",
                    more.len(),
                    r.item
                )));
            }
        }
    }
    Ok(ids)
}

/// The secrets `references` name, each resolved in the items read: the
/// field by label or id (case-insensitive), within the section when the
/// reference names one. A field that matches nothing or more than one is
/// an error naming the reference.
fn resolve(
    references: &std::collections::BTreeMap<String, String>,
    items: &[ItemSummary],
    memory: &SourceMemory,
) -> Result<SecretSet, LoadError> {
    let mut out = SecretSet::new();
    for (name, text) in references {
        let r = Reference::parse(text).map_err(LoadError::OnePassword)?;
        let item = items
            .iter()
            .find(|i| i.id == r.item || i.title.eq_ignore_ascii_case(&r.item))
            .and_then(|i| memory.items.get(&i.id))
            .ok_or_else(|| {
                LoadError::OnePassword(format!("reference {text:?} names an item not read"))
            })?;
        let matches = |a: &str, b: &str| !a.is_empty() && a.eq_ignore_ascii_case(b);
        let found: Vec<&CachedField> = item
            .fields
            .iter()
            .filter(|f| matches(&f.label, &r.field) || matches(&f.id, &r.field))
            .filter(|f| {
                r.section
                    .as_deref()
                    .is_none_or(|s| matches(&f.section_label, s) || matches(&f.section_id, s))
            })
            .collect();
        match found.as_slice() {
            [one] => out.push(name.clone(), one.value.clone()),
            [] => {
                return Err(LoadError::OnePassword(format!(
                    "reference {text:?} (for {name}) names a field item {:?} does not have (or one without a value)",
                    item.title
                )));
            }
            more => {
                return Err(LoadError::OnePassword(format!(
                    "reference {text:?} (for {name}) is ambiguous: {} fields of item {:?} match; name the section, or use the field's id",
                    more.len(),
                    item.title
                )));
            }
        }
    }
    Ok(out)
}

/// Remembers a freshly read item under `id`.
fn remember(memory: &mut SourceMemory, id: &str, version: (u64, String), item: Item) {
    memory.items.insert(id.to_owned(), cached(version, item));
}

/// The items of a listing that must be read: new, or of another version.
/// Items no longer listed are forgotten.
fn plan_round(
    memory: &mut SourceMemory,
    items: &[ItemSummary],
    only: Option<&std::collections::BTreeSet<String>>,
) -> Vec<(String, (u64, String), String)> {
    let wanted = |id: &str| only.is_none_or(|o| o.contains(id));
    let listed: std::collections::BTreeSet<&str> = items
        .iter()
        .map(|i| i.id.as_str())
        .filter(|id| wanted(id))
        .collect();
    memory.items.retain(|id, _| listed.contains(id.as_str()));
    items
        .iter()
        .filter(|i| wanted(&i.id))
        .filter(|i| {
            memory
                .items
                .get(&i.id)
                .is_none_or(|c| c.version != (i.version, i.updated_at.clone()))
        })
        .map(|i| {
            (
                i.id.clone(),
                (i.version, i.updated_at.clone()),
                i.title.clone(),
            )
        })
        .collect()
}

/// A request refused before it was made: the source waits, and says why.
fn held(hold: Hold) -> LoadError {
    match hold {
        Hold::RateLimited { until } => LoadError::RateLimited {
            until,
            detail: RATE_LIMITED.into(),
        },
        Hold::OverBudget {
            until,
            window,
            limit,
        } => LoadError::OverBudget {
            until,
            detail: format!(
                "the next request would pass {window} = {limit}; the last good values are served until room frees (raise {window}, or set it to 0 for no limit)"
            ),
        },
    }
}

/// Whether `op`'s stderr says the service account is rate-limited, and
/// until when: the time the message names ("retry in 58 minutes"), else
/// the end of 1Password's hourly window.
pub(crate) fn op_rate_limit(stderr: &str, now: SystemTime) -> Option<SystemTime> {
    let lower = stderr.to_ascii_lowercase();
    if !(lower.contains("too many requests")
        || lower.contains("(429)")
        || lower.contains("rate-limited")
        || lower.contains("rate limited"))
    {
        return None;
    }
    let wait = lower
        .split("retry in ")
        .nth(1)
        .or_else(|| lower.split("try again in ").nth(1))
        .and_then(|rest| {
            let mut words = rest.split_whitespace();
            let n: u64 = words.next()?.parse().ok()?;
            let unit = words.next()?;
            let secs = if unit.starts_with("hour") {
                n * 3600
            } else if unit.starts_with("minute") {
                n * 60
            } else if unit.starts_with("second") {
                n
            } else {
                return None;
            };
            Some(Duration::from_secs(secs.max(1)))
        })
        .unwrap_or(HOUR);
    Some(now + wait)
}

/// A vault given as a 1Password id (26 lowercase letters and digits).
fn is_vault_id(vault: &str) -> bool {
    vault.len() == 26
        && vault
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Why a get stopped a round.
enum Stop {
    Hold(Hold),
    Error(LoadError),
}

/// The `op` CLI: one `op item list`, then `op item get` for each item that
/// is new or changed, `limits.concurrency` at a time.
pub(crate) async fn load_cli(
    op: &str,
    vault: &str,
    token_file: &Path,
    limits: Limits,
    references: &std::collections::BTreeMap<String, String>,
    memory: &mut SourceMemory,
) -> Result<SecretSet, LoadError> {
    let token = read_token(token_file)?;
    // `op` keeps its config under $HOME unless OP_CONFIG_DIR names a
    // folder; under systemd's DynamicUser + ProtectHome only the latter is
    // writable, so the server's OP_CONFIG_DIR (the NixOS module sets it)
    // is passed on.
    let config_dir = std::env::var("OP_CONFIG_DIR").ok();
    let mut env = vec![("OP_SERVICE_ACCOUNT_TOKEN", token.as_str())];
    if let Some(dir) = &config_dir {
        env.push(("OP_CONFIG_DIR", dir.as_str()));
    }
    let argv = |args: &[&str]| -> Vec<String> {
        std::iter::once(op)
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    let vault_arg = memory.vault_id.clone().unwrap_or_else(|| vault.to_owned());
    let list_cost = if is_vault_id(&vault_arg) {
        OP_LIST_BY_ID
    } else {
        OP_LIST_BY_NAME
    };
    memory
        .spend(limits.budget, list_cost, SystemTime::now())
        .map_err(held)?;
    let run = |args: Vec<String>| {
        let env = &env;
        async move { super::command::run(&args, limits.timeout, env, None).await }
    };
    let list = run(argv(&[
        "item", "list", "--vault", &vault_arg, "--format", "json",
    ]))
    .await
    .map_err(|e| op_error(e, memory))?;
    let items: Vec<ItemSummary> = parse(&list, "the output of `op item list`")?;
    if memory.vault_id.is_none()
        && let Some(id) = items
            .iter()
            .find_map(|i| i.vault.as_ref())
            .map(|v| v.id.clone())
        && is_vault_id(&id)
    {
        memory.vault_id = Some(id);
    }
    let only = if references.is_empty() {
        None
    } else {
        Some(referenced_items(references, &items)?)
    };
    let wanted = plan_round(memory, &items, only.as_ref());
    let shared = Mutex::new(&mut *memory);
    let stop = AtomicBool::new(false);
    let vault_arg = &vault_arg;
    let results: Vec<Result<(), Stop>> = futures_util::stream::iter(wanted)
        .map(|(id, version, title)| {
            let (shared, stop, run, argv) = (&shared, &stop, &run, &argv);
            async move {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let spent = shared
                    .lock()
                    .map_err(|_| Stop::Error(LoadError::OnePassword("internal: poisoned".into())))?
                    .spend(limits.budget, OP_GET, SystemTime::now());
                if let Err(hold) = spent {
                    stop.store(true, Ordering::SeqCst);
                    return Err(Stop::Hold(hold));
                }
                let raw = run(argv(&[
                    "item", "get", &id, "--vault", vault_arg, "--format", "json",
                ]))
                .await;
                let mut memory = shared.lock().map_err(|_| {
                    Stop::Error(LoadError::OnePassword("internal: poisoned".into()))
                })?;
                match raw {
                    Ok(raw) => {
                        let item: Item = parse(
                            &raw,
                            &format!("the output of `op item get` for item {title:?}"),
                        )
                        .map_err(Stop::Error)?;
                        remember(&mut memory, &id, version, item);
                        Ok(())
                    }
                    // Deleted between the list and the get: gone.
                    Err(LoadError::Command {
                        stderr: Some(text), ..
                    }) if text.as_str().contains("isn't an item") => {
                        memory.items.remove(&id);
                        Ok(())
                    }
                    Err(e) => {
                        stop.store(true, Ordering::SeqCst);
                        Err(Stop::Error(op_error(e, &mut memory)))
                    }
                }
            }
        })
        .buffer_unordered(limits.concurrency.max(1))
        .collect()
        .await;
    finish_round(
        results,
        &items,
        memory,
        list_cost,
        limits.budget,
        references,
    )
}

/// The end of a round: the first reason it stopped, else the set; and the
/// pace of the next rounds inside the day's budget.
fn finish_round(
    results: Vec<Result<(), Stop>>,
    items: &[ItemSummary],
    memory: &mut SourceMemory,
    round_cost: u32,
    budget: Budget,
    references: &std::collections::BTreeMap<String, String>,
) -> Result<SecretSet, LoadError> {
    for r in results {
        match r {
            Ok(()) => {}
            Err(Stop::Hold(h)) => return Err(held(h)),
            Err(Stop::Error(e)) => return Err(e),
        }
    }
    memory.paced_every = budget.per_day.map(|day| {
        let share = (day / PACING_SHARE).max(1);
        Duration::from_secs(86_400 * u64::from(round_cost) / u64::from(share))
    });
    memory.next_due = memory
        .paced_every
        .map(|every| std::time::Instant::now() + every);
    if !references.is_empty() {
        return resolve(references, items, memory);
    }
    let order: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    assemble(&order, memory)
}

/// An `op` failure: a rate limit sets the source's wait (and is said so);
/// anything else passes through.
fn op_error(e: LoadError, memory: &mut SourceMemory) -> LoadError {
    if let LoadError::Command {
        stderr: Some(text), ..
    } = &e
        && let Some(until) = op_rate_limit(text.as_str(), SystemTime::now())
    {
        memory.rate_limited_until = Some(until);
        return LoadError::RateLimited {
            until,
            detail: RATE_LIMITED.into(),
        };
    }
    e
}

/// A 1Password Connect server: the vault's id once, then one listing per
/// round and a GET for each new or changed item.
pub(crate) async fn load_connect(
    url: &str,
    vault: &str,
    token_file: &Path,
    limits: Limits,
    references: &std::collections::BTreeMap<String, String>,
    memory: &mut SourceMemory,
) -> Result<SecretSet, LoadError> {
    let token = read_token(token_file)?;
    let http = crate::tls::http_client(crate::tls::Roots::for_urls([url]))
        .timeout(limits.timeout)
        .build().map_err(|e| {
        LoadError::OnePassword(format!("HTTP client: {e}; for an https:// Connect server the system's CA certificates must be installed"))
    })?;
    let base = url.trim_end_matches('/');
    let auth = Zeroizing::new(format!("Bearer {}", token.as_str()));
    let shared = Mutex::new(&mut *memory);
    let get = |path: String| {
        let (http, auth, shared) = (&http, &auth, &shared);
        async move { get_with_backoff(http, &path, auth, shared, limits.budget).await }
    };
    let cached = shared.lock().ok().and_then(|m| m.vault_id.clone());
    let vault_id = match cached {
        Some(id) => id,
        None => {
            let vaults: Vec<Vault> =
                parse(&get(format!("{base}/v1/vaults")).await?, "GET /v1/vaults")?;
            let id = vaults
                .iter()
                .find(|v| v.id == vault || v.name == vault)
                .map(|v| v.id.clone())
                .ok_or_else(|| {
                    LoadError::OnePassword(format!(
                        "vault {vault:?} not found (the token sees {} vaults)",
                        vaults.len()
                    ))
                })?;
            if let Ok(mut m) = shared.lock() {
                m.vault_id = Some(id.clone());
            }
            id
        }
    };
    let listed = get(format!("{base}/v1/vaults/{vault_id}/items")).await;
    if matches!(&listed, Err(LoadError::OnePassword(m)) if m.contains("404"))
        && let Ok(mut m) = shared.lock()
    {
        // The vault went away or was renamed: look it up again next time.
        m.vault_id = None;
    }
    let items: Vec<ItemSummary> = parse(&listed?, "GET items")?;
    let only = if references.is_empty() {
        None
    } else {
        Some(referenced_items(references, &items)?)
    };
    let wanted = match shared.lock() {
        Ok(mut m) => plan_round(&mut m, &items, only.as_ref()),
        Err(_) => return Err(LoadError::OnePassword("internal: poisoned".into())),
    };
    let stop = AtomicBool::new(false);
    let results: Vec<Result<(), Stop>> = futures_util::stream::iter(wanted)
        .map(|(id, version, title)| {
            let (shared, stop, get, vault_id) = (&shared, &stop, &get, &vault_id);
            async move {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                match get(format!("{base}/v1/vaults/{vault_id}/items/{id}")).await {
                    Ok(raw) => {
                        let item: Item =
                            parse(&raw, &format!("GET item {title:?}")).map_err(Stop::Error)?;
                        if let Ok(mut m) = shared.lock() {
                            remember(&mut m, &id, version, item);
                        }
                        Ok(())
                    }
                    Err(e) => {
                        stop.store(true, Ordering::SeqCst);
                        Err(Stop::Error(e))
                    }
                }
            }
        })
        .buffer_unordered(limits.concurrency.max(1))
        .collect()
        .await;
    // Connect has no service-account limits of its own: no pacing unless
    // the config set a day's budget.
    finish_round(results, &items, memory, 1, limits.budget, references)
}

/// GET with up to 5 tries, backing off on 5xx. A 429 stops the source
/// until its `Retry-After` (else a minute): no retry hammers a limited
/// service. Every try is a request, counted and budgeted. Errors name the
/// path, never the token.
async fn get_with_backoff(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
    memory: &Mutex<&mut SourceMemory>,
    budget: Budget,
) -> Result<Zeroizing<Vec<u8>>, LoadError> {
    let path = url
        .split_once("/v1/")
        .map(|(_, p)| format!("/v1/{p}"))
        .unwrap_or_else(|| url.to_owned());
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=5 {
        memory
            .lock()
            .map_err(|_| LoadError::OnePassword("internal: poisoned".into()))?
            .spend(budget, 1, SystemTime::now())
            .map_err(held)?;
        let response = http
            .get(url)
            .header("authorization", auth)
            .send()
            .await
            .map_err(|e| LoadError::OnePassword(format!("GET {path}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            let body = response
                .bytes()
                .await
                .map_err(|e| LoadError::OnePassword(format!("GET {path}: {e}")))?;
            return Ok(Zeroizing::new(body.to_vec()));
        }
        if status.as_u16() == 429 {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(60));
            let until = SystemTime::now() + wait.max(Duration::from_secs(1));
            if let Ok(mut m) = memory.lock() {
                m.rate_limited_until = Some(until);
            }
            return Err(LoadError::RateLimited {
                until,
                detail: format!(
                    "GET {path}: 429 Too Many Requests; no request is made until its Retry-After"
                ),
            });
        }
        if status.is_server_error() && attempt < 5 {
            tracing::debug!(path = %path, status = status.as_u16(), attempt, "1Password Connect failed; backing off");
            tokio::time::sleep(delay).await;
            delay *= 2;
            continue;
        }
        return Err(LoadError::OnePassword(match status.as_u16() {
            401 | 403 => format!("GET {path}: {status}; check the Connect token in token_file"),
            _ => format!("GET {path}: {status}"),
        }));
    }
    Err(LoadError::OnePassword(format!(
        "GET {path}: still failing after 5 tries"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &[u8]) -> Item {
        parse(json, "x").unwrap()
    }

    #[test]
    fn numbers_are_served_as_text_and_errors_never_quote_values() {
        let mut memory = SourceMemory::default();
        remember(
            &mut memory,
            "i1",
            (1, String::new()),
            item(br#"{"title":"db","fields":[{"label":"pin","value":123456},{"label":"on","value":true},{"label":"none"}]}"#),
        );
        let out = assemble(&["i1".into()], &memory).unwrap();
        let got: Vec<(&str, &str)> = out.iter().map(|(n, v)| (n.as_str(), v.expose())).collect();
        assert_eq!(got, [("db/pin", "123456"), ("db/on", "true")]);
        let Err(e) = parse::<Item>(br#"{"title":"db","fields":"hunter2-secret"}"#, "GET item")
        else {
            panic!("a string where fields belong must not parse");
        };
        let e = e.to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    /// Item `web` field `db/password` and item `web/db` field `password`
    /// make one name: an error naming both, never a silent winner.
    #[test]
    fn two_fields_making_one_name_are_an_error_naming_both() {
        let mut memory = SourceMemory::default();
        remember(
            &mut memory,
            "a",
            (1, String::new()),
            item(br#"{"title":"web","fields":[{"label":"db/password","value":"one-v"}]}"#),
        );
        remember(
            &mut memory,
            "b",
            (1, String::new()),
            item(br#"{"title":"web/db","fields":[{"label":"password","value":"two-v"}]}"#),
        );
        let e = assemble(&["a".into(), "b".into()], &memory)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("item \"web\" field \"db/password\"")
                && e.contains("item \"web/db\" field \"password\"")
                && e.contains("\"web/db/password\""),
            "{e}"
        );
        assert!(!e.contains("one-v") && !e.contains("two-v"), "{e}");
    }

    /// Only new and changed items are read; gone ones are forgotten.
    #[test]
    fn a_round_reads_only_new_and_changed_items() {
        let mut memory = SourceMemory::default();
        for id in ["same", "changed", "gone"] {
            remember(
                &mut memory,
                id,
                (3, "t".into()),
                item(br#"{"title":"x","fields":[]}"#),
            );
        }
        let listing: Vec<ItemSummary> = parse(
            br#"[{"id":"same","version":3,"updated_at":"t"},{"id":"changed","version":4,"updated_at":"t2"},{"id":"new","version":1}]"#,
            "x",
        )
        .unwrap();
        let wanted: Vec<String> = plan_round(&mut memory, &listing, None)
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(wanted, ["changed", "new"]);
        assert!(!memory.items.contains_key("gone"));
    }

    #[test]
    fn op_rate_limit_messages_give_the_wait() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(
            op_rate_limit(
                "[ERROR] 2023/06/26 11:55:32 (429) Too Many Requests: You've reached the maximum number of this type of requests this service account is allowed to make. Please retry in 58 minutes or try other requests.",
                now
            ),
            Some(now + Duration::from_secs(58 * 60))
        );
        assert_eq!(
            op_rate_limit(
                "Too many requests. Your client has been rate-limited. Try again in  seconds",
                now
            ),
            Some(now + HOUR)
        );
        assert_eq!(
            op_rate_limit("[ERROR] \"x\" isn't an item in the \"v\" vault.", now),
            None
        );
    }
}
