# Sourced by the plans' scripts: the work folder ($PLAN_ROOT/$PLAN, default under
# /root), the GPU's gpusim name, the lease's provenance, a logged and time-limited step,
# and the outputs packed into $OUT after every step (a lease can end mid-call: what ran
# is kept).
set -u
H=validation/harness
PLAN_ROOT=${PLAN_ROOT:-/root}
W=$PLAN_ROOT/$PLAN; mkdir -p "$W"
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo h200 || echo h100-sxm)
echo "$G" > "$W/gpu.txt"
date -u +%Y-%m-%dT%H:%M:%SZ > "$W/lease.txt"
nvidia-smi > "$W/nvidia-smi.txt" 2>&1; lscpu > "$W/lscpu.txt" 2>&1
python3 -c "import torch, transformers; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__)" >> "$W/lease.txt" 2>&1
git rev-parse HEAD >> "$W/lease.txt" 2>/dev/null || true
# step NAME SECONDS COMMAND...: run it with a time limit, log its exit, pack $W
step() {
    local name=$1 limit=$2; shift 2
    echo "== $name $(date -u +%H:%M:%S)" >> "$W/log.txt"
    timeout "$limit" "$@" >> "$W/log.txt" 2>&1
    echo "rc=$? $(date -u +%H:%M:%S)" >> "$W/log.txt"
    pack
}
pack() { tar czf "$OUT/$PLAN.tgz" -C "$PLAN_ROOT" "$PLAN"; }
