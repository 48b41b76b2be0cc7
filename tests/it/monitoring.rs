//! The shipped alert rules and Grafana dashboard (docs/monitoring/) use
//! only metric names that locket exports: the real server's `/metrics`, and
//! the real watcher's metrics file (node_exporter's textfile collector).
//! (The rules' behaviour is tested by `promtool test rules`, run by
//! `.ci/test`.)

use std::collections::BTreeSet;

use crate::support::{
    Registered, ServerProcess, client_command, raw_get, run_client_pinned, write_server_files,
};

/// Every sample name `/metrics` can carry, from its `# TYPE` lines (a
/// family with no sample yet is still declared).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The `locket_*` names a file uses.
fn used(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("locket_") {
        let start = i + at;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(text.len() - start);
        // A name, not a word that merely contains one.
        if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn alert_rules_and_dashboard_use_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let clients = [Registered::new("app", 71, &["127.0.0.1"], &["A*"])];
    let config = write_server_files(dir.path(), "A=1\n", &clients, "");
    let server = ServerProcess::start(&config, &[]);
    // Families with a label appear once they have one: a reload and a
    // refused request give the request and reload counters theirs.
    assert!(server.reload().contains("config reloaded"));
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        write!(
            s,
            "POST /v1/secrets HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    let metrics = raw_get(server.addr, "/metrics");
    let watcher = watcher_metrics(dir.path(), &server);
    server.stop();
    let mut exported = exported(&metrics);
    exported.extend(self::exported(&watcher));
    assert!(
        exported.contains("locket_watch_last_success_timestamp_seconds"),
        "{watcher}"
    );
    assert!(exported.contains("locket_requests_total"), "{metrics}");
    for file in [
        "docs/monitoring/alerts.rules.yml",
        "docs/monitoring/dashboard.json",
    ] {
        let used = used(file);
        assert!(used.len() >= 5, "{file}: {used:?}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics /metrics does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
}

/// The real watcher's metrics file after one round against `server`.
fn watcher_metrics(d: &std::path::Path, server: &ServerProcess) -> String {
    let key = d.join("app.key");
    locket::keys::ClientKey::from_seed(&[71; 32])
        .write_new(&key)
        .unwrap();
    let plan = d.join("delivery.toml");
    std::fs::write(
        &plan,
        format!(
            "status_file = \"{d}/status.json\"\nmetrics_file = \"{d}/watch.prom\"\n[consumers.a]\ndir = \"{d}/run/a\"\nsecrets = [\"A\"]\n",
            d = d.display()
        ),
    )
    .unwrap();
    let url = server.url();
    let (key, plan) = (key.to_str().unwrap(), plan.to_str().unwrap());
    let base = [
        "--server", &url, "--name", "app", "--key", key, "deliver", "--plan", plan,
    ];
    let (code, _, err) = run_client_pinned(&base, d);
    assert_eq!(code, 0, "{err}");
    let mut watch = client_command()
        .args(base)
        .args(["--watch", "1h"])
        .current_dir(d)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let file = d.join("watch.prom");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let text = loop {
        // Written whole (renamed into place) after the first round.
        if let Ok(text) = std::fs::read_to_string(&file) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no metrics file from the watcher"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    crate::support::signal(watch.id(), nix::sys::signal::Signal::SIGTERM);
    watch.wait().unwrap();
    assert!(text.contains("locket_watch_rounds_total 1\n"), "{text}");
    assert!(
        text.contains("locket_watch_interval_seconds 3600\n"),
        "{text}"
    );
    assert!(
        text.contains("locket_watch_consumer_on_cache{consumer=\"a\"} 0\n"),
        "{text}"
    );
    text
}
