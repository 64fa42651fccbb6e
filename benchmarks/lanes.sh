# Sourced by the study scripts (benchmarks/al_snr.sh, benchmarks/al_study_pretrain.sh): the study's
# simulated pool at one SNR, and one function run per SNR level in lanes pinned to the cores.

simulate_pool() {  # simulate_pool SNR DATA_DIR LOG: $CLASSES x $PER_CLASS particles (kept when present)
  local snr=$1 data=$2 log=$3
  if [[ ! -f "$data/pool.h5" ]]; then
    rm -rf "$data"
    mkdir -p "$data"
    cryoal simulate "$data/sim" --classes "$CLASSES" --per-class "$PER_CLASS" --snr "$snr" --box 32 \
      --voxel-size 10 --tilt-range 60 --defocus 5 --seed 0 > "$log" 2>&1
    cryoal ingest "$data/sim/particles.star" -o "$data/pool.h5" >> "$log" 2>&1
  fi
}

run_lanes() {  # run_lanes "FUNCTIONS" "VARIABLES" SNR...: `run_snr SNR` for each SNR, in $LANES lanes
  # pinned round robin to the cores (one lane per core: these small models gain nothing from two
  # threads); FUNCTIONS and VARIABLES are what run_snr needs, handed to each lane's shell
  local funcs=$1 vars=$2 lane k pid status=0
  shift 2
  local snrs=("$@") pids=()
  for lane in $(seq 0 $((LANES - 1))); do
    (
      for k in "${!snrs[@]}"; do
        if (( k % LANES == lane )); then
          # shellcheck disable=SC2086  # word splitting of the name lists is intended
          taskset -c "$((lane % $(nproc)))" bash -c "$(declare -f $funcs); $(declare -p $vars); \
            KEEP_STATE=${KEEP_STATE:-}; run_snr ${snrs[$k]}" || exit 1
        fi
      done
    ) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}
