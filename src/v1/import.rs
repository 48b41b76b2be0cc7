//! `locket import-registry`: the original registry (a YAML list of
//! `{name, keypub}`) as `[clients.<name>]` tables. The only place YAML is
//! read.

/// What is wrong with an original registry file: which entry and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ImportError(String);

/// Converts the original locket's registry (a YAML list of `{name, keypub}`)
/// into `[clients]` entries: keys in the one-line form, `networks` as given
/// (the original had none), and a grant of `<name>/*`. Names are lower-cased
/// as the original did. The error says which entry is wrong and why.
pub fn import_yaml(text: &str, networks: &[String]) -> Result<toml::Table, ImportError> {
    use yaml_rust2::YamlLoader;
    let docs =
        YamlLoader::load_from_str(text).map_err(|e| ImportError(format!("not YAML: {e}")))?;
    let entries = docs
        .first()
        .and_then(|d| d.as_vec())
        .ok_or_else(|| ImportError("must hold a list of {name, keypub} entries".into()))?;
    let mut clients = toml::Table::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = |k: &str| entry[k].as_str().map(str::to_owned);
        let (Some(name), Some(keypub)) = (field("name"), field("keypub")) else {
            return Err(ImportError(format!("entry {i} lacks `name` or `keypub`")));
        };
        // The original lower-cased service names.
        let name = name.to_lowercase();
        if !crate::protocol::valid_client_name(&name) {
            return Err(ImportError(format!(
                "entry {i}: name {name:?} is not a valid client name (A-Za-z0-9._-)"
            )));
        }
        let key = crate::keys::parse_public_key(&keypub)
            .map_err(|e| ImportError(format!("entry {i} ({name}): {e}")))?;
        let mut table = toml::Table::new();
        table.insert(
            "keys".into(),
            toml::Value::Array(vec![crate::keys::public_line(&key).into()]),
        );
        table.insert(
            "networks".into(),
            toml::Value::Array(networks.iter().cloned().map(Into::into).collect()),
        );
        table.insert(
            "secrets".into(),
            toml::Value::Array(vec![format!("{name}/*").into()]),
        );
        if clients
            .insert(name.clone(), toml::Value::Table(table))
            .is_some()
        {
            return Err(ImportError(format!(
                "entry {i}: client {name:?} appears twice"
            )));
        }
    }
    Ok(clients)
}

/// The imported clients as a reviewed-by-a-human TOML fragment: a header
/// saying where they came from and what to narrow, then the tables.
pub fn to_config_text(from: &std::path::Path, clients: toml::Table) -> Result<String, ImportError> {
    let mut root = toml::Table::new();
    root.insert("clients".into(), toml::Value::Table(clients));
    let tables = toml::to_string(&root).map_err(|e| ImportError(e.to_string()))?;
    Ok(format!(
        "# Imported from {} by `locket import-registry`.\n\
         # Review before use: `networks` is the same for every client here; narrow it per client.\n\
         # `secrets` grants each client its own service's secrets under [v1] lookup = \"per-client\"\n\
         # (names \"<client>/<NAME>\", e.g. one 1Password item per service); list names for lookup = \"plain\".\n{}",
        from.display(),
        tables
    ))
}

/// `locket import-registry`: reads the original registry at `path` and
/// returns the `[clients]` fragment; errors name the file.
pub fn import_file(path: &std::path::Path, networks: &[String]) -> Result<String, ImportError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ImportError(format!("cannot read {}: {e}", path.display())))?;
    let clients = import_yaml(&text, networks)
        .map_err(|e| ImportError(format!("{}: {e}", path.display())))?;
    to_config_text(path, clients)
}
