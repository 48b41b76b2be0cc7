//! The registry: which clients exist, how they prove who they are, where
//! they may call from and which secrets they may read.
//!
//! A request names its client; the server finds that client with one map
//! lookup and checks the signature against that client's keys only (one or
//! two: two while a key is being rotated). It never tries every key.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ed25519_dalek::VerifyingKey;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wildmatch::WildMatch;

use crate::keys::{self, KeyError};
use crate::protocol::valid_client_name;
use crate::secret::SecretValue;
use crate::store::ServedSet;

/// One `[clients.<name>]` table of the server config, as written (the
/// client side's own settings are [`crate::config::client::ClientConfig`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// Public signing keys (`ed25519:<base64>` or PEM).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Networks the client may call from: CIDRs or single addresses.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Secret names it may read: exact names or globs (`*`, `?`).
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// A problem in the `[clients]` section; each names the client and the fix.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum RegistryError {
    #[error("client name {0:?} is invalid: use 1-64 characters of A-Za-z0-9._-")]
    Name(String),
    #[error("clients.{client}.keys is empty: add the line printed by `locket-client keygen`")]
    NoKeys { client: String },
    #[error("clients.{client}.keys[{index}]: {source}")]
    Key {
        client: String,
        index: usize,
        source: KeyError,
    },
    #[error(
        "clients.{client}.keys[{index}] is also listed for client {other:?}: each client needs its own key"
    )]
    SharedKey {
        client: String,
        index: usize,
        other: String,
    },
    #[error(
        "clients.{client}.networks is empty: list the CIDRs it may call from, e.g. [\"10.0.0.0/24\"]"
    )]
    NoNetworks { client: String },
    #[error(
        "clients.{client}.networks: {value:?} is not an IP address or CIDR (e.g. 10.0.0.0/24, fd00::/64)"
    )]
    Network { client: String, value: String },
    #[error("clients.{client}.secrets: {value:?} is not a valid name or pattern")]
    Pattern { client: String, value: String },
}

/// A registered client, parsed and validated.
#[derive(Debug)]
pub struct RegisteredClient {
    /// The registered name.
    pub name: String,
    /// Keys it may sign with (more than one during a rotation).
    pub keys: Vec<VerifyingKey>,
    /// Networks it may call from.
    pub networks: Vec<IpNet>,
    /// The grants as written (exact names and patterns), for plans.
    grants: Vec<String>,
    patterns: Vec<WildMatch>,
    /// Each pattern's literal prefix (before its first `*` or `?`).
    prefixes: Vec<String>,
    exact: Vec<String>,
}

impl RegisteredClient {
    /// Whether `ip` lies in one of the client's networks. An IPv4-mapped
    /// IPv6 address (`::ffff:a.b.c.d`) counts as the IPv4 address.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// Every secret of `set` the client may read, in name order. Exact
    /// grants are looked up; a glob scans only the names that start with its
    /// literal prefix. The cost follows the grants, not the size of the set.
    pub fn readable<'a>(&'a self, set: &'a ServedSet) -> Vec<(&'a str, &'a SecretValue)> {
        let mut out: BTreeMap<&'a str, &'a SecretValue> = BTreeMap::new();
        for name in &self.exact {
            if let Some((k, v)) = set.get_key_value(name) {
                out.insert(k, v);
            }
        }
        for (pattern, prefix) in self.patterns.iter().zip(&self.prefixes) {
            out.extend(set.with_prefix(prefix).filter(|(n, _)| pattern.matches(n)));
        }
        out.into_iter().collect()
    }

    /// The grants as written: exact names and patterns.
    pub fn grants(&self) -> &[String] {
        &self.grants
    }

    /// Whether the client's grant list is empty.
    pub fn grants_nothing(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }

    /// Whether the client may read the secret `name`.
    pub fn may_read(&self, name: &str) -> bool {
        self.exact.iter().any(|e| e == name) || self.patterns.iter().any(|p| p.matches(name))
    }
}

/// All registered clients by name.
#[derive(Debug, Default)]
pub struct Registry {
    clients: HashMap<String, RegisteredClient>,
}

pub(crate) fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|net| match net {
            // Normalise ::ffff:a.b.c.d/n written for IPv4 clients.
            IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 => {
                let v4 = v6.addr().to_ipv4_mapped().expect("checked");
                IpNet::V4(ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix fits"))
            }
            other => other.trunc(),
        })
}

