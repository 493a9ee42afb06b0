#!/usr/bin/env bash
# Create the project's virtualenv and, when run as root, install the Debian
# packages that the tests and the systemd extra need.
set -euo pipefail

venv=${1:-.venv}
python=${PYTHON:-python3}
apt_packages=(mosquitto libsystemd-dev pkg-config openssl)

missing=()
for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing ${missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "bootstrap: missing Debian packages ${missing[*]}; run 'sudo apt-get install ${missing[*]}'" >&2
    fi
fi

# The broker is started by the tests on a free port; the packaged service
# that apt enables on 1883 is not needed.
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv with $python"
    "$python" -m venv "$venv"
fi

extras="dev,litert"
if pkg-config --exists libsystemd 2>/dev/null; then
    extras="$extras,systemd"
else
    echo "bootstrap: libsystemd-dev not found, installing without systemd-python"
fi

"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -e ".[$extras]"
