//! `locket-client`: fetch secrets from a locket server and hand them to
//! programs.
//!
//! Exit codes: 0 ok, 1 other failure (network, server error), 2 usage or
//! config error, 3 denied, 4 not found; `exec` exits with its command's
//! code (127 when the command cannot be run).

#[path = "locket-client/messages.rs"]
mod messages;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use locket::client::{Client, ClientError};
use locket::config::client::{ClientConfig, ClientLayer, ServerOrder};
use locket::deliver::render::{self, RenderOptions, TemplateFile};
use locket::deliver::template::Template;
use locket::deliver::{self, DeliverError, DeliveryPlan, exec, output};
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
    /// Server base URL, e.g. http://127.0.0.1:7410; repeat for failover (config `server`/`servers`, LOCKET_SERVER comma-separated).
    #[arg(long, global = true, value_name = "URL")]
    server: Vec<String>,
    /// Order in which several servers are tried (config `server_order`, LOCKET_SERVER_ORDER).
    #[arg(long, global = true, value_enum)]
    server_order: Option<ServerOrder>,
    /// This client's registered name (config `name`, LOCKET_NAME).
    #[arg(long, global = true)]
    name: Option<String>,
    /// ed25519 private key file (config `key_file`, LOCKET_KEY_FILE).
    #[arg(long = "key", global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Expected server key fingerprint, `sha256:<hex>`; during a server key rotation the current and the next, comma-separated (config `server_fingerprint` or `server_fingerprints`, LOCKET_SERVER_FINGERPRINT).
    #[arg(long, global = true, value_name = "FP")]
    server_fingerprint: Option<String>,
    /// Local address to connect from (config `bind`, LOCKET_BIND).
    #[arg(long, global = true, value_name = "ADDR")]
    bind: Option<IpAddr>,
    /// Overall network timeout across servers and retries, e.g. 10s (config `timeout`, LOCKET_TIMEOUT).
    #[arg(long, global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// CA certificates (PEM) to trust for https:// servers (config `ca_file`, LOCKET_CA_FILE).
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Server keys recorded per URL, like ssh's known_hosts (config `known_servers_file`, LOCKET_KNOWN_SERVERS_FILE; default: known_servers beside the key file).
    #[arg(long = "known-servers", global = true, value_name = "FILE")]
    known_servers_file: Option<PathBuf>,
    /// Record the key of a server that is neither pinned nor known yet in the known-servers file, and trust it from then on.
    #[arg(long, global = true)]
    trust_on_first_use: bool,
    /// Accept any server key, unpinned (config `insecure_unpinned`, LOCKET_INSECURE_UNPINNED). Throwaway setups only: a substituted server would be believed.
    #[arg(long, global = true)]
    insecure_unpinned: bool,
    /// exec and env: also pass variables that change how programs run (PATH, LD_*, *_PRELOAD, BASH_ENV, ...) when they were not asked for by name.
    #[arg(long, global = true)]
    allow_loader_vars: bool,
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
    /// Run COMMAND with the secrets in its environment (this process is replaced by it; its exit code is the exit code).
    Exec {
        /// Fetch only these secrets (default: every granted secret).
        #[arg(long, num_args = 1.., value_name = "NAME")]
        only: Vec<String>,
        /// Put this before every variable name (not before names given with --as).
        #[arg(long, default_value = "", value_name = "P")]
        prefix: String,
        /// Use variable VAR for secret NAME instead of the mapped name (repeatable).
        #[arg(long = "as", value_name = "NAME=VAR", value_parser = parse_rename)]
        renames: Vec<(String, String)>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
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
        /// Keep running: fetch again every INTERVAL (e.g. 1m) and rewrite what changed.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "INTERVAL")]
        watch: Option<Duration>,
        /// With --watch: run this shell command after each change (e.g. "systemctl reload-or-restart app").
        #[arg(long, requires = "watch", value_name = "CMD")]
        on_change: Option<String>,
        /// Also render this template into DIR (repeatable): `{{ NAME }}` is secret NAME's value, `{{ "{{" }}` a literal; the file keeps its name, less a `.tmpl` suffix. An unknown name is an error and nothing is written.
        #[arg(long = "template", value_name = "FILE")]
        templates: Vec<PathBuf>,
    },
    /// Deliver the consumers of a delivery plan (what the NixOS module's fetch units and watcher run).
    ///
    /// The plan is the module's /etc/locket/delivery.toml (format in docs/nixos.md): one request for all of its consumers, their files and templates rendered; with --watch keep doing so, restarting or reloading the units of consumers whose values changed.
    Deliver {
        /// The delivery plan (TOML).
        #[arg(long, value_name = "FILE")]
        plan: PathBuf,
        /// Deliver only this consumer (repeatable; default: all). Without --watch, when no server answers, a consumer whose folder still holds every file its plan asks for keeps them; else one with cache_max_age gets its cached copy if it is recent enough.
        #[arg(long = "consumer", value_name = "NAME")]
        consumers: Vec<String>,
        /// Keep running: every INTERVAL (±10%) fetch for every delivered consumer in one request, rewrite what changed, and restart/reload/notify once per change. Without --consumer, also serve the plan's delivery = "socket" consumers on its credential_socket (or the socket systemd hands over).
        #[arg(long, value_parser = humantime::parse_duration, value_name = "INTERVAL")]
        watch: Option<Duration>,
    },
    /// Write man pages (into --out FOLDER, one per command) or a shell completion script (to stdout).
    Generate {
        kind: GenerateKind,
        /// The folder for man pages.
        #[arg(long, value_name = "FOLDER")]
        out: Option<PathBuf>,
    },
}

