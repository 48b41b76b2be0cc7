# Faults injected under the real systemd, each with its expected outcome
# asserted (sourced by guest-test.sh, whose helpers it uses). Every check
# waits on a state (a round counted in status.json, a unit's MainPID, a log
# line), never on time alone. At the end a table: fault, expected, seen.
faults=()
fault() { # fault NAME EXPECTED SEEN
  faults+=("$1|$2|$3")
}
value_is() { grep -qx "$1" /run/locket/demo-consumer/DB_PASSWORD; }
no_leftovers() { ! ls -A /run/locket/demo-consumer | grep -q '^\.locket-tmp-'; }
last_success() { grep -o '"last_success": "[^"]*"' /run/locket-watch/status.json; }
succeeded_since() { [ "$(last_success)" != "$1" ]; } # a round succeeded after the one named
both_listening() { logged_now locket-fault-a.service 'listening on' && logged_now locket-fault-b.service 'listening on'; }
set_value() { # set_value V: the server's DB_PASSWORD (a restart copies the credential again)
  sed -i "s/^DB_PASSWORD=.*/DB_PASSWORD=$1/" /etc/locket-test/secrets.env
  systemctl restart locket.service
}

echo "--- faults"
systemctl start locket.service demo-consumer.service locket-watch.service
wait_for 180 origin_of demo-consumer server
value=$(cat /run/locket/demo-consumer/DB_PASSWORD)

# 1. kill -9 of the server during the watcher's rounds.
starts1=$(starts)
watcher=$(show locket-watch.service MainPID)
more_rounds 1
spid=$(show locket.service MainPID)
kill -9 "$spid"
new_server() { p=$(systemctl show -P MainPID locket.service); [ "$p" != 0 ] && [ "$p" != "$spid" ] && [ "$(systemctl is-active locket.service)" = active ]; }
check "fault 1, kill -9 of the server: systemd starts it again (Restart=on-failure)" wait_for 180 new_server
ls1=$(last_success)
check "  the watcher recovers: a round after the restart succeeds" wait_for 180 succeeded_since "$ls1"
more_rounds 2
check "  consumer files are whole (the value the server holds), no temporary file left" sh -c "grep -qx '$value' /run/locket/demo-consumer/DB_PASSWORD && ! ls -A /run/locket/demo-consumer | grep -q '^\.locket-tmp-'"
check "  no consumer restart (nothing changed), the same watcher" test "$(starts) $(show locket-watch.service MainPID)" = "$starts1 $watcher"
fault "kill -9 of the server" "restarted by systemd; files old or new; watcher recovers; no consumer restart" "new pid $(show locket.service MainPID); consumer starts $starts1 -> $(starts); watcher pid $watcher -> $(show locket-watch.service MainPID)"

# 2. kill -9 of the watcher while a change is delivered: whatever the
#    moment, files are whole and nothing is left that blocks the next write.
set_value vm-db-password-3
kill -9 "$(show locket-watch.service MainPID)"
check "fault 2, kill -9 of the watcher during a change: systemd starts it again" wait_for 180 sh -c "[ \"\$(systemctl is-active locket-watch.service)\" = active ] && [ \"\$(systemctl show -P MainPID locket-watch.service)\" != $watcher ]"
check "  the change arrives whole" wait_for 180 value_is vm-db-password-3
check "  no temporary file left behind" no_leftovers
fault "kill -9 of the watcher mid-change" "no partial file, no leftover, the next write works" "value $(cat /run/locket/demo-consumer/DB_PASSWORD), leftovers: $(ls -A /run/locket/demo-consumer | grep -c '^\.locket-tmp-')"

# 2b. kill -9 of a fetch unit during its delivery, at a random moment of
#     its first 0.5 s, six times, each time for a new value: wherever the
#     kill lands, the file holds the old value or the new one, whole, and
#     the next fetch succeeds with nothing left behind.
systemctl stop locket-watch.service # only the fetch unit writes meanwhile
serves() { [ "$(in_ns client locket-client --config /etc/locket/client.toml get DB_PASSWORD 2>/dev/null)" = "$1" ]; }
landed=0 torn=""
for i in 1 2 3 4 5 6; do
  old=$(cat /run/locket/demo-consumer/DB_PASSWORD)
  systemctl stop demo-consumer.service locket-fetch-demo-consumer.service
  set_value "vm-db-password-k$i"
  wait_for 120 serves "vm-db-password-k$i"
  systemctl start --no-block locket-fetch-demo-consumer.service
  sleep "0.$((RANDOM % 5))$((RANDOM % 10))"
  systemctl kill -s KILL locket-fetch-demo-consumer.service 2>/dev/null
  wait_for 60 sh -c '! systemctl is-active -q locket-fetch-demo-consumer.service || [ "$(systemctl show -P SubState locket-fetch-demo-consumer.service)" = exited ]'
  [ "$(show locket-fetch-demo-consumer.service Result)" = signal ] && landed=$((landed + 1))
  now=$(cat /run/locket/demo-consumer/DB_PASSWORD)
  [ "$now" = "$old" ] || [ "$now" = "vm-db-password-k$i" ] || torn="$torn $i:$now"
