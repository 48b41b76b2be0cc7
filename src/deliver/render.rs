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
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use crate::fsutil::TMP_PREFIX;
use crate::secret_set::SecretSet;

/// Name of the manifest of files written by locket in a render folder.
pub const MANIFEST: &str = ".locket-manifest";
/// The most bytes read of a bookkeeping file in a render folder (the
/// manifest lists file names: far less than this).
const MAX_READ: u64 = 1024 * 1024;

/// What `render` should write.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The folder, created when missing.
    pub dir: PathBuf,
    /// File mode, 0400 by default.
    pub mode: u32,
    /// Owner uid of the files; `None`: this process's.
    pub owner: Option<u32>,
    /// Group gid of the files; `None`: this process's.
    pub group: Option<u32>,
    /// Also write an env file (systemd `EnvironmentFile=` format) here.
    pub env_file: Option<PathBuf>,
    /// Templates rendered into the folder beside the secrets.
    pub templates: Vec<TemplateFile>,
}

/// A template and the file it renders to (in the render folder).
#[derive(Debug, Clone)]
pub struct TemplateFile {
    /// File name in the render folder.
    pub file: String,
    /// The parsed template.
    pub template: super::template::Template,
    /// The file's mode.
    pub mode: u32,
    /// Owner uid; `None`: this process's.
    pub owner: Option<u32>,
    /// Group gid; `None`: this process's.
    pub group: Option<u32>,
}

/// What changed on disk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RenderReport {
    /// Files whose content is new (or that did not exist).
    pub written: Vec<String>,
    /// Files already holding their value, left alone.
    pub unchanged: Vec<String>,
    /// Files rewritten only to restore their mode or owner: the content,
    /// and so what a consumer reads, is the same.
    pub repaired: Vec<String>,
    /// Files of secrets no longer granted, removed.
    pub removed: Vec<String>,
}

impl RenderReport {
    /// Whether what a consumer reads changed: content written or files
    /// removed. A repaired mode is not a change (it restarts nothing).
    pub fn changed(&self) -> bool {
        !self.written.is_empty() || !self.removed.is_empty()
    }
}

/// How a file on disk compares with what should be there.
#[derive(Debug, PartialEq, Eq)]
enum FileState {
    Same,
    /// Same content, other mode or owner.
    Metadata,
    /// Other content, or no such regular file.
    Different,
}

