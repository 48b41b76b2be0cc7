//! Real sources: a 1Password Connect server on loopback (with a 429 and a
//! 500 on the way), an `op` stand-in on disk, and command sources.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use locket::source::{CommandFormat, LoadError, SourceConfig, SourceMemory};
use warp::{Filter, Reply as _};

fn as_map(v: locket::secret_set::SecretSet) -> BTreeMap<String, String> {
    v.into_iter()
        .map(|(n, s)| (n, s.expose().to_owned()))
        .collect()
}

fn write_token(dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("token");
    crate::support::write_private(&path, token.as_bytes());
    path
}

/// A fake Connect server with the documented endpoints and JSON shapes
/// (1Password's Connect API reference, developer.1password.com/docs/connect/
/// api-reference, and its OpenAPI spec: camelCase keys, `version`,
/// `updatedAt`, `category`, `vault{id}` only; fields with `type`,
/// `purpose`, `section{id}` and the labels in the item's `sections`;
/// errors as `{"status", "message"}`, 401 "Invalid token signature"). The first call to the items list answers 429 with
/// `Retry-After: 1`, the first item GET 500, when `flaky`. Returns the URL and the
/// counts of item GETs and of every request.
async fn connect_server(
    token: &'static str,
    flaky: bool,
) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let all = Arc::new(AtomicUsize::new(0));
    let counted = {
        let all = Arc::clone(&all);
        warp::any().map(move || {
            all.fetch_add(1, Ordering::SeqCst);
        })
    };
    let item_gets = Arc::new(AtomicUsize::new(0));
    let list_calls = Arc::new(AtomicUsize::new(0));
    let auth = warp::header::exact(
        "authorization",
        Box::leak(format!("Bearer {token}").into_boxed_str()),
    );
    let vaults = warp::path!("v1" / "vaults").map(|| {
        warp::reply::json(
            &serde_json::json!([{"id": "v1d", "name": "prod"}, {"id": "v2d", "name": "dev"}]),
        )
    });
    let lc = Arc::clone(&list_calls);
    let items = warp::path!("v1" / "vaults" / "v1d" / "items").map(move || {
        if flaky && lc.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut r = warp::reply::with_status(warp::reply::json(&serde_json::json!({"status": 429, "message": "Too Many Requests"})), warp::http::StatusCode::TOO_MANY_REQUESTS).into_response();
            r.headers_mut().insert("retry-after", warp::http::HeaderValue::from_static("1"));
            return r;
        }
        warp::reply::with_status(
            warp::reply::json(&serde_json::json!([{"id": "i1", "title": "db", "version": 2, "category": "DATABASE", "createdAt": "2024-01-02T03:04:05Z", "updatedAt": "2024-05-01T10:00:00Z", "vault": {"id": "v1d"}}, {"id": "i2", "title": "api", "version": 7, "category": "API_CREDENTIAL", "createdAt": "2024-01-02T03:04:05Z", "updatedAt": "2024-05-01T10:00:00Z", "vault": {"id": "v1d"}}])),
            warp::http::StatusCode::OK,
        ).into_response()
    });
    let ig = Arc::clone(&item_gets);
    let item = warp::path!("v1" / "vaults" / "v1d" / "items" / String).map(move |id: String| {
        let n = ig.fetch_add(1, Ordering::SeqCst);
        if flaky && n == 0 {
            return warp::reply::with_status(warp::reply::json(&serde_json::json!({"status": 500, "message": "Internal Server Error"})), warp::http::StatusCode::INTERNAL_SERVER_ERROR);
        }
        let body = match id.as_str() {
            "i1" => serde_json::json!({"id": "i1", "title": "db", "version": 2, "category": "DATABASE", "vault": {"id": "v1d"},
                "sections": [{"id": "conn", "label": "connection"}],
                "fields": [
                {"id": "username", "type": "STRING", "label": "username", "value": "dbuser", "purpose": "USERNAME"},
                {"id": "password", "type": "CONCEALED", "label": "password", "value": "db-pa55", "purpose": "PASSWORD", "entropy": 52.2},
                {"id": "notes", "type": "STRING", "label": "notesPlain", "purpose": "NOTES"},
                {"id": "host", "type": "STRING", "label": "host", "section": {"id": "conn"}, "value": "db.internal"}
            ]}),
            _ => serde_json::json!({"id": "i2", "title": "api", "version": 7, "category": "API_CREDENTIAL", "vault": {"id": "v1d"},
                "fields": [{"id": "credential", "type": "CONCEALED", "label": "credential", "value": "api-key-1"},
                {"id": "otp", "type": "OTP", "label": "one-time password", "value": "otpauth://totp/x?secret=AAAA", "totp": "123456"}]}),
        };
        warp::reply::with_status(warp::reply::json(&body), warp::http::StatusCode::OK)
    });
    let routes = counted
        .untuple_one()
        .and(auth)
        .and(items.or(item).or(vaults))
        .recover(|_| async {
            Ok::<_, std::convert::Infallible>(warp::reply::with_status(
                warp::reply::json(
                    &serde_json::json!({"status": 401, "message": "Invalid token signature"}),
                ),
                warp::http::StatusCode::UNAUTHORIZED,
            ))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    (url, item_gets, all)
}

#[tokio::test]
async fn onepassword_connect_honours_429_and_reads_each_item_once() {
    let dir = tempfile::tempdir().unwrap();
    let (url, item_gets, all) = connect_server("connect-token-123", true).await;
    let source = SourceConfig::OnepasswordConnect(locket::source::OnepasswordConnectSource {
        url: url.clone(),
        vault: "prod".into(),
        token_file: write_token(dir.path(), "connect-token-123\n"),
        timeout: Duration::from_secs(5),
        reads_per_hour: None,
        reads_per_day: None,
        concurrency: None,
        references: Default::default(),
    });
    let mut memory = SourceMemory::default();
    // The vault lookup, then the list answers 429 with Retry-After: 1.
    let err = source.load_with(&mut memory).await.unwrap_err();
    assert!(matches!(err, LoadError::RateLimited { .. }), "{err:?}");
    let until = err.waits_until().unwrap();
    assert_eq!(all.load(Ordering::SeqCst), 2);
    // Until Retry-After has passed, retries ask nothing.
    for _ in 0..5 {
        if std::time::SystemTime::now() >= until {
            break;
        }
        let again = source.load_with(&mut memory).await.unwrap_err();
        assert!(matches!(again, LoadError::RateLimited { .. }), "{again:?}");
    }
    assert_eq!(
        all.load(Ordering::SeqCst),
        2,
        "a rate-limited source asks nothing"
    );
    while std::time::SystemTime::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = as_map(source.load_with(&mut memory).await.unwrap());
    assert_eq!(
        got,
        BTreeMap::from([
            ("api/credential".to_string(), "api-key-1".to_string()),
            (
                "api/one-time password".to_string(),
                "otpauth://totp/x?secret=AAAA".to_string()
            ),
            ("db/host".to_string(), "db.internal".to_string()),
            ("db/password".to_string(), "db-pa55".to_string()),
            ("db/username".to_string(), "dbuser".to_string()),
        ])
    );
    // Two items, one retried after its 500: three item GETs, not one per
    // field; and the vault was looked up once.
    assert_eq!(item_gets.load(Ordering::SeqCst), 3);
    let before = all.load(Ordering::SeqCst);
    // Nothing changed: one list, no vault lookup, no item GET.
    source.load_with(&mut memory).await.unwrap();
    assert_eq!(all.load(Ordering::SeqCst), before + 1);
    assert_eq!(item_gets.load(Ordering::SeqCst), 3);

    // References through Connect: the field's section is `{id}` only, its
    // label comes from the item's `sections`.
    let mapped = SourceConfig::OnepasswordConnect(locket::source::OnepasswordConnectSource {
        url: url.clone(),
        vault: "prod".into(),
        token_file: dir.path().join("token"),
        timeout: Duration::from_secs(5),
        reads_per_hour: None,
        reads_per_day: None,
        concurrency: None,
        references: BTreeMap::from([
            (
                "DB_HOST".to_string(),
                "op://prod/db/connection/host".to_string(),
            ),
            (
                "DB_PASSWORD".to_string(),
                "op://prod/db/password".to_string(),
            ),
        ]),
    });
    let gets = item_gets.load(Ordering::SeqCst);
    assert_eq!(
        as_map(mapped.load().await.unwrap()),
        BTreeMap::from([
            ("DB_HOST".to_string(), "db.internal".to_string()),
            ("DB_PASSWORD".to_string(), "db-pa55".to_string()),
        ])
    );
    assert_eq!(
        item_gets.load(Ordering::SeqCst),
        gets + 1,
        "only item db is read"
    );

    // A wrong token: a clear error, without the token in it.
    let bad = SourceConfig::OnepasswordConnect(locket::source::OnepasswordConnectSource {
        url,
        vault: "prod".into(),
        token_file: {
            std::fs::remove_file(dir.path().join("token")).unwrap();
            write_token(dir.path(), "wrong-token-999")
        },
        timeout: Duration::from_secs(5),
        reads_per_hour: None,
        reads_per_day: None,
        concurrency: None,
        references: Default::default(),
    });
    let err = bad.load().await.unwrap_err();
    assert!(matches!(err, LoadError::OnePassword(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("401") && err.contains("token_file"), "{err}");
    assert!(!err.contains("wrong-token-999"));
}

#[tokio::test]
async fn onepassword_cli_through_an_op_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let op = dir.path().join("op");
    let calls = dir.path().join("calls.log");
    // Prints the documented `op` JSON; refuses to work without the token in
    // its environment, and records its arguments (the token must not be there).
    std::fs::write(
        &op,
        format!(
            r#"#!/bin/sh
echo "$@" >> {calls}
[ "$OP_SERVICE_ACCOUNT_TOKEN" = "ops_tok_abc" ] || {{ echo "no token" >&2; exit 1; }}
case "$1 $2" in
  "item list") echo '[{{"id":"k1","title":"payments","vault":{{"id":"v","name":"prod"}}}}]' ;;
  "item get") echo '{{"id":"k1","title":"payments","fields":[{{"id":"a","label":"api_key","value":"pk_live_1"}},{{"id":"b","label":"webhook","value":"whsec_2"}}]}}' ;;
  *) echo "unexpected $*" >&2; exit 2 ;;
esac
"#,
            calls = calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&op, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let source = SourceConfig::OnepasswordCli(locket::source::OnepasswordCliSource {
        vault: "prod".into(),
        token_file: write_token(dir.path(), "ops_tok_abc"),
        op: op.to_string_lossy().into_owned(),
        timeout: Duration::from_secs(5),
        reads_per_hour: None,
        reads_per_day: None,
        concurrency: None,
        references: Default::default(),
    });
    let got = as_map(source.load().await.unwrap());
    assert_eq!(got["payments/api_key"], "pk_live_1");
    assert_eq!(got["payments/webhook"], "whsec_2");
    let log = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(log.lines().count(), 2, "one list, one get per item: {log}");
    assert!(
        !log.contains("ops_tok_abc"),
        "the token never reaches a command line"
    );
}

fn command(argv: &[&str], format: CommandFormat, timeout_ms: u64) -> SourceConfig {
    SourceConfig::Command(locket::source::CommandSource {
        command: argv.iter().map(|s| s.to_string()).collect(),
        format,
        timeout: Duration::from_millis(timeout_ms),
        env: locket::source::CommandEnv(BTreeMap::from([(
            "EXTRA".to_string(),
            "given".to_string(),
        )])),
    })
}

#[tokio::test]
async fn command_source_success_failure_timeout_garbage_and_clean_env() {
    let ok = command(
        &[
            "/bin/sh",
            "-c",
            r#"echo '{"A": "1", "nested": {"b": "2"}}'"#,
        ],
        CommandFormat::Json,
        5000,
    );
    assert_eq!(
        as_map(ok.load().await.unwrap()),
        BTreeMap::from([("A".into(), "1".into()), ("nested/b".into(), "2".into())])
    );
    let dotenv = command(
        &["/bin/sh", "-c", "printf 'X=\"a b\"\\nY=2\\n'"],
        CommandFormat::Dotenv,
        5000,
    );
    assert_eq!(as_map(dotenv.load().await.unwrap())["X"], "a b");

    let fails = command(
        &[
            "/bin/sh",
            "-c",
            "echo 'sops: cannot decrypt: no key' >&2; exit 3",
        ],
        CommandFormat::Json,
        5000,
    );
    let err = fails.load().await.unwrap_err();
    // The program's stderr is kept apart: never in the message (which is
    // logged and reaches /readyz), only for the debug log and `locket check`.
    let LoadError::Command { message, stderr } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        stderr.as_ref().map(locket::source::ProgramText::as_str),
        Some("sops: cannot decrypt: no key")
    );
    assert!(!format!("{err:?}").contains("no key"), "{err:?}");
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(!err.to_string().contains("no key"), "{err}");

    let started = std::time::Instant::now();
    let slow = command(&["sleep", "10"], CommandFormat::Json, 300);
    let err = slow.load().await.unwrap_err().to_string();
    assert!(err.contains("did not finish"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let garbage = command(
        &["/bin/sh", "-c", "echo 'not json at all: hunter2'"],
        CommandFormat::Json,
        5000,
    );
    let err = garbage.load().await.unwrap_err();
    assert!(matches!(err, LoadError::Format(_)), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("not valid JSON") && !err.contains("hunter2"),
        "{err}"
    );

    let missing = command(&["/no/such/program"], CommandFormat::Json, 5000);
    assert!(
        missing
            .load()
            .await
            .unwrap_err()
            .to_string()
            .contains("cannot run")
    );

    // The program's environment: PATH/HOME/LANG and its own `env`, nothing else.
    let env = command(
        &[
            "/bin/sh",
            "-c",
            r#"printf '{"names": "%s"}' "$(env | cut -d= -f1 | sort | tr '\n' ' ')""#,
        ],
        CommandFormat::Json,
        5000,
    );
    let names = as_map(env.load().await.unwrap())["names"].clone();
    for name in names.split_whitespace() {
        assert!(
            [
                "PATH", "HOME", "LANG", "EXTRA", "PWD", "SHLVL", "_", "OLDPWD"
            ]
            .contains(&name),
            "leaked variable {name}: {names}"
        );
    }
    assert!(names.contains("EXTRA"));
}

/// Both 1Password sources through the real server: `op` found on PATH,
/// Connect on loopback; a client then reads what they hold.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_serves_what_1password_holds() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let op = bin.join("op");
    std::fs::write(
        &op,
        r#"#!/bin/sh
[ "$OP_SERVICE_ACCOUNT_TOKEN" = "ops_tok_abc" ] || { echo "no token" >&2; exit 1; }
case "$1 $2" in
  "item list") echo '[{"id":"k1","title":"app"}]' ;;
  "item get") echo '{"id":"k1","title":"app","fields":[{"id":"a","label":"api_key","value":"from-op-cli"}]}' ;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&op, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    write_token(dir.path(), "ops_tok_abc");
    std::fs::rename(dir.path().join("token"), dir.path().join("op-token")).unwrap();
    let (url, _, _) = connect_server("connect-token-123", false).await;
    write_token(dir.path(), "connect-token-123");
    crate::support::server_key()
        .write_new(&dir.path().join("server-key.pem"))
        .unwrap();
    let key = locket::keys::ClientKey::from_seed(&[44; 32]);
    std::fs::write(
        dir.path().join("server.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nkey_file = \"server-key.pem\"\n\n[[sources]]\ntype = \"onepassword-cli\"\nvault = \"prod\"\ntoken_file = \"op-token\"\n\n[[sources]]\ntype = \"onepassword-connect\"\nurl = \"{url}\"\nvault = \"prod\"\ntoken_file = \"token\"\n\n[clients.app]\nkeys = [\"{}\"]\nnetworks = [\"127.0.0.1\"]\nsecrets = [\"app/*\", \"db/*\"]\n",
            key.public_line()
        ),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let server = crate::support::ServerProcess::start_with_env(
        &dir.path().join("server.toml"),
        &[],
        &[("PATH", &path)],
    );
    let mut cfg = locket::config::client::ClientConfig::single(
        format!("http://{}", server.addr),
        "app",
        "unused",
    );
    cfg.server_fingerprint = Some(crate::support::server_key().fingerprint().to_owned());
    let client =
        locket::client::Client::with_reply_key(&cfg, key, crate::support::reply_key()).unwrap();
    let got = as_map(client.fetch(&[]).await.unwrap());
    assert_eq!(
        got,
        BTreeMap::from([
            ("app/api_key".to_string(), "from-op-cli".to_string()),
            ("db/host".to_string(), "db.internal".to_string()),
            ("db/password".to_string(), "db-pa55".to_string()),
            ("db/username".to_string(), "dbuser".to_string()),
        ])
    );
    let log = server.stop();
    for secret in ["ops_tok_abc", "connect-token-123", "from-op-cli", "db-pa55"] {
        assert!(!log.contains(secret), "the log shows {secret}");
    }
}

/// A command source that hangs is killed at its timeout with everything it
/// started: a `sh -c` whose child holds the output pipe leaves no process
/// behind (it would otherwise run on, one more at every refresh).
#[tokio::test]
async fn a_hanging_command_is_killed_at_its_timeout_with_its_children() {
    // A sleep only this test starts: its argument is unique.
    let marker = format!("{}.{}", 700 + std::process::id() % 100, std::process::id());
    let script = format!("sleep {marker}; echo '{{}}'");
    let hangs = command(&["/bin/sh", "-c", &script], CommandFormat::Json, 300);
    let err = hangs.load().await.unwrap_err().to_string();
    assert!(err.contains("did not finish"), "{err}");
    let left = |marker: &str| {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|cmdline| {
                let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == marker.as_bytes()
            })
            .count()
    };
    // The kill is sent before load() returns; the kernel reaps at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while left(&marker) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left(&marker), 0, "the command's child outlived its timeout");
}
