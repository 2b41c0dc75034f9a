# Sourced by the launch scripts: `launch TAG NPROC_PER_NODE ENTRY [args...]` execs torchrun on ENTRY.
# One node without MASTER_PORT: --standalone (a free local port, so that several runs can share a
# machine); else the rendezvous of NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500).
# One OpenMP thread per process unless OMP_NUM_THREADS is set: the processes share the cores.
launch() {
  local tag=$1 nproc=$2 entry=$3 rdzv
  shift 3
  if [ "${NNODES:-1}" = 1 ] && [ -z "${MASTER_PORT:-}" ]; then
    rdzv=(--standalone)
  else
    rdzv=(--nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}"
          --master_port "${MASTER_PORT:-29500}")
  fi
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
  local cmd=("${SFM_VENV:-$root/.venv}/bin/torchrun" "${rdzv[@]}" --nproc_per_node "$nproc" "$entry" "$@")
  echo "[$tag] ${cmd[*]}" >&2
  exec "${cmd[@]}"
}
