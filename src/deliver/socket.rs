//! The credential socket: secrets handed to a unit by systemd's
//! `LoadCredential=ID:/run/locket/credentials.sock`, straight from the
//! watcher's memory, with no file written anywhere but the unit's own
//! credentials directory (which systemd keeps on an unswappable ramfs).
//!
//! When systemd starts a unit whose `LoadCredential=` names an AF_UNIX
//! stream socket, it binds its end to the abstract address
//! `\0<random hex>/unit/<unit name>/<ID>`, connects, shuts down its
//! writing side and reads until end of file (systemd.exec(5);
//! `load_credential()` in systemd 252 and 258). Only root, or the user
//! manager's own user, may connect (the socket is 0600), so the address
//! says which unit asks for which credential. The watcher answers a unit
//! that its plan lists with an ID the plan grants it, and closes every
//! other connection with nothing written.
//!
//! systemd has no way to hear "no such credential" (systemd #27373): an
//! empty answer becomes an empty credential file and the unit starts. The
//! NixOS module therefore adds an `ExecStartPre=` to each socket consumer
//! that refuses to start on an empty credential, naming it.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

use super::plan::{DeliverError, SocketConsumer, credential_id};
use crate::client::Client;
use crate::secret_set::SecretSet;

/// The values the watcher holds for its socket consumers, by consumer:
/// each consumer's part of the last answer, in the client's locked,
/// zeroizing memory (`SecretValue`).
#[derive(Default)]
pub struct Held {
    sets: Mutex<BTreeMap<String, SecretSet>>,
    /// Each consumer's last fetch that failed with nothing held, and why: for a few
    /// seconds every connection is refused at once with the same cause,
    /// so a unit asking for five credentials during an outage (or a boot
    /// of fifty units) fails in one fetch timeout, not in one per ID.
    failed: Mutex<BTreeMap<String, (std::time::Instant, String)>>,
}

/// How long a failed fetch answers for the ones that follow it.
const FAILURE_MEMO: Duration = Duration::from_secs(3);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_tuple("Held").field(&names).finish()
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SecretSet>> {
        // A poisoned lock only means a panic elsewhere; the map is whole.
        self.sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (std::time::Instant, String)>> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches `consumer`'s values unless a fetch failed moments ago, and
    /// keeps them; the cause when there are none.
    async fn fetch(&self, consumer: &SocketConsumer, client: &Client) -> Result<SecretSet, String> {
        if let Some((at, cause)) = self.failed().get(&consumer.name)
            && at.elapsed() < FAILURE_MEMO
        {
            return Err(format!(
                "{cause} (a fetch {:.0?} ago; tried again {FAILURE_MEMO:?} after it)",
                at.elapsed()
            ));
        }
        let fetched = client
            .fetch(&consumer.secrets)
            .await
            .map_err(|e| e.to_string())
            .and_then(|all| {
                all.select(&consumer.secrets)
                    .map_err(|name| format!("secret {name:?} was not in the server's answer"))
            });
        match fetched {
            Ok(set) => {
                self.failed().remove(&consumer.name);
                self.keep_first(&consumer.name, set);
                Ok(self.get(&consumer.name).unwrap_or_default())
            }
            Err(cause) => {
                self.failed().insert(
                    consumer.name.clone(),
                    (std::time::Instant::now(), cause.clone()),
                );
                Err(cause)
            }
        }
    }

    /// Keeps `set` as `consumer`'s values. True when it replaced a
    /// different set (a change its unit has not seen); a first set is not
    /// a change.
    pub(crate) fn replace(&self, consumer: &str, set: SecretSet) -> bool {
        // Compared in place: no further copy of the values is made.
        let mut sets = self.lock();
        match sets.get_mut(consumer) {
            Some(old) if *old == set => false,
            Some(old) => {
                *old = set;
                true
            }
            None => {
                sets.insert(consumer.to_owned(), set);
                false
            }
        }
    }

    /// Keeps `set` unless a set is already held (a round may have stored
    /// a newer one while this was fetched).
    fn keep_first(&self, consumer: &str, set: SecretSet) {
        self.lock().entry(consumer.to_owned()).or_insert(set);
    }

    fn get(&self, consumer: &str) -> Option<SecretSet> {
        self.lock().get(consumer).cloned()
    }
}

