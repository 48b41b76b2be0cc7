//! 1Password read the way a cache should, through the `op` stand-in
//! (tests/fixtures/op-standin.py: the documented JSON, request costs and
//! limits): only what changed, inside the budget, and nothing at all while
//! rate-limited.

use std::collections::BTreeMap;
use std::time::Duration;

use locket::source::{LoadError, SourceConfig, SourceMemory};

use crate::opvault::Vault;

fn as_map(v: locket::secret_set::SecretSet) -> BTreeMap<String, String> {
    v.into_iter()
        .map(|(n, s)| (n, s.expose().to_owned()))
        .collect()
}

/// A first load reads every item once; an unchanged round is one list; a
/// round with one changed item is one list and one get; a deleted item is
/// gone. locket's own count matches the stand-in's.
#[tokio::test]
async fn a_round_reads_only_what_changed() {
    let mut vault = Vault::new(50);
    let source = vault.source(None, 8);
    let mut memory = SourceMemory::default();
    let first = as_map(source.load_with(&mut memory).await.unwrap());
    assert_eq!(first.len(), 100, "password and host of 50 items");
    assert_eq!(first["svc7/password"], "pw-7-v1");
    assert_eq!(first["svc7/host"], "db.internal");
    let calls = vault.calls();
    assert_eq!(calls.len(), 51, "{calls:?}");
    // By name the first time (3), then the vault id it learnt (2).
    assert_eq!(vault.requests(), 3 + 50 * 3);

    for _ in 0..3 {
        source.load_with(&mut memory).await.unwrap();
    }
    assert_eq!(vault.calls().len(), 54, "unchanged rounds: one list each");
    assert_eq!(vault.requests(), 3 + 150 + 3 * 2);

    vault.state["items"][7]["version"] = 2.into();
    vault.state["items"][7]["fields"][0]["value"] = "pw-7-v2".into();
    vault.state["items"].as_array_mut().unwrap().remove(9);
    vault.save();
    let after = as_map(source.load_with(&mut memory).await.unwrap());
    let calls = vault.calls();
    assert_eq!(
        &calls[54..],
        [
            "list".to_string(),
            "get item0000000000000000000007aaaa".into()
        ]
    );
    assert_eq!(after["svc7/password"], "pw-7-v2");
    assert!(
        !after.contains_key("svc9/password"),
        "a deleted item is gone"
    );
    assert_eq!(
        memory.spent(std::time::SystemTime::now(), Duration::from_secs(3600)),
        vault.requests()
    );
}

/// Rate-limited mid-round: the source stops, asks nothing until the time
/// 1Password named, and then reads only what it has not read yet.
#[tokio::test]
async fn a_rate_limited_source_waits_and_never_reads_twice() {
    let mut vault = Vault::new(5);
    // 3 (list) + 3 gets fit in the hour; the fourth get is refused, and the
    // message says to retry in 3 s. The hour itself frees only when the
    // test clears the stand-in's log, so no timing decides what is refused.
    vault.state["per_hour"] = 12.into();
    vault.state["retry_in"] = 3.into();
    vault.save();
    let source = vault.source(Some((0, 0)), 1);
    let mut memory = SourceMemory::default();
    let err = source.load_with(&mut memory).await.unwrap_err();
    let LoadError::RateLimited { until, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!(vault.refused(), 1);
    // Retries while the wait runs (with a second to spare, so none of them
    // can fall after it) ask nothing, and say why.
    let mut retries = 0;
    while std::time::SystemTime::now() + Duration::from_secs(1) < until && retries < 20 {
        assert!(err_text_names_rate_limit(&source, &mut memory).await);
        retries += 1;
    }
    assert!(retries > 0);
    assert_eq!(vault.refused(), 1, "no request while rate-limited");
    let gets = |vault: &Vault| -> Vec<String> {
        vault
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("get"))
            .collect()
    };
    let first = gets(&vault);
    assert_eq!(first.len(), 3, "{first:?}");
    // The hour passes; after the named time the source reads the rest.
    std::fs::remove_file(vault.dir.path().join("requests.log")).unwrap();
    while std::time::SystemTime::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = as_map(source.load_with(&mut memory).await.unwrap());
    assert_eq!(got.len(), 10);
    let second = gets(&vault);
    assert_eq!(
        second.len(),
        2,
        "only the two items not read yet: {second:?}"
    );
    assert!(
        second.iter().all(|g| !first.contains(g)),
        "{first:?} {second:?}"
    );
}

/// The error a rate-limited source gives says so, and names no value.
async fn err_text_names_rate_limit(source: &SourceConfig, memory: &mut SourceMemory) -> bool {
    let e = source.load_with(memory).await.unwrap_err().to_string();
    e.contains("Too many requests") && e.contains("until") && !e.contains("pw-")
}

