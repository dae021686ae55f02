#!/bin/bash
# The serving runs of issue 21 under the warm protocol: a 20 s warm-up load before the
# measured ones, full_and_piecewise graphs, the first rate measured again last in the
# same process (validation/README.md; the serving reports' GPU commands). One device
# call per model, about 7 and 5 minutes, from the repository root:
#   bash validation/plans/serving_warm.sh llama-3.2-1b
#   bash validation/plans/serving_warm.sh llama-3.1-8b
# Outputs: $OUT/serving_warm_<model>.tgz.
cd "$(dirname "$0")/../.." || exit 1
MODEL=${1:?llama-3.2-1b or llama-3.1-8b}
PLAN=serving_warm_$MODEL; . validation/plans/common.sh
C="--max-model-len 3072 --capture-sizes 1,2,4,8,16,32,64,128,256 --cudagraph-mode full_and_piecewise --warmup-s 20 --duration-s 40 --max-wall-s 60"
case $MODEL in
llama-3.2-1b) step serve 540 python3 $H/bench_serve_engine.py --out $W/serve --gpu $G \
    --model $MODEL --rates 8,3,14,22,34,8.0 --kv-blocks 16384 --seed 2 $C ;;
llama-3.1-8b) step serve 420 python3 $H/bench_serve_engine.py --out $W/serve --gpu $G \
    --model $MODEL --rates 4,2,7,4.0 --kv-blocks 8192 --seed 4 $C ;;
*) echo "model: llama-3.2-1b or llama-3.1-8b" >&2; exit 2 ;;
esac
echo "== done $(date -u +%H:%M:%S)" >> "$W/log.txt"; pack