/// A render problem, naming the path and what to do.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
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
        "{path}: {why}; locket writes secrets only into a real folder (not a symbolic link) owned by root or by the files' owner and writable by no one else; fix the folder or choose another --dir"
    )]
    UnsafeFolder { path: PathBuf, why: String },
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
    #[error(transparent)]
    Template(#[from] super::template::TemplateError),
    #[error("template output {file:?} {why}; give the template another file name")]
    TemplateName { file: String, why: String },
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

/// A render folder, opened once without following a link and checked:
/// every file operation after that is relative to this handle, so a folder
/// renamed or swapped for a symlink after the check cannot redirect a write
/// or a removal.
struct Folder {
    fd: OwnedFd,
    path: PathBuf,
}

impl Folder {
    /// Opens `path` (creating it, and its missing parents, when absent) and
    /// refuses it unless it is a real folder, owned by root or by
    /// `target_uid`, and not writable by others.
    fn open(
        path: &Path,
        target_uid: u32,
        create: Option<(u32, Option<u32>, Option<u32>)>,
    ) -> Result<Self, RenderError> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
        let fd = match nix::fcntl::open(path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create.is_some() => {
                let (mode, owner, group) = create.expect("checked");
                if let Some(parent) = path.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(io_err(parent))?;
                }
                match fs::DirBuilder::new().mode(0o700).create(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(path)(e)),
                }
                let fd = nix::fcntl::open(path, flags, Mode::empty())
                    .map_err(|e| unsafe_folder(path, &e))?;
                // The umask (0077 under the NixOS module's hardening) narrows
                // the mode given at creation; set it exactly, so that
                // group-readable files (0440) sit in a folder the group can
                // enter.
                fchmod(&fd, Mode::from_bits_truncate(dir_mode(mode)))
                    .map_err(|e| io_err(path)(e.into()))?;
                if owner.is_some() || group.is_some() {
                    fchown(&fd, owner.map(Uid::from_raw), group.map(Gid::from_raw))
                        .map_err(|e| io_err(path)(e.into()))?;
                }
                fd
            }
            Err(e) => return Err(unsafe_folder(path, &e)),
        };
        let st = fstat(&fd).map_err(|e| io_err(path)(e.into()))?;
        let why = if st.st_uid != 0 && st.st_uid != target_uid {
            Some(format!(
                "it is owned by uid {}, neither root nor the files' owner ({target_uid})",
                st.st_uid
            ))
        } else if st.st_mode & 0o002 != 0 {
            Some(format!(
                "others may write to it (mode {:03o})",
                st.st_mode & 0o777
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(RenderError::UnsafeFolder {
                path: path.to_owned(),
                why,
            });
        }
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    fn err(&self, name: &str) -> impl FnOnce(Errno) -> RenderError + '_ {
        let path = self.path.join(name);
        move |e| RenderError::Io {
            path,
            source: e.into(),
        }
    }

    /// Atomically replaces `name` with `contents` (the one writer,
    /// [`crate::fsutil::replace_at`]), created with `mode` and owned by
    /// `owner`/`group`.
    fn write_atomic(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<u32>,
        group: Option<u32>,
    ) -> Result<(), RenderError> {
        let access = crate::fsutil::Access { mode, owner, group };
        crate::fsutil::replace_at(&self.fd, &self.path, name, contents, access).map_err(|e| {
            RenderError::Io {
                path: e.path,
                source: e.source,
            }
        })
    }

    /// Removes temporary files that a render killed while writing left
    /// behind (they may hold values): those of processes that are gone, and
    /// those of earlier versions, whose names carry no process id. A
    /// render running at the same time keeps its own.
    fn remove_stale(&self) {
        use std::os::fd::AsRawFd as _;
        let Ok(entries) = fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd())) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
                continue;
            };
            let alive = rest
                .split_once('-')
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
                .is_some_and(|pid| {
                    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
                });
            if !alive {
                let _ = unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir);
            }
        }
    }

    /// Whether `name` is a regular file (not a link) holding exactly
    /// `contents`, and whether it has this mode and ownership.
    fn state(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<u32>,
        group: Option<u32>,
    ) -> FileState {
        let Ok(fd) = openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        ) else {
            return FileState::Different;
        };
        let Ok(st) = fstat(&fd) else {
            return FileState::Different;
        };
        // Only a regular file of exactly this size is read, and no more of
        // it: the folder may belong to the consumer, whose user could put a
        // FIFO or a huge sparse file here.
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 != contents.len() as u64
        {
            return FileState::Different;
        }
        let mut old = zeroize::Zeroizing::new(Vec::with_capacity(contents.len() + 1));
        let bound = contents.len() as u64 + 1;
        match io::Read::read_to_end(&mut io::Read::take(File::from(fd), bound), &mut old) {
            Ok(_) if old.as_slice() == contents => {}
            _ => return FileState::Different,
        }
        if st.st_mode & 0o7777 != mode
            || owner.is_some_and(|u| u != st.st_uid)
            || group.is_some_and(|g| g != st.st_gid)
        {
            FileState::Metadata
        } else {
            FileState::Same
        }
    }

    /// Writes `contents` to `name` unless it is already there, recording
    /// in `report` what happened.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        name: &str,
        label: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<u32>,
        group: Option<u32>,
        report: &mut RenderReport,
    ) -> Result<(), RenderError> {
        let list = match self.state(name, contents, mode, owner, group) {
            FileState::Same => {
                report.unchanged.push(label.to_owned());
                return Ok(());
            }
            FileState::Metadata => &mut report.repaired,
            FileState::Different => &mut report.written,
        };
        self.write_atomic(name, contents, mode, owner, group)?;
        list.push(label.to_owned());
        Ok(())
    }

    /// The text of `name` if it is a regular file (not a link, not a FIFO
    /// or device, which could block or never end) of at most `max` bytes:
    /// the folder may belong to the consumer.
    fn read(&self, name: &str, max: u64) -> Option<String> {
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        let st = fstat(&fd).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 > max {
            return None;
        }
        io::read_to_string(io::Read::take(File::from(fd), max)).ok()
    }

    /// Removes `name` (a file or a link, never what a link points to).
    /// Returns whether there was one.
    fn remove(&self, name: &str) -> Result<bool, RenderError> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(self.err(name)(e)),
        }
    }
}

fn unsafe_folder(path: &Path, e: &Errno) -> RenderError {
    let why = match e {
        Errno::ELOOP => "it is a symbolic link".to_owned(),
        Errno::ENOTDIR => "it is not a folder".to_owned(),
        other => other.desc().to_owned(),
    };
    RenderError::UnsafeFolder {
        path: path.to_owned(),
        why,
    }
}

/// The mode of a render folder for files of `file_mode`: the group may
/// enter it exactly when the files are group-readable.
fn dir_mode(file_mode: u32) -> u32 {
    if file_mode & 0o040 != 0 { 0o750 } else { 0o700 }
}

/// Writes `secrets` into `opts.dir`, rewriting only what changed and removing
/// files written earlier that are no longer in `secrets`.
pub fn render(secrets: &SecretSet, opts: &RenderOptions) -> Result<RenderReport, RenderError> {
    render_in(secrets, opts, true)
}

/// As [`render`], into a folder that must already exist: the watcher's
/// refresh, which never creates a consumer's folder (the fetch unit does,
/// before its consumer starts, and [`super::prune`] removes it when the
/// consumer leaves the plan).
pub fn render_existing(
    secrets: &SecretSet,
    opts: &RenderOptions,
) -> Result<RenderReport, RenderError> {
    render_in(secrets, opts, false)
}