/// The budget: the source never spends past reads_per_hour; the request
/// that would is not made.
#[tokio::test]
async fn the_budget_is_never_overspent() {
    let vault = Vault::new(5);
    let source = vault.source(Some((12, 0)), 1);
    let mut memory = SourceMemory::default();
    let err = source.load_with(&mut memory).await.unwrap_err();
    assert!(matches!(err, LoadError::OverBudget { .. }), "{err:?}");
    assert!(err.to_string().contains("reads_per_hour = 12"), "{err}");
    assert_eq!(vault.requests(), 12, "3 for the list, 3 gets of 3");
    assert_eq!(vault.refused(), 0, "1Password never had to refuse");
    // Asked again: still nothing spent.
    source.load_with(&mut memory).await.unwrap_err();
    assert_eq!(vault.requests(), 12);
}

/// A wrong token and an unknown vault are errors that say so, and name
/// neither the token nor a value.
#[tokio::test]
async fn op_errors_are_named_without_the_token() {
    let mut vault = Vault::new(1);
    vault.state["token"] = "another".into();
    vault.save();
    let err = vault.source(None, 1).load().await.unwrap_err().to_string();
    assert!(err.contains("exit") || err.contains("failed"), "{err}");
    assert!(!err.contains("ops_tok_test"), "{err}");
}

