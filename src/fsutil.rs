//! Creating, replacing and checking files that hold keys or secrets.
//!
//! Such files are created with their final, restrictive mode from the first
//! byte (`open(O_CREAT|O_EXCL, mode)`), never written and then `chmod`ed, so
//! there is no window in which another user could open them.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, linkat, unlinkat};

/// Creates `path` with `mode` (for example `0o600`), writes `contents` and
/// syncs it. Fails if the file already exists: a key is never overwritten.
pub(crate) fn create_private(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    let result = file.write_all(contents).and_then(|()| file.sync_all());
    if result.is_err() {
        // Never leave a partial key behind.
        let _ = fs::remove_file(path);
    }
    result
}

/// The permission bits of `path` that let group or others read, write or
/// execute it, or `None` when it is private to its owner.
pub(crate) fn loose_permissions(path: &Path) -> io::Result<Option<u32>> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

/// The start of a temporary file's name while [`replace_at`] writes it.
/// The process id follows, so a later writer can tell a leftover of a
/// writer that died (removed by the render folder's clean-up) from one
/// still at work.
pub(crate) const TMP_PREFIX: &str = ".locket-tmp-";

/// A file that could not be written, and why: the file as its reader
/// knows it (not the temporary name it is written under).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub(crate) struct WriteError {
    /// The file (or its temporary name, or its folder) that failed.
    pub(crate) path: PathBuf,
    /// What the system said.
    #[source]
    pub(crate) source: io::Error,
}

/// The mode and owners a replaced file gets before it has its name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

impl Access {
    /// `mode`, owned by whoever writes it.
    pub(crate) fn mode(mode: u32) -> Self {
        Self {
            mode,
            owner: None,
            group: None,
        }
    }
}

/// Atomically replaces `name` in the folder open as `dir` (called
/// `dir_path` in errors) with `contents`: the one writer of files that
/// readers must see whole (secret files, env files, templates, the boot
/// cache, the server's last-good set, the watcher's status).
///
/// The file gets its mode and owners before it has a name, is synced, is
/// renamed over the old one, and the folder is synced: a reader sees the
/// old file or the new one, never a partial one. It leaves nothing behind
/// on failure and, where the file system has `O_TMPFILE`, nothing even when
/// the process is killed while writing: the file has no name until it is
/// whole. Elsewhere its temporary name starts with [`TMP_PREFIX`] and this
/// process's id, so a later render can remove it if this process died.
pub(crate) fn replace_at(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    contents: &[u8],
    access: Access,
) -> Result<(), WriteError> {
    use std::os::fd::AsRawFd as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let err = |file: &str| {
        let path = dir_path.join(file);
        move |e: Errno| WriteError {
            path,
            source: e.into(),
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let tmp = format!(
        "{TMP_PREFIX}{}-{nanos:08x}{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mode = Mode::from_bits_truncate(access.mode);
    let result = (|| {
        let (fd, named) = match openat(
            dir,
            ".",
            OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            mode,
        ) {
            Ok(fd) => (fd, false),
            // No O_TMPFILE here: a named temporary file.
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => (
                openat(
                    dir,
                    tmp.as_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    mode,
                )
                .map_err(err(name))?,
                true,
            ),
            Err(e) => return Err(err(name)(e)),
        };
        // The umask may have narrowed the mode; set it exactly (the file
        // is still invisible, or under its temporary name).
        fchmod(&fd, mode).map_err(err(name))?;
        if access.owner.is_some() || access.group.is_some() {
            fchown(
                &fd,
                access.owner.map(Uid::from_raw),
                access.group.map(Gid::from_raw),
            )
            .map_err(err(name))?;
        }
        let mut f = fs::File::from(fd);
        f.write_all(contents)
            .and_then(|()| f.sync_all())
            .map_err(|source| WriteError {
                path: dir_path.join(name),
                source,
            })?;
        if !named {
            // Give the whole file a name (through /proc, which needs no
            // capability, unlike AT_EMPTY_PATH), then move it in place.
            let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
            linkat(
                AT_FDCWD,
                proc_path.as_str(),
                dir,
                tmp.as_str(),
                AtFlags::AT_SYMLINK_FOLLOW,
            )
            .map_err(err(name))?;
        }
        drop(f);
        renameat(dir, tmp.as_str(), dir, name).map_err(err(name))
    })();
    if result.is_err() {
        let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result?;
    fsync(dir).map_err(err("."))
}

/// [`replace_at`] for a path: its folder is opened (following links, as
/// the plain path it was given would) and `path`'s file name replaced in
/// it.
pub(crate) fn replace(path: &Path, contents: &[u8], access: Access) -> Result<(), WriteError> {
    let (dir_path, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(p), Some(n)) => (
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            },
            n,
        ),
        _ => {
            return Err(WriteError {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
            });
        }
    };
    let dir = nix::fcntl::open(
        dir_path,
        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(|e| WriteError {
        path: dir_path.to_owned(),
        source: e.into(),
    })?;
    replace_at(&dir, dir_path, name, contents, access)
}
