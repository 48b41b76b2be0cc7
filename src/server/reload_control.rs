//! The reload handshake between `locket serve` and `locket reload --wait`:
//! a reload whose outcome the caller (and so systemd) sees.
//!
//! Why: a bare `kill -HUP` returns before the server has read the file, so
//! `systemctl reload` and `nixos-rebuild switch` reported success for a
//! config the server then refused. Now the server publishes, in its runtime
//! directory (`RuntimeDirectory=`, or `--runtime-dir`), a small status file:
//! its pid, its config path, how many reloads it has started and finished,
//! and the last one's result with the reason. `locket reload --wait` reads
//! it, signals the pid, waits for a reload that started after the signal
//! to finish, and exits 0 only if it was applied.
//!
//! The server also speaks systemd's reload protocol: `RELOADING=1` with
//! `MONOTONIC_USEC=` when a reload starts and `READY=1` (with a `STATUS=`
//! line) when it ends, which `Type=notify-reload` (systemd 253 and later)
//! needs and `Type=notify` accepts.
//!
//! The file is mode 0600 in a folder of the server's own: a refused
//! config's reason names settings and files (never a secret value), which
//! is for the operator, not for anyone who can reach the port.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::systemd::{self, NotifyState};

/// The status file's name in the runtime directory.
pub const STATUS_FILE: &str = "reload.json";

/// What `locket serve` publishes about its reloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// The server's process id: the one `locket reload` signals.
    pub pid: u32,
    /// The config file the server reloads (absolute).
    pub config: PathBuf,
    /// Reloads started since the server started (signals acted on).
    pub started: u64,
    /// Reloads finished; equal to `started` when none is running.
    pub finished: u64,
    /// Whether the last finished reload applied the new config.
    pub applied: Option<bool>,
    /// Why the last finished reload refused the config.
    pub reason: Option<String>,
}

/// The server's side: keeps the status and publishes every change.
#[derive(Debug)]
pub(crate) struct Publisher {
    file: Option<PathBuf>,
    status: Mutex<ReloadStatus>,
}

impl Publisher {
    /// Publishes the initial status (no reload yet) into `runtime_dir`, if
    /// the server has one. A file that cannot be written is logged: the
    /// server serves either way, but `locket reload --wait` will say it
    /// found no status.
    pub(crate) fn new(runtime_dir: Option<&Path>, config: &Path) -> Self {
        let config = std::path::absolute(config).unwrap_or_else(|_| config.to_owned());
        let publisher = Self {
            file: runtime_dir.map(|d| d.join(STATUS_FILE)),
            status: Mutex::new(ReloadStatus {
                pid: std::process::id(),
                config,
                started: 0,
                finished: 0,
                applied: None,
                reason: None,
            }),
        };
        publisher.publish(&publisher.lock());
        publisher
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, status: &ReloadStatus) {
        let Some(file) = &self.file else {
            return;
        };
        let result = serde_json::to_vec_pretty(status)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                crate::fsutil::replace(file, &json, crate::fsutil::Access::mode(0o600))
                    .map_err(|e| e.source)
            });
        if let Err(e) = result {
            tracing::warn!(
                file = %file.display(),
                error = %e,
                "cannot publish the reload status; `locket reload --wait` will not see this reload's outcome"
            );
        }
    }

    /// A reload starts: counted, published, and told to systemd once the
    /// server has told it it is ready (`ready`; before that, a reload is
    /// part of starting).
    pub(crate) fn started(&self, ready: bool) {
        let mut status = self.lock();
        status.started += 1;
        self.publish(&status);
        if !ready {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => systemd::notify_all(&[NotifyState::Reloading, now]),
            Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for systemd"),
        }
    }

    /// The reload that started last has ended with `result`; `ready` as
    /// for [`Publisher::started`].
    pub(crate) fn finished(&self, result: Result<(), String>, ready: bool) {
        let mut status = self.lock();
        status.finished = status.started;
        status.applied = Some(result.is_ok());
        status.reason = result.as_ref().err().cloned();
        self.publish(&status);
        if !ready {
            return;
        }
        let line = match &result {
            Ok(()) => format!("reload {} applied", status.finished),
            Err(_) => format!(
                "reload {} refused; serving the previous config",
                status.finished
            ),
        };
        systemd::notify_all(&[NotifyState::Ready, NotifyState::Status(&line)]);
    }
}