fn readyz(server: &crate::support::ServerProcess) -> serde_json::Value {
    let answer = crate::support::raw_get(server.addr, "/readyz");
    serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

/// The real server against a rate-limited account: it does not exit (a
/// restart loop would keep the account limited) but listens unready, and
/// `/readyz`, `/metrics` and the log say it is rate-limited and until when;
/// the refresh loop's retries while it waits reach 1Password not once.
#[test]
fn a_server_started_while_rate_limited_listens_and_says_so() {
    let mut vault = Vault::new(3);
    // The hour is already spent, by other integrations of the account.
    vault.state["per_hour"] = 2.into();
    vault.save();
    let config = op_server_config(&vault, "1s", "");
    let server = crate::support::ServerProcess::start(&config, &[]);
    let ready = readyz(&server);
    assert_eq!(ready["ready"], false, "{ready}");
    let source = &ready["sources"][0];
    assert!(
        source["last_error"]
            .as_str()
            .unwrap()
            .contains("rate-limited"),
        "{ready}"
    );
    assert!(source["waiting_until"].is_string(), "{ready}");
    assert_eq!(source["reads_per_hour"], 800, "{ready}");
    // Several refresh rounds (1 s apart, backing off) come and go: the
    // server never asks again while the limit runs.
    let failed_rounds = || {
        crate::support::raw_get(server.addr, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("locket_source_loads_total{result=\"error\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    while failed_rounds() < 3 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(failed_rounds() >= 3, "{}", server.log());
    assert_eq!(vault.refused(), 1, "one refused call, then silence");
    let metrics = crate::support::raw_get(server.addr, "/metrics");
    assert!(
        metrics.contains("locket_source_waiting{source=\"1\",source_type=\"onepassword-cli\"} 1"),
        "{metrics}"
    );
    let log = server.stop();
    assert_eq!(
        log.matches("first load waits for a rate limit").count(),
        1,
        "{log}"
    );
}

/// A server config in the vault's folder reading it through the stand-in,
/// refreshed every `refresh`, with `extra` tables after the sources.
fn op_server_config(vault: &Vault, refresh: &str, extra: &str) -> std::path::PathBuf {
    let d = vault.dir.path();
    let config = crate::support::write_server_files(
        d,
        "",
        &[crate::support::Registered::new(
            "app",
            31,
            &["127.0.0.1"],
            &["svc*"],
        )],
        &format!("refresh_interval = {refresh:?}"),
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[[sources]]\ntype = \"dotenv\"\npath = \"secrets.env\"\n",
        &format!(
            "[[sources]]\ntype = \"onepassword-cli\"\nvault = \"prod\"\ntoken_file = \"token\"\nop = \"{}\"\n{extra}\n",
            d.join("op").display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    config
}

const SEALED: &str = "[sealed_set]\npath = \"state/set.cred\"\nmax_age = \"1h\"\nkey = \"host\"\n";

/// The sealed last-good set, with the real `systemd-creds` (host key; as
/// root, as CI runs): a restart serves at once and reads only what
/// changed; a start with 1Password unreachable serves the sealed values
/// and says so; an expired copy or one that does not decrypt is refused by
/// name.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_starts_from_the_sealed_set_and_reads_only_what_changed() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut vault = Vault::new(20);
    let config = op_server_config(&vault, "1h", SEALED);
    let cred = vault.dir.path().join("state/set.cred");
    let server = crate::support::ServerProcess::start(&config, &[]);
    assert_eq!(vault.calls().len(), 21);
    let bytes = std::fs::read(&cred).expect("sealed after the first good load");
    assert!(
        !String::from_utf8_lossy(&bytes).contains("pw-3-v1"),
        "no value in the clear"
    );
    assert_eq!(
        std::fs::metadata(&cred).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(server);

    // A restart: the sealed set, then one list and the one changed item.
    vault.state["items"][3]["version"] = 2.into();
    vault.state["items"][3]["fields"][0]["value"] = "pw-3-v2".into();
    vault.save();
    let server = crate::support::ServerProcess::start(&config, &[]);
    let calls = vault.calls();
    assert_eq!(
        &calls[21..],
        [
            "list".to_string(),
            "get item0000000000000000000003aaaa".into()
        ],
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("starting from the sealed set"),
        "{}",
        server.log()
    );
    // The vault's id came back with the set: the list costs 2, the get 3.
    assert_eq!(vault.requests() - vault.requests_before(21), 2 + 3);
    let client = crate::support::pinned_client(&server, "app", 31);
    assert_eq!(
        crate::support::value(&client, "svc3/password")
            .await
            .unwrap(),
        "pw-3-v2"
    );
    assert_eq!(readyz(&server)["origin"], "sources");
    drop(server);

    // 1Password unreachable at start: the sealed values, stale, and said so.
    vault.state["unreachable"] = true.into();
    vault.save();
    let server = crate::support::ServerProcess::start(&config, &[]);
    let client = crate::support::pinned_client(&server, "app", 31);
    assert_eq!(
        crate::support::value(&client, "svc3/password")
            .await
            .unwrap(),
        "pw-3-v2"
    );
    let ready = readyz(&server);
    assert!(
        ready["origin"]
            .as_str()
            .unwrap()
            .starts_with("sealed copy "),
        "{ready}"
    );
    assert_eq!(ready["stale"], true, "{ready}");
    assert!(
        ready["sources"][0]["origin"]
            .as_str()
            .unwrap()
            .starts_with("sealed copy "),
        "{ready}"
    );
    drop(server);

    // Older than max_age: refused by name and deleted; with 1Password
    // still unreachable, the server does not start.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_age = \"1h\"", "max_age = \"1s\"");
    std::fs::write(&config, text).unwrap();
    let sealed_at = std::fs::metadata(&cred).unwrap().modified().unwrap();
    while std::time::SystemTime::now() < sealed_at + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = crate::support::run_server_cmd(
        &["serve", "--config", config.to_str().unwrap()],
        vault.dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("set.cred") && err.contains("more than sealed_set.max_age"),
        "{err}"
    );
    assert!(!cred.exists(), "the expired copy is deleted");

    // A copy that does not decrypt: refused by name, kept until the next
    // good load replaces it (1Password reachable again: every item read).
    vault.state["unreachable"] = false.into();
    vault.save();
    std::fs::write(&cred, b"garbage").unwrap();
    let before = vault.calls().len();
    let server = crate::support::ServerProcess::start(&config, &[]);
    assert!(
        server.log().contains("sealed set refused: cannot decrypt"),
        "{}",
        server.log()
    );
    assert!(server.log().contains("set.cred"), "{}", server.log());
    assert_eq!(vault.calls().len() - before, 20 + 1);
    assert_ne!(
        std::fs::read(&cred).unwrap(),
        b"garbage",
        "replaced after the good load"
    );
}

/// Names that programs can use, in 1Password's own reference syntax: a
/// mapped source serves only the names it maps and reads only the items
/// they name; a reference that names nothing, or a field that is
/// ambiguous, is an error naming the reference.
#[tokio::test]
async fn references_name_secrets_and_read_only_their_items() {
    let mut vault = Vault::new(10);
    // svc5 has two fields labelled `host`, in two sections.
    vault.state["items"][5]["sections"] = serde_json::json!([
        {"id": "sec1", "label": "db"},
        {"id": "sec2", "label": "cache"}
    ]);
    vault.state["items"][5]["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"id": "host2", "type": "STRING", "label": "host", "section": "sec2", "value": "cache.internal"}));
    vault.save();
    let with = |refs: &[(&str, &str)]| {
        let SourceConfig::OnepasswordCli(locket::source::OnepasswordCliSource {
            vault: v,
            token_file,
            op,
            timeout,
            ..
        }) = vault.source(None, 8)
        else {
            unreachable!()
        };
        SourceConfig::OnepasswordCli(locket::source::OnepasswordCliSource {
            vault: v,
            token_file,
            op,
            timeout,
            reads_per_hour: None,
            reads_per_day: None,
            concurrency: None,
            references: refs
                .iter()
                .map(|(n, r)| (n.to_string(), r.to_string()))
                .collect(),
        })
    };
    let source = with(&[
        ("DB_PASSWORD", "op://prod/svc3/password"),
        ("DB_HOST", "op://Prod/SVC3/db/host"),
        ("CACHE_HOST", "op://prod/svc5/cache/host"),
    ]);
    source.validate().unwrap();
    let got = as_map(source.load().await.unwrap());
    assert_eq!(
        got,
        BTreeMap::from([
            ("CACHE_HOST".to_string(), "cache.internal".to_string()),
            ("DB_HOST".to_string(), "db.internal".to_string()),
            ("DB_PASSWORD".to_string(), "pw-3-v1".to_string()),
        ])
    );
    let gets: Vec<String> = vault
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("get"))
        .collect();
    assert_eq!(gets.len(), 2, "only the named items are read: {gets:?}");

    let ambiguous = with(&[("HOST", "op://prod/svc5/host")]);
    let e = ambiguous.load().await.unwrap_err().to_string();
    assert!(
        e.contains("op://prod/svc5/host") && e.contains("ambiguous") && !e.contains(".internal"),
        "{e}"
    );
    let nothing = with(&[("X", "op://prod/no-such-item/password")]);
    let e = nothing.load().await.unwrap_err().to_string();
    assert!(e.contains("op://prod/no-such-item/password"), "{e}");
    let no_field = with(&[("X", "op://prod/svc1/nope")]);
    let e = no_field.load().await.unwrap_err().to_string();
    assert!(e.contains("op://prod/svc1/nope"), "{e}");

    // Checked without I/O: the syntax, the vault, the name.
    for (name, reference, says) in [
        ("X", "op:/prod/svc1/password", "does not start with op://"),
        ("X", "op://prod/svc1", "3 or 4 parts"),
        (
            "X",
            "op://dev/svc1/password",
            "this source reads vault \"prod\"",
        ),
        (
            "X",
            "op://prod/svc1/one-time password?attribute=otp",
            "query parameters",
        ),
        (
            "BAD\nNAME",
            "op://prod/svc1/password",
            "not a usable secret name",
        ),
    ] {
        let e = with(&[(name, reference)])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{reference}: {e}");
    }
}

/// A server without root seals with a key systemd hands it: `locket
/// seal-key` makes the credential (the real systemd-creds, host key, as
/// root), systemd-creds decrypts it as PID 1 would for
/// LoadCredentialEncrypted=, and the server seals with that key. A restart
/// starts from the copy; another key does not open it, and says so.
#[test]
fn the_sealed_set_seals_with_a_key_systemd_hands_over() {
    let vault = Vault::new(5);
    let d = vault.dir.path();
    let cred = d.join("seal/seal-key.cred");
    // The second time: never two keys, an existing credential is kept.
    for (expected, says) in [(0, "a new sealing key"), (2, "already exists")] {
        let (code, out, err) = crate::support::run_server_cmd(
            &[
                "seal-key",
                "--out",
                cred.to_str().unwrap(),
                "--with-key",
                "host",
            ],
            d,
        );
        assert_eq!(code, expected, "{out}{err}");
        assert!(out.contains(says) || err.contains(says), "{out}{err}");
    }
    let key = std::process::Command::new("systemd-creds")
        .args(["decrypt", "--name=seal-key"])
        .arg(&cred)
        .arg(d.join("seal.key"))
        .output()
        .expect("systemd-creds (Debian: systemd; .ci/test installs it)");
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("seal.key")).unwrap().len(),
        64
    );
    let config = op_server_config(
        &vault,
        "1h",
        "[sealed_set]\npath = \"state/set.sealed\"\nmax_age = \"1h\"\nkey_file = \"seal.key\"\n",
    );
    let server = crate::support::ServerProcess::start(&config, &[]);
    drop(server);
    let sealed = std::fs::read(d.join("state/set.sealed")).unwrap();
    assert!(sealed.starts_with(b"locket-sealed-v1\n"));
    assert!(!String::from_utf8_lossy(&sealed).contains("pw-1-v1"));
    let calls = vault.calls().len();
    let server = crate::support::ServerProcess::start(&config, &[]);
    assert!(
        server.log().contains("starting from the sealed set"),
        "{}",
        server.log()
    );
    assert_eq!(vault.calls().len() - calls, 1, "one list, nothing changed");
    drop(server);
    // Another key: refused by name.
    std::fs::write(d.join("seal.key"), "00".repeat(32)).unwrap();
    let server = crate::support::ServerProcess::start(&config, &[]);
    let log = server.stop();
    assert!(
        log.contains("sealed set refused") && log.contains("does not open with key_file"),
        "{log}"
    );
}
