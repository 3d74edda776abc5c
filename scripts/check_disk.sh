#!/usr/bin/env bash
# Refuse to start the .venv install when the disk cannot hold it, instead of failing halfway through pip.
# torch 2.14.1 is a CUDA build from this disk: the finished .venv takes about 6.6 GB, and the test
# suite writes up to about 1.5 GB more under the temporary folder while it runs.
set -euo pipefail
need_gb=${1:?usage: check_disk.sh GB [DIR]}
dir=${2:-.}
free_kb=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
free_gb=$(awk -v kb="$free_kb" 'BEGIN {printf "%.1f", kb / 1048576}')
if awk -v kb="$free_kb" -v gb="$need_gb" 'BEGIN {exit !(kb < gb * 1048576)}'; then
    echo "error: $(cd "$dir" && pwd) has $free_gb GB free; installing .venv (torch's CUDA build and" >&2
    echo "       cliplab's test extras) needs about $need_gb GB. Free some disk space and run make again." >&2
    exit 1
fi
echo "disk: $free_gb GB free in $(cd "$dir" && pwd) (the install needs about $need_gb GB)"
