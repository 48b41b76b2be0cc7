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

use std::time::{Duration, Instant};

use locket::source::{SourceConfig, SourceMemory};

#[path = "../tests/it/opvault.rs"]
#[allow(dead_code)]
mod opvault;
use opvault::Vault;

const TEAMS_DAILY: f64 = 5000.0;

/// Starts the real server on `config` and returns how long it took to
/// listen (its first load included), then stops it.
fn time_to_listen(config: &std::path::Path) -> Duration {
    use std::io::BufRead as _;
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_locket"))
        .args(["serve", "--config"])
        .arg(config)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run locket");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines().map_while(Result::ok) {
        if line.contains("listening on") {
            let took = started.elapsed();
            let _ = child.kill();
            let _ = child.wait();
            return took;
        }
    }
    let _ = child.wait();
    panic!("the server did not start");
}

/// A 200-item vault at 0.5 s per call, served by the real server with a
/// sealed last-good set (the real systemd-creds, host key: needs root):
/// the first start reads everything, a restart one list.
fn restart_with_sealed_set() {
    if !nix::unistd::geteuid().is_root()
        || std::process::Command::new("systemd-creds")
            .arg("--version")
            .output()
            .is_err()
    {
        println!(
            "  time to ready after a restart with the sealed set: not measured (needs root and systemd-creds)"
        );
        return;
    }
    let vault = Vault::with_latency(200, 500);
    let d = vault.dir.path();
    let config = d.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nkey_file = \"server-key.pem\"\nkey_bits = 2048\n[[sources]]\ntype = \"onepassword-cli\"\nvault = \"prod\"\ntoken_file = \"token\"\nop = \"{}\"\n[sealed_set]\npath = \"state/set.cred\"\nmax_age = \"1h\"\nkey = \"host\"\n",
            d.join("op").display()
        ),
    )
    .unwrap();
    let first = time_to_listen(&config);
    let calls = vault.calls().len();
    let restart = time_to_listen(&config);
    let restart_calls = vault.calls().len() - calls;
    println!(
        "  200 items at 0.5 s per call, real server: first start {:.1} s ({calls} op calls); restart with the sealed set {:.1} s ({restart_calls} op call, {} requests); target: a restart costs one read per vault plus the changed items: {}",
        first.as_secs_f64(),
        restart.as_secs_f64(),
        vault.requests() - vault.requests_before(calls),
        verdict(restart_calls == 1)
    );
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
            let vault = Vault::new(3);
            let got = vault
                .source(Some((0, 0)), 8)
                .load_with(&mut SourceMemory::default())
                .await
                .unwrap();
            assert_eq!(got.len(), 6, "password and host of 3 items");
        });
        println!(
            "1Password bench: harness ok (run it with `cargo bench --bench onepassword`); 1 passed, 0 failed"
        );
        return;
    }
    rt.block_on(async {
        println!("1Password through `op` (the stand-in), defaults unless said");
        // Round costs and reads per day, for 10, 100 and 1,000 items.
        let pacing = SourceConfig::OnepasswordCli(locket::source::OnepasswordCliSource {
            vault: "x".into(),
            token_file: "t".into(),
            op: "op".into(),
            timeout: Duration::from_secs(1),
            reads_per_hour: None,
            reads_per_day: None,
            concurrency: None,
            references: Default::default(),
        })
        .budget();
        for n in [10usize, 100, 1000] {
            let mut vault = Vault::new(n);
            let source = vault.source(Some((0, 0)), 8);
            let mut memory = SourceMemory::default();
            source.load_with(&mut memory).await.unwrap();
            let first = u64::from(vault.requests());
            source.load_with(&mut memory).await.unwrap();
            let unchanged = u64::from(vault.requests()) - first;
            vault.state["items"][0]["version"] = 2.into();
            vault.save();
            let before = u64::from(vault.requests());
            source.load_with(&mut memory).await.unwrap();
            let one_changed = u64::from(vault.requests()) - before;
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
        let vault = Vault::with_latency(200, 500);
        let source = vault.source(None, 8);
        let mut memory = SourceMemory::default();
        let started = Instant::now();
        source.load_with(&mut memory).await.unwrap();
        let took = started.elapsed().as_secs_f64();
        println!(
            "  first load of 200 items at 0.5 s per call (concurrency 8): {took:.1} s, {} requests; target at most 30 s: {}",
            vault.requests(),
            verdict(took <= 30.0)
        );

        // Rate-limited: how many calls reach 1Password in the hour. The
        // round that meets the limit has up to `concurrency` gets in
        // flight, each refused; after that the source waits out the hour.
        for concurrency in [8, 1] {
            let mut vault = Vault::new(20);
            vault.state["per_hour"] = 30.into();
            vault.save();
            let source = vault.source(Some((0, 0)), concurrency);
            let mut memory = SourceMemory::default();
            let _ = source.load_with(&mut memory).await;
            let at_the_limit = vault.refused();
            let attempts = 200;
            for _ in 0..attempts {
                let _ = source.load_with(&mut memory).await;
            }
            let after = vault.refused() - at_the_limit;
            println!(
                "  rate-limited (30 requests an hour), concurrency {concurrency}: {at_the_limit} refused calls in the round that met the limit (gets already in flight), then {after} in {attempts} refresh attempts; target at most 1 per reset window while limited: {}",
                verdict(after <= 1)
            );
        }
        let hours = 3003_f64 / f64::from(pacing.per_hour.unwrap());
        println!(
            "  a first load of 1,000 items at the default reads_per_hour ({}): 3,003 requests, spread over about {:.0} hours (the source serves nothing until it is whole; raise reads_per_hour for the first start, or keep a sealed set)",
            pacing.per_hour.unwrap(),
            hours.ceil()
        );
        restart_with_sealed_set();
    });
}
