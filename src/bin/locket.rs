//! `locket`: the secrets cache server.
//!
//! Exit codes: 0 ok, 1 runtime failure (sources, network), 2 usage or
//! config error; `plan`: 0 no change, 2 changes, 1 any error.

use clap::{Parser, Subcommand, ValueEnum};
use locket::config::server::{Checked, ServerConfig};
use locket::keys::ServerKey;
use locket::server::{Server, StartError};
use locket::source;
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

fn config_error(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 2,
        message: e.to_string(),
    }
}

fn runtime_error(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: e.to_string(),
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
            Command::Serve { config } => serve(&config).await,
            Command::Check { config } => check(&config).await,
            Command::Fingerprint { config, next } => fingerprint(&config, next),
            Command::Plan {
                config,
                against,
                resolve,
            } => plan(&config, against.as_deref(), resolve).await,
            Command::ImportRegistry { file, networks } => import_registry(&file, &networks),
            Command::SealKey {
                out,
                name,
                with_key,
                systemd_creds,
            } => locket::sealed::new_key_credential(&out, &name, &with_key, &systemd_creds)
                .await
                .map(|()| {
                    println!(
                        "{}: a new sealing key, sealed as credential {name}",
                        out.display()
                    )
                })
                .map_err(config_error),
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

fn start_error(e: StartError) -> Failure {
    Failure {
        code: e.exit_code(),
        message: e.to_string(),
    }
}

async fn serve(path: &Path) -> Result<(), Failure> {
    if let Some(warning) = locket::hygiene::no_core_dumps() {
        tracing::warn!("{warning}");
    }
    let server = Server::load(path).await.map_err(start_error)?;
    let listener = server.bind().await.map_err(start_error)?;
    // The handlers are installed now, before `serve` says READY=1, so that a
    // signal arriving right after it is never the default "terminate".
    let shutdown = shutdown_signal()?;
    server.serve(listener, shutdown).await.map_err(start_error)
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that
/// completes on the first of them.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(runtime_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(runtime_error)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing requests in flight"),
            _ = int.recv() => tracing::info!("interrupted: finishing requests in flight"),
        }
    })
}

async fn check(path: &Path) -> Result<(), Failure> {
    let Checked { config, registry } = ServerConfig::load(path).map_err(config_error)?;
    let key = if config.key_file.exists() {
        let key = ServerKey::load(&config.key_file).map_err(config_error)?;
        format!("{} ({} bits)", key.fingerprint(), key.bits())
    } else {
        format!(
            "{} does not exist yet; `serve` or `fingerprint` will create it",
            config.key_file.display()
        )
    };
    let (secrets, duplicates) = source::load_all(&config.sources).await.map_err(|e| {
        // An operator at a terminal: the command's own words help here.
        match &e.stderr {
            Some(stderr) => {
                runtime_error(format!("{e}\nthe command's stderr: {}", stderr.as_str()))
            }
            None => runtime_error(e),
        }
    })?;
    println!("config: {}", path.display());
    println!("server key: {key}");
    println!("sources: {}", config.sources.len());
    println!("secrets: {}", secrets.len());
    for d in &duplicates {
        let sources: Vec<String> = d.sources.iter().map(|i| format!("#{i}")).collect();
        println!(
            "  {} is defined by sources {}; the value of {} is served (later sources win)",
            d.name,
            sources.join(", "),
            sources.last().map(String::as_str).unwrap_or("-")
        );
    }
    println!("clients: {}", registry.len());
    for name in config.clients.keys() {
        if let Some(client) = registry.get(name) {
            let readable = client.readable(&secrets).len();
            println!(
                "  {name}: {} key(s), {} network(s), can read {readable} of {} secrets",
                client.keys.len(),
                client.networks.len(),
                secrets.len()
            );
        }
    }
    println!("OK");
    Ok(())
}

/// `locket plan`: 0 no change, 2 changes, 1 any error (so `2` is not a
/// config error here, as `terraform plan -detailed-exitcode` does it).
async fn plan(new: &Path, against: Option<&Path>, resolve: bool) -> Result<(), Failure> {
    let fail = |message: String| Failure { code: 1, message };
    let load = |path: &Path| {
        ServerConfig::load(path).map_err(|e| fail(format!("{}: {e}", path.display())))
    };
    // A discovered config is read only through a checked handle (see
    // `locket::discover`): it is another process's, and --resolve runs it.
    let (old_path, old) = match against {
        Some(path) => (path.to_owned(), load(path)?),
        None => {
            let running =
                locket::discover::running_server_config().map_err(|e| fail(e.to_string()))?;
            let old = ServerConfig::from_file_text(&running.path, &running.text)
                .map_err(|e| fail(format!("{}: {e}", running.path.display())))?;
            (running.path, old)
        }
    };
    let new_checked = load(new)?;
    let sets = if resolve {
        let load = |config: &ServerConfig, path: &Path| {
            let sources = config.sources.clone();
            let path = path.display().to_string();
            async move {
                source::load_all(&sources)
                    .await
                    .map(|(set, _)| set)
                    .map_err(|e| fail(format!("{path}: {e}")))
            }
        };
        Some((
            load(&old.config, &old_path).await?,
            load(&new_checked.config, new).await?,
        ))
    } else {
        None
    };
    let plan = locket::plan::plan(
        &old.registry,
        &new_checked.registry,
        sets.as_ref().map(|(o, n)| (o, n)),
    );
    println!("plan: {} -> {}", old_path.display(), new.display());
    print!("{plan}");
    if plan.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: 2,
            message: format!("{} client(s) change", plan.changes.len()),
        })
    }
}

fn fingerprint(path: &Path, next: bool) -> Result<(), Failure> {
    let config = ServerConfig::load(path).map_err(config_error)?.config;
    let (file, what) = if next {
        let file = config.next_key_file.as_ref().ok_or_else(|| {
            config_error(format!(
                "{} sets no next_key_file: add one to stage the next key of a rotation",
                path.display()
            ))
        })?;
        (file, "next server key")
    } else {
        (&config.key_file, "server key")
    };
    let key = locket::keys::ServerKey::load_or_create_logged(file, config.key_bits, what)
        .map_err(config_error)?;
    println!("{}", key.fingerprint());
    Ok(())
}

/// The original registry: a YAML list of `{name, keypub}`.
fn import_registry(path: &Path, networks: &[String]) -> Result<(), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))?;
    let clients = locket::v1::import::import_yaml(&text, networks)
        .map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    print!(
        "{}",
        locket::v1::import::to_config_text(path, clients).map_err(runtime_error)?
    );
    Ok(())
}
