//! The credential socket (#29) through the real binaries: the real server,
//! the real watcher (`locket-client deliver --plan --watch`), and a peer
//! that connects as systemd's `LoadCredential=` does: bound to the abstract
//! address `\0<hex>/unit/<unit>/<ID>`, write side shut, reading to the end.
//! (The guest-machine test does the same under a real systemd 252.)

use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::socket::{
    AddressFamily, Shutdown, SockFlag, SockType, UnixAddr, bind, connect, shutdown, socket,
};

use crate::deliver_plan::{Setup, read, rounds, setup, wait_for};
use crate::support::client_command;

/// What a peer bound to `name` (an abstract address, without its NUL; or
/// unbound with `None`) reads from the socket at `path`.
fn ask_as(path: &Path, name: Option<&[u8]>) -> String {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    if let Some(name) = name {
        bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name).unwrap()).unwrap();
    }
    connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    shutdown(fd.as_raw_fd(), Shutdown::Write).unwrap();
    let mut out = String::new();
    std::fs::File::from(fd).read_to_string(&mut out).unwrap();
    out
}

/// What systemd starting `unit` reads for credential `id`.
fn ask(path: &Path, unit: &str, id: &str) -> String {
    // Random, as systemd's: abstract names are one namespace for the host.
    let random = u64::from_le_bytes(locket::crypto::random_bytes::<8>().unwrap());
    ask_as(
        path,
        Some(format!("{random:x}/unit/{unit}/{id}").as_bytes()),
    )
}

fn plan(d: &Path, systemctl: &Path) -> PathBuf {
    let path = d.join("delivery.toml");
    std::fs::write(
        &path,
        format!(
            r#"status_file = "{d}/status.json"
systemctl = "{s}"
credential_socket = "{d}/credentials.sock"

[consumers.s]
delivery = "socket"
unit = "s.service"
secrets = ["APP_USER", "APP_PASS"]
restart_units = ["s.service"]
[consumers.s.templates."s.conf"]
content = "user={{{{ APP_USER }}}}\n"

[consumers.f]
dir = "{d}/run/f"
secrets = ["APP_USER"]
"#,
            d = d.display(),
            s = systemctl.display(),
        ),
    )
    .unwrap();
    path
}

/// The watcher process; killed if a test ends before stopping it (a
/// failed assertion must not leave it running).
struct Watcher(Option<std::process::Child>);

impl Watcher {
    /// SIGTERM, and its exit: a clean one.
    fn stop(mut self) {
        let mut child = self.0.take().unwrap();
        crate::support::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        assert!(child.wait().unwrap().success());
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn watcher(args: &[String], plan: &Path, d: &Path) -> Watcher {
    Watcher(Some(
        client_command()
            .args(args)
            .args([
                "deliver",
                "--plan",
                plan.to_str().unwrap(),
                "--watch",
                "100ms",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("watcher.log")).unwrap())
            .spawn()
            .unwrap(),
    ))
}

#[test]
fn the_socket_answers_each_planned_unit_its_own_ids_and_restarts_it_once_per_change() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        systemctl_log,
    } = setup();
    let d = dir.path();
    let plan = plan(d, &systemctl);
    let sock = d.join("credentials.sock");
    let w = watcher(&args, &plan, d);
    wait_for("the credential socket", &|| sock.exists());
    wait_for("a first round", &|| rounds(d) >= 1);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600,
        "root's alone"
    );

    // The plan's unit gets each of its IDs: secrets and a rendered template.
    assert_eq!(ask(&sock, "s.service", "APP_USER"), "alice");
    assert_eq!(ask(&sock, "s.service", "APP_PASS"), "p@ss word");
    assert_eq!(ask(&sock, "s.service", "s.conf"), "user=alice\n");
    // Nothing for anyone else, and the log says why, naming unit and ID.
    let log = || read(&d.join("watcher.log")).unwrap_or_default();
    assert_eq!(ask(&sock, "s.service", "OTHER"), "");
    wait_for("the not-granted line", &|| {
        log().contains("unit s.service (consumer s) asked for credential OTHER, which the plan does not grant it")
    });
    assert_eq!(ask(&sock, "rogue.service", "APP_USER"), "");
    wait_for("the unknown-unit line", &|| {
        log().contains("unit rogue.service asked for credential APP_USER, but no consumer of the delivery plan has that unit")
    });
    // A file consumer's unit is not a socket consumer.
    assert_eq!(ask(&sock, "f.service", "APP_USER"), "");
    assert_eq!(ask_as(&sock, Some(b"not-systemd")), "");
    assert_eq!(ask_as(&sock, None), "");
    wait_for("the not-systemd lines", &|| {
        log().contains(r#"its address is "\\0not-systemd""#)
            && log().contains("its address is \"unnamed\"")
    });
    // A socket consumer has no folder, and no fetch of its own.
    assert!(!d.join("run/s").exists());
    let (code, _, err) = crate::support::run_client_pinned(
        &args
            .iter()
            .map(String::as_str)
            .chain([
                "deliver",
                "--plan",
                plan.to_str().unwrap(),
                "--consumer",
                "s",
            ])
            .collect::<Vec<_>>(),
        d,
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("it is served over the credential socket"),
        "{err}"
    );

    // A change: the unit is restarted once, and then reads the new value.
    let restarts = || {
        read(&systemctl_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == "try-restart -- s.service")
            .count()
    };
    assert_eq!(restarts(), 0, "no change, no restart");
    std::fs::write(
        d.join("secrets.env"),
        "APP_USER=bob\nAPP_PASS=\"p@ss word\"\n",
    )
    .unwrap();
    server.reload();
    wait_for("the restart", &|| restarts() == 1);
    assert_eq!(ask(&sock, "s.service", "APP_USER"), "bob");
    assert_eq!(ask(&sock, "s.service", "s.conf"), "user=bob\n");
    let r = rounds(d);
    wait_for("three more rounds", &|| rounds(d) >= r + 3);
    assert_eq!(restarts(), 1, "exactly once per change");
    assert!(
        log().contains("consumer s (credential socket): changed"),
        "{}",
        log()
    );
    for value in ["alice", "bob", "p@ss"] {
        assert!(!log().contains(value), "a value in the log: {}", log());
    }
    w.stop();
    server.stop();
}

