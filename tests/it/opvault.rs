//! A 1Password vault served by the `op` stand-in
//! (tests/fixtures/op-standin.py), for the tests and the 1Password bench
//! (which includes this file): the vault's items in `vault.json`, the
//! stand-in as `op` beside it, and what the stand-in counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use locket::source::SourceConfig;

/// A vault of `n` items for the stand-in, in `dir` (with the stand-in).
pub(crate) struct Vault {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) state: serde_json::Value,
}

impl Vault {
    pub(crate) fn new(n: usize) -> Self {
        Self::with_latency(n, 0)
    }

    /// `n` items, each `op` call taking `latency_ms` first.
    pub(crate) fn with_latency(n: usize, latency_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        install_standin(&dir.path().join("op"));
        let token = dir.path().join("token");
        std::fs::write(&token, b"ops_tok_test").unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
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
                "latency_ms": latency_ms,
            }),
        };
        vault.save();
        vault
    }

    pub(crate) fn save(&self) {
        std::fs::write(
            self.dir.path().join("vault.json"),
            serde_json::to_vec(&self.state).unwrap(),
        )
        .unwrap();
    }

    pub(crate) fn source(&self, budget: Option<(u32, u32)>, concurrency: usize) -> SourceConfig {
        SourceConfig::OnepasswordCli(locket::source::OnepasswordCliSource {
            vault: "prod".into(),
            token_file: self.dir.path().join("token"),
            op: self.dir.path().join("op").to_string_lossy().into_owned(),
            timeout: Duration::from_secs(20),
            reads_per_hour: budget.map(|b| b.0),
            reads_per_day: budget.map(|b| b.1),
            concurrency: Some(concurrency),
            references: Default::default(),
        })
    }

    /// The calls the stand-in allowed, as "list" or "get ID", in order.
    pub(crate) fn calls(&self) -> Vec<String> {
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

    /// Requests as 1Password counts them, of the first `calls` calls.
    pub(crate) fn requests_before(&self, calls: usize) -> u32 {
        read_lines(&self.dir.path().join("requests.log"))
            .iter()
            .take(calls)
            .map(|l| l.split(' ').nth(1).unwrap().parse::<u32>().unwrap())
            .sum()
    }

    /// Requests as 1Password counts them (the stand-in's own tally).
    pub(crate) fn requests(&self) -> u32 {
        read_lines(&self.dir.path().join("requests.log"))
            .iter()
            .map(|l| l.split(' ').nth(1).unwrap().parse::<u32>().unwrap())
            .sum()
    }

    pub(crate) fn refused(&self) -> usize {
        read_lines(&self.dir.path().join("refused.log")).len()
    }
}

/// The stand-in as an executable `op` at `path`, run by the python3 on
/// PATH (the Nix build sandbox has no /usr/bin/env for its shebang).
pub(crate) fn install_standin(path: &Path) {
    let python = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("python3"))
                .find(|p| p.is_file())
        })
        .expect("python3 on PATH (the `op` stand-in is a Python script)");
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/op-standin.py"),
    )
    .unwrap();
    let body = script.split_once('\n').unwrap().1;
    std::fs::write(path, format!("#!{}\n{body}", python.display())).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn read_lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
