//! `render`: one file per secret, atomic replacement, modes and ownership,
//! removal of files no longer granted; through the library and the binary.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::{Registered, ServerProcess, run_client_pinned, write_server_files};
use locket::deliver::render::{self, MANIFEST, RenderOptions};
use locket::secret::SecretValue;
use locket::secret_set::SecretSet;

fn set(pairs: &[(&str, &str)]) -> SecretSet {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), SecretValue::from(*v)))
        .collect()
}

fn opts(dir: &std::path::Path) -> RenderOptions {
    RenderOptions {
        dir: dir.to_owned(),
        mode: 0o400,
        owner: None,
        group: None,
        env_file: None,
        templates: Vec::new(),
    }
}

#[test]
fn writes_files_rewrites_only_changes_and_removes_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run/app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("not-ours.txt"), "keep me").unwrap();
    let mut o = opts(&dir);
    o.env_file = Some(dir.join("app.env"));

    let r = render::render(&set(&[("A", "1"), ("db/pw", "x\ny"), ("C", "3")]), &o).unwrap();
    assert_eq!(r.written.len(), 4, "{r:?}"); // three files + env file
    assert_eq!(std::fs::read_to_string(dir.join("A")).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(dir.join("db_pw")).unwrap(), "x\ny");
    assert_eq!(
        std::fs::metadata(dir.join("A")).unwrap().mode() & 0o7777,
        0o400
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("app.env")).unwrap(),
        "A=\"1\"\ndb_pw=\"x\ny\"\nC=\"3\"\n"
    );

    // Same values: nothing rewritten (inode unchanged).
    let inode = std::fs::metadata(dir.join("A")).unwrap().ino();
    let r = render::render(&set(&[("A", "1"), ("db/pw", "x\ny"), ("C", "3")]), &o).unwrap();
    assert!(!r.changed(), "{r:?}");
    assert_eq!(std::fs::metadata(dir.join("A")).unwrap().ino(), inode);

    // C revoked, A changed: C removed, A rewritten, other files untouched.
    let r = render::render(&set(&[("A", "2"), ("db/pw", "x\ny")]), &o).unwrap();
    assert_eq!(r.removed, ["C"]);
    assert!(r.written.contains(&"A".to_string()));
    assert!(!dir.join("C").exists());
    assert_eq!(std::fs::read_to_string(dir.join("A")).unwrap(), "2");
    assert_eq!(
        std::fs::read_to_string(dir.join("not-ours.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(MANIFEST)).unwrap(),
        "A\ndb_pw\n"
    );
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".locket-tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_file_name_clash_fails_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(tmp.path());
    // (A name that cannot be a file at all is refused alone: see
    // reserved_names_are_refused_alone_and_the_env_file_is_never_a_secret.)
    assert!(render::render(&set(&[("A", "1"), ("a/b", "1"), ("a_b", "2")]), &o).is_err());
    assert!(!tmp.path().join("A").exists());
}

#[test]
fn ownership_and_mode_are_applied() {
    // Runs as root in CI (chown needs it); as another user only the own uid works.
    let tmp = tempfile::tempdir().unwrap();
    let uid = if nix::unistd::geteuid().as_raw() == 0 {
        65534
    } else {
        nix::unistd::geteuid().as_raw()
    };
    let gid = if nix::unistd::geteuid().as_raw() == 0 {
        65534
    } else {
        nix::unistd::getegid().as_raw()
    };
    let mut o = opts(&tmp.path().join("svc"));
    o.mode = 0o440;
    o.owner = Some(uid);
    o.group = Some(gid);
    render::render(&set(&[("TOKEN", "t")]), &o).unwrap();
    let m = std::fs::metadata(tmp.path().join("svc/TOKEN")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o440, uid, gid));
    let d = std::fs::metadata(tmp.path().join("svc")).unwrap();
    assert_eq!((d.mode() & 0o777, d.uid(), d.gid()), (0o750, uid, gid));
}

#[test]
fn a_reader_never_sees_a_partial_value() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let a = "a".repeat(256 * 1024);
    let b = "b".repeat(300 * 1024);
    render::render(&set(&[("V", &a)]), &opts(&dir)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path, a, b) = (Arc::clone(&stop), dir.join("V"), a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = std::fs::read_to_string(&path).expect("the file always exists");
                assert!(v == a || v == b, "partial read of {} bytes", v.len());
                reads += 1;
            }
            reads
        })
    };
    for i in 0..200 {
        let v = if i % 2 == 0 { &b } else { &a };
        render::render(&set(&[("V", v)]), &opts(&dir)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 10, "the reader ran ({reads} reads)");
}

