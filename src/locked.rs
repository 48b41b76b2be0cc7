//! Page-aligned memory that stays out of swap and out of core dumps.
//!
//! The server keeps every secret value of a loaded set in one
//! [`LockedRegion`]: an anonymous private mapping marked `MADV_DONTDUMP` and
//! locked with `mlock`, so the values are neither written to swap nor to a
//! crash dump (core dumps are also off, see [`crate::hygiene`]). One region per
//! set, rather than one per value, keeps the cost at a few pages for 10,000
//! secrets and the `RLIMIT_MEMLOCK` need at the size of the values.
//!
//! Where the system refuses (an `RLIMIT_MEMLOCK` smaller than the set and no
//! `CAP_IPC_LOCK`), the region still works, unlocked, and
//! [`LockedRegion::status`] says why so the server can warn. The region is
//! wiped before it is unmapped.
//!
//! This module maps, locks and reads raw memory, so it is one of the two
//! places `unsafe` is allowed (see `[lints]` in Cargo.toml); every block says
//! why it is sound.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use zeroize::Zeroize;

/// Whether a region's pages are locked, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockStatus {
    /// Locked in RAM and excluded from core dumps.
    Locked,
    /// Nothing to lock (no values, or only empty ones).
    Empty,
    /// The region works but the system refused: the reason, to log.
    Unlocked(String),
}

/// Fixed-size memory filled once from byte slices, then read-only.
pub(crate) struct LockedRegion {
    ptr: Option<NonNull<u8>>,
    len: usize,
    mapped: usize,
    status: LockStatus,
}

// SAFETY: the region is written only in `new` (before it is shared) and in
// `drop` (when no reference remains); in between it is read-only.
unsafe impl Send for LockedRegion {}
// SAFETY: as for `Send`: shared references only ever read the region.
unsafe impl Sync for LockedRegion {}

impl std::fmt::Debug for LockedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedRegion")
            .field("len", &self.len)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(4096)
}

impl LockedRegion {
    /// Maps a region as long as all `parts` together, marks it, locks it and
    /// copies the parts in, one after another. Fails only if the mapping
    /// itself fails (out of memory).
    pub(crate) fn new(parts: &[&[u8]]) -> std::io::Result<Self> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return Ok(Self {
                ptr: None,
                len: 0,
                mapped: 0,
                status: LockStatus::Empty,
            });
        }
        let page = page_size();
        let mapped = total.div_ceil(page) * page;
        // SAFETY: a fresh anonymous private mapping; checked for MAP_FAILED.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        let mut problems = Vec::new();
        // Mark and lock before the secrets are copied in, so they never sit
        // in a swappable or dumpable page.
        // SAFETY: the range is exactly the mapping made above.
        if unsafe { libc::madvise(raw, mapped, libc::MADV_DONTDUMP) } != 0 {
            problems.push(format!(
                "madvise(MADV_DONTDUMP): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above.
        if unsafe { libc::mlock(raw, mapped) } != 0 {
            problems.push(format!(
                "mlock of {mapped} bytes: {} (raise LimitMEMLOCK / RLIMIT_MEMLOCK or grant CAP_IPC_LOCK)",
                std::io::Error::last_os_error()
            ));
        }
        let mut at = 0;
        for part in parts {
            // SAFETY: `at + part.len() <= total <= mapped` writable bytes at
            // `ptr`, which nothing else references yet.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), ptr.as_ptr().add(at), part.len())
            };
            at += part.len();
        }
        Ok(Self {
            ptr: Some(ptr),
            len: total,
            mapped,
            status: if problems.is_empty() {
                LockStatus::Locked
            } else {
                LockStatus::Unlocked(problems.join("; "))
            },
        })
    }

    /// The bytes copied in by [`LockedRegion::new`].
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self.ptr {
            // SAFETY: `len` initialised bytes, valid until drop.
            Some(p) => unsafe { std::slice::from_raw_parts(p.as_ptr(), self.len) },
            None => &[],
        }
    }

    pub(crate) fn status(&self) -> &LockStatus {
        &self.status
    }
}

impl Drop for LockedRegion {
    fn drop(&mut self) {
        if let Some(p) = self.ptr {
            // SAFETY: the whole mapping, exclusively ours now.
            unsafe {
                std::slice::from_raw_parts_mut(p.as_ptr(), self.mapped).zeroize();
                let raw = p.as_ptr().cast::<libc::c_void>();
                if self.status == LockStatus::Locked {
                    libc::munlock(raw, self.mapped);
                }
                libc::munmap(raw, self.mapped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_bytes_and_reports_its_state() {
        let r = LockedRegion::new(&[b"hunter", b"", b"2"]).unwrap();
        assert_eq!(r.as_slice(), b"hunter2");
        // Locked (root or a big enough RLIMIT_MEMLOCK) or an explanation.
        match r.status() {
            LockStatus::Locked => {}
            LockStatus::Unlocked(why) => assert!(why.contains("mlock"), "{why}"),
            LockStatus::Empty => panic!("not empty"),
        }
        assert!(!format!("{r:?}").contains("hunter2"));
        let empty = LockedRegion::new(&[b""]).unwrap();
        assert_eq!(empty.as_slice(), b"");
        assert_eq!(empty.status(), &LockStatus::Empty);
    }
}
