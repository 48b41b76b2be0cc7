//! Writing secrets as files: one file per secret, holding exactly its value,
//! for systemd `LoadCredential=` / `EnvironmentFile=` and programs that read
//! secrets from files.
//!
//! Each file is replaced atomically: written to a temporary file in the same
//! folder (created with its final mode, owner set before it is visible),
//! fsynced, then renamed over the old one, and the folder is fsynced. A
//! reader sees the old value or the new one, never a partial file. Files that
//! an earlier run wrote and that are no longer granted are removed; the list
//! of what locket wrote lives in `.locket-manifest`, so files that other
//! tools put in the folder are never touched.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::secret::SecretValue;

/// Name of the manifest of files written by locket in a render folder.
pub const MANIFEST: &str = ".locket-manifest";
const TMP_PREFIX: &str = ".locket-tmp-";

/// What `render` should write.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub dir: PathBuf,
    /// File mode, 0400 by default.
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    /// Also write an env file (systemd `EnvironmentFile=` format) here.
    pub env_file: Option<PathBuf>,
}

/// What changed on disk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RenderReport {
    pub written: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
}

impl RenderReport {
    pub fn changed(&self) -> bool {
        !self.written.is_empty() || !self.removed.is_empty()
    }
}

/// A render problem, naming the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "secret name {0:?} cannot be a file name (empty, `.`, `..`, or starts with `.locket-`)"
    )]
    Name(String),
    #[error("two secrets map to the file name {0:?}")]
    Clash(String),
    #[error(
        "secret {secret:?} would be written to {path}, which is the --env-file; ask for the secrets by name, or put the env file in another folder"
    )]
    EnvFileClash { secret: String, path: PathBuf },
    #[error(
        "not written: {0}; their names cannot be file names (empty, `.`, `..`, or starting with `.locket-`); the other secrets were written"
    )]
    Refused(String),
    #[error("unknown user {0:?}")]
    User(String),
    #[error("unknown group {0:?}")]
    Group(String),
    #[error(transparent)]
    Env(#[from] super::output::FormatError),
    #[error("cannot name a temporary file: {0}")]
    Random(crate::crypto::CryptoError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RenderError + '_ {
    move |source| RenderError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file name for a secret: the name with `/` replaced by `_`.
pub fn file_name(secret: &str) -> Result<String, RenderError> {
    let name = secret.replace('/', "_");
    if name.is_empty() || name == "." || name == ".." || name.starts_with(".locket-") {
        return Err(RenderError::Name(secret.to_owned()));
    }
    Ok(name)
}

/// Resolves a user name or numeric uid (through NSS, thread-safely).
pub fn lookup_user(user: &str) -> Result<u32, RenderError> {
    if let Ok(uid) = user.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(RenderError::User(user.to_owned())),
    }
}

/// Resolves a group name or numeric gid (through NSS, thread-safely).
pub fn lookup_group(group: &str) -> Result<u32, RenderError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(RenderError::Group(group.to_owned())),
    }
}

/// Atomically replaces `path` with `contents`, created with `mode` and
/// owned by `owner`/`group`. Leaves nothing behind on failure.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> Result<(), RenderError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let suffix = hex::encode(crate::crypto::random_bytes::<8>().map_err(RenderError::Random)?);
    let tmp = dir.join(format!("{TMP_PREFIX}{suffix}"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // The umask may have narrowed the mode; set it exactly (the file is
        // still invisible under its temporary name).
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        if owner.is_some() || group.is_some() {
            std::os::unix::fs::fchown(&f, owner, group).map_err(io_err(&tmp))?;
        }
        f.write_all(contents).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), RenderError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn same_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file()
        || meta.mode() & 0o7777 != mode
        || owner.is_some_and(|u| u != meta.uid())
        || group.is_some_and(|g| g != meta.gid())
    {
        return false;
    }
    match fs::read(path) {
        Ok(old) => {
            let old = zeroize::Zeroizing::new(old);
            old.as_slice() == contents
        }
        Err(_) => false,
    }
}

/// The mode of a render folder for files of `file_mode`: the group may
/// enter it exactly when the files are group-readable.
fn dir_mode(file_mode: u32) -> u32 {
    if file_mode & 0o040 != 0 { 0o750 } else { 0o700 }
}

/// Writes `secrets` into `opts.dir`, rewriting only what changed and removing
/// files written earlier that are no longer in `secrets`.
pub fn render(
    secrets: &[(String, SecretValue)],
    opts: &RenderOptions,
) -> Result<RenderReport, RenderError> {
    let dir = &opts.dir;
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        // The umask (0077 under the NixOS module's hardening) narrows the
        // mode given at creation; set it exactly, so that group-readable
        // files (0440) sit in a folder the group can enter.
        fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode(opts.mode)))
            .map_err(io_err(dir))?;
        if opts.owner.is_some() || opts.group.is_some() {
            std::os::unix::fs::chown(dir, opts.owner, opts.group).map_err(io_err(dir))?;
        }
    }
    let mut names = BTreeSet::new();
    let mut files = Vec::with_capacity(secrets.len());
    // A name that cannot be a file is refused alone: the others are still
    // written, and the error names it once they are.
    let mut refused = Vec::new();
    // The env file, when it sits in the folder, takes its name there.
    let env_file_here = opts
        .env_file
        .as_ref()
        .filter(|p| p.parent() == Some(dir))
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str());
    for (name, value) in secrets {
        let file = match file_name(name) {
            Ok(f) => f,
            Err(RenderError::Name(n)) => {
                refused.push(format!("{n:?}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        if env_file_here == Some(file.as_str()) {
            return Err(RenderError::EnvFileClash {
                secret: name.clone(),
                path: dir.join(&file),
            });
        }
        if !names.insert(file.clone()) {
            return Err(RenderError::Clash(file));
        }
        files.push((file, value));
    }
    // Prepare the env file before touching anything, so a naming problem
    // fails the whole render.
    let env_text = match &opts.env_file {
        Some(_) => Some(super::output::systemd_env(secrets).map_err(RenderError::Env)?),
        None => None,
    };
    let mut report = RenderReport::default();
    for (file, value) in &files {
        let path = dir.join(file);
        if same_file(
            &path,
            value.expose().as_bytes(),
            opts.mode,
            opts.owner,
            opts.group,
        ) {
            report.unchanged.push(file.clone());
        } else {
            write_atomic(
                &path,
                value.expose().as_bytes(),
                opts.mode,
                opts.owner,
                opts.group,
            )?;
            report.written.push(file.clone());
        }
    }
    let manifest_path = dir.join(MANIFEST);
    let previous = fs::read_to_string(&manifest_path).unwrap_or_default();
    for old in previous.lines().filter(|l| !l.is_empty()) {
        if !names.contains(old) && file_name(old).is_ok_and(|f| f == old) {
            match fs::remove_file(dir.join(old)) {
                Ok(()) => report.removed.push(old.to_owned()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RenderError::Io {
                        path: dir.join(old),
                        source: e,
                    });
                }
            }
        }
    }
    let manifest: String = names.iter().map(|n| format!("{n}\n")).collect();
    if previous != manifest {
        write_atomic(&manifest_path, manifest.as_bytes(), 0o600, None, None)?;
    }
    if let (Some(path), Some(text)) = (&opts.env_file, env_text)
        && !same_file(path, &text, opts.mode, opts.owner, opts.group)
    {
        write_atomic(path, &text, opts.mode, opts.owner, opts.group)?;
        report.written.push(path.display().to_string());
    }
    if !refused.is_empty() {
        return Err(RenderError::Refused(refused.join(", ")));
    }
    Ok(report)
}
