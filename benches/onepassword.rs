//! What locket costs a 1Password account, measured against the `op`
//! stand-in (tests/fixtures/op-standin.py: 1Password's documented JSON,
//! request costs and limits), and how fast it starts. `cargo bench --bench
//! onepassword` prints each figure with its target and whether it is met.
//!
//! Round costs are measured (the stand-in's own tally of requests, as
//! 1Password counts them); reads per day are those costs times the rounds
//! a day at the defaults (`refresh_interval = "5m"`, stretched by the
//! day's budget as the source reports), plus the gets of changed items.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only checks
//! that it can set up.

use std::path::Path;
use std::time::{Duration, Instant};

use locket::source::{SourceConfig, SourceMemory};

const TEAMS_DAILY: f64 = 5000.0;

struct Vault {
    dir: tempfile::TempDir,
    state: serde_json::Value,
}

impl Vault {
    fn new(n: usize, latency_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/op-standin.py"),
            dir.path().join("op"),
        )
        .unwrap();
        std::fs::write(dir.path().join("token"), "ops_tok_bench").unwrap();
        std::fs::set_permissions(
            dir.path().join("token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let items: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"id": format!("item{i:022}aaaa"), "title": format!("svc{i}"), "version": 1,
                "fields": [{"id": "password", "type": "CONCEALED", "purpose": "PASSWORD", "label": "password", "value": format!("pw-{i}")}]}))
            .collect();
        let v = Vault {
            dir,
            state: serde_json::json!({"vault": {"id": "gshlsjsajnawtnjynzgwmiebge", "name": "prod"},
                "token": "ops_tok_bench", "items": items, "latency_ms": latency_ms}),
        };
        v.save();
        v
    }
    fn save(&self) {
        std::fs::write(
            self.dir.path().join("vault.json"),
            serde_json::to_vec(&self.state).unwrap(),
        )
        .unwrap();
    }
    fn source(&self, unlimited: bool) -> SourceConfig {
        SourceConfig::OnepasswordCli {
            vault: "prod".into(),
            token_file: self.dir.path().join("token"),
            op: self.dir.path().join("op").to_string_lossy().into_owned(),
            timeout: Duration::from_secs(60),
            reads_per_hour: unlimited.then_some(0),
            reads_per_day: unlimited.then_some(0),
            concurrency: None,
        }
    }
    fn requests(&self) -> u64 {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().parse::<u64>().unwrap())
            .sum()
    }
    fn refused(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("refused.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT MET" }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Runtime::new().unwrap();
    if !bench {
        // `cargo test --all-targets`: prove the stand-in and a load work.
        rt.block_on(async {
            let vault = Vault::new(3, 0);
            let got = vault
                .source(true)
                .load_with(&mut SourceMemory::default())
                .await
                .unwrap();
            assert_eq!(got.len(), 3);
        });
        println!(
            "1Password bench: harness ok (run it with `cargo bench --bench onepassword`); 1 passed, 0 failed"
        );
        return;
    }
    rt.block_on(async {
        println!("1Password through `op` (the stand-in), defaults unless said");
        // Round costs and reads per day, for 10, 100 and 1,000 items.
        let pacing = SourceConfig::OnepasswordCli {
            vault: "x".into(),
            token_file: "t".into(),
            op: "op".into(),
            timeout: Duration::from_secs(1),
            reads_per_hour: None,
            reads_per_day: None,
            concurrency: None,
        }
        .budget();
        for n in [10usize, 100, 1000] {
            let mut vault = Vault::new(n, 0);
            let source = vault.source(true);
            let mut memory = SourceMemory::default();
            source.load_with(&mut memory).await.unwrap();
            let first = vault.requests();
            source.load_with(&mut memory).await.unwrap();
            let unchanged = vault.requests() - first;
            vault.state["items"][0]["version"] = 2.into();
            vault.save();
            let before = vault.requests();
            source.load_with(&mut memory).await.unwrap();
            let one_changed = vault.requests() - before;
            let get = one_changed - unchanged;
            // At the defaults: 5m, stretched by reads_per_day's pacing.
            let day = pacing.per_day.unwrap() as f64;
            let paced = 86_400.0 * unchanged as f64 / (day / 4.0).floor();
            let every = paced.max(300.0);
            let rounds = 86_400.0 / every;
            let quiet = rounds * unchanged as f64;
            let changing = quiet + (n as f64 * 0.01 * 24.0) * get as f64;
            println!(
                "  {n:>5} items: first load {first} requests; unchanged round {unchanged} (1 op call); one changed item {one_changed} (2 op calls); listed every {every:.0} s",
            );
            println!(
                "         reads per day: unchanged {quiet:.0} ({:.1}% of Teams' 5,000), 1%/hour changing {:.0} ({:.1}%, budget {day}){}",
                100.0 * quiet / TEAMS_DAILY,
                changing.min(day),
                100.0 * changing.min(day) / TEAMS_DAILY,
                if changing > day { "; capped by reads_per_day: changes wait for room" } else { "" }
            );
            if n == 100 {
                println!(
                    "         target: a 100-item vault under 10% of Teams' daily limit: {}",
                    verdict(changing.min(day) < 0.1 * TEAMS_DAILY)
                );
                println!(
                    "         target: an unchanged round is 1 read (op call) per vault, one change 2: {}",
                    verdict(unchanged == 2 && get == 3)
                );
            }
        }

        // First load of 200 items at 0.5 s per call.
        let vault = Vault::new(200, 500);
        let source = vault.source(false);
        let mut memory = SourceMemory::default();
        let started = Instant::now();
        source.load_with(&mut memory).await.unwrap();
        let took = started.elapsed().as_secs_f64();
        println!(
            "  first load of 200 items at 0.5 s per call (concurrency 8): {took:.1} s, {} requests; target at most 30 s: {}",
            vault.requests(),
            verdict(took <= 30.0)
        );

        // Rate-limited: how many calls reach 1Password in the hour.
        let mut vault = Vault::new(20, 0);
        vault.state["per_hour"] = 30.into();
        vault.save();
        let source = vault.source(true);
        let mut memory = SourceMemory::default();
        let mut attempts = 0;
        for _ in 0..200 {
            attempts += 1;
            let _ = source.load_with(&mut memory).await;
        }
        println!(
            "  rate-limited (the stand-in allows 30 requests an hour): {attempts} refresh attempts, {} refused calls reached 1Password; target at most 1 per reset window: {}",
            vault.refused(),
            verdict(vault.refused() <= 1)
        );
        println!(
            "  time to ready after a restart with a sealed set: not built yet (every restart reads the vault again)"
        );
    });
}
