//! `locket`: the secrets cache server.
//!
//! Exit codes: 0 ok, 1 runtime failure (sources, network), 2 usage or
//! config error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use locket::config::server::ServerConfig;
use locket::keys::ServerKey;
use locket::server::{self, State};
use locket::source;
use tokio::sync::Notify;

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
    /// Print the server key fingerprint (creating the key file if absent).
    Fingerprint {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
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
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
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
            Command::Fingerprint { config } => fingerprint(&config),
            Command::ImportRegistry { file, networks } => import_registry(&file, &networks),
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

fn load_key(config: &ServerConfig) -> Result<ServerKey, Failure> {
    let (key, created) =
        ServerKey::load_or_create(&config.key_file, config.key_bits).map_err(config_error)?;
    if created {
        tracing::info!(path = %config.key_file.display(), bits = key.bits(), fingerprint = key.fingerprint(), "created a new server key");
    }
    Ok(key)
}

async fn serve(path: &Path) -> Result<(), Failure> {
    if let Some(warning) = locket::hygiene::no_core_dumps() {
        tracing::warn!("{warning}");
    }
    let config = ServerConfig::load(path).map_err(config_error)?;
    let registry = config.validate().map_err(config_error)?;
    let key = load_key(&config)?;
    let secrets = match source::load_all(&config.sources).await {
        Ok(set) => Some(set),
        Err(e) if config.start_unready => {
            tracing::error!(error = %e, "first load failed; listening anyway (start_unready), answering 503 until a load succeeds");
            None
        }
        Err(e) => {
            return Err(runtime_error(format!(
                "{e}; fix the source and start again (nothing is served without a first good load; start_unready = true listens anyway)"
            )));
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            runtime_error(format!(
                "cannot listen on {}: {e}; is another process using it?",
                config.listen
            ))
        })?;
    let addr = listener.local_addr().map_err(runtime_error)?;
    let tls = match &config.tls {
        Some(t) => Some(server::tls::acceptor(&t.cert_file, &t.key_file).map_err(config_error)?),
        None => None,
    };
    tracing::info!(
        clients = registry.len(),
        secrets = secrets.as_ref().map(|s| s.len()).unwrap_or(0),
        fingerprint = key.fingerprint(),
        tls = tls.is_some(),
        "locket listening on {addr}"
    );
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "serving plain HTTP on non-loopback address {addr}: requests and answers are encrypted end to end, but consider TLS or a private network"
        );
    }
    let loaded = secrets.is_some();
    let mut state = State::new(key, registry, secrets, &config);
    if config.v1.enable {
        if let Some(path) = &config.v1.key_file {
            let (v1_key, created) = ServerKey::load_or_create(path, 2048).map_err(config_error)?;
            if created {
                tracing::info!(path = %path.display(), "created the v1 compat key (2048 bits)");
            }
            state = state.with_v1_key(v1_key);
        }
        tracing::warn!(path = %config.v1.path, "the original locket protocol (v1) is enabled: it decrypts before it authenticates; turn it off once Go clients have moved to v2");
    }
    if let Some(acceptor) = tls {
        state = state.with_tls(acceptor);
    }
    let state = Arc::new(state);

    let refresh_now = Arc::new(Notify::new());
    let stop = Arc::new(Notify::new());
    tokio::spawn(server::refresh::refresh_loop(
        Arc::clone(&state),
        Arc::clone(&refresh_now),
        Arc::clone(&stop),
    ));
    // Every signal handler is in place before READY=1.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(runtime_error)?;
    let shutdown = shutdown_signal()?;
    tokio::spawn(reload_on_sighup(
        Arc::clone(&state),
        path.to_owned(),
        hangup,
    ));
    spawn_watchdog();
    if loaded {
        locket::sd_notify::notify("READY=1");
    }
    server::run(listener, state, async move {
        shutdown.await;
        stop.notify_waiters();
        locket::sd_notify::notify("STOPPING=1");
    })
    .await
    .map_err(runtime_error)?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-read the config; a valid one replaces the running one.
async fn reload_on_sighup(state: Arc<State>, path: PathBuf, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading {}", path.display());
        let _ = server::refresh::reload(&state, &path).await;
    }
}

/// Pings systemd's watchdog at half the interval it asks for.
fn spawn_watchdog() {
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if std::env::var("WATCHDOG_PID")
        .ok()
        .is_some_and(|p| p != std::process::id().to_string())
    {
        return;
    }
    let period =
        std::time::Duration::from_micros(usec / 2).max(std::time::Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            locket::sd_notify::notify("WATCHDOG=1");
            tokio::time::sleep(period).await;
        }
    });
}

/// Installs the SIGTERM and SIGINT handlers now (so that a signal arriving
/// right after READY=1 is never the default "terminate at once") and returns
/// a future that completes on the first of them.
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
    let config = ServerConfig::load(path).map_err(config_error)?;
    let registry = config.validate().map_err(config_error)?;
    let key = if config.key_file.exists() {
        let key = ServerKey::load(&config.key_file).map_err(config_error)?;
        format!("{} ({} bits)", key.fingerprint(), key.bits())
    } else {
        format!(
            "{} does not exist yet; `serve` or `fingerprint` will create it",
            config.key_file.display()
        )
    };
    let secrets = source::load_all(&config.sources)
        .await
        .map_err(runtime_error)?;
    println!("config: {}", path.display());
    println!("server key: {key}");
    println!("sources: {}", config.sources.len());
    println!("secrets: {}", secrets.len());
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

fn fingerprint(path: &Path) -> Result<(), Failure> {
    let config = ServerConfig::load(path).map_err(config_error)?;
    let key = load_key(&config)?;
    println!("{}", key.fingerprint());
    Ok(())
}

/// The original registry: a YAML list of `{name, keypub}`.
fn import_registry(path: &Path, networks: &[String]) -> Result<(), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))?;
    let clients = locket::registry::import_v1_yaml(&text, networks)
        .map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    let mut root = toml::Table::new();
    root.insert("clients".into(), toml::Value::Table(clients));
    println!(
        "# Imported from {} by `locket import-registry`.",
        path.display()
    );
    println!(
        "# Review before use: `networks` is the same for every client here; narrow it per client."
    );
    println!(
        "# `secrets` grants each client its own service's secrets under [v1] lookup = \"per-client\""
    );
    println!(
        "# (names \"<client>/<NAME>\", e.g. one 1Password item per service); list names for lookup = \"plain\"."
    );
    print!("{}", toml::to_string(&root).map_err(runtime_error)?);
    Ok(())
}
