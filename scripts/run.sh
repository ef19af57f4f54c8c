#!/usr/bin/env bash
# Runs Vireo on this host: installs what is missing, builds, starts vireod in the foreground
# on the embedded defaults (state in /var/lib/vireo, socket /run/vireo/vireo.sock), builds the
# tiny guest image and launches a demo VM. Stop with Ctrl-C (VMs keep running; a restarted
# vireod re-attaches them).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
bash scripts/ui.sh
cargo build --release --bins --quiet

BIN=$PWD/target/release
export PATH=$BIN:$PATH
SOCKET=${VIREO_SOCKET:-/run/vireo/vireo.sock}
export VIREO_SOCKET=$SOCKET
# TCP/TLS listener for the browser UI and remote CLIs (API token required).
LISTEN=${VIREO_LISTEN:-127.0.0.1:8443}

demo() {
  # Wait for the daemon to listen.
  for _ in $(seq 1 100); do
    [ -S "$SOCKET" ] && vireo host show >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! vireo image show tiny >/dev/null 2>&1; then
    echo "vireo: building the tiny guest image (first run downloads Debian packages)..." >&2
    vireo image build tiny
  fi
  if ! vireo vm show demo >/dev/null 2>&1; then
    vireo vm create demo --image tiny --vcpus 1 --memory 256MiB --start --wait
  elif [ "$(vireo vm show demo --output json | sed -n 's/.*"state": *"\([a-z]*\)".*/\1/p' | head -1)" != running ]; then
    vireo vm start demo
  fi
  # A fresh token for the browser (secrets are shown once, so replace the previous one).
  vireo token revoke ui >/dev/null 2>&1 || true
  UI_TOKEN=$(vireo --output json token create ui | sed -n 's/.*"secret": *"\([^"]*\)".*/\1/p')
  cat >&2 <<TXT

  Vireo UI: https://$LISTEN/ui/   (self-signed certificate; token below)
  UI token: $UI_TOKEN

  Vireo is running. In another shell (as root):
    export VIREO_SOCKET=$SOCKET PATH=$BIN:\$PATH
    vireo vm list                      # the demo VM
    vireo vm console demo              # serial console (detach: Ctrl-] then q)
    vireo vm exec demo -- uname -a     # run a command through the guest agent
    vireo vm create web1 --image tiny --start --wait
    vireo host show                    # accelerator, capacity
  API: curl --unix-socket $SOCKET http://vireo/v1/vms

TXT
}

demo &
exec vireod --socket "$SOCKET" --listen "$LISTEN" "$@"
