# Sourced by the launch scripts. `run_group CMD...` runs CMD in its own process group and forwards
# SIGTERM/SIGINT to that whole group, then waits until every process of it has exited.
# Why: the single-host `deepspeed` runner does not forward signals: SIGTERM to it alone leaves its
# launcher and the training workers running as orphans. The workers of `gapt-ds train` react to the
# first SIGTERM/SIGINT by finishing the step, saving a checkpoint and exiting 143/130; they ignore repeats.
run_group() {
  set -m                                   # job control: the background job leads its own process group
  "$@" &
  local pid=$! status=0
  trap "kill -TERM -- -$pid 2>/dev/null" TERM
  trap "kill -INT -- -$pid 2>/dev/null" INT
  while :; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break    # wait returned early: a signal was forwarded; keep waiting
  done
  while kill -0 -- "-$pid" 2>/dev/null; do sleep 1; done   # workers still saving after the runner exited
  trap - TERM INT
  set +m
  return "$status"
}
