//! One failing source does not freeze the others: each source keeps its own
//! last good values, SIGHUP re-reads every source, per-source state is in
//! `/readyz` and `/metrics` (counts, never names), and a name two sources
//! define is reported at load and by `locket check`. Through the real
//! `locket` binary.

use std::path::Path;

use crate::support::{ServerProcess, raw_get, run_server_cmd, value};
use locket::client::Client;
use locket::keys::ClientKey;

const SEED: u8 = 43;

/// Three sources: a .env file, a JSON file, and a command that prints the
/// JSON file `c.json` (so it can be made to fail); no timed refresh.
fn setup(dir: &Path, grants: &[&str], command_file: &str) -> std::path::PathBuf {
    crate::support::server_key()
        .write_new(&dir.join("server-key.pem"))
        .ok();
    let quoted: Vec<String> = grants.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        r#"listen = "127.0.0.1:0"
key_file = "server-key.pem"
refresh_interval = "0s"

[[sources]]
type = "dotenv"
path = "a.env"

[[sources]]
type = "file"
path = "b.json"

[[sources]]
type = "command"
command = ["cat", "{}"]
format = "json"

[clients.app]
keys = ["{}"]
networks = ["127.0.0.1"]
secrets = [{}]
"#,
        dir.join(command_file).display(),
        ClientKey::from_seed(&[SEED; 32]).public_line(),
        quoted.join(", ")
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn client(server: &ServerProcess) -> Client {
    crate::support::pinned_client(server, "app", SEED)
}

fn readyz(server: &ServerProcess) -> serde_json::Value {
    let answer = raw_get(server.addr, "/readyz");
    serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_source_keeps_its_values_while_the_others_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.env"), "A=a1\nSHARED=from-a\n").unwrap();
    std::fs::write(d.join("b.json"), r#"{"B": "b1"}"#).unwrap();
    std::fs::write(d.join("c.json"), r#"{"C": "c1", "SHARED": "from-c"}"#).unwrap();
    let config = setup(d, &["A", "B", "C", "SHARED"], "c.json");
    let server = ServerProcess::start(&config, &[]);
    let c = client(&server);
    // A name two sources define: reported at load, the later one served.
    assert_eq!(value(&c, "SHARED").await.unwrap(), "from-c");
    assert!(
        server
            .log()
            .contains("secret is defined by sources #1, #3; the value of #3 is served"),
        "{}",
        server.log()
    );

    // The command breaks and the .env changes, with a new name granted:
    // SIGHUP reads every source again; the .env's new values are served at
    // once, the command's last good values stay.
    std::fs::remove_file(d.join("c.json")).unwrap();
    std::fs::write(d.join("a.env"), "A=a2\nA_NEW=new\nSHARED=from-a\n").unwrap();
    setup(d, &["A", "A_NEW", "B", "C", "SHARED"], "c.json");
    let line = server.reload();
    assert!(line.contains("config reloaded"), "{line}");
    assert_eq!(value(&c, "A").await.unwrap(), "a2");
    assert_eq!(value(&c, "A_NEW").await.unwrap(), "new");
    assert_eq!(value(&c, "C").await.unwrap(), "c1", "kept");
    assert_eq!(value(&c, "B").await.unwrap(), "b1");

    // /readyz and /metrics say which source is stale; counts, no names.
    let ready = readyz(&server);
    assert_eq!(ready["stale"], true);
    let sources = ready["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3);
    for (i, (kind, stale, secrets)) in [
        ("dotenv", false, 3),
        ("file", false, 1),
        ("command", true, 2),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(sources[i]["type"], kind);
        assert_eq!(sources[i]["stale"], stale, "{ready}");
        assert_eq!(sources[i]["secrets"], secrets, "{ready}");
        assert_eq!(sources[i]["loaded"], true);
    }
    assert_eq!(
        sources[2]["last_error"],
        "source #3 (command) failed: the command failed"
    );
    // Last success as a time, not only an age: the stale source's is its
    // first load, and the served set is as old as its oldest source.
    let when = |v: &serde_json::Value| {
        let text = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
        humantime::parse_rfc3339(text).unwrap()
    };
    assert!(when(&sources[2]["last_success"]) <= when(&sources[0]["last_success"]));
    assert_eq!(ready["last_success"], sources[2]["last_success"], "{ready}");
    let metrics = raw_get(server.addr, "/metrics");
    assert!(
        metrics.contains("locket_source_stale{source=\"3\",source_type=\"command\"} 1")
            && metrics.contains("locket_source_stale{source=\"1\",source_type=\"dotenv\"} 0")
            && metrics.contains("locket_source_secrets{source=\"1\",source_type=\"dotenv\"} 3"),
        "{metrics}"
    );
    for text in [ready.to_string(), metrics] {
        for leak in ["A_NEW", "SHARED", "c.json", "a2", "c1"] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
    }

    // It recovers on the next SIGHUP.
    std::fs::write(d.join("c.json"), r#"{"C": "c2"}"#).unwrap();
    assert!(server.reload().contains("config reloaded"));
    assert_eq!(value(&c, "C").await.unwrap(), "c2");
    assert_eq!(readyz(&server)["stale"], false);
    let log = server.stop();
    assert!(
        log.contains("refresh failed; still serving this source's last good values (stale)"),
        "{log}"
    );
}

/// A new or changed source that fails has no values to keep: the reload is
/// refused whole, and the old config and values stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_whose_changed_source_fails_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.env"), "A=a1\n").unwrap();
    std::fs::write(d.join("b.json"), r#"{"B": "b1"}"#).unwrap();
    std::fs::write(d.join("c.json"), r#"{"C": "c1"}"#).unwrap();
    let config = setup(d, &["A", "B", "C"], "c.json");
    let server = ServerProcess::start(&config, &[]);
    let c = client(&server);
    setup(d, &["A", "B", "C"], "missing.json");
    let line = server.reload();
    assert!(
        line.contains("config reload rejected") && line.contains("source #3"),
        "{line}"
    );
    assert_eq!(value(&c, "C").await.unwrap(), "c1");
    assert_eq!(readyz(&server)["stale"], false);
    server.stop();
}

/// `locket check` names a secret two sources define, and which is served.
#[test]
fn check_reports_names_two_sources_define() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.env"), "SHARED=x\n").unwrap();
    std::fs::write(d.join("b.json"), r#"{"SHARED": "y"}"#).unwrap();
    std::fs::write(d.join("c.json"), r#"{"C": "c"}"#).unwrap();
    setup(d, &["SHARED"], "c.json");
    let (code, out, err) = run_server_cmd(&["check", "--config", "server.toml"], d);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("SHARED is defined by sources #1, #2; the value of #2 is served"),
        "{out}"
    );
    assert!(!out.contains("x\n") && !out.contains("\"y\""));
}
