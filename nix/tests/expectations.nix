# What the VM test (vm.nix) and the guest test (guest/) expect the server to
# log for each refusal they provoke, as grep -E patterns. CI checks that the
# real server logs each of them in the same situation
# (nix/tests/module-check.sh), so the VM test cannot wait for a line the
# server never writes.
{
  # Allowed address, a key the client is not registered with.
  wrongKey = "signature does not verify";
  # The registered key, from an address outside the client's networks.
  wrongAddress = "is not in the client.s networks";
}