#[test]
fn render_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let clients = vec![Registered::new("svc", 21, &["127.0.0.1"], &["S_*"])];
    let config = write_server_files(
        tmp.path(),
        "S_ONE=one\nS_TWO=\"two words\"\nOTHER=x\n",
        &clients,
        "",
    );
    let server = ServerProcess::start(&config, &[]);
    let key = tmp.path().join("svc.key");
    locket::keys::ClientKey::from_seed(&[21; 32])
        .write_new(&key)
        .unwrap();
    let out = tmp.path().join("out");
    let (code, _, err) = run_client_pinned(
        &[
            "--server",
            &format!("http://{}", server.addr),
            "--name",
            "svc",
            "--key",
            key.to_str().unwrap(),
            "render",
            "--dir",
            out.to_str().unwrap(),
            "--env-file",
            out.join("svc.env").to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 written"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("S_TWO")).unwrap(),
        "two words"
    );
    assert_eq!(
        std::fs::metadata(out.join("S_ONE")).unwrap().mode() & 0o777,
        0o400
    );
    assert_eq!(
        std::fs::read_to_string(out.join("svc.env")).unwrap(),
        "S_ONE=\"one\"\nS_TWO=\"two words\"\n"
    );
    // A world-readable mode is refused as a usage error.
    let (code, _, _) = run_client_pinned(
        &[
            "--server",
            "http://127.0.0.1:1",
            "--name",
            "svc",
            "--key",
            key.to_str().unwrap(),
            "render",
            "--dir",
            "x",
            "--mode",
            "0644",
        ],
        tmp.path(),
    );
    assert_eq!(code, 2);
    server.stop();
}

#[test]
fn reserved_names_are_refused_alone_and_the_env_file_is_never_a_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run/app");
    // A name that cannot be a file: refused by name, the others written.
    let e = render::render(
        &set(&[("A", "1"), ("..", "x"), (".locket-manifest", "y")]),
        &opts(&dir),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("\"..\"") && e.contains("\".locket-manifest\""),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(dir.join("A")).unwrap(), "1");
    // A secret named like the env file in the same folder: an error, and
    // neither file is written over the other.
    let mut o = opts(&dir);
    o.env_file = Some(dir.join("env"));
    let e = render::render(&set(&[("A", "1"), ("env", "B=2")]), &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"env\"") && e.contains("--env-file"), "{e}");
    assert!(!dir.join("env").exists());
    // In another folder, the same names are fine.
    o.env_file = Some(tmp.path().join("app.env"));
    render::render(&set(&[("A", "1"), ("env", "B=2")]), &o).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("env")).unwrap(), "B=2");
}

#[test]
fn render_refuses_a_folder_it_cannot_trust_and_never_follows_links() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    // The folder is a symbolic link: refused, nothing written behind it.
    let link = tmp.path().join("link");
    symlink(&elsewhere, &link).unwrap();
    let e = render::render(&set(&[("A", "1")]), &opts(&link))
        .unwrap_err()
        .to_string();
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // Writable by others: refused.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = render::render(&set(&[("A", "1")]), &opts(&open))
        .unwrap_err()
        .to_string();
    assert!(e.contains("others may write"), "{e}");
    assert!(!open.join("A").exists());
    // Owned by someone else (needs root to arrange, as CI runs).
    if nix::unistd::geteuid().is_root() {
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        let e = render::render(&set(&[("A", "1")]), &opts(&foreign))
            .unwrap_err()
            .to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert!(!foreign.join("A").exists());
    }
    // A link planted where a secret file goes is replaced, never followed.
    let dir = tmp.path().join("ok");
    render::render(&set(&[("A", "1")]), &opts(&dir)).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    std::fs::remove_file(dir.join("A")).unwrap();
    symlink(&victim, dir.join("A")).unwrap();
    render::render(&set(&[("A", "2")]), &opts(&dir)).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(
        !std::fs::symlink_metadata(dir.join("A"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(dir.join("A")).unwrap(), "2");
}

/// Temporary files a killed render left behind (they may hold values) are
/// removed by the next render: those of a process that is gone and those of
/// earlier versions (no process id in the name); a render that is still
/// running keeps its own. A render itself leaves no temporary name behind.
#[test]
fn temporaries_of_killed_renders_are_removed_by_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run/app");
    std::fs::create_dir_all(&dir).unwrap();
    // A process id that is not running now.
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead = (2..max)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let gone = dir.join(format!(".locket-tmp-{dead}-0123abcd"));
    let old = dir.join(".locket-tmp-0123456789abcdef");
    let running = dir.join(format!(".locket-tmp-{}-feedbeef", std::process::id()));
    for f in [&gone, &old, &running] {
        std::fs::write(f, "a-leaked-value").unwrap();
    }
    render::render(&set(&[("A", "1")]), &opts(&dir)).unwrap();
    assert!(!gone.exists() && !old.exists(), "stale temporaries removed");
    assert!(running.exists(), "a running render's own file is kept");
    std::fs::remove_file(&running).unwrap();
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".locket-tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
