//! `locket`: the secrets cache server.
//!
//! Exit codes: 0 ok, 1 runtime failure (sources, network), 2 usage or
//! config error; `plan`: 0 no change, 2 changes, 1 any error.

#[path = "locket/cli.rs"]
mod cli;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use cli::{Cli, Command, LogFormat};

struct Failure {
    code: u8,
    message: String,
}

/// A failure with its exit code; the message is printed once, in `main`.
fn fail(code: u8, e: impl std::error::Error + 'static) -> Failure {
    Failure {
        code,
        message: locket::error_chain(&e),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `plan` keeps 2 for "changes": a usage error there is 1.
            let plan = std::env::args().skip(1).any(|a| a == "plan");
            return ExitCode::from(match (e.use_stderr(), plan) {
                (false, _) => 0,
                (true, true) => 1,
                (true, false) => 2,
            });
        }
    };
    init_logging(&cli.log_level, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("locket: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                runtime_dir,
            } => (locket::server::run(&config, runtime_dir).await)
                .map_err(|e| fail(e.exit_code(), e)),
            Command::Reload {
                config,
                runtime_dir,
                wait,
                timeout,
            } => reload(&config, &runtime_dir, wait.then_some(timeout)).await,
            Command::Check { config, offline } => check(&config, offline).await,
            Command::Fingerprint { config, next } => locket::fingerprint(&config, next)
                .map(|fp| println!("{fp}"))
                .map_err(|e| fail(e.exit_code(), e)),
            Command::Plan {
                config,
                against,
                resolve,
            } => plan(&config, against.as_deref(), resolve).await,
            Command::ImportRegistry { file, networks } => {
                locket::v1::import::import_file(&file, &networks)
                    .map(|text| print!("{text}"))
                    .map_err(|e| fail(2, e))
            }
            Command::SealKey {
                out,
                name,
                with_key,
                systemd_creds,
            } => locket::new_key_credential(&out, &name, &with_key, &systemd_creds)
                .await
                .map(|()| {
                    println!(
                        "{}: a new sealing key, sealed as credential {name}",
                        out.display()
                    )
                })
                .map_err(|e| fail(2, e)),
            Command::Generate { kind, out } => generate(kind, out.as_deref()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("locket: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `generate`: man pages into a folder, or a completion script to stdout.
fn generate(kind: cli::GenerateKind, out: Option<&Path>) -> Result<(), Failure> {
    use clap::CommandFactory as _;
    let written =
        locket::cli_docs::generate(Cli::command(), kind.into(), out, &mut std::io::stdout())
            .map_err(|e| fail(2, e))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn check(path: &Path, offline: bool) -> Result<(), Failure> {
    if offline {
        let report = locket::check_offline(path).map_err(|e| fail(e.exit_code(), e))?;
        print!("{report}");
        return Ok(());
    }
    let report = locket::check(path).await.map_err(|e| {
        // An operator at a terminal: the command's own words help here.
        let stderr = e
            .command_stderr()
            .map(|s| format!("\nthe command's stderr: {s}"));
        Failure {
            code: e.exit_code(),
            message: format!("{}{}", locket::error_chain(&e), stderr.unwrap_or_default()),
        }
    })?;
    print!("{report}");
    Ok(())
}

/// `locket plan`: 0 no change, 2 changes, 1 any error (so `2` is not a
/// config error here, as `terraform plan -detailed-exitcode` does it).
async fn plan(new: &Path, against: Option<&Path>, resolve: bool) -> Result<(), Failure> {
    let planned = locket::plan_files(new, against, resolve)
        .await
        .map_err(|e| fail(1, e))?;
    print!("{planned}");
    if planned.plan.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: 2,
            message: format!("{} client(s) change", planned.plan.changes.len()),
        })
    }
}

/// `locket reload`: the server's reason is the message when it refuses.
async fn reload(config: &Path, runtime_dir: &Path, wait: Option<Duration>) -> Result<(), Failure> {
    use locket::server::reload_control;
    let status = reload_control::reload(config, runtime_dir, wait)
        .await
        .map_err(|e| fail(e.exit_code(), e))?;
    if wait.is_some() {
        println!("reload {} applied by pid {}", status.finished, status.pid);
    }
    Ok(())
}
