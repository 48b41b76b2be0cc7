//! 1Password read the way a cache should, through the `op` stand-in
//! (tests/fixtures/op-standin.py: the documented JSON, request costs and
//! limits): only what changed, inside the budget, and nothing at all while
//! rate-limited.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use locket::source::{LoadError, SourceConfig, SourceMemory};

/// A vault of `n` items for the stand-in, in `dir` (with the stand-in).
struct Vault {
    dir: tempfile::TempDir,
    state: serde_json::Value,
}

impl Vault {
    fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let op = dir.path().join("op");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/op-standin.py"),
            &op,
        )
        .unwrap();
        crate::support::write_private(&dir.path().join("token"), b"ops_tok_test");
        let items: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                serde_json::json!({
                    "id": format!("item{i:022}aaaa"),
                    "title": format!("svc{i}"),
                    "version": 1,
                    "category": if i % 2 == 0 { "LOGIN" } else { "API_CREDENTIAL" },
                    "sections": [{"id": "sec1", "label": "db"}],
                    "fields": [
                        {"id": "password", "type": "CONCEALED", "purpose": "PASSWORD", "label": "password", "value": format!("pw-{i}-v1")},
                        {"id": "host", "type": "STRING", "label": "host", "section": "sec1", "value": "db.internal"},
                        {"id": "notesPlain", "type": "STRING", "purpose": "NOTES", "label": "notesPlain"},
                    ],
                })
            })
            .collect();
        let vault = Vault {
            dir,
            state: serde_json::json!({
                "vault": {"id": "gshlsjsajnawtnjynzgwmiebge", "name": "prod"},
                "token": "ops_tok_test",
                "items": items,
            }),
        };
        vault.save();
        vault
    }

    fn save(&self) {
        std::fs::write(
            self.dir.path().join("vault.json"),
            serde_json::to_vec(&self.state).unwrap(),
        )
        .unwrap();
    }

    fn source(&self, budget: Option<(u32, u32)>, concurrency: usize) -> SourceConfig {
        SourceConfig::OnepasswordCli {
            vault: "prod".into(),
            token_file: self.dir.path().join("token"),
            op: self.dir.path().join("op").to_string_lossy().into_owned(),
            timeout: Duration::from_secs(20),
            reads_per_hour: budget.map(|b| b.0),
            reads_per_day: budget.map(|b| b.1),
            concurrency: Some(concurrency),
        }
    }

    /// The calls the stand-in allowed, as "list" or "get ID", in order.
    fn calls(&self) -> Vec<String> {
        read_lines(&self.dir.path().join("requests.log"))
            .iter()
            .map(|l| {
                let parts: Vec<&str> = l.split(' ').collect();
                match parts[3] {
                    "get" => format!("get {}", parts[4]),
                    _ => "list".to_string(),
                }
            })
            .collect()
    }

    /// Requests as 1Password counts them (the stand-in's own tally).
    fn requests(&self) -> u32 {
        read_lines(&self.dir.path().join("requests.log"))
            .iter()
            .map(|l| l.split(' ').nth(1).unwrap().parse::<u32>().unwrap())
            .sum()
    }

    fn refused(&self) -> usize {
        read_lines(&self.dir.path().join("refused.log")).len()
    }
}

fn read_lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn as_map(v: Vec<(String, locket::secret::SecretValue)>) -> BTreeMap<String, String> {
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
    // 3 (list) + 3 gets fit; the fourth get is refused for about 2 s, and
    // after that the list by id (2) and the last two gets (6) fit.
    vault.state["per_hour"] = 12.into();
    vault.state["hour_seconds"] = 2.into();
    vault.save();
    let source = vault.source(Some((0, 0)), 1);
    let mut memory = SourceMemory::default();
    let err = source.load_with(&mut memory).await.unwrap_err();
    let LoadError::RateLimited { until, .. } = err else {
        panic!("{err:?}");
    };
    assert!(err_text_names_rate_limit(&source, &mut memory).await);
    assert_eq!(vault.refused(), 1);
    for _ in 0..20 {
        let again = source.load_with(&mut memory).await.unwrap_err();
        assert!(matches!(again, LoadError::RateLimited { .. }), "{again:?}");
        if std::time::SystemTime::now() >= until {
            break;
        }
    }
    assert_eq!(vault.refused(), 1, "no request while rate-limited");
    while std::time::SystemTime::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = as_map(source.load_with(&mut memory).await.unwrap());
    assert_eq!(got.len(), 10);
    let gets: Vec<String> = vault
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("get"))
        .collect();
    let distinct: std::collections::BTreeSet<&String> = gets.iter().collect();
    assert_eq!(gets.len(), 5, "each item read once: {gets:?}");
    assert_eq!(distinct.len(), 5);
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
    let d = vault.dir.path();
    let config = crate::support::write_server_files(
        d,
        "",
        &[crate::support::Registered::new(
            "app",
            31,
            &["127.0.0.1"],
            &["svc0/*"],
        )],
        "refresh_interval = \"1s\"",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[[sources]]\ntype = \"dotenv\"\npath = \"secrets.env\"\n",
        &format!(
            "[[sources]]\ntype = \"onepassword-cli\"\nvault = \"prod\"\ntoken_file = \"token\"\nop = \"{}\"\n",
            d.join("op").display()
        ),
    );
    std::fs::write(&config, text).unwrap();
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
