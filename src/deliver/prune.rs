//! Removing the folders of consumers that left the plan.
//!
//! Why here and not in a unit's `ExecStopPost=`: a fetch unit is stopped
//! (and restarted) for many reasons while its consumer keeps running, and
//! a stop cannot tell "restarting" from "gone". Only the plan knows that a
//! consumer is gone, and a delivery reads the plan as it is now, so each
//! delivery removes what the current plan no longer names, and nothing
//! else: a folder is removed only when it sits directly under
//! `prune_under`, is a real folder (not a link), holds a delivery's
//! manifest, and is no consumer's folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::plan::DeliveryPlan;
use super::render::MANIFEST;

/// Removes the folders under the plan's `prune_under` that a delivery
/// wrote and no consumer of the plan uses; returns them. Problems are
/// logged, never fatal: a leftover folder must not stop a delivery.
pub fn prune(plan: &DeliveryPlan) -> Vec<PathBuf> {
    let Some(root) = &plan.prune_under else {
        return Vec::new();
    };
    let used: BTreeSet<&Path> = plan
        .consumers
        .values()
        .flat_map(|c| {
            c.dir
                .as_deref()
                .into_iter()
                .chain(c.env_file.as_deref().and_then(Path::parent))
        })
        .collect();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(
                "cannot list {} to remove folders of consumers no longer in the plan: {e}",
                root.display()
            );
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        // file_type() does not follow a link: a link is never removed
        // through, nor is anything but a folder.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let delivered = std::fs::symlink_metadata(path.join(MANIFEST)).is_ok_and(|m| m.is_file());
        if !is_dir || !delivered || used.contains(path.as_path()) {
            continue;
        }
        // remove_dir_all works below an opened handle and never follows a
        // link inside the folder.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(
                    "removed {}: no consumer of the plan uses it any more",
                    path.display()
                );
                removed.push(path);
            }
            Err(e) => tracing::warn!(
                "cannot remove {} (no consumer of the plan uses it): {e}",
                path.display()
            ),
        }
    }
    removed
}
