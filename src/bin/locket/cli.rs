//! `locket`'s command line: every subcommand and flag (a public interface:
//! extend, never rename).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "locket",
    version,
    about = "A secrets cache for production services",
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Log level or filter (e.g. debug, info, locket=debug). Also LOCKET_LOG.
    #[arg(long, global = true, env = "LOCKET_LOG", default_value = "info")]
    pub(crate) log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Load secrets and serve them.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Where to publish each reload's outcome for `locket reload --wait` (default: systemd's RuntimeDirectory=, $RUNTIME_DIRECTORY).
        #[arg(long, env = "RUNTIME_DIRECTORY", value_name = "DIR")]
        runtime_dir: Option<PathBuf>,
    },
    /// Make the running `locket serve` reload its config (SIGHUP); with --wait, exit 0 only once the new config is applied (1: refused, the reason printed; 3: no server or no reload started; 4: timed out).
    Reload {
        /// The config the server was started with.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The server's runtime directory (default: systemd's RuntimeDirectory=, $RUNTIME_DIRECTORY).
        #[arg(long, env = "RUNTIME_DIRECTORY", value_name = "DIR")]
        runtime_dir: PathBuf,
        /// Wait for the outcome.
        #[arg(long)]
        wait: bool,
        /// With --wait: how long at the most.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "90s", value_name = "DURATION")]
        timeout: Duration,
    },
    /// Validate the config, registry, key file and sources without serving; print counts, never values.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Check only what needs no key, credential or source (syntax, keys, durations, networks, globs): for build time, where those exist only at run time.
        #[arg(long)]
        offline: bool,
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
pub(crate) enum GenerateKind {
    Man,
    Bash,
    Zsh,
    Fish,
}

impl From<GenerateKind> for locket::cli_docs::Kind {
    fn from(k: GenerateKind) -> Self {
        match k {
            GenerateKind::Man => Self::Man,
            GenerateKind::Bash => Self::Bash,
            GenerateKind::Zsh => Self::Zsh,
            GenerateKind::Fish => Self::Fish,
        }
    }
}
