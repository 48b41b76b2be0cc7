#!/bin/bash
# Runs inside the guest (systemd 252 as PID 1), as /payload/test.sh: the
# NixOS module's units for the VM test's nodes, driven through the whole
# handshake. Built by handshake.py; env.sh holds what it evaluated.
set -u
. /payload/env.sh
passed=0
failed=0
failures=()
check() { # check NAME COMMAND...
  local name=$1
  shift
  if "$@" >/tmp/check.out 2>&1; then
    echo "ok: $name"
    passed=$((passed + 1))
  else
    echo "FAILED: $name"
    sed 's/^/    /' /tmp/check.out | tail -20
    failed=$((failed + 1))
    failures+=("$name")
  fi
}
show() { systemctl show -P "$2" "$1"; }
journal() { journalctl -q -o cat -u "$1" --no-pager; }
# journald takes in a line some time after the process wrote it (more so on
# a loaded machine): a line that must be there is waited for.
logged() { # logged UNIT ERE [COUNT]: at least COUNT (1) matching lines, polled for 60 s
  wait_for 60 logged_now "$@"
}
logged_now() { [ "$(journal "$1" | grep -Ec -- "$2")" -ge "${3:-1}" ]; }
wait_for() { # wait_for SECONDS COMMAND...: readiness, polled
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# The intruder: its own network namespace and its own /etc/locket.
as_intruder() {
  ip netns exec intruder unshare --mount sh -c \
    'mount --bind /payload/intruder/etc-locket /etc/locket && mkdir -p /etc/intruder && mount --bind /payload/intruder/etc-intruder /etc/intruder && exec "$@"' sh "$@"
}
http_get() { # http_get NETNS PATH: the response body, through bash's /dev/tcp
  in_ns "$1" bash -c 'exec 3<>/dev/tcp/127.0.0.1/7410 && printf "GET %s HTTP/1.0\r\nHost: x\r\n\r\n" "$0" >&3 && sed "1,/^\r$/d" <&3' "$2"
}
use_server() { # use_server VARIANT: that locket.service and its /etc/locket/server.toml
  cp /payload/variants/"$1"/locket.service /etc/systemd/system/locket.service
  mkdir -p /etc/systemd/system/locket.service.d
  cp /payload/variants/"$1"/netns.conf /etc/systemd/system/locket.service.d/netns.conf
  ln -sfn "$(readlink /payload/variants/"$1"/server.toml)" /etc/locket/server.toml
}
started=$(date +%s)
echo "guest: systemd $(systemctl --version | head -1 | cut -d' ' -f2), kernel $(uname -r)"

# --- the three hosts: a bridge, and a namespace with the VM test's address each
ip link add br0 type bridge && ip link set br0 up
for host in server:$SERVER_IP client:$CLIENT_IP intruder:$INTRUDER_IP; do
  ns=${host%%:*} ip=${host#*:}
  ip netns add "$ns"
  ip link add "v-$ns" type veth peer name eth0 netns "$ns"
  ip link set "v-$ns" master br0 up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done
systemd-tmpfiles --create /etc/tmpfiles.d/locket-test.conf
mkdir -p /run/secrets && printf 'GREETING="hello from the guest"\n' >/run/secrets/app.env && chmod 600 /run/secrets/app.env

# --- phase 1: a server that generates its key (the guest's own namespace)
use_server genkey
: >/etc/systemd/system/locket.service.d/netns.conf
systemctl daemon-reload
check "locket.service (generated key) reaches active through READY=1" systemctl start locket.service
check "  it is Type=notify and active" test "$(show locket.service Type) $(show locket.service ActiveState)" = "notify active"
logged locket.service 'listening on'
fp1=$(journal locket.service | grep 'created a new server key' | grep -o 'sha256:[0-9a-f]*' | head -1)
check "  the key is created in StateDirectory on first start" test -n "$fp1" -a -f /var/lib/private/locket/server-key.pem
check "  the key file is 0600, owned by the server's dynamic user" test "$(stat -c '%a %u' /var/lib/private/locket/server-key.pem)" = "600 $(stat -c %u /proc/"$(show locket.service MainPID)")"
sealed=/var/lib/private/locket/last-good.sealed
check "  sealed set: locket-seal-key made the key once, before the server, sealed by systemd-creds (0600 root, 0700 folder)" test "$(show locket-seal-key.service Result) $(stat -c '%a %U' /var/lib/locket-seal/seal-key.cred /var/lib/locket-seal | tr '\n' ' ')" = "success 600 root 700 root "
check "  sealed set: written after the first load, 0600, the server's dynamic user, no value in the clear" sh -c "test \"\$(stat -c '%a %u' $sealed)\" = \"600 \$(stat -c %u /proc/$(show locket.service MainPID))\" && ! grep -q 'hello from the guest' $sealed && head -c 17 $sealed | grep -q locket-sealed-v1"
systemctl restart locket.service
logged locket.service 'listening on' 2
fp2=$(journal locket.service | grep 'listening on' | tail -1 | grep -o 'sha256:[0-9a-f]*')
check "  after systemctl restart the same fingerprint comes back" test "$fp1" = "$fp2"
check "  the restart did not create another key" test "$(journal locket.service | grep -c 'created a new server key')" = 1
check "  sealed set: the restart starts from it (the key came back through LoadCredentialEncrypted=)" logged locket.service 'starting from the sealed set'
check "  sealed set: the key was made once" test "$(journal locket-seal-key.service | grep -c 'a new sealing key')" = 1
systemctl stop locket.service

# --- phase 2: the VM test's server, client and intruder
use_server vm
systemctl daemon-reload
check "locket.service (VM test server) reaches active through READY=1" systemctl start locket.service
pid=$(show locket.service MainPID)
check "  DynamicUser: the server runs as a uid from systemd's dynamic range" sh -c "u=\$(stat -c %u /proc/$pid); [ \$u -ge 61184 ] && [ \$u -le 65519 ]"
check "  no new privileges, a seccomp filter, no capabilities" sh -c "grep -q '^NoNewPrivs:[[:space:]]1' /proc/$pid/status && grep -q '^Seccomp:[[:space:]]2' /proc/$pid/status && grep -q '^CapEff:[[:space:]]0000000000000000' /proc/$pid/status"
check "  ProtectSystem=strict, ProtectHome, PrivateTmp, MemoryDenyWriteExecute are in force" test "$(show locket.service ProtectSystem) $(show locket.service ProtectHome) $(show locket.service PrivateTmp) $(show locket.service MemoryDenyWriteExecute)" = "strict yes yes yes"
check "  the secret region is locked in memory (VmLck > 0), or the documented warning is logged" sh -c "awk '/^VmLck:/ {exit !(\$2 > 0)}' /proc/$pid/status || journalctl -u locket.service -o cat | grep -q 'mlock of'" # logged before READY=1, long ago
check "  sources arrive through LoadCredential=" test -f /run/credentials/locket.service/source-0-path
check "  no other user can read them" sh -c "! runuser -u nobody -- cat /run/credentials/locket.service/source-0-path && ! runuser -u demo -- cat /etc/locket-test/secrets.env"
wd1=$(show locket.service WatchdogTimestampMonotonic)
check "  the watchdog is on (WatchdogSec=30s) and the server keeps pinging it" wait_for 40 sh -c "[ \"\$(systemctl show -P WatchdogTimestampMonotonic locket.service)\" != '$wd1' ]"
check "  still the same process, never restarted" test "$(show locket.service MainPID) $(show locket.service NRestarts)" = "$pid 0"

# The allowed client: the generated fetch units, before their consumers
# (pulled in through the <consumer>.requires/ links NixOS makes).
check "demo-consumer starts, with its secrets fetched first" systemctl start demo-consumer.service
check "  locket-fetch-demo-consumer finished before demo-consumer started" test "$(show locket-fetch-demo-consumer.service ExecMainExitTimestampMonotonic)" -le "$(show demo-consumer.service ExecMainStartTimestampMonotonic)"
check "  the consumer read the right values (its script tests them)" test -f /var/lib/demo-consumer/proof
check "  files are 0400 demo:demo in a 0700 folder" test "$(stat -c '%a %U %G' /run/locket/demo-consumer/DB_PASSWORD /run/locket/demo-consumer | tr '\n' ' ')" = "400 demo demo 700 demo demo "
check "group-consumer (DynamicUser, SupplementaryGroups=readers) starts and reads its 0440 file" systemctl start group-consumer.service
check "  its folder is 0750 root:readers, its file 0440 root:readers" test "$(stat -c '%a %U %G' /run/locket/group-consumer /run/locket/group-consumer/API_TOKEN | tr '\n' ' ')" = "750 root readers 440 root readers "
check "/run/locket is a ramfs (never written to swap), mounted by run-locket.mount" test "$(findmnt -no FSTYPE /run/locket) $(show run-locket.mount ActiveState)" = "ramfs active"
systemctl stop demo-consumer.service
check "stopping the consumer stops its fetch unit" test "$(show locket-fetch-demo-consumer.service ActiveState)" = inactive
check "  and keeps its files (they go only when it leaves the plan)" test -f /run/locket/demo-consumer/DB_PASSWORD

# Delivery (#15): a template, a credential for a DynamicUser consumer, and
# the host's one watcher restarting a consumer once per change.
check "demo-consumer starts again, with its template rendered beside the secrets" systemctl start demo-consumer.service
check "  app.ini holds the value in place of its placeholder" grep -Fxq 'password = vm-db-password' /run/locket/demo-consumer/app.ini
check "  and has the consumer's owner and mode (0400 demo:demo)" test "$(stat -c '%a %U %G' /run/locket/demo-consumer/app.ini)" = "400 demo demo"
check "cred-consumer (DynamicUser) starts: it reads \$CREDENTIALS_DIRECTORY/API_TOKEN" systemctl start cred-consumer.service
check "  the module gave its unit LoadCredential=API_TOKEN:/run/locket/cred-consumer/API_TOKEN" sh -c "systemctl cat cred-consumer.service | grep -Fxq 'LoadCredential=API_TOKEN:/run/locket/cred-consumer/API_TOKEN'"
check "  its script proved the value under its dynamic user" test -f /var/lib/private/cred-consumer/proof
starts() { wc -l </var/lib/demo-consumer/starts; }
rounds() { grep -o '"rounds": [0-9]*' /run/locket-watch/status.json 2>/dev/null | grep -o '[0-9]*$' || echo 0; }
rounds_at_least() { [ "$(rounds)" -ge "$1" ]; }
more_rounds() { wait_for 180 rounds_at_least $(($(rounds) + $1)); } # N more watcher rounds: readiness, not time
starts_is() { [ "$(starts)" = "$1" ]; } # polled: evaluated on every try
starts_after_rounds() { more_rounds "$1" && [ "$(starts)" = "$2" ]; }
origin_of() { grep -A1 "\"$1\": {" /run/locket-watch/status.json | grep -q "\"origin\": \"$2"; }
starts0=$(starts)
# The credential socket first, as sockets.target orders it at boot: the
# watcher then serves the socket systemd holds (socket activation).
check "locket-watch.socket listens on /run/locket/credentials.sock, root's alone (0600)" sh -c "systemctl start locket-watch.socket && [ \"\$(stat -c '%a %U %F' /run/locket/credentials.sock)\" = '600 root socket' ]"
check "locket-watch.service (Type=notify, one per host) reaches active" systemctl start locket-watch.service
check "  it serves the credential socket systemd handed over" logged locket-watch.service 'credential socket: serving the socket systemd handed over'
check "  it is Type=notify and reports its last success in STATUS=" sh -c "[ \"\$(systemctl show -P Type locket-watch.service)\" = notify ] && systemctl show -P StatusText locket-watch.service | grep -q '^last success 20'"
check "  and in /run/locket-watch/status.json" grep -q '"last_success": "20' /run/locket-watch/status.json
check "  three rounds with nothing changed restart nothing" starts_after_rounds 3 "$starts0"
# The consumer's own user plants a FIFO as its folder's manifest: the root
# watcher must neither hang on it nor stop serving the others.
runuser -u demo -- sh -c 'rm -f /run/locket/demo-consumer/.locket-manifest && mkfifo /run/locket/demo-consumer/.locket-manifest'
check "a FIFO planted as a consumer's manifest: the watcher goes on (three more rounds), restarts nothing" starts_after_rounds 3 "$starts0"
check "  and replaces the FIFO with a regular manifest" sh -c "test -f /run/locket/demo-consumer/.locket-manifest && ! test -p /run/locket/demo-consumer/.locket-manifest"
cred_started=$(show cred-consumer.service ActiveEnterTimestampMonotonic)
# A new value on the server (its dotenv source reaches it as a credential,
# which a restart copies again).
sed -i 's/^DB_PASSWORD=.*/DB_PASSWORD=vm-db-password-2/' /etc/locket-test/secrets.env
systemctl restart locket.service
pid=$(show locket.service MainPID)
check "a changed value reaches demo-consumer's file" wait_for 180 grep -qx vm-db-password-2 /run/locket/demo-consumer/DB_PASSWORD
check "  and its template" wait_for 60 grep -Fxq 'password = vm-db-password-2' /run/locket/demo-consumer/app.ini
check "  demo-consumer is restarted for it (restartUnits) and reads the new env file" wait_for 120 starts_is $((starts0 + 1))
check "  exactly once: three more rounds start it no more" starts_after_rounds 3 $((starts0 + 1))
check "  the watcher's journal names the change" logged locket-watch.service 'consumer demo-consumer: changed: DB_PASSWORD'
check "  and never the value" sh -c "! journalctl -u locket-watch.service -o cat | grep -q vm-db-password"
check "  cred-consumer, whose value did not change, was not restarted" test "$(show cred-consumer.service ActiveEnterTimestampMonotonic)" = "$cred_started"
check "the boot cache holds demo-consumer's copy: 0600 root in a 0700 folder" test "$(stat -c '%a %U' /var/lib/locket-client/cache /var/lib/locket-client/cache/demo-consumer.cred | tr '\n' ' ')" = "700 root 600 root "
check "  encrypted: no value in the clear" sh -c "! grep -rqa vm-db-password /var/lib/locket-client/cache"

# Socket delivery (#29): LoadCredential= answered from the watcher's memory.
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
sock_starts() { wc -l </var/lib/private/sock-consumer/starts 2>/dev/null || echo 0; }
sock_starts_is() { [ "$(sock_starts)" = "$1" ]; }
v=$(systemctl --version | head -1 | grep -o '([0-9.]*' | tr -d '(')
check "systemd $v is past 252.3, whose socket credentials hit an assertion (systemd #25719, fixed in 252.4)" sh -c "[ \"\$(printf '%s\n' 252.4 '$v' | sort -V | head -1)\" = 252.4 ]"
check "sock-consumer (DynamicUser, delivery = socket) starts: its secrets and template come from the watcher's memory" systemctl start sock-consumer.service
check "  its unit asks the socket for each ID (LoadCredential=SOCKET_ONLY:/run/locket/credentials.sock, …)" sh -c "[ \"\$(systemctl cat sock-consumer.service | grep -c '^LoadCredential=.*:/run/locket/credentials.sock$')\" = 3 ]"
check "  it read the server's value (its script checks each credential; it keeps only a SHA-256)" test "$(tail -1 /var/lib/private/sock-consumer/starts)" = "$(sha vm-socket-only-1)"
check "  the watcher's journal names what it handed over, by unit and ID" logged locket-watch.service 'handed sock-consumer.service its credential SOCKET_ONLY'
check "  its credentials directory is a ramfs (never swapped)" test "$(findmnt -no FSTYPE /run/credentials/sock-consumer.service)" = ramfs
# (Also the server's own source runs on this host: its credential copy of
# secrets.env holds every value, by design of the test, not of delivery.)
check "  the scan below finds it there (and so would find it elsewhere)" sh -c "grep -rlaF -D skip vm-socket-only-1 /run | grep -qx /run/credentials/sock-consumer.service/SOCKET_ONLY"
check "  the value is in no file of /run or /var but that directory (journal included)" sh -c "! grep -rlaF -D skip vm-socket-only-1 /run /var | grep -Ev '^/run/credentials/(sock-consumer|locket)[.]service/'"
check "  nothing under /run/locket for it, and no fetch unit" sh -c "! test -e /run/locket/sock-consumer && ! systemctl cat locket-fetch-sock-consumer.service"
check "a unit not in the plan gets nothing: systemd 252 starts it on an empty credential" systemd-run --unit=rogue --wait --quiet -p LoadCredential=SOCKET_ONLY:/run/locket/credentials.sock sh -c 'test -e "$CREDENTIALS_DIRECTORY/SOCKET_ONLY" && test ! -s "$CREDENTIALS_DIRECTORY/SOCKET_ONLY"'
check "  the watcher's journal says so" logged locket-watch.service 'unit rogue.service asked for credential SOCKET_ONLY, but no consumer of the delivery plan has that unit'
mkdir -p /etc/systemd/system/sock-consumer.service.d
printf '[Service]\nLoadCredential=DB_PASSWORD:/run/locket/credentials.sock\n' >/etc/systemd/system/sock-consumer.service.d/extra.conf
systemctl daemon-reload
s0=$(sock_starts)
check "the plan's unit asking for an ID it was not granted gets it empty (and its granted ones)" sh -c "systemctl restart sock-consumer.service && test -e /run/credentials/sock-consumer.service/DB_PASSWORD && test ! -s /run/credentials/sock-consumer.service/DB_PASSWORD"
check "  the watcher's journal says so" logged locket-watch.service 'unit sock-consumer.service \(consumer sock-consumer\) asked for credential DB_PASSWORD, which the plan does not grant it'
rm -r /etc/systemd/system/sock-consumer.service.d
systemctl daemon-reload
systemctl restart sock-consumer.service
check "a client connecting straight to the socket, not through systemd, gets nothing" sh -c "! busctl --address=unix:path=/run/locket/credentials.sock status"
check "  the watcher's journal says so" logged locket-watch.service 'the peer is not systemd loading a credential'
check "  and any other user cannot even connect (0600)" sh -c "runuser -u nobody -- busctl --address=unix:path=/run/locket/credentials.sock status 2>&1 | grep -q 'Permission denied'"
s0=$(sock_starts)
sed -i 's/^SOCKET_ONLY=.*/SOCKET_ONLY=vm-socket-only-2/' /etc/locket-test/secrets.env
systemctl restart locket.service
check "a change on the server restarts sock-consumer (restartUnits)" wait_for 180 sock_starts_is $((s0 + 1))
check "  with the new value" test "$(tail -1 /var/lib/private/sock-consumer/starts)" = "$(sha vm-socket-only-2)"
sock_starts_after_rounds() { more_rounds "$1" && sock_starts_is "$2"; }
check "  exactly once: three more rounds start it no more" sock_starts_after_rounds 3 $((s0 + 1))
check "  the watcher's journal names the change, never the value" sh -c "journalctl -u locket-watch.service -o cat | grep -q 'consumer sock-consumer (credential socket): changed' && ! journalctl -o cat | grep -q vm-socket-only"
# No server and nothing held (the watcher restarted during an outage): the
# unit does not start on an empty secret; its journal names the credential.
systemctl stop locket.service
systemctl restart locket-watch.service
check "with no server and nothing held, sock-consumer does not start on an empty credential" sh -c '! systemctl restart sock-consumer.service'
check "  its journal names the credential and where to look" logged sock-consumer.service 'locket: credential API_TOKEN is empty: locket-watch did not hand it over.*journalctl -u locket-watch'
check "  the watcher's journal says why" logged locket-watch.service 'asked for credential API_TOKEN, but no value is held and the fetch failed'
systemctl start locket.service
watcher_ok() { grep -q '"last_error": null' /run/locket-watch/status.json; }
check "  the watcher's next round fetches again" wait_for 120 watcher_ok
check "  once the server is back it starts, with the value" sh -c "systemctl start sock-consumer.service && [ \"\$(tail -1 /var/lib/private/sock-consumer/starts)\" = '$(sha vm-socket-only-2)' ]"
# --- a lingering user's own services (home-manager, #29): alice's user
# manager, her own key and client, files under $XDG_RUNTIME_DIR and the
# credential socket of her own watcher; no login at any point.
xdg=/run/user/$ALICE_UID
as_alice() { runuser -u alice -- env XDG_RUNTIME_DIR="$xdg" "$@"; }
user_active() { [ "$(as_alice systemctl --user show -P ActiveState "$1")" = active ]; }
both_active() { user_active user-app.service && user_active user-sock.service; }
user_journal() { journalctl -q -o cat --no-pager _SYSTEMD_USER_UNIT="$1" _UID="$ALICE_UID"; }
user_logged() { wait_for 60 user_logged_now "$@"; }
user_logged_now() { user_journal "$1" | grep -Eq -- "$2"; }
alice_starts() { wc -l <"/home/alice/$1.starts" 2>/dev/null || echo 0; }
alice_starts_is() { [ "$(alice_starts "$1")" = "$2" ]; }
alice_rounds() { grep -o '"rounds": [0-9]*' "$xdg/locket-watch/status.json" 2>/dev/null | grep -o '[0-9]*$' || echo 0; }
alice_rounds_at_least() { [ "$(alice_rounds)" -ge "$1" ]; }
alice_more_rounds() { wait_for 180 alice_rounds_at_least $(($(alice_rounds) + $1)); }
alice_app_after_rounds() { alice_more_rounds "$1" && alice_starts_is user-app "$2"; }
no_alice_session() { ! loginctl list-sessions --no-legend | grep -qw alice; }
check "alice is not lingering and has no user manager yet" sh -c "[ ! -e /var/lib/systemd/linger/alice ] && ! systemctl is-active --quiet user@$ALICE_UID.service"
loginctl enable-linger alice
check "loginctl enable-linger starts her user manager, with no login" wait_for 120 systemctl is-active --quiet user@$ALICE_UID.service
check "  her user services start with their secrets (files and socket)" wait_for 240 both_active
check "  she has no session: nobody logged in" no_alice_session
check "  the files: under \$XDG_RUNTIME_DIR/locket/user-app, 0400, hers" test "$(stat -c '%a %U' $xdg/locket/user-app/USER_TOKEN $xdg/locket/user-app/app.conf | sort -u)" = "400 alice"
check "  user-app read the server's value (through EnvironmentFile= and its template)" test "$(tail -1 /home/alice/user-app.starts)" = "$(sha vm-user-token-1)"
check "  its fetch unit is a user oneshot that delivered it" user_logged locket-fetch-user-app.service 'user-app: [0-9]+ written'
check "  user-sock read its credential from her watcher's memory" test "$(tail -1 /home/alice/user-sock.starts)" = "$(sha vm-user-socket-1)"
check "  her watcher names what it handed over, by unit and ID" user_logged locket-watch.service 'handed user-sock.service its credential USER_SOCKET'
check "  the socket value is in no file of /run or /var but her unit's credentials (and the server's source)" sh -c "! grep -rlaF -D skip vm-user-socket-1 /run /var 2>/dev/null | grep -Ev '^($xdg/credentials/user-sock|/run/credentials/locket)[.]service/'"
check "  (the scan finds it there)" sh -c "grep -rlaF -D skip vm-user-socket-1 $xdg | grep -qx $xdg/credentials/user-sock.service/USER_SOCKET"
# A boot, as logind starts lingering users at its start: her manager and
# runtime folder gone (as at power-off), then logind started again.
a0=$(alice_starts user-app) k0=$(alice_starts user-sock)
systemctl stop user@$ALICE_UID.service user-runtime-dir@$ALICE_UID.service
check "after her manager and \$XDG_RUNTIME_DIR are gone (a power-off)" sh -c "! test -e $xdg/locket"
systemctl restart systemd-logind.service
check "  logind starts her user manager again, as at boot (linger)" wait_for 120 systemctl is-active --quiet user@$ALICE_UID.service
check "  user-app and user-sock each started once more" wait_for 240 sh -c "[ \$(wc -l </home/alice/user-app.starts) = $((a0 + 1)) ] && [ \$(wc -l </home/alice/user-sock.starts) = $((k0 + 1)) ]"
check "  the files are back under the new \$XDG_RUNTIME_DIR" test -s $xdg/locket/user-app/USER_TOKEN
check "  still no session" no_alice_session
# A change on the server: her watcher restarts user-app, once.
wait_for 120 test -s "$xdg/locket-watch/status.json"
a0=$(alice_starts user-app)
sed -i 's/^USER_TOKEN=.*/USER_TOKEN=vm-user-token-2/' /etc/locket-test/secrets.env
systemctl restart locket.service
check "a change on the server restarts her user-app (systemctl --user try-restart)" wait_for 180 alice_starts_is user-app $((a0 + 1))
check "  with the new value" test "$(tail -1 /home/alice/user-app.starts)" = "$(sha vm-user-token-2)"
check "  exactly once: three more rounds of her watcher start it no more" alice_app_after_rounds 3 $((a0 + 1))
check "  her watcher's journal names the change, never a value" sh -c "journalctl -q -o cat _SYSTEMD_USER_UNIT=locket-watch.service | grep -Eq 'consumer user-app: changed: .*USER_TOKEN' && ! journalctl -o cat | grep -q vm-user-"
# Quiet again for what follows: no more requests from her watcher.
loginctl disable-linger alice
systemctl stop user@$ALICE_UID.service

pid=$(show locket.service MainPID)

# Refusals: a wrong key from the client's address; the right key from the intruder's.
in_ns client locket-client --config /etc/locket/client.toml --key /var/lib/locket-client/other.key get API_TOKEN >/dev/null 2>/tmp/cli.err
check "a wrong key from the client's address is denied (exit 3)" sh -c "[ $? = 3 ] || { cat /tmp/cli.err; false; }"
check "  the journal says why: /$EXPECT_WRONG_KEY/" logged locket.service "$EXPECT_WRONG_KEY"
as_intruder locket-client --config /etc/locket/client.toml --key /etc/intruder/stolen.key get API_TOKEN >/dev/null 2>/tmp/cli.err
check "the right key from the intruder's address is denied (exit 3)" sh -c "[ $? = 3 ] || { cat /tmp/cli.err; false; }"
check "  the journal says why: /$EXPECT_WRONG_ADDRESS/" logged locket.service "$EXPECT_WRONG_ADDRESS"
check "  no secret value in the server's journal" sh -c "! journalctl -u locket.service -o cat | grep -Eq 'vm-db-password|vm-api-token|line one'"

# A registry change, applied as switch-to-configuration would: the /etc link
# moves, only X-Reload-Triggers differs, so the unit is reloaded.
loads=$(http_get server /metrics | grep -E '^locket_source_loads_total' | tr '\n' ' ')
use_server change
systemctl daemon-reload
check "the registry change is applied with systemctl reload" systemctl reload locket.service
# ExecReload= is `locket reload --wait`: systemctl returns once the server
# has applied the new config (sources read, metrics counted), so what
# follows is checked against the reloaded server without waiting.
check "  config reloaded, before systemctl returned" logged_now locket.service 'config reloaded'
check "  by the same process" test "$(show locket.service MainPID)" = "$pid"
check "  every source was read again (SIGHUP re-reads them; a failing one would keep its values)" test "$(http_get server /metrics | grep -E '^locket_source_loads_total' | tr '\n' ' ')" != "$loads"
got=$(as_intruder locket-client --config /etc/locket/client.toml --name intruder get API_TOKEN 2>&1)
check "  the new client is served" test "$got" = vm-api-token
# A config the server refuses, switched to as a deploy would: the reload
# fails where systemd (and so nixos-rebuild switch) sees it, and the server
# keeps serving the config it had, in the same process.
good=$(readlink /etc/locket/server.toml)
printf '%s\n' 'listen = "not an address"' >/etc/locket-test-bad.toml
cat "$good" >>/etc/locket-test-bad.toml
ln -sfn /etc/locket-test-bad.toml /etc/locket/server.toml
check "a config the server refuses: systemctl reload fails" sh -c '! systemctl reload locket.service'
check "  the reload's output says why" sh -c "journalctl -q -o cat -u locket.service --no-pager | grep -q 'refused the config and keeps serving the previous one'"
check "  the unit stays active, in the same process" sh -c "[ \"\$(systemctl is-active locket.service)\" = active ] && [ \"\$(systemctl show -P MainPID locket.service)\" = $pid ]"
got=$(as_intruder locket-client --config /etc/locket/client.toml --name intruder get API_TOKEN 2>&1)
check "  and still serves the config it had" test "$got" = vm-api-token
ln -sfn "$good" /etc/locket/server.toml
check "  the good config back: systemctl reload succeeds" systemctl reload locket.service
rm -f /etc/locket-test-bad.toml

# The server gone, as at a boot during an outage: demo-consumer starts on
# its boot cache within cacheMaxAge, and not after it.
systemctl stop locket.service
check "with the server stopped, group-consumer (no cache) restarted starts on the files it was running with" systemctl restart group-consumer.service
check "  its fetch unit says it kept them" logged locket-fetch-group-consumer.service 'no server answered.*kept the files already in /run/locket/group-consumer'
systemctl stop demo-consumer.service
rm -rf /run/locket/demo-consumer # as after a boot: /run is empty, the cache is not
check "with the server stopped and /run empty, demo-consumer (cacheMaxAge = 10m) starts on its boot cache" systemctl start demo-consumer.service
check "  with the last values the server gave" grep -qx vm-db-password-2 /run/locket/demo-consumer/DB_PASSWORD
check "  the fetch unit's journal says so, naming the fetch time and the max age" logged locket-fetch-demo-consumer.service 'no server answered.*delivered the cached copy fetched at 20.*cache_max_age 10m'
check "  and so does the watcher's status" wait_for 120 origin_of demo-consumer "cache 20"
systemctl start locket.service
check "  a server that answers again replaces it (origin: server)" wait_for 180 origin_of demo-consumer server
# A host that wiped /var/lib at boot (impermanence) lost the host key the
# cache was encrypted with: the cache is refused by name, not missed.
systemctl stop locket.service demo-consumer.service
rm -rf /run/locket/demo-consumer
mv /var/lib/systemd/credential.secret /run/credential.secret.kept
check "with the host key gone (a wiped /var/lib), demo-consumer does not start" sh -c '! systemctl start demo-consumer.service'
check "  the fetch unit names the cache it could not decrypt, and the host key to keep" logged locket-fetch-demo-consumer.service 'cannot decrypt the cached copy /var/lib/locket-client/cache/demo-consumer.cred.*credential.secret must survive reboots'
check "  the copy is kept, for the key to come back" test -f /var/lib/locket-client/cache/demo-consumer.cred
mv /run/credential.secret.kept /var/lib/systemd/credential.secret
# The same outage with a copy older than the max age: the operator's plan
# with cache_max_age = 1s (the copy is older: the fetch unit tries the
# servers for its whole fetchTimeout first).
systemctl stop locket.service
systemctl stop demo-consumer.service
rm -rf /run/locket/demo-consumer
plan=$(readlink -f /etc/locket/delivery.toml)
sed 's/^cache_max_age = .*/cache_max_age = "1s"/' "$plan" >/run/delivery-1s.toml
ln -sfn /run/delivery-1s.toml /etc/locket/delivery.toml
check "  (the plan now says cache_max_age = 1s)" grep -qx 'cache_max_age = "1s"' /etc/locket/delivery.toml
t0=$(date +%s)
systemctl start demo-consumer.service >/dev/null 2>&1
rc=$?
took=$(($(date +%s) - t0))
ln -sfn "$plan" /etc/locket/delivery.toml
check "with the server stopped and the copy too old, demo-consumer fails to start (after ${took} s)" test "$rc" != 0 -a "$(show demo-consumer.service ActiveState)" != active
check "  within the fetch unit's bound (TimeoutStartSec=${FETCH_TIMEOUT}s)" test "$took" -le "$FETCH_TIMEOUT"
check "  the fetch unit's journal names the server it tried" logged locket-fetch-demo-consumer.service "http://$SERVER_IP:7410"
check "  and says the copy was too old and deleted" logged locket-fetch-demo-consumer.service 'more than cache_max_age \(1s\); it was deleted'
check "  the expired copy is gone, and nothing was delivered" test ! -e /var/lib/locket-client/cache/demo-consumer.cred -a ! -e /run/locket/demo-consumer/DB_PASSWORD

# systemd's own EnvironmentFile= reader (not run anywhere else): values
# that try to run a command or play on its syntax (comments, line
# continuations, specifiers, $ expansion), served by a real server from a
# JSON file, written by the real client as --format systemd, read by
# systemd for a transient unit, and printed back by env -0.
h=/run/hostile
mkdir -p -m 0700 "$h"
pub=$(locket-client keygen --out "$h/client.key")
cat >"$h/server.toml" <<EOF
listen = "127.0.0.1:7411"
key_file = "$h/server-key.pem"
key_bits = 2048
[[sources]]
type = "file"
path = "/payload/hostile/values.json"
[clients.hostile]
keys = ["$pub"]
networks = ["127.0.0.0/8"]
secrets = ["V*"]
EOF
fp=$(locket fingerprint --config "$h/server.toml" 2>"$h/fingerprint.log")
locket serve --config "$h/server.toml" >"$h/server.log" 2>&1 &
hostile_server=$!
hostile_client() { locket-client --server http://127.0.0.1:7411 --server-fingerprint "$fp" --name hostile --key "$h/client.key" "$@"; }
read_back() { # read_back FILE: the V<n> variables systemd gives a unit from it
  systemd-run --quiet --wait --pipe -p EnvironmentFile="$1" /usr/bin/env -0 | grep -z '^V[0-9]*=' | LC_ALL=C sort -z
}
check "a server on 127.0.0.1:7411 serves the hostile values (key $fp)" wait_for 60 hostile_client get V0
hostile_client env --format systemd >"$h/values.env" 2>"$h/client.log"
check "  the client writes them as --format systemd" test -s "$h/values.env"
read_back "$h/values.env" >"$h/got.env0"
check "  systemd's EnvironmentFile= reads every value back exactly, and no other variable" cmp "$h/got.env0" /payload/hostile/expected.env0
check "  nothing in them ran" test ! -e /tmp/locket-hostile-ran
# The same comparison tells a wrong reading apart: shell-format lines
# (`export NAME='...'`, not meant for systemd) do not read back.
hostile_client env --format shell >"$h/shell.env" 2>>"$h/client.log"
read_back "$h/shell.env" >"$h/shell.env0"
check "  (the comparison can fail: shell-format lines do not read back exactly)" sh -c "test -s $h/shell.env && ! cmp -s $h/shell.env0 /payload/hostile/expected.env0"
if [ "$failed" != 0 ]; then
  echo "--- hostile: server log, client log"
  tail -20 "$h/server.log" "$h/client.log" "$h/fingerprint.log"
  tr '\0' '\n' <"$h/got.env0" | head -40
fi
kill "$hostile_server"

# Faults injected under systemd, each with its outcome (nix/tests/guest/faults.sh).
. /payload/faults.sh

# A plan change while the server is down, applied as switch-to-configuration
# applies a generation: units that are gone stopped, changed units
# restarted unless X-RestartIfChanged=false, the /etc link moved. The
# specialisation changes demo-consumer's template and drops group-consumer.
switch_client() { # switch_client DIR: DIR/units (an empty file: gone), DIR/delivery.toml
  local restart="" f name
  for f in "$1"/units/*; do
    name=${f##*/}
    if [ ! -s "$f" ]; then
      systemctl stop "$name"
      rm -f /etc/systemd/system/"$name" /etc/systemd/system/*.requires/"$name"
      continue
    fi
    cp "$f" /etc/systemd/system/"$name"
    grep -qx 'X-RestartIfChanged=false' "$f" || restart="$restart $name"
  done
  ln -sfn "$(readlink "$1"/delivery.toml)" /etc/locket/delivery.toml
  systemctl daemon-reload
  for name in $restart; do
    if systemctl is-active -q "$name"; then systemctl stop "$name" && systemctl start "$name"; fi
  done
}
systemctl start locket.service demo-consumer.service group-consumer.service locket-watch.service
wait_for 180 origin_of demo-consumer server
systemctl stop locket.service
demo_since=$(show demo-consumer.service ActiveEnterTimestampMonotonic)
fetch_since=$(show locket-fetch-demo-consumer.service ActiveEnterTimestampMonotonic)
watch_pid=$(show locket-watch.service MainPID)
demo_value=$(cat /run/locket/demo-consumer/DB_PASSWORD)
switch_client /payload/variants/plan-change
check "a plan change with the server down: the switch restarts the watcher, not the fetch units" test "$(show locket-fetch-demo-consumer.service ActiveEnterTimestampMonotonic)" = "$fetch_since" -a "$(show locket-watch.service MainPID)" != "$watch_pid"
check "  demo-consumer keeps running, never restarted" test "$(show demo-consumer.service ActiveState) $(show demo-consumer.service ActiveEnterTimestampMonotonic)" = "active $demo_since"
check "  and keeps its files" grep -qx "$demo_value" /run/locket/demo-consumer/DB_PASSWORD
check "  group-consumer, gone from the plan: its folder is removed" wait_for 120 test ! -e /run/locket/group-consumer
check "  nothing else under /run/locket is" test -d /run/locket/demo-consumer -a -d /run/locket/cred-consumer
systemctl start locket.service
check "  the server back, the watcher delivers the new plan (the changed template)" wait_for 180 grep -Fxq 'plan = changed' /run/locket/demo-consumer/app.ini
# An upgrade from a version without the ramfs: files in /run/locket are
# never hidden under a new mount.
systemctl stop locket-watch.socket locket-watch.service sock-consumer.service demo-consumer.service cred-consumer.service
umount /run/locket
mkdir -p /run/locket/old && echo kept >/run/locket/old/file
check "upgrade: with files already in /run/locket, run-locket.mount does not mount over them" sh -c "systemctl start run-locket.mount; [ \"\$(findmnt -no FSTYPE /run/locket)\" != ramfs ] && grep -qx kept /run/locket/old/file"

if [ "$failed" != 0 ]; then
  for u in locket.service locket-watch.socket sock-consumer.service locket-fetch-demo-consumer.service locket-fetch-group-consumer.service demo-consumer.service group-consumer.service locket-fetch-cred-consumer.service cred-consumer.service locket-watch.service locket-fault-source.service locket-fault-a.service locket-fault-b.service; do
    echo "--- journal of $u"
    journalctl -u "$u" -o cat --no-pager | tail -25
  done
fi
for name in "${failures[@]}"; do echo "guest: FAILED: $name"; done
echo "guest: $passed passed, $failed failed ($(($(date +%s) - started)) s inside the guest)"
[ "$failed" = 0 ]
