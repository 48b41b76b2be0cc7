//! Finding the config of the `locket serve` running on this host, for
//! `locket plan` without `--against`, trusting only what deserves it.
//!
//! `plan --resolve` runs the sources of the config it finds, `command`
//! sources included, as the caller (often root, in a deploy script), and
//! plan's exit code is what deploy scripts act on. So a process counts only
//! when all of these hold:
//!
//! * its executable is this very `locket` (the same file, compared by
//!   device and inode through `/proc/PID/exe`), not a process that merely
//!   calls itself `locket` (`exec -a locket ...`);
//! * its real and effective user are root or the caller;
//! * its config file, opened once and checked through that handle, is owned
//!   by root or the caller and writable by neither group nor others.
//!
//! The text is read through the same handle that was checked, so the file
//! cannot be swapped between the check and the read. Anything skipped is
//! named in the error, so an operator sees why nothing was found.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Why no trustworthy running config was found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot read /proc to find the running `locket serve`: {0}; pass --against OLD.toml")]
    Proc(#[source] std::io::Error),
    #[error("no running `locket serve` found on this host to compare with{}; pass --against OLD.toml", skipped_text(.skipped))]
    NoneFound {
        /// Processes or files that looked like a server but were not
        /// trusted, each with the reason.
        skipped: Vec<String>,
    },
    #[error("several `locket serve` are running ({}); pass --against with the one to compare with", list(.0))]
    Several(Vec<PathBuf>),
}

fn skipped_text(skipped: &[String]) -> String {
    if skipped.is_empty() {
        String::new()
    } else {
        format!(" (not trusted: {})", skipped.join("; "))
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A running server's config, read through a checked handle.
#[derive(Debug)]
pub(crate) struct RunningConfig {
    /// The config file as the process named it (absolute).
    pub path: PathBuf,
    /// Its text, read through the handle whose owner and mode were checked.
    pub text: String,
}

/// The config of the one trustworthy `locket serve` on this host.
pub(crate) fn running_server_config() -> Result<RunningConfig, DiscoverError> {
    let caller = nix::unistd::getuid().as_raw();
    let own = std::fs::metadata("/proc/self/exe").map_err(DiscoverError::Proc)?;
    let own = (own.dev(), own.ino());
    let mut found: Vec<RunningConfig> = Vec::new();
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(DiscoverError::Proc)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
        else {
            continue;
        };
        if pid == std::process::id().to_string() {
            continue;
        }
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let Some(config) = serve_config_arg(&cmdline) else {
            continue;
        };
        match judge(&dir, &config, caller, own) {
            Ok(running) => found.push(running),
            Err(why) => skipped.push(format!("process {pid}: {why}")),
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path);
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(DiscoverError::NoneFound { skipped }),
        _ => Err(DiscoverError::Several(
            found.into_iter().map(|r| r.path).collect(),
        )),
    }
}

/// The `--config` of a command line that looks like `... serve --config X`
/// (argv[0] is not looked at: only the executable counts, in [`judge`]).
fn serve_config_arg(cmdline: &[u8]) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if !args.iter().skip(1).any(|a| *a == b"serve") {
        return None;
    }
    let config = args
        .windows(2)
        .find(|w| w[0] == b"--config")
        .map(|w| w[1])
        .or_else(|| args.iter().find_map(|a| a.strip_prefix(b"--config=")))?;
    std::str::from_utf8(config).ok().map(str::to_owned)
}

/// Whether the process at `dir` (`/proc/PID`) and its config may be
/// trusted by `caller`; the config's text when they may.
fn judge(dir: &Path, config: &str, caller: u32, own: (u64, u64)) -> Result<RunningConfig, String> {
    let status = std::fs::read_to_string(dir.join("status"))
        .map_err(|e| format!("cannot read its status: {e}"))?;
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let trusted_user = |u: u32| u == 0 || u == caller;
    if uids.len() < 2 || !uids[..2].iter().all(|u| trusted_user(*u)) {
        return Err(format!(
            "it runs as uid {}, neither root nor you",
            uids.get(1).map_or_else(|| "?".into(), u32::to_string)
        ));
    }
    let exe = std::fs::metadata(dir.join("exe")).map_err(|e| {
        format!("cannot inspect its executable ({e}); run plan as root or the server's user")
    })?;
    if (exe.dev(), exe.ino()) != own {
        let shown = std::fs::read_link(dir.join("exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(format!(
            "its executable {shown} is not this locket (an upgraded server? then name its config with --against)"
        ));
    }
    let path = Path::new(config);
    let path = if path.is_absolute() {
        path.to_owned()
    } else {
        let cwd = std::fs::read_link(dir.join("cwd"))
            .map_err(|e| format!("cannot read its working folder for {config}: {e}"))?;
        cwd.join(path)
    };
    let text = read_trusted(&path, caller)
        .map_err(|why| format!("its config {}: {why}", path.display()))?;
    Ok(RunningConfig { path, text })
}

/// Reads `path` if, checked through the open handle, it is a regular file
/// owned by root or `caller` that neither group nor others can write.
fn read_trusted(path: &Path, caller: u32) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != 0 && meta.uid() != caller {
        return Err(format!(
            "owned by uid {}, neither root nor you; it is not read",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} lets group or others write it; it is not read (chmod go-w)",
            meta.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    (&mut file)
        .take(16 * 1024 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_serve_command_lines_with_a_config_count() {
        let line = |args: &[&str]| args.join("\0").into_bytes();
        assert_eq!(
            serve_config_arg(&line(&["locket", "serve", "--config", "a.toml"])).as_deref(),
            Some("a.toml")
        );
        assert_eq!(
            serve_config_arg(&line(&["x", "serve", "--config=/b.toml"])).as_deref(),
            Some("/b.toml")
        );
        assert_eq!(serve_config_arg(&line(&["serve", "--config", "c"])), None);
        assert_eq!(
            serve_config_arg(&line(&["locket", "check", "--config", "c"])),
            None
        );
    }
}
