#!/bin/bash
# Proves the guest harness (nix/tests/guest/boot.sh): runs inside the guest as
# payload-test.service and checks that this is a real systemd 252 as PID 1 that
# can run hardened transient units and network namespaces.
# Usage (host, root): nix/tests/guest/boot.sh --payload nix/tests/guest/selftest-payload
set -uo pipefail
passed=0 failed=0
ok() { echo "selftest ok: $1"; passed=$((passed + 1)); }
bad() { echo "selftest FAILED: $1"; failed=$((failed + 1)); }
check() { local name=$1; shift; if out=$("$@" 2>&1); then ok "$name"; else bad "$name: $out"; fi; }

pid1=$(readlink /proc/1/exe)
case "$pid1" in */systemd) ok "PID 1 is $pid1" ;; *) bad "PID 1 is $pid1" ;; esac

state=$(timeout 300 systemctl is-system-running --wait 2>&1)
case "$state" in
  running|degraded) ok "system state: $state" ;;
  *) bad "system state: $state" ;;
esac
[ "$state" = degraded ] && systemctl --no-pager --failed

ver=$(systemd-analyze --version | head -n1)
case "$ver" in "systemd 252 "*) ok "$ver" ;; *) bad "systemd version: $ver" ;; esac

# A hardened transient service: dynamic user, read-only system, credential.
want=$(cat /etc/hostname)
got=$(systemd-run --wait --pipe --quiet -p DynamicUser=yes -p ProtectSystem=strict \
        -p LoadCredential=x:/etc/hostname \
        /bin/sh -c 'echo "uid=$(id -u)"; cat "$CREDENTIALS_DIRECTORY/x"; touch /usr/probe 2>/dev/null && echo WRITABLE' 2>&1)
echo "$got" | sed 's/^/  transient unit: /'
uid=$(echo "$got" | sed -n 's/^uid=//p')
if [ -n "$uid" ] && [ "$uid" != 0 ] && echo "$got" | grep -qx "$want" && ! echo "$got" | grep -q WRITABLE; then
  ok "DynamicUser (uid $uid) + ProtectSystem=strict + LoadCredential"
else
  bad "transient unit output: $got"
fi

# Network namespaces joined by a veth pair (loads the veth module).
check "ip netns add" ip netns add harness-a
check "veth into netns" ip link add harness-h type veth peer name harness-g netns harness-a
check "addresses" sh -c 'ip addr add 10.99.0.1/24 dev harness-h && ip link set harness-h up &&
  ip -n harness-a addr add 10.99.0.2/24 dev harness-g && ip -n harness-a link set harness-g up && ip -n harness-a link set lo up'
check "namespace sees its address" sh -c 'ip -n harness-a -4 addr show harness-g | grep -q 10.99.0.2'
# TCP from the host side of the pair to a listener inside the namespace.
ip netns exec harness-a systemd-socket-activate --inetd -a -l 10.99.0.2:7777 /bin/echo hello-from-netns >/dev/null 2>&1 &
lpid=$!
sleep 1
reply=$(timeout 10 bash -c 'exec 3<>/dev/tcp/10.99.0.2/7777; cat <&3' 2>&1)
kill "$lpid" 2>/dev/null
[ "$reply" = hello-from-netns ] && ok "TCP across veth into netns" || bad "TCP across veth: $reply"
check "ip netns exec" ip netns exec harness-a ip -4 route show
check "ip netns delete" ip netns delete harness-a

echo "selftest: $passed passed, $failed failed"
[ "$failed" = 0 ]
