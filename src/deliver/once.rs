//! One delivery: one request for a set of consumers, each consumer's part
//! rendered into its folder, and the boot cache standing in when no server
//! answers.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::cache::BootCache;
use super::plan::{Consumer, DeliverError, DeliveryPlan};
use super::render::{self, RenderReport};
use crate::client::{Client, ClientError};
use crate::secret_set::SecretSet;

/// The names one request asks for: the union of the consumers' names, or
/// every granted secret when one of them asks for all.
pub(super) fn union(consumers: &[&Consumer]) -> Vec<String> {
    if consumers.iter().any(|c| c.secrets.is_empty()) {
        return Vec::new();
    }
    let set: BTreeSet<&String> = consumers.iter().flat_map(|c| &c.secrets).collect();
    set.into_iter().cloned().collect()
}

/// `consumer`'s part of an answer, whole or not at all.
pub(super) fn part(consumer: &Consumer, all: &SecretSet) -> Result<SecretSet, DeliverError> {
    all.select(&consumer.secrets)
        .map_err(|name| DeliverError::Missing {
            consumer: consumer.name.clone(),
            name,
        })
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
pub(super) async fn deliver_set(
    consumer: &Consumer,
    secrets: &SecretSet,
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
    plan: &DeliveryPlan,
    consumers: &[Consumer],
) -> Result<(), DeliverError> {
    super::prune(plan);
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
            // A consumer whose folder still holds a whole delivery keeps
            // it; else one with a boot cache gets its copy; any other
            // consumer (or one whose copy cannot stand in) fails with the
            // fetch's own error, after every consumer had its chance.
            let mut any_failed = false;
            for c in consumers {
                if kept(c, &e) {
                    continue;
                }
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

/// Whether `consumer`'s folder still holds a whole delivery for its plan
/// entry (every secret, template and the env file), which it then keeps
/// after `fetch` found no server.
///
/// Why: the folder lives on a RAM file system, so it is from this boot,
/// and the watcher kept it current while a server answered. A consumer
/// restarted during an outage (a crash, a `nixos-rebuild switch` that
/// changed its unit) then starts on the values it was running with,
/// instead of failing for want of files that are there. A folder missing a
/// file the plan now asks for is not kept, and a denial is an answer: it
/// never gets here.
fn kept(consumer: &Consumer, fetch: &ClientError) -> bool {
    let Some(files) = render::delivered(&consumer.options) else {
        return false;
    };
    let has = |file: &str| files.contains(file);
    let whole = consumer
        .secrets
        .iter()
        .all(|name| render::file_name(name).is_ok_and(|f| has(&f)))
        && consumer.options.templates.iter().all(|t| has(&t.file))
        && consumer
            .options
            .env_file
            .as_ref()
            .is_none_or(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
    if whole {
        tracing::warn!(
            "consumer {}: no server answered ({fetch}); kept the files already in {} (from: {}). The watcher replaces them when a server answers",
            consumer.name,
            consumer.options.dir.display(),
            origin(consumer).unwrap_or_else(|| "unknown".to_owned())
        );
    }
    whole
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
        &format!("cache {}", crate::clock::timestamp(cached.fetched_at)),
    );
    tracing::warn!(
        "consumer {}: no server answered ({fetch}); delivered the cached copy fetched at {} ({} ago, cache_max_age {}). The next successful fetch replaces it",
        consumer.name,
        crate::clock::timestamp(cached.fetched_at),
        crate::clock::human(age),
        crate::clock::human(max_age)
    );
    Ok(true)
}
