//! `locket-client`: fetch secrets from a locket server.
//!
//! Exit codes: 0 ok, 1 other failure (network, server error), 2 usage or
//! config error, 3 denied, 4 not found.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use locket::client::render::{self, RenderOptions};
use locket::client::{Client, ClientError, output};
use locket::config::client::{ClientConfig, ClientLayer};
use locket::keys::ClientKey;

#[derive(Parser)]
#[command(
    name = "locket-client",
    version,
    about = "Fetch secrets from a locket server",
    max_term_width = 100
)]
struct Cli {
    /// Client config file (TOML). Also LOCKET_CONFIG.
    #[arg(long, global = true, env = "LOCKET_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Server base URL, e.g. http://127.0.0.1:7410 (config `server`, LOCKET_SERVER).
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// This client's registered name (config `name`, LOCKET_NAME).
    #[arg(long, global = true)]
    name: Option<String>,
    /// ed25519 private key file (config `key_file`, LOCKET_KEY_FILE).
    #[arg(long = "key", global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Expected server key fingerprint, sha256:<hex> (config `server_fingerprint`, LOCKET_SERVER_FINGERPRINT).
    #[arg(long, global = true, value_name = "FP")]
    server_fingerprint: Option<String>,
    /// Local address to connect from (config `bind`, LOCKET_BIND).
    #[arg(long, global = true, value_name = "ADDR")]
    bind: Option<IpAddr>,
    /// Overall network timeout, e.g. 10s (config `timeout`, LOCKET_TIMEOUT).
    #[arg(long, global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new ed25519 private key (mode 0600) and print its public key line for the server's `keys = [...]`.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print one secret's value followed by a newline.
    Get {
        #[arg(value_name = "NAME")]
        secret: String,
    },
    /// Print every granted secret (or the named ones).
    Env {
        #[arg(value_name = "NAME")]
        secrets: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Dotenv)]
        format: Format,
    },

    /// Write one file per secret into DIR (atomically; mode 0400 by default) and remove files no longer granted.
    Render {
        /// Folder to write into (created with mode 0750 if missing), e.g. /run/locket/app.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(value_name = "NAME")]
        secrets: Vec<String>,
        /// File mode, octal.
        #[arg(long, default_value = "0400", value_parser = parse_mode)]
        mode: u32,
        /// Owner of the files (user name or uid).
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// Group of the files (group name or gid).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Also write every secret to this file, for systemd EnvironmentFile=.
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
    },
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{text:?} is not an octal mode like 0400"))?;
    if mode & !0o777 != 0 || mode & 0o400 == 0 {
        return Err(format!(
            "mode {text} must be within 0777 and readable by the owner"
        ));
    }
    if mode & 0o007 != 0 {
        return Err(format!(
            "mode {text} lets everyone read the secret; use 0400 or 0440"
        ));
    }
    Ok(mode)
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// NAME="value" lines that dotenv parsers read back exactly.
    Dotenv,
    /// One JSON object, name -> value.
    Json,
    /// `export NAME='value'` lines for a POSIX shell (`eval "$(...)"`).
    Shell,
    /// NAME="value" lines for systemd's EnvironmentFile=.
    Systemd,
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

fn usage(message: impl std::fmt::Display) -> Failure {
    Failure {
        code: 2,
        message: message.to_string(),
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("locket-client: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Keygen { out } = &cli.command {
        let key = ClientKey::generate().map_err(usage)?;
        key.write_new(out).map_err(usage)?;
        println!("{}", key.public_line());
        return Ok(());
    }
    let flags = ClientLayer {
        server: cli.server,
        name: cli.name,
        key_file: cli.key,
        server_fingerprint: cli.server_fingerprint,
        bind: cli.bind,
        timeout: cli.timeout,
    };
    let config = ClientConfig::load(cli.config.as_deref(), &flags).map_err(usage)?;
    if config.server_fingerprint.is_none() {
        eprintln!(
            "locket-client: warning: the server at {} is not pinned; set server_fingerprint (from `locket fingerprint` on the server) so a substituted server is refused",
            config.server
        );
    }
    let (key, loose) = ClientKey::load(&config.key_file).map_err(usage)?;
    if let Some(mode) = loose {
        eprintln!(
            "locket-client: warning: key file {} has mode {mode:03o}, readable by others; run `chmod 600 {}`",
            config.key_file.display(),
            config.key_file.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot start the runtime: {e}"),
        })?;
    runtime.block_on(async move {
        let client = Client::new(&config, key)?;
        let mut stdout = std::io::stdout().lock();
        let written = match cli.command {
            Command::Keygen { .. } => unreachable!("handled above"),
            Command::Get { secret } => {
                let secrets = client.fetch(std::slice::from_ref(&secret)).await?;
                let value = &secrets[0].1;
                stdout
                    .write_all(value.expose().as_bytes())
                    .and_then(|()| stdout.write_all(b"\n"))
            }
            Command::Env {
                secrets: names,
                format,
            } => {
                let secrets = client.fetch(&names).await?;
                let text = match format {
                    Format::Dotenv => output::dotenv(&secrets).map_err(usage)?,
                    Format::Json => output::json(&secrets),
                    Format::Shell => output::shell(&secrets).map_err(usage)?,
                    Format::Systemd => output::systemd_env(&secrets).map_err(usage)?,
                };
                stdout.write_all(&text)
            }
            Command::Render {
                dir,
                secrets: names,
                mode,
                owner,
                group,
                env_file,
            } => {
                let options = RenderOptions {
                    dir,
                    mode,
                    owner: owner
                        .as_deref()
                        .map(render::lookup_user)
                        .transpose()
                        .map_err(usage)?,
                    group: group
                        .as_deref()
                        .map(render::lookup_group)
                        .transpose()
                        .map_err(usage)?,
                    env_file,
                };
                let secrets = client.fetch(&names).await?;
                let report = render::render(&secrets, &options).map_err(|e| Failure {
                    code: 1,
                    message: format!("render failed: {e}"),
                })?;
                eprintln!(
                    "locket-client: {}: {} written, {} unchanged, {} removed",
                    options.dir.display(),
                    report.written.len(),
                    report.unchanged.len(),
                    report.removed.len()
                );
                Ok(())
            }
        };
        written.and_then(|()| stdout.flush()).map_err(|e| Failure {
            code: 1,
            message: format!("cannot write to stdout: {e}"),
        })
    })
}