done
check "fault 2b, kill -9 of a fetch unit mid-delivery (6 times): every file was the old value or the new one" test -z "$torn"
systemctl reset-failed locket-fetch-demo-consumer.service 2>/dev/null
set_value vm-db-password-3
wait_for 120 serves vm-db-password-3
check "  the next fetch succeeds" systemctl start demo-consumer.service
check "  with the new value, and nothing left behind" sh -c "grep -qx vm-db-password-3 /run/locket/demo-consumer/DB_PASSWORD && ! ls -A /run/locket/demo-consumer | grep -q '^\.locket-tmp-'"
fault "kill -9 of a fetch unit mid-delivery (x6)" "each file old or new, whole; the next fetch works, no leftover" "killed before it finished: $landed of 6; torn: ${torn:-none}; leftovers: $(ls -A /run/locket/demo-consumer | grep -c '^\.locket-tmp-')"
systemctl start locket-watch.service

# 3. /run/locket full: a 512 KiB tmpfs, filled. The old files stay, the
#    error names the file and the cause, the next round after room is made
#    succeeds.
systemctl stop demo-consumer.service locket-watch.service
mount -t tmpfs -o size=512k,mode=0755 locket-small /run/locket
systemctl start demo-consumer.service locket-watch.service
check "fault 3, /run/locket on a small tmpfs: delivery works while there is room" wait_for 180 value_is vm-db-password-3
dd if=/dev/zero of=/run/locket/filler bs=4k count=1024 2>/dev/null
set_value vm-db-password-4
check "  full: the watcher's round fails naming the file and the cause" logged locket-watch.service 'DB_PASSWORD.*No space left on device'
check "  the old file stays whole" value_is vm-db-password-3
rm -f /run/locket/filler
check "  with room again, the next round delivers the change" wait_for 180 value_is vm-db-password-4
check "  no temporary file left behind" no_leftovers
fault "/run/locket full (512 KiB tmpfs)" "old files stay; error names file and cause; recovers with room" "$(journal locket-watch.service | grep -m1 -o 'DB_PASSWORD[^;]*No space left on device' || echo 'no such line'); now $(cat /run/locket/demo-consumer/DB_PASSWORD)"
systemctl stop demo-consumer.service locket-watch.service
umount /run/locket
systemctl start demo-consumer.service locket-watch.service

