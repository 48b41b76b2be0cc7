//! Creating and checking files that hold keys or secrets.
//!
//! Such files are created with their final, restrictive mode from the first
//! byte (`open(O_CREAT|O_EXCL, mode)`), never written and then `chmod`ed, so
//! there is no window in which another user could open them.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

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
