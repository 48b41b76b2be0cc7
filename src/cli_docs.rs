//! Man pages and shell completions, generated from the binaries' own clap
//! definitions (`locket generate …`, `locket-client generate …`), so that
//! they cannot drift from the flags they describe. The Nix package installs
//! them (`installManPage`, `installShellCompletion`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// What `generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Man pages, one per command and subcommand, into a folder.
    Man,
    /// A bash completion script, to stdout.
    Bash,
    /// A zsh completion script, to stdout.
    Zsh,
    /// A fish completion script, to stdout.
    Fish,
}

/// Why generating failed.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum GenerateError {
    #[error("--out FOLDER is needed for man pages (one file per command)")]
    NoFolder,
    #[error("cannot write {path}: {source}; check that the folder exists and is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `kind` for the command `cmd` (the binary's whole clap command):
/// man pages as `<out>/<name>.1` and `<out>/<name>-<sub>.1`, completions to
/// `stdout`. Returns the files written (none for completions).
pub fn generate(
    mut cmd: clap::Command,
    kind: Kind,
    out: Option<&Path>,
    stdout: &mut dyn Write,
) -> Result<Vec<PathBuf>, GenerateError> {
    let name = cmd.get_name().to_owned();
    let shell = match kind {
        Kind::Man => None,
        Kind::Bash => Some(clap_complete::Shell::Bash),
        Kind::Zsh => Some(clap_complete::Shell::Zsh),
        Kind::Fish => Some(clap_complete::Shell::Fish),
    };
    if let Some(shell) = shell {
        clap_complete::generate(shell, &mut cmd, name, stdout);
        return Ok(Vec::new());
    }
    let out = out.ok_or(GenerateError::NoFolder)?;
    cmd.build();
    let mut written = Vec::new();
    let version = cmd.get_version().map(str::to_owned);
    let mut pages = vec![(name.clone(), cmd.clone())];
    // clap's own `help` subcommand has no page of its own.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let sub = match &version {
            Some(v) => sub.clone().version(v.clone()),
            None => sub.clone(),
        };
        pages.push((format!("{name}-{}", sub.get_name()), sub));
    }
    for (page, command) in pages {
        let path = out.join(format!("{page}.1"));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(command.name(page))
            .render(&mut bytes)
            .map_err(|source| GenerateError::Write {
                path: path.clone(),
                source,
            })?;
        crate::fsutil::replace(&path, &bytes, crate::fsutil::Access::mode(0o644)).map_err(|e| {
            GenerateError::Write {
                path: e.path,
                source: e.source,
            }
        })?;
        written.push(path);
    }
    Ok(written)
}
