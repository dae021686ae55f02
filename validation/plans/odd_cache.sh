#!/bin/bash
# hf-transformers under an odd-length static cache, and where its steps are priced long
# (validation/README.md, "hf-transformers under an odd-length static cache"), and the
# torch-hf / torch-fused norms inside graphs ("torch-fused's error net of the lease
# follows the token count"). Two device calls of at most ~8 minutes each, from the
# repository root (tracked files travel, nothing to carry):
#   bash validation/plans/odd_cache.sh steps     # hf-transformers and torch-hf steps, profiles, traces
#   bash validation/plans/odd_cache.sh graphs    # the captured graphs kernel by kernel
# Outputs: $OUT/odd_cache_<part>.tgz, one folder per step, log.txt and the lease's
# provenance (lease.txt, nvidia-smi.txt, lscpu.txt).
cd "$(dirname "$0")/../.." || exit 1
PART=${1:?steps or graphs}
PLAN=odd_cache_$PART; . validation/plans/common.sh
D=decode:1:1024:1,decode:2:1024:1,decode:4:1024:1,decode:8:1024:1,decode:16:1024:1,decode:64:1024:1
M=llama-3.2-1b,llama-2-7b
case $PART in
steps)
step hf 200 python3 $H/bench_stacks.py --out $W/hf --gpu $G --device cuda --budget-s 120 \
    --stack hf-transformers --only steps,profile,trace --graph-only --models $M \
    --step-shapes $D,verify:16:512:4,verify:64:512:4 \
    --profile-shapes decode:2:1024:1,decode:4:1024:1,decode:16:1024:1,verify:64:512:4 \
    --trace-shapes decode:4:1024:1,decode:16:1024:1 --trace-steps 2
step hf-al 150 python3 $H/bench_stacks.py --out $W/hf-al --gpu $G --device cuda --budget-s 80 \
    --stack hf-transformers --only steps,profile --graph-only --models $M \
    --step-shapes decode:2:1027:1,decode:4:1027:1,decode:8:1027:1,decode:16:1027:1,verify:64:512:4,decode:64:1027:1 \
    --profile-shapes decode:4:1027:1,decode:8:1027:1,verify:64:512:4
step ref 120 python3 $H/bench_stacks.py --out $W/ref --gpu $G --device cuda --budget-s 70 \
    --stack torch-hf --only steps,profile --graph-only --models $M \
    --step-shapes $D,decode:4:4000:1,decode:16:4000:1 --profile-shapes decode:4:1024:1
;;
graphs)
step gp 170 python3 $H/bench_stacks.py --out $W/gp --gpu $G --device cuda --budget-s 110 \
    --stack hf-transformers,torch-hf --only graph_profile --models $M \
    --graph-profile-shapes decode:4:1024:1,decode:16:1024:1,verify:64:1021:4,decode:4:1027:1,decode:16:1027:1,verify:64:1024:4
step gp-large 110 python3 $H/bench_stacks.py --out $W/gp-large --gpu $G --device cuda --budget-s 60 \
    --stack hf-transformers --only graph_profile --models llama-3.2-1b \
    --graph-profile-shapes decode:64:1023:1,decode:256:1023:1,decode:64:4095:1
step norms 170 python3 $H/bench_stacks.py --out $W/norms --gpu $G --device cuda --budget-s 110 \
    --stack torch-hf,torch-fused --only graph_profile --models llama-3.2-1b,llama-3.1-8b \
    --graph-profile-shapes decode:1:1024:1,decode:8:1024:1,decode:64:1024:1,verify:16:512:4,prefill:1:0:512
;;
*) echo "part: steps or graphs" >&2; exit 2 ;;
esac
echo "== done $(date -u +%H:%M:%S)" >> "$W/log.txt"; pack