/// Why `locket reload` failed. Exit codes: 1 refused, 3 no reload started
/// or no server found, 4 timed out.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum ReloadError {
    #[error(
        "no reload status in {dir}: {source}. Is `locket serve` running with this runtime directory (RuntimeDirectory=, or --runtime-dir as given to `locket serve`)?"
    )]
    NoStatus {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the reload status in {dir} is not one locket wrote: {source}")]
    BadStatus {
        dir: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the server in {dir} (pid {pid}) serves {serving}, not {asked}; pass the config it was started with"
    )]
    OtherConfig {
        dir: PathBuf,
        pid: u32,
        serving: PathBuf,
        asked: PathBuf,
    },
    #[error("cannot signal the server (pid {pid}): {source}; is it still running?")]
    Signal {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no reload started within {waited:?} after SIGHUP to pid {pid}; the server is not the one that wrote the status, or it is stuck (see its log)"
    )]
    NotStarted { pid: u32, waited: Duration },
    #[error(
        "the reload did not finish within {timeout:?}; it may still be loading sources (see the server's log), and the running config stays until it ends"
    )]
    TimedOut { timeout: Duration },
    #[error("the server refused the config and keeps serving the previous one: {reason}")]
    Refused { reason: String },
}

impl ReloadError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused { .. } => 1,
            Self::NoStatus { .. }
            | Self::BadStatus { .. }
            | Self::OtherConfig { .. }
            | Self::Signal { .. }
            | Self::NotStarted { .. } => 3,
            Self::TimedOut { .. } => 4,
        }
    }
}

/// Reads the status the server in `runtime_dir` published.
pub fn read_status(runtime_dir: &Path) -> Result<ReloadStatus, ReloadError> {
    let dir = runtime_dir.to_owned();
    let bytes =
        std::fs::read(runtime_dir.join(STATUS_FILE)).map_err(|source| ReloadError::NoStatus {
            dir: dir.clone(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|source| ReloadError::BadStatus { dir, source })
}

/// `locket reload`: signals the server in `runtime_dir` serving `config`
/// and, with `wait`, waits at most that long for the outcome of a reload
/// that started after the signal. Returns the finished status.
pub async fn reload(
    config: &Path,
    runtime_dir: &Path,
    wait: Option<Duration>,
) -> Result<ReloadStatus, ReloadError> {
    let before = read_status(runtime_dir)?;
    let asked = std::path::absolute(config).unwrap_or_else(|_| config.to_owned());
    if before.config != asked {
        return Err(ReloadError::OtherConfig {
            dir: runtime_dir.to_owned(),
            pid: before.pid,
            serving: before.config,
            asked,
        });
    }
    let pid = nix::unistd::Pid::from_raw(before.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).map_err(|e| {
        ReloadError::Signal {
            pid: before.pid,
            source: e.into(),
        }
    })?;
    let Some(timeout) = wait else {
        return Ok(before);
    };
    let start = Instant::now();
    // A reload that started after the signal read the file as it is now.
    let started = loop {
        let now = read_status(runtime_dir)?;
        if now.started > before.started {
            break now.started;
        }
        if start.elapsed() >= timeout {
            return Err(ReloadError::NotStarted {
                pid: before.pid,
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    loop {
        let now = read_status(runtime_dir)?;
        if now.finished >= started {
            return match now.applied {
                Some(true) => Ok(now),
                _ => Err(ReloadError::Refused {
                    reason: now.reason.unwrap_or_else(|| "no reason given".into()),
                }),
            };
        }
        if start.elapsed() >= timeout {
            return Err(ReloadError::TimedOut { timeout });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
