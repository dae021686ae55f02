#!/bin/bash
# session 27 campaign: serving first-run host speed (issue 21) + a torch-hf/torch-fused same-lease pair (issue 16)
W=/root/w27; mkdir -p $W; cd "$(dirname "$0")/.."
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo h200 || echo h100-sxm); echo $G > $W/gpu.txt
H=validation/harness
log() { echo "== $1 $(date -u +%H:%M:%S)" | tee -a $W/log.txt; }
date -u +%Y-%m-%dT%H:%M:%SZ > $W/lease.txt
nvidia-smi > $W/nvidia-smi.txt 2>&1; lscpu > $W/lscpu.txt 2>&1; uptime >> $W/lscpu.txt
(ps aux --sort=-%cpu | head -15) > $W/ps_start.txt
python3 -c "import torch;print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())" >> $W/lease.txt
log serve3; timeout 200 python3 $H/bench_serve_engine.py --out $W/serve --gpu $G --model llama-3.2-1b --rates 8,8.0,8.00 --duration-s 20 --max-model-len 3072 --kv-blocks 16384 --capture-sizes 1,2,4,8,16,32,64,128,256 --max-wall-s 40 --seed 2 >> $W/log.txt 2>&1; echo "rc=$? $(date -u +%H:%M:%S)" >> $W/log.txt
(ps aux --sort=-%cpu | head -15) > $W/ps_mid.txt
log serve1; timeout 120 python3 $H/bench_serve_engine.py --out $W/serve --gpu $G --model llama-3.2-1b --rates 8.000 --duration-s 20 --max-model-len 3072 --kv-blocks 16384 --capture-sizes 1,2,4,8,16,32,64,128,256 --max-wall-s 40 --seed 2 >> $W/log.txt 2>&1; echo "rc=$? $(date -u +%H:%M:%S)" >> $W/log.txt
log serve-warm; timeout 150 python3 $H/bench_serve_engine.py --out $W/serve --gpu $G --model llama-3.2-1b --rates 8.0000 --warmup-s 20 --duration-s 20 --max-model-len 3072 --kv-blocks 16384 --capture-sizes 1,2,4,8,16,32,64,128,256 --max-wall-s 40 --seed 2 >> $W/log.txt 2>&1; echo "rc=$? $(date -u +%H:%M:%S)" >> $W/log.txt
for v in "default1:" "gcfreeze:--gc-freeze" "pin5:--pin 5" "eager:EAGER"; do
  l=${v%%:*}; o=${v#*:}; log probe-$l
  if [ "$o" = EAGER ]; then CUDA_MODULE_LOADING=EAGER timeout 60 python3 $H/probe_host_speed.py --out $W/probe --label $l --seconds 25 >> $W/log.txt 2>&1
  else timeout 60 python3 $H/probe_host_speed.py --out $W/probe --label $l --seconds 25 $o >> $W/log.txt 2>&1; fi
  echo "rc=$? $(date -u +%H:%M:%S)" >> $W/log.txt
done
log hf; timeout 100 python3 $H/bench_stacks.py --out $W/graph-torch-hf --gpu $G --device cuda --budget-s 80 --stack torch-hf --only steps --graph-only --models llama-3.2-1b,llama-3.1-8b,llama-2-7b,qwen2.5-7b,llama-3.2-3b >> $W/log.txt 2>&1; echo "rc=$? $(date -u +%H:%M:%S)" >> $W/log.txt
log fused; timeout 100 python3 $H/bench_stacks.py --out $W/graph-torch-fused --gpu $G --device cuda --budget-s 80 --stack torch-fused --only steps --graph-only --models llama-3.2-1b,llama-3.1-8b,llama-2-7b,qwen2.5-7b,llama-3.2-3b >> $W/log.txt 2>&1; echo "rc=$? $(date -u +%H:%M:%S)" >> $W/log.txt
log done
tar czf $OUT/w27.tgz -C /root w27
