#!/bin/bash
# Install gureum system-wide (as root): a virtual environment in $PREFIX with gureum in it,
# /usr/local/bin/gureum, the systemd unit gureum.service, and a default $GUREUM_HOME/config.toml.
#   bash scripts/install.sh                 PREFIX=/opt/gureum, GUREUM_HOME=/var/lib/gureum
#   bash scripts/install.sh --unit PREFIX HOME   only print the unit for PREFIX and HOME
set -euo pipefail
cd "$(dirname "$0")/.."

unit() {  # the unit for an install at $1 with its home at $2
    sed -e "s|@PREFIX@|$1|g" -e "s|@HOME@|$2|g" packaging/gureum.service.in
}

if [ "${1:-}" = "--unit" ]; then
    unit "$2" "$3"
    exit 0
fi

PREFIX=${PREFIX:-/opt/gureum}
HOME_DIR=${GUREUM_HOME:-/var/lib/gureum}

bash scripts/setup-system.sh
python3 -m venv "$PREFIX"
"$PREFIX/bin/python" -m pip install -q --upgrade pip
"$PREFIX/bin/python" -m pip install -q .
install -d -m 0755 "$PREFIX/share/doc/gureum"
install -m 0644 README.md "$PREFIX/share/doc/gureum/README.md"
ln -sf "$PREFIX/bin/gureum" /usr/local/bin/gureum
install -d -m 0711 "$HOME_DIR"
if [ ! -e "$HOME_DIR/config.toml" ]; then
    install -m 0644 packaging/config.toml "$HOME_DIR/config.toml"
fi
unit "$PREFIX" "$HOME_DIR" > /etc/systemd/system/gureum.service
if [ -d /run/systemd/system ]; then  # systemd runs this machine
    systemctl daemon-reload
    echo "installed: systemctl enable --now gureum (logs: journalctl -u gureum)"
else
    echo "installed; this machine does not run systemd: start it with GUREUM_HOME=$HOME_DIR gureum serve"
fi