/// Who asks: the unit and the credential ID in the peer's address.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Asker {
    pub unit: String,
    pub id: String,
}

/// Parses an abstract address of systemd's form `<hex>/unit/<unit>/<ID>`
/// (without its leading NUL). Anything else is not systemd asking.
pub(crate) fn parse_peer(name: &[u8]) -> Option<Asker> {
    let text = std::str::from_utf8(name).ok()?;
    let (random, rest) = text.split_once('/')?;
    let hex = !random.is_empty()
        && random.len() <= 16
        && random
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let (unit, id) = rest.strip_prefix("unit/")?.split_once('/')?;
    let plain = |s: &str| !s.is_empty() && !s.contains('/') && !s.contains('\0');
    (hex && plain(unit) && plain(id)).then(|| Asker {
        unit: unit.to_owned(),
        id: id.to_owned(),
    })
}

/// Why a connection got nothing; logged with the unit and the ID, never a
/// value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "the peer is not systemd loading a credential (its address is {0:?}, not \\0<random>/unit/<unit>/<ID>)"
    )]
    NotSystemd(String),
    #[error("the peer runs as uid {0}, not root or this watcher's user")]
    Uid(u32),
    #[error(
        "unit {unit} asked for credential {id}, but no consumer of the delivery plan has that unit: add delivery = \"socket\" for it"
    )]
    UnknownUnit { unit: String, id: String },
    #[error(
        "unit {unit} (consumer {consumer}) asked for credential {id}, which the plan does not grant it (it may read: {granted})"
    )]
    NotGranted {
        unit: String,
        consumer: String,
        id: String,
        granted: String,
    },
    #[error(
        "unit {unit} (consumer {consumer}) asked for credential {id}, but no value is held and the fetch failed: {cause}"
    )]
    Fetch {
        unit: String,
        consumer: String,
        id: String,
        cause: String,
    },
    #[error("unit {unit} (consumer {consumer}): template {id} cannot be rendered: {cause}")]
    Template {
        unit: String,
        consumer: String,
        id: String,
        cause: String,
    },
}