# 4. A source that hangs (a server of its own: a command source that
#    sleeps while /run/faults/hang exists, and a dotenv source).
f=/run/faults
mkdir -p -m 0700 "$f"
fpub=$(locket-client keygen --out "$f/client.key")
printf 'B=b1\n' >"$f/b.env"
cat >"$f/server.toml" <<EOF
listen = "127.0.0.1:7412"
key_file = "$f/server-key.pem"
key_bits = 2048
refresh_interval = "1s"
[[sources]]
type = "command"
command = ["/bin/sh", "-c", "if [ -e $f/hang ]; then sleep 613.25; fi; echo '{\"A\": \"a1\"}'"]
timeout = "2s"
[[sources]]
type = "dotenv"
path = "$f/b.env"
[clients.f]
keys = ["$fpub"]
networks = ["127.0.0.0/8"]
secrets = ["A", "B"]
EOF
ffp=$(locket fingerprint --config "$f/server.toml" 2>/dev/null)
systemd-run --quiet --unit=locket-fault-source -p Type=exec locket serve --config "$f/server.toml"
fclient() { locket-client --server http://127.0.0.1:7412 --server-fingerprint "$ffp" --name f --key "$f/client.key" "$@"; }
check "fault 4, a source that hangs: the server starts with both sources" wait_for 120 sh -c "[ \"\$(locket-client --server http://127.0.0.1:7412 --server-fingerprint $ffp --name f --key $f/client.key get A)\" = a1 ]"
touch "$f/hang"
printf 'B=b2\n' >"$f/b.env"
check "  the hanging source is killed at its timeout, and says so" logged locket-fault-source.service 'did not finish within 2s \(killed\)'
check "  the other source's change is served" wait_for 120 sh -c "[ \"\$(locket-client --server http://127.0.0.1:7412 --server-fingerprint $ffp --name f --key $f/client.key get B)\" = b2 ]"
check "  the hanging source's last good value is still served" test "$(fclient get A 2>&1)" = a1
# While the flag is there every refresh starts a sleep that its timeout
# kills; once it is gone, none may be left (an orphan would live 613 s).
rm -f "$f/hang"
no_hung_sleeps() { ! pgrep -f 'sleep 613[.]25' >/dev/null; } # [.]: never matches this line's own shell
check "  no sleep of it outlives its timeout (the whole process group is killed)" wait_for 60 no_hung_sleeps
fault "a source that hangs" "killed at its timeout with its children; last good values served; other sources unaffected" "A=$(fclient get A 2>&1) B=$(fclient get B 2>&1); sleeps left once it stopped hanging: $(pgrep -fc 'sleep 613[.]25')"
systemctl stop locket-fault-source.service

# 5. A server frozen (SIGSTOP) longer than the client's timeout: the client
#    fails over to a second server with the same key, and comes back.
cp "$f/server-key.pem" "$f/server2-key.pem"
sed -e 's/7412/7413/' -e "s#$f/server-key.pem#$f/server2-key.pem#" "$f/server.toml" >"$f/server2.toml"
systemd-run --quiet --unit=locket-fault-a -p Type=exec locket serve --config "$f/server.toml"
systemd-run --quiet --unit=locket-fault-b -p Type=exec locket serve --config "$f/server2.toml"
two() { locket-client --server http://127.0.0.1:7412 --server http://127.0.0.1:7413 --server-fingerprint "$ffp" --name f --key "$f/client.key" --timeout 20s "$@"; }
check "fault 5, a frozen server: both servers answer" wait_for 120 both_listening
kill -STOP "$(show locket-fault-a.service MainPID)"
t0=$(date +%s)
got=$(two get B 2>"$f/two.err")
took=$(($(date +%s) - t0))
check "  with the first frozen, the client gets its answer from the second" test "$got" = b2
kill -CONT "$(show locket-fault-a.service MainPID)"
check "  thawed, the first serves again, never restarted" sh -c "[ \"\$(locket-client --server http://127.0.0.1:7412 --server-fingerprint $ffp --name f --key $f/client.key get B)\" = b2 ] && [ \"\$(systemctl show -P NRestarts locket-fault-a.service)\" = 0 ]"
fault "server frozen (SIGSTOP) past the client's timeout" "the client fails over to the second server; the first comes back unrestarted" "answer '$got' in ${took} s; $(tr '\n' ' ' <"$f/two.err" | cut -c1-120)"
systemctl stop locket-fault-a.service locket-fault-b.service

# 6. Memory: the server capped at MemoryMax=48M (no swap) while 300
#    connections flood it with large bodies: too large for its limit, and
#    64 KiB bodies held open almost whole. Every one is refused (413, 408,
#    429, 503) or closed; the kernel never kills it for memory.
sed -e 's/7412/7414/' -e 's/^refresh_interval = .*/refresh_interval = "300s"\nrequest_timeout = "5s"/' "$f/server.toml" >"$f/server3.toml"
systemd-run --quiet --unit=locket-fault-memory -p Type=exec -p MemoryMax=48M -p MemorySwapMax=0 locket serve --config "$f/server3.toml"
check "fault 6, MemoryMax=48M: the server answers" wait_for 120 logged_now locket-fault-memory.service 'listening on'
mpid=$(show locket-fault-memory.service MainPID)
mkdir -p "$f/flood"
flood_one() { # flood_one I LENGTH SENT: a POST declaring LENGTH bytes, SENT of them sent, held until answered
  exec 3<>/dev/tcp/127.0.0.1/7414 || { echo closed >"$f/flood/$1"; return; }
  printf 'POST /v1/secrets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n' "$2" >&3 2>/dev/null
  head -c "$3" /dev/zero >&3 2>/dev/null
  line=$(timeout 60 head -n1 <&3 | tr -d '\r')
  echo "${line:-closed}" >"$f/flood/$1"
}
for i in $(seq 1 100); do flood_one "big$i" 10485760 0 & flood_one "held$i" 65536 60000 & flood_one "held2$i" 65536 60000 & done
wait
cg=/sys/fs/cgroup/system.slice/locket-fault-memory.service
peak=$(($(cat "$cg/memory.peak") / 1048576))
answers=$(cat "$f"/flood/* | sed 's/^HTTP\/1.1 \([0-9]*\).*/\1/' | sort | uniq -c | tr -s ' \n' '  ')
check "  every request of the flood is refused (413, 408, 429, 503) or closed, none served" sh -c "! grep -vhE '^(HTTP/1.1 (413|408|429|503|400)|closed)' $f/flood/*"
check "  no OOM kill: the same process, its cgroup saw none" sh -c "[ \"\$(systemctl show -P MainPID locket-fault-memory.service)\" = $mpid ] && grep -qx 'oom_kill 0' $cg/memory.events"
check "  and it serves its client afterwards" sh -c "[ \"\$(locket-client --server http://127.0.0.1:7414 --server-fingerprint $ffp --name f --key $f/client.key get B)\" = b2 ]"
fault "flood of large requests, MemoryMax=48M" "413/408/429/503 or closed; no OOM kill; still serving" "peak ${peak} MiB of 48; answers: ${answers}; $(grep oom_kill "$cg/memory.events")"
systemctl stop locket-fault-memory.service

echo "--- faults: injected | expected | seen"
for row in "${faults[@]}"; do
  IFS='|' read -r what expected seen <<<"$row"
  printf '%-48s | %-60s | %s\n' "$what" "$expected" "$seen"
done
