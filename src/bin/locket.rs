//! `locket`: the secrets cache server.
//!
//! Exit codes: 0 ok, 1 runtime failure (sources, network), 2 usage or
//! config error; `plan`: 0 no change, 2 changes, 1 any error.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "locket",
    version,
    about = "A secrets cache for production services",
    max_term_width = 100
)]
struct Cli {
    /// Log level or filter (e.g. debug, info, locket=debug). Also LOCKET_LOG.
    #[arg(long, global = true, env = "LOCKET_LOG", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load secrets and serve them.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate the config, registry, key file and sources without serving; print counts, never values.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Turn the original locket's registry YAML ([{name, keypub}]) into [clients.<name>] tables; prints TOML.
    ImportRegistry {
        /// The original registry file.
        #[arg(value_name = "FILE.yml")]
        file: PathBuf,
        /// Networks to give every imported client (the original allowed one global CIDR).
        #[arg(long = "network", value_name = "CIDR", default_value = "10.0.0.0/24")]
        networks: Vec<String>,
    },
    /// Show what a new config grants and takes away, per client, before it is applied; names only, never values. Exit 0: no change, 2: changes, 1: error.
    Plan {
        /// The new config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The config to compare with (default: the one the running `locket serve` on this host was started with).
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
        /// Also load the new config's sources and list the secret names each client may newly read or no longer read.
        #[arg(long)]
        resolve: bool,
    },
    /// Make the key of a sealed last-good set for a server without root: a random key, sealed with systemd-creds for LoadCredentialEncrypted= (the NixOS module runs it once).
    SealKey {
        /// The credential file to create (kept if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The credential's name: the ID in LoadCredentialEncrypted=ID:FILE.
        #[arg(long, default_value = "seal-key")]
        name: String,
        /// systemd-creds --with-key: auto, host, tpm2 or host+tpm2.
        #[arg(long, default_value = "auto")]
        with_key: String,
        /// The systemd-creds program.
        #[arg(long, value_name = "PATH", default_value = "systemd-creds")]
        systemd_creds: PathBuf,
    },
    /// Print the server key fingerprint (creating the key file if absent).
    Fingerprint {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The next key's (`next_key_file`, created if absent) instead: the pin to roll out before promoting it.
        #[arg(long)]
        next: bool,
    },
}

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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
            Command::Serve { config } => {
                (locket::server::run(&config).await).map_err(|e| fail(e.exit_code(), e))
            }
            Command::Check { config } => check(&config).await,
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

async fn check(path: &Path) -> Result<(), Failure> {
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
