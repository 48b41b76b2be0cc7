//! 1Password, two ways: the `op` CLI with a service account, and a
//! 1Password Connect server over its REST API. Every item of the configured
//! vault becomes secrets named `<item title>/<field label>` (so a client
//! granted `"<service>/*"` reads one item, as the original locket did with
//! one item per service). Each item is read once per refresh, never once per
//! field. Tokens come from files and never reach a command line or a log.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::LoadError;
use crate::secret::SecretValue;

#[derive(Deserialize)]
struct ItemSummary {
    id: String,
    #[serde(default)]
    title: String,
}

#[derive(Deserialize)]
struct Field {
    #[serde(default)]
    id: String,
    #[serde(default)]
    label: String,
    /// Read as any JSON value, so that a number or boolean is served as
    /// text and a type mismatch never makes serde quote the value.
    #[serde(default)]
    value: Option<serde_json::Value>,
}

/// Parses 1Password JSON. serde's messages can quote the offending value,
/// which may be a secret: report only where the problem is.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, LoadError> {
    serde_json::from_slice(bytes).map_err(|e| {
        LoadError::Format(format!(
            "{what} is not the expected JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    title: String,
    #[serde(default)]
    fields: Vec<Field>,
}

#[derive(Deserialize)]
struct Vault {
    id: String,
    #[serde(default)]
    name: String,
}

/// Reads a token file (trimmed), in zeroizing memory.
pub(crate) fn read_token(path: &Path) -> Result<Zeroizing<String>, LoadError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        LoadError::OnePassword(format!("cannot read token_file {}: {e}", path.display()))
    })?);
    let token = Zeroizing::new(text.trim().to_owned());
    if token.is_empty() {
        return Err(LoadError::OnePassword(format!(
            "token_file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// Where each secret name came from (item title, field label), so that two
/// fields making one name are an error that names both.
type Origins = std::collections::BTreeMap<String, (String, String)>;

fn item_secrets(
    item: Item,
    out: &mut Vec<(String, SecretValue)>,
    origins: &mut Origins,
) -> Result<(), LoadError> {
    for field in item.fields {
        let value = match field.value {
            Some(serde_json::Value::String(s)) => Some(SecretValue::new(s)),
            Some(serde_json::Value::Number(n)) => Some(SecretValue::new(n.to_string())),
            Some(serde_json::Value::Bool(b)) => Some(SecretValue::new(b.to_string())),
            _ => None,
        };
        if let Some(value) = value {
            let label = if field.label.is_empty() {
                field.id
            } else {
                field.label
            };
            if !label.is_empty() {
                let name = format!("{}/{label}", item.title);
                if let Some((other_item, other_field)) =
                    origins.insert(name.clone(), (item.title.clone(), label.clone()))
                {
                    return Err(LoadError::OnePassword(format!(
                        "item {other_item:?} field {other_field:?} and item {:?} field {label:?} both make the secret name {name:?}; rename one of them in 1Password",
                        item.title
                    )));
                }
                out.push((name, value));
            }
        }
    }
    Ok(())
}

/// The `op` CLI: `op item list`, then `op item get` per item.
pub(crate) async fn load_cli(
    op: &str,
    vault: &str,
    token_file: &Path,
    timeout: Duration,
) -> Result<Vec<(String, SecretValue)>, LoadError> {
    let token = read_token(token_file)?;
    // `op` keeps its config under $HOME unless OP_CONFIG_DIR names a
    // folder; under systemd's DynamicUser + ProtectHome only the latter is
    // writable, so the server's OP_CONFIG_DIR (the NixOS module sets it)
    // is passed on.
    let config_dir = std::env::var("OP_CONFIG_DIR").ok();
    let mut env = vec![("OP_SERVICE_ACCOUNT_TOKEN", token.as_str())];
    if let Some(dir) = &config_dir {
        env.push(("OP_CONFIG_DIR", dir.as_str()));
    }
    let argv = |args: &[&str]| -> Vec<String> {
        std::iter::once(op)
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    let list = super::command::run(
        &argv(&["item", "list", "--vault", vault, "--format", "json"]),
        timeout,
        &env,
        None,
    )
    .await?;
    let items: Vec<ItemSummary> = parse(&list, "the output of `op item list`")?;
    let mut out = Vec::new();
    let mut origins = Origins::new();
    for summary in items {
        let raw = super::command::run(
            &argv(&[
                "item",
                "get",
                &summary.id,
                "--vault",
                vault,
                "--format",
                "json",
            ]),
            timeout,
            &env,
            None,
        )
        .await?;
        let item: Item = parse(
            &raw,
            &format!("the output of `op item get` for item {:?}", summary.title),
        )?;
        item_secrets(item, &mut out, &mut origins)?;
    }
    Ok(out)
}

/// A 1Password Connect server.
pub(crate) async fn load_connect(
    url: &str,
    vault: &str,
    token_file: &Path,
    timeout: Duration,
) -> Result<Vec<(String, SecretValue)>, LoadError> {
    let token = read_token(token_file)?;
    let http = crate::tls::http_client(crate::tls::Roots::for_urls([url]))
        .timeout(timeout)
        .build().map_err(|e| {
        LoadError::OnePassword(format!("HTTP client: {e}; for an https:// Connect server the system's CA certificates must be installed"))
    })?;
    let base = url.trim_end_matches('/');
    let get = |path: String| {
        let http = http.clone();
        let auth = Zeroizing::new(format!("Bearer {}", token.as_str()));
        async move { get_with_backoff(&http, &path, &auth).await }
    };
    let vaults: Vec<Vault> = parse(&get(format!("{base}/v1/vaults")).await?, "GET /v1/vaults")?;
    let vault_id = vaults
        .iter()
        .find(|v| v.id == vault || v.name == vault)
        .map(|v| v.id.clone())
        .ok_or_else(|| {
            LoadError::OnePassword(format!(
                "vault {vault:?} not found (the token sees {} vaults)",
                vaults.len()
            ))
        })?;
    let items: Vec<ItemSummary> = parse(
        &get(format!("{base}/v1/vaults/{vault_id}/items")).await?,
        "GET items",
    )?;
    let mut out = Vec::new();
    let mut origins = Origins::new();
    for summary in items {
        let raw = get(format!("{base}/v1/vaults/{vault_id}/items/{}", summary.id)).await?;
        let item: Item = parse(&raw, &format!("GET item {:?}", summary.title))?;
        item_secrets(item, &mut out, &mut origins)?;
    }
    Ok(out)
}

/// GET with up to 5 tries, backing off on 429 and 5xx (honouring
/// `Retry-After` up to 10 s). Errors name the path, never the token.
async fn get_with_backoff(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
) -> Result<Zeroizing<Vec<u8>>, LoadError> {
    let path = url
        .split_once("/v1/")
        .map(|(_, p)| format!("/v1/{p}"))
        .unwrap_or_else(|| url.to_owned());
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=5 {
        let response = http
            .get(url)
            .header("authorization", auth)
            .send()
            .await
            .map_err(|e| LoadError::OnePassword(format!("GET {path}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            let body = response
                .bytes()
                .await
                .map_err(|e| LoadError::OnePassword(format!("GET {path}: {e}")))?;
            return Ok(Zeroizing::new(body.to_vec()));
        }
        if (status.as_u16() == 429 || status.is_server_error()) && attempt < 5 {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(10)))
                .unwrap_or(delay);
            tracing::debug!(path = %path, status = status.as_u16(), attempt, "1Password Connect busy; backing off");
            tokio::time::sleep(wait).await;
            delay *= 2;
            continue;
        }
        return Err(LoadError::OnePassword(match status.as_u16() {
            401 | 403 => format!("GET {path}: {status}; check the Connect token in token_file"),
            _ => format!("GET {path}: {status}"),
        }));
    }
    Err(LoadError::OnePassword(format!(
        "GET {path}: still failing after 5 tries"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_served_as_text_and_errors_never_quote_values() {
        let item: Item = parse(br#"{"title":"db","fields":[{"label":"pin","value":123456},{"label":"on","value":true},{"label":"none"}]}"#, "x").unwrap();
        let mut out = Vec::new();
        item_secrets(item, &mut out, &mut Origins::new()).unwrap();
        let got: Vec<(&str, &str)> = out.iter().map(|(n, v)| (n.as_str(), v.expose())).collect();
        assert_eq!(got, [("db/pin", "123456"), ("db/on", "true")]);
        let Err(e) = parse::<Item>(br#"{"title":"db","fields":"hunter2-secret"}"#, "GET item")
        else {
            panic!("a string where fields belong must not parse");
        };
        let e = e.to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    /// Item `web` field `db/password` and item `web/db` field `password`
    /// make one name: an error naming both, never a silent winner.
    #[test]
    fn two_fields_making_one_name_are_an_error_naming_both() {
        let mut out = Vec::new();
        let mut origins = Origins::new();
        let web: Item = parse(
            br#"{"title":"web","fields":[{"label":"db/password","value":"one-v"}]}"#,
            "x",
        )
        .unwrap();
        let web_db: Item = parse(
            br#"{"title":"web/db","fields":[{"label":"password","value":"two-v"}]}"#,
            "x",
        )
        .unwrap();
        item_secrets(web, &mut out, &mut origins).unwrap();
        let e = item_secrets(web_db, &mut out, &mut origins)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("item \"web\" field \"db/password\"")
                && e.contains("item \"web/db\" field \"password\"")
                && e.contains("\"web/db/password\""),
            "{e}"
        );
        assert!(!e.contains("one-v") && !e.contains("two-v"), "{e}");
    }
}
