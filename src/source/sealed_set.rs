//! The server's last good set, as a sealed copy holds it: every source's
//! values with what it remembers of them (1Password: each item's version,
//! the vault's id), so that a restart serves at once and then reads only
//! what changed. The copy itself is sealed to the host by `crate::sealed`;
//! this module only turns [`Sources`] into plain text and back, in
//! zeroizing memory.
//!
//! A source is restored only if its settings are the same as when it was
//! sealed (compared by a SHA-256 of its settings, so the copy holds no
//! setting, such as a command's environment, in another form).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::SourceConfig;
use super::combine::{SourceState, Sources};
use super::memory::{CachedField, CachedItem, SourceMemory};
use crate::secret::SecretValue;
use crate::secret_set::SecretSet;
use crate::store::ServedSet;

/// A source's settings, as a digest: what a sealed source is matched by.
pub(crate) fn settings_digest(config: &SourceConfig) -> String {
    let json = serde_json::to_vec(config).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[derive(Serialize)]
struct PlainOut<'a> {
    sealed_at: u64,
    sources: Vec<SourceOut<'a>>,
}

#[derive(Serialize)]
struct SourceOut<'a> {
    settings: String,
    loaded_at: u64,
    values: Vec<(&'a str, &'a str)>,
    vault_id: Option<&'a str>,
    items: Vec<ItemOut<'a>>,
}

#[derive(Serialize)]
struct ItemOut<'a> {
    id: &'a str,
    version: u64,
    updated_at: &'a str,
    title: &'a str,
    fields: Vec<FieldOut<'a>>,
}

#[derive(Serialize)]
struct FieldOut<'a> {
    id: &'a str,
    label: &'a str,
    section_id: &'a str,
    section_label: &'a str,
    value: &'a str,
}

#[derive(Deserialize)]
struct PlainIn {
    sealed_at: u64,
    sources: Vec<SourceIn>,
}

#[derive(Deserialize)]
struct SourceIn {
    settings: String,
    loaded_at: u64,
    values: SecretSet,
    vault_id: Option<String>,
    items: Vec<ItemIn>,
}

#[derive(Deserialize)]
struct ItemIn {
    id: String,
    version: u64,
    updated_at: String,
    title: String,
    fields: Vec<FieldIn>,
}

#[derive(Deserialize)]
struct FieldIn {
    id: String,
    label: String,
    section_id: String,
    section_label: String,
    value: SecretValue,
}

/// What a sealed copy gave back.
#[derive(Debug)]
pub struct Restored {
    /// Each source's last good values, as sealed.
    pub sources: Sources,
    /// When the copy was sealed.
    pub sealed_at: SystemTime,
    /// How many of the configured sources it held (the others load fresh).
    pub matched: usize,
}

impl Sources {
    /// The plain text of a sealed copy of every source that has values, as
    /// of `now`; `None` while some source has none (a copy is only ever of
    /// a whole, good set).
    pub(crate) async fn seal_plain(&self, now: SystemTime) -> Option<Zeroizing<Vec<u8>>> {
        let mut memories = Vec::with_capacity(self.states().len());
        for state in self.states() {
            state.values.as_ref()?;
            memories.push(state.memory().lock().await);
        }
        let mut size = 256;
        let mut sources = Vec::new();
        for (state, memory) in self.states().iter().zip(&memories) {
            let values = state.values.as_ref()?;
            let items: Vec<ItemOut<'_>> = memory
                .items
                .iter()
                .map(|(id, item)| ItemOut {
                    id,
                    version: item.version.0,
                    updated_at: &item.version.1,
                    title: &item.title,
                    fields: item
                        .fields
                        .iter()
                        .map(|f| FieldOut {
                            id: &f.id,
                            label: &f.label,
                            section_id: &f.section_id,
                            section_label: &f.section_label,
                            value: f.value.expose(),
                        })
                        .collect(),
                })
                .collect();
            let pairs: Vec<(&str, &str)> = values.iter().map(|(n, v)| (n, v.expose())).collect();
            size += pairs
                .iter()
                .map(|(n, v)| 8 + 6 * (n.len() + v.len()))
                .sum::<usize>();
            size += items
                .iter()
                .map(|i| {
                    128 + 6 * i.title.len()
                        + i.fields
                            .iter()
                            .map(|f| {
                                64 + 6
                                    * (f.id.len()
                                        + f.label.len()
                                        + f.section_id.len()
                                        + f.section_label.len()
                                        + f.value.len())
                            })
                            .sum::<usize>()
                })
                .sum::<usize>();
            sources.push(SourceOut {
                settings: settings_digest(&state.config),
                loaded_at: secs(state.last_success.unwrap_or(now)),
                values: pairs,
                vault_id: memory.vault_id.as_deref(),
                items,
            });
        }
        // Sized up front (JSON escapes a byte into at most 6), so the
        // buffer never grows and leaves a copy of a value behind.
        let mut plain = Zeroizing::new(Vec::with_capacity(size));
        serde_json::to_writer(
            &mut *plain,
            &PlainOut {
                sealed_at: secs(now),
                sources,
            },
        )
        .ok()?;
        Some(plain)
    }