impl Registry {
    /// Validates every client of the config.
    pub fn from_config(clients: &BTreeMap<String, ClientEntry>) -> Result<Self, RegistryError> {
        let mut out = HashMap::with_capacity(clients.len());
        let mut seen_keys: HashMap<[u8; 32], String> = HashMap::new();
        for (name, cfg) in clients {
            if !valid_client_name(name) {
                return Err(RegistryError::Name(name.clone()));
            }
            if cfg.keys.is_empty() {
                return Err(RegistryError::NoKeys {
                    client: name.clone(),
                });
            }
            let mut keys = Vec::with_capacity(cfg.keys.len());
            for (index, text) in cfg.keys.iter().enumerate() {
                let key = keys::parse_public_key(text).map_err(|source| RegistryError::Key {
                    client: name.clone(),
                    index,
                    source,
                })?;
                if let Some(other) = seen_keys.insert(key.to_bytes(), name.clone())
                    && &other != name
                {
                    return Err(RegistryError::SharedKey {
                        client: name.clone(),
                        index,
                        other,
                    });
                }
                keys.push(key);
            }
            if cfg.networks.is_empty() {
                return Err(RegistryError::NoNetworks {
                    client: name.clone(),
                });
            }
            let networks = cfg
                .networks
                .iter()
                .map(|n| {
                    parse_network(n).ok_or_else(|| RegistryError::Network {
                        client: name.clone(),
                        value: n.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut patterns = Vec::new();
            let mut prefixes = Vec::new();
            let mut exact = Vec::new();
            for s in &cfg.secrets {
                if s.is_empty() || s.chars().any(char::is_control) {
                    return Err(RegistryError::Pattern {
                        client: name.clone(),
                        value: s.clone(),
                    });
                }
                if let Some(wild) = s.find(['*', '?']) {
                    patterns.push(WildMatch::new(s));
                    prefixes.push(s[..wild].to_owned());
                } else {
                    exact.push(s.clone());
                }
            }
            out.insert(
                name.clone(),
                RegisteredClient {
                    name: name.clone(),
                    keys,
                    networks,
                    grants: cfg.secrets.clone(),
                    patterns,
                    prefixes,
                    exact,
                },
            );
        }
        Ok(Self { clients: out })
    }

    /// The client called `name`, if registered.
    pub fn get(&self, name: &str) -> Option<&RegisteredClient> {
        self.clients.get(name)
    }

    /// Every client (for the v1 protocol, whose requests do not name theirs).
    pub fn iter(&self) -> impl Iterator<Item = &RegisteredClient> {
        self.clients.values()
    }

    /// Whether any client may call from `ip`.
    pub fn any_allows_ip(&self, ip: IpAddr) -> bool {
        self.clients.values().any(|c| c.allows_ip(ip))
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is registered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ClientKey;

    fn one(networks: &[&str], secrets: &[&str]) -> Registry {
        let mut m = BTreeMap::new();
        m.insert(
            "app".to_string(),
            ClientEntry {
                keys: vec![ClientKey::from_seed(&[1; 32]).public_line()],
                networks: networks.iter().map(|s| s.to_string()).collect(),
                secrets: secrets.iter().map(|s| s.to_string()).collect(),
            },
        );
        Registry::from_config(&m).unwrap()
    }

    #[test]
    fn networks_match_v4_v6_and_mapped() {
        let r = one(&["10.1.0.0/16", "fd00::/64", "192.0.2.7"], &[]);
        let c = r.get("app").unwrap();
        assert!(c.allows_ip("10.1.2.3".parse().unwrap()));
        assert!(!c.allows_ip("10.2.0.1".parse().unwrap()));
        assert!(c.allows_ip("::ffff:10.1.9.9".parse().unwrap()));
        assert!(c.allows_ip("fd00::5".parse().unwrap()));
        assert!(!c.allows_ip("fd01::5".parse().unwrap()));
        assert!(c.allows_ip("192.0.2.7".parse().unwrap()));
        assert!(!c.allows_ip("192.0.2.8".parse().unwrap()));
        let r = one(&["::ffff:127.0.0.0/104"], &[]);
        assert!(
            r.get("app")
                .unwrap()
                .allows_ip("127.0.0.9".parse().unwrap())
        );
    }

    #[test]
    fn secrets_exact_and_globs() {
        let r = one(&["127.0.0.1"], &["DB_*", "API_KEY", "svc/?"]);
        let c = r.get("app").unwrap();
        assert!(c.may_read("DB_PASSWORD"));
        assert!(c.may_read("API_KEY"));
        assert!(!c.may_read("API_KEY2"));
        assert!(c.may_read("svc/a"));
        assert!(!c.may_read("svc/ab"));
        assert!(!c.may_read("OTHER"));
    }

    #[test]
    fn readable_matches_may_read_over_the_whole_set() {
        let r = one(
            &["127.0.0.1"],
            &["DB_*", "API_KEY", "svc/?", "*_TOKEN", "MISSING"],
        );
        let c = r.get("app").unwrap();
        let names = [
            "A",
            "API_KEY",
            "API_KEY2",
            "DB_",
            "DB_PASSWORD",
            "DB_USER",
            "GH_TOKEN",
            "OTHER",
            "svc/a",
            "svc/ab",
            "TOKEN",
        ];
        let set = ServedSet::new(
            names
                .iter()
                .map(|n| (n.to_string(), SecretValue::from("v")))
                .collect(),
        );
        let fast: Vec<&str> = c.readable(&set).into_iter().map(|(n, _)| n).collect();
        let slow: Vec<&str> = set
            .iter()
            .filter(|(n, _)| c.may_read(n))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(fast, slow);
        assert_eq!(
            fast,
            [
                "API_KEY",
                "DB_",
                "DB_PASSWORD",
                "DB_USER",
                "GH_TOKEN",
                "svc/a"
            ]
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let mut m = BTreeMap::new();
        m.insert(
            "app".to_string(),
            ClientEntry {
                keys: vec!["nope".into()],
                networks: vec!["127.0.0.1".into()],
                secrets: vec![],
            },
        );
        let e = Registry::from_config(&m).unwrap_err().to_string();
        assert!(e.contains("clients.app.keys[0]"), "{e}");
        m.get_mut("app").unwrap().keys = vec![ClientKey::from_seed(&[1; 32]).public_line()];
        m.get_mut("app").unwrap().networks = vec!["10.0.0.0/33".into()];
        let e = Registry::from_config(&m).unwrap_err().to_string();
        assert!(e.contains("clients.app.networks"), "{e}");
        m.get_mut("app").unwrap().networks = vec![];
        assert!(matches!(
            Registry::from_config(&m),
            Err(RegistryError::NoNetworks { .. })
        ));
    }
}