/// The listening socket: the one systemd hands over (socket activation:
/// `locket-watch.socket` keeps it open while the watcher restarts, so a
/// unit that starts meanwhile waits instead of failing), else `path`,
/// bound here (a leftover socket there is replaced) and made root's alone.
pub(crate) fn listen(path: &Path) -> Result<UnixListener, DeliverError> {
    let err = |source: std::io::Error| DeliverError::Socket {
        path: path.to_owned(),
        source,
    };
    let mut fds = listenfd::ListenFd::from_env();
    if let Some(listener) = fds.take_unix_listener(0).map_err(err)? {
        listener.set_nonblocking(true).map_err(err)?;
        tracing::info!(
            "credential socket: serving the socket systemd handed over ({})",
            path.display()
        );
        return UnixListener::from_std(listener).map_err(err);
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::other(
                "it exists and is not a socket: remove it, or set credential_socket elsewhere",
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    tracing::info!("credential socket: serving {}", path.display());
    Ok(listener)
}

/// Serves the credential socket for `consumers` until the future is
/// dropped. Connections are answered side by side: one unit whose values
/// must first be fetched (or whose fetch hangs until the client's
/// deadline) holds up no other. Each is answered from `held` (fetched
/// first when nothing is held yet) and closed.
pub async fn serve(
    listener: UnixListener,
    consumers: &[SocketConsumer],
    held: &Held,
    client: &Client,
) {
    use futures_util::StreamExt as _;
    let me = nix::unistd::geteuid().as_raw();
    let mut answering = futures_util::stream::FuturesUnordered::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(()) = answering.next(), if !answering.is_empty() => continue,
        };
        match accepted {
            Ok((stream, _)) => answering.push(handle(stream, me, consumers, held, client)),
            Err(e) => {
                tracing::warn!("credential socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection: answered, or closed with nothing written, and logged.
async fn handle(
    mut stream: UnixStream,
    me: u32,
    consumers: &[SocketConsumer],
    held: &Held,
    client: &Client,
) {
    match answer(&stream, me, consumers, held, client).await {
        Ok((asker, value)) => {
            let (unit, id) = (&asker.unit, &asker.id);
            match write_all(&mut stream, &value).await {
                Ok(()) => tracing::info!("credential socket: handed {unit} its credential {id}"),
                Err(e) => tracing::warn!(
                    "credential socket: could not hand {unit} its credential {id}: {e}"
                ),
            }
        }
        Err(refusal) => tracing::warn!(
            "credential socket: {refusal}; closed with nothing written (the unit's start check refuses an empty credential)"
        ),
    }
}

async fn write_all(stream: &mut UnixStream, value: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(Duration::from_secs(10), async {
        stream.write_all(value).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::other("the reader took longer than 10 s"))?
}

/// The value for one connection, or why it gets none.
async fn answer(
    stream: &UnixStream,
    me: u32,
    consumers: &[SocketConsumer],
    held: &Held,
    client: &Client,
) -> Result<(Asker, Zeroizing<Vec<u8>>), Refusal> {
    let addr = stream
        .peer_addr()
        .map_err(|e| Refusal::NotSystemd(format!("unknown: {e}")))?;
    let name = addr.as_abstract_name();
    let asker = name.and_then(parse_peer).ok_or_else(|| {
        Refusal::NotSystemd(match (name, addr.as_pathname()) {
            (Some(n), _) => format!("\\0{}", String::from_utf8_lossy(n)),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => "unnamed".to_owned(),
        })
    })?;
    // The socket's mode already keeps others out; this holds even when a
    // deployment got the mode wrong.
    if let Ok(cred) = stream.peer_cred()
        && cred.uid() != 0
        && cred.uid() != me
    {
        return Err(Refusal::Uid(cred.uid()));
    }
    let Some(consumer) = consumers.iter().find(|c| c.unit == asker.unit) else {
        return Err(Refusal::UnknownUnit {
            unit: asker.unit,
            id: asker.id,
        });
    };
    let secret = consumer
        .secrets
        .iter()
        .find(|s| credential_id(s) == asker.id);
    let template = consumer
        .templates
        .iter()
        .find(|(file, _)| *file == asker.id);
    if secret.is_none() && template.is_none() {
        let granted: Vec<String> = consumer
            .secrets
            .iter()
            .map(|s| credential_id(s))
            .chain(consumer.templates.iter().map(|(f, _)| f.clone()))
            .collect();
        return Err(Refusal::NotGranted {
            unit: asker.unit,
            consumer: consumer.name.clone(),
            id: asker.id,
            granted: granted.join(", "),
        });
    }
    let set = match held.get(&consumer.name) {
        Some(set) => set,
        None => match held.fetch(consumer, client).await {
            Ok(set) => set,
            Err(cause) => {
                return Err(Refusal::Fetch {
                    unit: asker.unit,
                    consumer: consumer.name.clone(),
                    id: asker.id,
                    cause,
                });
            }
        },
    };
    let value = match (secret, template) {
        (Some(name), _) => set
            .get(name)
            .map(|v| Zeroizing::new(v.expose().as_bytes().to_vec())),
        (None, Some((_, t))) => match t.render(&set) {
            Ok(text) => Some(Zeroizing::new(text.as_bytes().to_vec())),
            Err(e) => {
                return Err(Refusal::Template {
                    unit: asker.unit,
                    consumer: consumer.name.clone(),
                    id: asker.id,
                    cause: e.to_string(),
                });
            }
        },
        (None, None) => None,
    };
    match value {
        Some(value) => Ok((asker, value)),
        None => Err(Refusal::Fetch {
            unit: asker.unit,
            consumer: consumer.name.clone(),
            id: asker.id,
            cause: "the held set lacks it".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemds_address_form_is_parsed() {
        assert_eq!(
            parse_peer(b"3f2a9c01d4e5b6a7/unit/app.service/DB_PASSWORD"),
            Some(Asker {
                unit: "app.service".into(),
                id: "DB_PASSWORD".into()
            })
        );
        assert_eq!(
            parse_peer(b"a/unit/x@y.service/app.ini").map(|a| a.unit),
            Some("x@y.service".into())
        );
        for bad in [
            &b""[..],
            b"/unit/app.service/ID",
            b"XYZ/unit/app.service/ID",
            b"0123456789abcdef0/unit/app.service/ID",
            b"ab/units/app.service/ID",
            b"ab/unit/app.service/",
            b"ab/unit//ID",
            b"ab/unit/app.service/ID/more",
            b"ab/unit/app.service",
            b"\xff/unit/a.service/ID",
        ] {
            assert_eq!(parse_peer(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