    /// Sources restored from a sealed copy's plain text, for `configs`:
    /// each configured source whose settings match a sealed one gets its
    /// values (as loaded when sealed) and its memory; the others start
    /// empty. An error says what is wrong with the copy, never a value.
    pub(crate) fn restore(
        plain: &[u8],
        configs: &[SourceConfig],
    ) -> Result<Restored, &'static str> {
        let parsed: PlainIn =
            serde_json::from_slice(plain).map_err(|e| crate::sealed::json_error_kind(&e))?;
        let sealed_at = UNIX_EPOCH + Duration::from_secs(parsed.sealed_at);
        let mut by_settings: BTreeMap<String, SourceIn> = parsed
            .sources
            .into_iter()
            .map(|s| (s.settings.clone(), s))
            .collect();
        let mut matched = 0;
        let states = configs
            .iter()
            .map(|config| {
                let Some(sealed) = by_settings.remove(&settings_digest(config)) else {
                    return SourceState::empty(config.clone());
                };
                matched += 1;
                let mut memory = SourceMemory::default();
                memory.vault_id = sealed.vault_id;
                memory.items = sealed
                    .items
                    .into_iter()
                    .map(|i| {
                        (
                            i.id,
                            CachedItem {
                                version: (i.version, i.updated_at),
                                title: i.title,
                                fields: i
                                    .fields
                                    .into_iter()
                                    .map(|f| CachedField {
                                        id: f.id,
                                        label: f.label,
                                        section_id: f.section_id,
                                        section_label: f.section_label,
                                        value: f.value,
                                    })
                                    .collect(),
                            },
                        )
                    })
                    .collect();
                let values = ServedSet::new(sealed.values.into_iter().collect());
                SourceState::sealed(
                    config.clone(),
                    values,
                    UNIX_EPOCH + Duration::from_secs(sealed.loaded_at),
                    memory,
                    sealed_at,
                )
            })
            .collect();
        Ok(Restored {
            sources: Sources::from_states(states),
            sealed_at,
            matched,
        })
    }
}

impl Sources {
    /// A digest of what a sealed copy would hold, but for the times: the
    /// settings, values and item versions of every source.
    pub(crate) async fn content_digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for state in self.states() {
            hash.update(settings_digest(&state.config).as_bytes());
            if let Some(values) = &state.values {
                for (name, value) in values.iter() {
                    hash.update((name.len() as u64).to_le_bytes());
                    hash.update(name.as_bytes());
                    hash.update((value.len() as u64).to_le_bytes());
                    hash.update(value.expose().as_bytes());
                }
            }
            let memory = state.memory().lock().await;
            for (id, item) in &memory.items {
                hash.update(id.as_bytes());
                hash.update(item.version.0.to_le_bytes());
                hash.update(item.version.1.as_bytes());
            }
        }
        hash.finalize().into()
    }
}

impl SourceState {
    fn sealed(
        config: SourceConfig,
        values: ServedSet,
        loaded_at: SystemTime,
        memory: SourceMemory,
        sealed_at: SystemTime,
    ) -> Self {
        let mut state = SourceState::empty(config);
        state.values = Some(Arc::new(values));
        state.last_success = Some(loaded_at);
        state.set_memory(memory);
        state.sealed_at = Some(sealed_at);
        state
    }
}