#[test]
fn with_no_value_held_and_no_server_the_socket_writes_nothing_and_says_why() {
    let Setup {
        dir,
        server,
        args,
        systemctl,
        ..
    } = setup();
    let d = dir.path();
    server.stop();
    let plan = plan(d, &systemctl);
    let sock = d.join("credentials.sock");
    let w = watcher(&args, &plan, d);
    wait_for("the credential socket", &|| sock.exists());
    assert_eq!(ask(&sock, "s.service", "APP_USER"), "");
    let log = read(&d.join("watcher.log")).unwrap_or_default();
    assert!(
        log.contains("unit s.service (consumer s) asked for credential APP_USER, but no value is held and the fetch failed"),
        "{log}"
    );
    // The next ID of the same start is refused at once with the same
    // cause, not after another fetch timeout.
    assert_eq!(ask(&sock, "s.service", "APP_PASS"), "");
    let log = read(&d.join("watcher.log")).unwrap_or_default();
    assert!(
        log.contains("asked for credential APP_PASS, but no value is held and the fetch failed")
            && log.contains("tried again 3s after it"),
        "{log}"
    );
    w.stop();
}

#[test]
fn a_plan_whose_socket_consumer_lacks_what_it_needs_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (body, why) in [
        (
            "[consumers.s]\ndelivery = \"socket\"\nunit = \"s.service\"\nsecrets = [\"A\"]\n",
            "the plan has no credential_socket",
        ),
        (
            "credential_socket = \"/x.sock\"\n[consumers.s]\ndelivery = \"socket\"\nsecrets = [\"A\"]\n",
            "delivery = \\\"socket\\\" needs unit",
        ),
        (
            "credential_socket = \"/x.sock\"\n[consumers.s]\ndelivery = \"socket\"\nunit = \"s.service\"\nsecrets = [\"A\"]\ndir = \"/run/s\"\n",
            "dir is set, but a delivery = \\\"socket\\\" consumer has no files",
        ),
        ("[consumers.f]\nsecrets = [\"A\"]\n", "dir is missing"),
    ] {
        let plan = d.join("plan.toml");
        std::fs::write(&plan, body).unwrap();
        let out = client_command()
            .args(crate::deliver_plan::app_args(
                "http://127.0.0.1:9",
                &crate::deliver_plan::key_file(d),
            ))
            .args(["deliver", "--plan", plan.to_str().unwrap(), "--watch", "1s"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert!(
            err.contains(why.replace("\\\"", "\"").as_str()),
            "{body}: {err}"
        );
    }
}

#[test]
fn a_unit_whose_values_are_still_being_fetched_holds_up_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A "server" that takes connections and never answers: the watcher's
    // fetch for `s` hangs until the client's deadline (30 s).
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hanging.local_addr().unwrap());
    let key = crate::deliver_plan::key_file(d);
    let (systemctl, _) = crate::deliver_plan::fake_systemctl(d);
    let plan = plan(d, &systemctl);
    let sock = d.join("credentials.sock");
    let args: Vec<String> = [
        "--server",
        &url,
        "--name",
        "app",
        "--key",
        &key,
        "--timeout",
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let w = watcher(&args, &plan, d);
    wait_for("the credential socket", &|| sock.exists());
    let waiting = {
        let sock = sock.clone();
        std::thread::spawn(move || ask(&sock, "s.service", "APP_USER"))
    };
    let log = || read(&d.join("watcher.log")).unwrap_or_default();
    // Another unit is answered (refused) while that fetch still hangs.
    assert_eq!(ask(&sock, "rogue.service", "APP_USER"), "");
    assert!(log().contains("unit rogue.service asked"), "{}", log());
    assert!(
        !waiting.is_finished(),
        "the first unit was answered before its fetch could end"
    );
    w.stop();
    assert_eq!(
        waiting.join().unwrap(),
        "",
        "nothing written for a fetch that never ended"
    );
    drop(hanging);
}