fn render_in(
    secrets: &SecretSet,
    opts: &RenderOptions,
    create: bool,
) -> Result<RenderReport, RenderError> {
    let dir = &opts.dir;
    let folder = Folder::open(
        dir,
        target_uid(opts),
        create.then_some((opts.mode, opts.owner, opts.group)),
    )?;
    folder.remove_stale();
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
    // Templates are rendered before anything is written: an unknown name
    // fails the whole render and leaves every delivered file as it was.
    let mut rendered = Vec::with_capacity(opts.templates.len());
    for t in &opts.templates {
        let why = if file_name(&t.file).ok().as_deref() != Some(t.file.as_str()) {
            Some("cannot be a file name (empty, `.`, `..`, has `/`, or starts with `.locket-`)")
        } else if env_file_here == Some(t.file.as_str()) {
            Some("is the env file's name")
        } else if names.contains(&t.file) {
            Some("is also a secret's file name")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(RenderError::TemplateName {
                file: t.file.clone(),
                why: why.to_owned(),
            });
        }
        names.insert(t.file.clone());
        rendered.push((t, t.template.render(secrets)?));
    }
    // Prepare the env file before touching anything, so a naming problem
    // fails the whole render.
    let env_text = match &opts.env_file {
        Some(_) => Some(super::output::systemd_env(secrets).map_err(RenderError::Env)?),
        None => None,
    };
    let mut report = RenderReport::default();
    for (file, value) in &files {
        let bytes = value.expose().as_bytes();
        folder.update(
            file,
            file,
            bytes,
            opts.mode,
            opts.owner,
            opts.group,
            &mut report,
        )?;
    }
    for (t, text) in &rendered {
        folder.update(
            &t.file,
            &t.file,
            text.as_bytes(),
            t.mode,
            t.owner,
            t.group,
            &mut report,
        )?;
    }
    let previous = folder.read(MANIFEST, MAX_READ).unwrap_or_default();
    for old in previous.lines().filter(|l| !l.is_empty()) {
        if !names.contains(old) && file_name(old).is_ok_and(|f| f == old) && folder.remove(old)? {
            report.removed.push(old.to_owned());
        }
    }
    let manifest: String = names.iter().map(|n| format!("{n}\n")).collect();
    if previous != manifest {
        folder.write_atomic(MANIFEST, manifest.as_bytes(), 0o600, None, None)?;
    }
    if let (Some(path), Some(text)) = (&opts.env_file, env_text) {
        // The env file's folder passes the same checks (it is not created).
        let (env_dir, env_name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(d), Some(n)) => (d, n),
            _ => {
                return Err(RenderError::UnsafeFolder {
                    path: path.clone(),
                    why: "--env-file must name a file in a folder".into(),
                });
            }
        };
        let env_folder = if env_dir == dir.as_path() {
            None
        } else {
            Some(Folder::open(env_dir, target_uid(opts), None)?)
        };
        let env_folder = env_folder.as_ref().unwrap_or(&folder);
        let label = path.display().to_string();
        env_folder.update(
            env_name,
            &label,
            &text,
            opts.mode,
            opts.owner,
            opts.group,
            &mut report,
        )?;
    }
    if !refused.is_empty() {
        return Err(RenderError::Refused(refused.join(", ")));
    }
    Ok(report)
}

/// Who the folder's files belong to: the options' owner, else this process.
fn target_uid(opts: &RenderOptions) -> u32 {
    opts.owner
        .unwrap_or_else(|| nix::unistd::geteuid().as_raw())
}

/// The render folder, which must exist, opened and checked as for a render.
fn existing_folder(opts: &RenderOptions) -> Result<Folder, RenderError> {
    Folder::open(&opts.dir, target_uid(opts), None)
}

/// The files a folder's last delivery wrote (its manifest), or `None` when
/// the folder is missing or unsafe or holds no manifest: what a fetch
/// without a server may keep, since nothing newer can replace it.
pub fn delivered(opts: &RenderOptions) -> Option<BTreeSet<String>> {
    let folder = existing_folder(opts).ok()?;
    let manifest = folder.read(MANIFEST, MAX_READ)?;
    Some(
        manifest
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// Atomically writes a small marker file (a name starting with `.locket-`)
/// into an existing render folder, with the same folder checks and
/// link-safe writes as the secrets (the folder may belong to the consumer).
pub fn write_marker(opts: &RenderOptions, name: &str, contents: &str) -> Result<(), RenderError> {
    debug_assert!(name.starts_with(".locket-"));
    let folder = existing_folder(opts)?;
    folder.write_atomic(name, contents.as_bytes(), 0o600, None, None)
}

/// Reads a marker file written by [`write_marker`] (never through a link;
/// at most 256 bytes, since the folder may belong to the consumer).
pub fn read_marker(opts: &RenderOptions, name: &str) -> Option<String> {
    let folder = existing_folder(opts).ok()?;
    let text = folder.read(name, 256)?;
    Some(text.trim().to_owned())
}