/// What `generate` writes.
#[derive(Clone, Copy, ValueEnum)]
enum GenerateKind {
    Man,
    Bash,
    Zsh,
    Fish,
}

/// `NAME=VAR`, split at the last `=`: a variable name has none, a secret
/// name may.
fn parse_rename(text: &str) -> Result<(String, String), String> {
    let (name, var) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VAR"))?;
    Ok((name.to_owned(), var.to_owned()))
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

impl From<DeliverError> for Failure {
    fn from(e: DeliverError) -> Self {
        Self {
            code: e.exit_code(),
            message: locket::error_chain(&e),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self {
            code: e.exit_code(),
            message: locket::error_chain(&e),
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
    messages::init();
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
            tracing::error!("{}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Keygen { out } = &cli.command {
        return keygen(out);
    }
    if let Command::Generate { kind, out } = &cli.command {
        return generate(*kind, out.as_deref());
    }
    let allow_loader_vars = cli.allow_loader_vars;
    let (command, config) = client_config(cli)?;
    let key = client_key(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot start the runtime: {e}"),
        })?;
    runtime.block_on(async move {
        let client = Client::new(&config, key)?;
        match command {
            Command::Keygen { .. } | Command::Generate { .. } => unreachable!("handled above"),
            Command::Get { secret } => get(&client, secret).await,
            Command::Env { secrets, format } => {
                env(&client, &secrets, format, allow_loader_vars).await
            }
            Command::Exec {
                only,
                prefix,
                renames,
                command,
            } => {
                exec_command(
                    &client,
                    &only,
                    &prefix,
                    renames,
                    &command,
                    allow_loader_vars,
                )
                .await
            }
            Command::Render {
                dir,
                secrets,
                mode,
                owner,
                group,
                env_file,
                watch,
                on_change,
                templates,
            } => {
                let options = render_options(dir, mode, owner, group, env_file, &templates)?;
                deliver::render_folder(&client, &secrets, &options)
                    .await
                    .map_err(Failure::from)?;
                match watch {
                    Some(interval) => deliver::watch_folder(
                        &client,
                        &secrets,
                        &options,
                        interval,
                        on_change.as_deref(),
                    )
                    .await
                    .map_err(Failure::from),
                    None => Ok(()),
                }
            }
            Command::Deliver {
                plan,
                consumers,
                watch,
            } => deliver_plan(&client, &plan, &consumers, watch).await,
        }
    })
}

/// `generate`: man pages into a folder, or a completion script to stdout;
/// needs no config, no server.
fn generate(kind: GenerateKind, out: Option<&std::path::Path>) -> Result<(), Failure> {
    use clap::CommandFactory as _;
    use locket::cli_docs::Kind;
    let kind = match kind {
        GenerateKind::Man => Kind::Man,
        GenerateKind::Bash => Kind::Bash,
        GenerateKind::Zsh => Kind::Zsh,
        GenerateKind::Fish => Kind::Fish,
    };
    let written = locket::cli_docs::generate(Cli::command(), kind, out, &mut std::io::stdout())
        .map_err(usage)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// `keygen`: needs no config, no server.
fn keygen(out: &std::path::Path) -> Result<(), Failure> {
    let key = ClientKey::generate().map_err(usage)?;
    key.write_new(out).map_err(usage)?;
    println!("{}", key.public_line());
    Ok(())
}

/// The settings from flags over LOCKET_* over the config file, with the
/// warnings an operator should see before anything is sent.
fn client_config(cli: Cli) -> Result<(Command, ClientConfig), Failure> {
    let flags = ClientLayer {
        server: None,
        servers: (!cli.server.is_empty()).then_some(cli.server),
        server_order: cli.server_order,
        name: cli.name,
        key_file: cli.key,
        server_fingerprint: cli.server_fingerprint,
        server_fingerprints: None,
        bind: cli.bind,
        timeout: cli.timeout,
        ca_file: cli.ca_file,
        known_servers_file: cli.known_servers_file,
        insecure_unpinned: cli.insecure_unpinned.then_some(true),
    };
    let mut config = ClientConfig::load(cli.config.as_deref(), &flags).map_err(usage)?;
    config.trust_on_first_use = cli.trust_on_first_use;
    if let Some(warning) = locket::no_core_dumps() {
        tracing::warn!("{warning}");
    }
    if config.server_fingerprint.is_none() && config.insecure_unpinned {
        tracing::warn!(
            "insecure_unpinned: the server at {} is not pinned, and a substituted server would be believed; set server_fingerprint (from `locket fingerprint` on the server)",
            config.servers.join(", ")
        );
    }
    Ok((cli.command, config))
}

fn client_key(config: &ClientConfig) -> Result<ClientKey, Failure> {
    let (key, loose) = ClientKey::load(&config.key_file).map_err(usage)?;
    if let Some(mode) = loose {
        tracing::warn!(
            "key file {} has mode {mode:03o}, readable by others; run `chmod 600 {}`",
            config.key_file.display(),
            config.key_file.display()
        );
    }
    Ok(key)
}

/// `get`: one value and a newline.
async fn get(client: &Client, secret: String) -> Result<(), Failure> {
    let secrets = client.fetch(std::slice::from_ref(&secret)).await?;
    let value = secrets.get(&secret).ok_or_else(|| Failure {
        code: 1,
        message: format!("the server's answer has no {secret:?}"),
    })?;
    write_stdout(&[value.expose().as_bytes(), b"\n"])
}

/// `env`: every granted secret (or the named ones) in one format.
async fn env(
    client: &Client,
    names: &[String],
    format: Format,
    allow_loader_vars: bool,
) -> Result<(), Failure> {
    let mut secrets = client.fetch(names).await?;
    if !allow_loader_vars {
        let withheld = exec::withhold_loader_variables(&mut secrets, names, output::env_var_name);
        warn_withheld(&withheld);
    }
    let text = match format {
        Format::Dotenv => output::dotenv(&secrets).map_err(usage)?,
        Format::Json => output::json(&secrets),
        Format::Shell => output::shell(&secrets).map_err(usage)?,
        Format::Systemd => output::systemd_env(&secrets).map_err(usage)?,
    };
    write_stdout(&[&text])
}

/// `exec`: replaces this process with `command`; returns only when it
/// cannot be run.
async fn exec_command(
    client: &Client,
    only: &[String],
    prefix: &str,
    renames: Vec<(String, String)>,
    command: &[String],
    allow_loader_vars: bool,
) -> Result<(), Failure> {
    let mut secrets = client.fetch(only).await?;
    let renames: BTreeMap<String, String> = renames.into_iter().collect();
    if !allow_loader_vars {
        // A variable named with --as was asked for by name.
        let mut requested = only.to_vec();
        requested.extend(renames.keys().cloned());
        let withheld = exec::withhold_loader_variables(&mut secrets, &requested, |n| {
            renames
                .get(n)
                .cloned()
                .unwrap_or_else(|| format!("{prefix}{}", output::env_var_name(n)))
        });
        warn_withheld(&withheld);
    }
    let vars = exec::variables(&secrets, prefix, &renames).map_err(usage)?;
    drop(secrets);
    let error = exec::exec(command, &vars);
    Err(Failure {
        code: 127,
        message: format!("cannot run {:?}: {error}", command[0]),
    })
}

/// `render`'s flags as the library's options, templates read and parsed.
fn render_options(
    dir: PathBuf,
    mode: u32,
    owner: Option<String>,
    group: Option<String>,
    env_file: Option<PathBuf>,
    templates: &[PathBuf],
) -> Result<RenderOptions, Failure> {
    let mut options = RenderOptions {
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
        templates: Vec::new(),
    };
    for path in templates {
        let template = Template::read(path).map_err(usage)?;
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.strip_suffix(".tmpl").unwrap_or(n).to_owned())
            .ok_or_else(|| usage(format!("{}: not a file name", path.display())))?;
        options.templates.push(TemplateFile {
            file,
            template,
            mode: options.mode,
            owner: options.owner,
            group: options.group,
        });
    }
    Ok(options)
}

/// `deliver`: the consumers of a delivery plan, once or watched.
async fn deliver_plan(
    client: &Client,
    plan: &std::path::Path,
    consumers: &[String],
    watch: Option<Duration>,
) -> Result<(), Failure> {
    let plan = DeliveryPlan::load(plan)?;
    let selected = plan.consumers(consumers)?;
    match watch {
        None => deliver::deliver_once(client, &plan, &selected).await?,
        Some(interval) => {
            // Socket consumers are the watcher's alone (with --consumer:
            // none, so a watcher of chosen consumers serves no socket).
            let sockets = if consumers.is_empty() {
                plan.socket_consumers()?
            } else {
                Vec::new()
            };
            deliver::watch(client, &plan, &selected, &sockets, interval).await?
        }
    }
    Ok(())
}

/// Names only: the values stay unseen.
fn warn_withheld(withheld: &[String]) {
    if !withheld.is_empty() {
        tracing::warn!(
            "not passing {}: such variables change how programs run (PATH, LD_*, *_PRELOAD, ...); ask for each by name, or pass --allow-loader-vars",
            withheld.join(", ")
        );
    }
}

fn write_stdout(parts: &[&[u8]]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    parts
        .iter()
        .try_for_each(|p| stdout.write_all(p))
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot write to stdout: {e}"),
        })
}
