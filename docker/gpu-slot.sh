#!/bin/sh
# gpu-slot COMMAND [ARG...]: claim one free GPU of this host, then exec COMMAND with
# CUDA_VISIBLE_DEVICES set to it. The entrypoint of the `worker` image.
#
# Why: Docker gives a `count: 1` GPU reservation GPU 0 every time, so
# `docker compose up --scale worker=4` would put four workers on one GPU. Instead every worker
# container sees the host's GPUs (`count: all`) and takes the first one whose lock file in
# $GPU_SLOT_DIR no other container holds. That directory is a volume shared by the workers of one
# host. The lock is an flock on a file descriptor that COMMAND inherits, so the kernel releases it
# when the last process of the container exits, however it exits: no stale claims.
#
# Settings (environment):
#   WORKER_GPUS           "all" (every GPU nvidia-smi lists; the default) or a comma-separated
#                         list of GPU indices or UUIDs this host gives to workers, e.g. "0,2".
#   GPU_SLOT_DIR          where the lock files live (default /run/gpu-slots).
#   CUDA_VISIBLE_DEVICES  if already set, it is kept and nothing is claimed (pin by hand).
# With --help or -h among the arguments COMMAND runs at once: help needs no GPU.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: gpu-slot COMMAND [ARG...]" >&2
    exit 2
fi
for arg in "$@"; do
    case "$arg" in
        -h | --help) exec "$@" ;;
    esac
done
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    echo "gpu-slot: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES set by hand, claiming nothing" >&2
    exec "$@"
fi

gpus=${WORKER_GPUS:-all}
if [ "$gpus" = all ]; then
    if ! gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null) || [ -z "$gpus" ]; then
        echo "gpu-slot: no GPU visible (is the NVIDIA Container Toolkit installed on the host?)." \
            "On a host without GPUs run the worker-cpu service instead." >&2
        exit 1
    fi
fi
# shellcheck disable=SC2046,SC2086 # word splitting wanted: one line, single spaces
gpus=$(echo $(printf '%s\n' "$gpus" | tr ',' ' '))

dir=${GPU_SLOT_DIR:-/run/gpu-slots}
mkdir -p "$dir"
for gpu in $gpus; do
    exec 9>>"$dir/gpu-$gpu.lock"
    if flock -n 9; then
        export CUDA_VISIBLE_DEVICES="$gpu"
        echo "gpu-slot: this worker uses GPU $gpu" >&2
        exec "$@"
    fi
    exec 9>&-
done
echo "gpu-slot: every GPU in [$gpus] already has a worker on this host; run at most one" \
    "worker per GPU (docker compose up --scale worker=N, N <= number of GPUs)." >&2
exit 1
