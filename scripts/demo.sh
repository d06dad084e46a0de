#!/usr/bin/env bash
# make demo: start the service (unless one runs), build the tiny image, boot a real VM, show it
# working from the inside, then clean up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
G=.venv/bin/gureum
export GUREUM_HOME=${GUREUM_HOME:-/var/lib/gureum-demo}
mkdir -p "$GUREUM_HOME"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

serve_pid=""
if ! $G host >/dev/null 2>&1; then
  step "gureum serve &    (GUREUM_HOME=$GUREUM_HOME)"
  $G serve >"$GUREUM_HOME/serve.out" 2>&1 &
  serve_pid=$!
  for _ in $(seq 100); do $G host >/dev/null 2>&1 && break; sleep 0.1; done
  head -1 "$GUREUM_HOME/serve.out" || true
fi
cleanup() {
  $G delete demo --force >/dev/null 2>&1 || true
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
$G delete demo --force >/dev/null 2>&1 || true   # left over from an interrupted demo

step "gureum host";                     $G host
step "gureum image build tiny";         $G image build tiny
step "gureum launch tiny --name demo --cpus 2 --memory 512M --disk 2G"
$G launch tiny --name demo --cpus 2 --memory 512M --disk 2G
step "gureum list";                     $G list
step "gureum exec demo -- uname -a";    $G exec demo -- uname -a
step "gureum exec demo -- nproc";       $G exec demo -- nproc
step "gureum exec demo -- grep MemTotal /proc/meminfo"; $G exec demo -- grep MemTotal /proc/meminfo
step "gureum exec demo -- df -h /";     $G exec demo -- df -h /
step "gureum exec demo -- wget -qO- http://169.254.169.254/latest/meta-data/local-ipv4   (metadata service)"
$G exec demo -- wget -qO- http://169.254.169.254/latest/meta-data/local-ipv4; echo
step "echo 'echo hello from the serial console; uptime' | gureum console demo"
echo 'echo hello from the serial console; uptime' | $G console demo
echo
step "gureum stop demo";                $G stop demo
step "gureum start demo";               $G start demo
step "gureum show demo";                $G show demo
step "gureum delete demo --force";      $G delete demo --force
printf '\nThe demo VM is gone and the service stopped; run `gureum serve` to keep one up.\n'
