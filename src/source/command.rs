//! A program that prints secrets: `sops -d --output-type json FILE`,
//! `vault kv get -format=json PATH`, a script around `pass`...
//!
//! The program runs with an empty environment except `PATH`, `HOME`,
//! `LANG` and the source's own `env` table, so it never inherits the
//! server's secrets (an `env` source reads them from the server's
//! environment). It is killed when it exceeds its timeout, with every
//! process it started (it runs in a process group of its own). A non-zero exit,
//! a timeout or output that does not parse is a failed load, reported with
//! the program's stderr cut short; stdout is never shown.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use serde::{Deserialize, Serialize};

use super::{
    BoxFuture, LoadError, Loaded, SettingError, Source, SourceMemory, parse_dotenv, parse_json,
};
use crate::secret_set::SecretSet;

/// `type = "command"`: a program that prints a JSON object or dotenv text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct CommandSource {
    pub command: Vec<String>,
    #[serde(default)]
    pub format: CommandFormat,
    #[serde(default = "super::ten_seconds", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra environment for the program (its environment is otherwise
    /// empty but for PATH, HOME and LANG).
    #[serde(default)]
    pub env: CommandEnv,
}

/// A command source's extra environment. Its values may be credentials, so
/// `Debug` shows only the names.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct CommandEnv(pub BTreeMap<String, String>);

impl std::fmt::Debug for CommandEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, crate::secret::REDACTED)))
            .finish()
    }
}

/// What a `command` source prints.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub enum CommandFormat {
    #[default]
    Json,
    Dotenv,
}

impl Source for CommandSource {
    fn describe(&self) -> String {
        format!(
            "command {:?}",
            self.command.first().map(String::as_str).unwrap_or("")
        )
    }

    fn validate(&self) -> Result<(), SettingError> {
        if self.command.is_empty() {
            return Err(SettingError(
                "`command` is empty: give the program and its arguments, e.g. [\"sops\", \"-d\", \"secrets.json\"]".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(SettingError("`timeout` must be more than 0s".into()));
        }
        Ok(())
    }

    /// One run is one call to whatever the program asks (a KMS, a vault).
    fn cost(&self) -> u32 {
        1
    }

    fn load<'a>(&'a self, _: &'a mut SourceMemory) -> BoxFuture<'a, Loaded> {
        Box::pin(load(&self.command, self.format, self.timeout, &self.env.0))
    }
}

/// Most bytes of stdout read from a command.
pub(crate) const MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// Most characters of stderr quoted in an error.
pub(crate) const STDERR_SHOWN: usize = 400;

/// Runs `argv` and parses what it prints.
pub(crate) async fn load(
    argv: &[String],
    format: CommandFormat,
    timeout: Duration,
    extra_env: &BTreeMap<String, String>,
) -> Result<SecretSet, LoadError> {
    let env: Vec<(&str, &str)> = extra_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let stdout = run(argv, timeout, &env, None).await?;
    let text = std::str::from_utf8(&stdout)
        .map_err(|_| LoadError::command("its output is not UTF-8".into()))?;
    match format {
        CommandFormat::Json => parse_json(text),
        CommandFormat::Dotenv => parse_dotenv(text.as_bytes()),
    }
}

/// Runs a program with a clean environment and a timeout; returns its
/// stdout in zeroizing memory. `stdin` is written to it when given.
pub(crate) async fn run(
    argv: &[String],
    timeout: Duration,
    extra_env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, LoadError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| LoadError::command("`command` is empty".into()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(
            ["PATH", "HOME", "LANG"]
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
        )
        .envs(extra_env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills what it started
        // too (`sh -c` with a child that holds the output pipe).
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        LoadError::command(format!(
            "cannot run {program:?}: {e}; check `command` and PATH"
        ))
    })?;
    let _group = GroupKill(child.id());
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        let _ = pipe.write_all(input).await;
    }
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let work = async {
        let mut out = Zeroizing::new(Vec::new());
        let mut err = Vec::new();
        let read_out = async {
            let mut buf = [0u8; 8192];
            loop {
                let n = out_pipe.read(&mut buf).await?;
                if n == 0 || out.len() + n > MAX_OUTPUT {
                    return Ok::<_, std::io::Error>(n == 0);
                }
                out.extend_from_slice(&buf[..n]);
            }
        };
        // Read all of stderr (so the program never blocks on it), keep the start.
        let read_err = async {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if err.len() < 64 * 1024 {
                    err.extend_from_slice(&buf[..n]);
                }
            }
        };
        let (complete, _) = tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (out, err, complete, status)
    };
    let (out, err, complete, status) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| LoadError::command(format!("{program:?} did not finish within {timeout:?} (killed); raise `timeout` or check the program")))?;
    let stderr = cut(&String::from_utf8_lossy(&err));
    let status = status.map_err(|e| LoadError::command(format!("waiting for {program:?}: {e}")))?;
    if !status.success() {
        tracing::debug!(program = ?program, stderr = ?stderr, "a source command failed; its stderr");
        let stderr = super::ProgramText::new(stderr);
        return Err(LoadError::Command {
            message: format!(
                "{program:?} failed ({status}); its stderr is logged at debug level (--log-level debug) and printed by `locket check`"
            ),
            stderr: Some(stderr),
        });
    }
    match complete {
        Ok(true) => Ok(out),
        Ok(false) => Err(LoadError::command(format!(
            "{program:?} printed more than {MAX_OUTPUT} bytes"
        ))),
        Err(e) => Err(LoadError::command(format!("reading from {program:?}: {e}"))),
    }
}

/// Kills a program's whole process group when the load is over (done,
/// timed out or abandoned): nothing it started runs on, holding its pipes
/// or its share of a secret.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.and_then(|id| i32::try_from(id).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn cut(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".into();
    }
    let mut shown: String = text.chars().take(STDERR_SHOWN).collect();
    if shown.len() < text.len() {
        shown.push_str("...");
    }
    shown.replace('\n', " | ")
}
