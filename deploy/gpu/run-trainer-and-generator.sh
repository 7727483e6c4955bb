#!/usr/bin/env bash
# Run the LoRA trainer and the diffusion generator (Triton) on one GPU machine, with real weights.
#
#   deploy/gpu/run-trainer-and-generator.sh /models/sd15-inpaint
#
# MODEL_DIR is a diffusers save_pretrained *inpainting* folder (model_index.json, unet/, vae/,
# text_encoder/, tokenizer/, scheduler/), e.g. an SD 1.5 inpainting checkpoint saved with
# StableDiffusionInpaintPipeline.save_pretrained. Nothing is downloaded: loading is local_files_only.
#
# It needs a running Kafka and the object store the rest of the stack uses:
#   SKUFORGE_KAFKA_BOOTSTRAP   (required)  e.g. kafka:9092
#   SKUFORGE_STORE_URI         (required)  e.g. s3://skuforge (plus SKUFORGE_S3_* for the endpoint)
# Optional knobs, with the defaults this script uses when they are unset:
#   SKUFORGE_DIFFUSION_DTYPE=float16      float16 | bfloat16 (checked after loading: a dtype diffusers
#                                         ignored would stop the server, not run it in float32)
#   SKUFORGE_DIFFUSION_OFFLOAD=off        model | sequential when the pipeline does not fit the GPU
#   SKUFORGE_DIFFUSION_ATTENTION_SLICING=off   auto | max to cut attention memory
#   SKUFORGE_DIFFUSION_MAX_BATCH=8        rows per pipeline call (Triton batches up to the same)
#   SKUFORGE_LORA_*                       the training recipe (see README's settings table)
#   SKUFORGE_GENERATION_SERVER_ADDRESS=0.0.0.0   Triton's ports (8000-8002) and its /metrics (9109)
#                                         listen on every interface: generator stages on other hosts
#                                         call it (the setting's own default, 127.0.0.1, is this host)
#   SKUFORGE_METRICS_HOST=0.0.0.0         the trainer's /metrics (9108), for Prometheus to scrape
#
# Both processes share the GPU: the trainer trains one job at a time (one trainer per GPU), the
# generator serves while it trains. Ctrl-C / SIGTERM stops both (the trainer checkpoints first).
# The tests never run this script; docs/diffusion.md says what was and was not measured.
set -euo pipefail

MODEL_DIR="${1:?usage: $0 MODEL_DIR (a diffusers inpainting save_pretrained folder)}"
: "${SKUFORGE_KAFKA_BOOTSTRAP:?set SKUFORGE_KAFKA_BOOTSTRAP to the Kafka bootstrap servers}"
: "${SKUFORGE_STORE_URI:?set SKUFORGE_STORE_URI to the object store the stack uses}"
[[ -f "$MODEL_DIR/model_index.json" ]] || { echo "$MODEL_DIR has no model_index.json" >&2; exit 2; }

PYTHON="${PYTHON:-python}"
"$PYTHON" - <<'PY' || { echo "no CUDA device visible to torch" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
PY

export SKUFORGE_DIFFUSION_MODEL="$MODEL_DIR"
export SKUFORGE_DIFFUSION_BASE_MODEL="${SKUFORGE_DIFFUSION_BASE_MODEL:-$(basename "$MODEL_DIR")}"
export SKUFORGE_DIFFUSION_DEVICE=cuda
export SKUFORGE_DIFFUSION_DTYPE="${SKUFORGE_DIFFUSION_DTYPE:-float16}"
export SKUFORGE_DIFFUSION_OFFLOAD="${SKUFORGE_DIFFUSION_OFFLOAD:-off}"
export SKUFORGE_DIFFUSION_ATTENTION_SLICING="${SKUFORGE_DIFFUSION_ATTENTION_SLICING:-off}"
export SKUFORGE_DIFFUSION_MAX_BATCH="${SKUFORGE_DIFFUSION_MAX_BATCH:-8}"
export SKUFORGE_GENERATION_BACKEND=diffusion
export SKUFORGE_GENERATION_MAX_BATCH_SIZE="${SKUFORGE_GENERATION_MAX_BATCH_SIZE:-8}"
export SKUFORGE_GENERATION_BATCH_DELAY_US="${SKUFORGE_GENERATION_BATCH_DELAY_US:-20000}"
export SKUFORGE_GENERATION_SERVER_ADDRESS="${SKUFORGE_GENERATION_SERVER_ADDRESS:-0.0.0.0}"
export SKUFORGE_METRICS_HOST="${SKUFORGE_METRICS_HOST:-0.0.0.0}"
export SKUFORGE_LORA_DEVICE=cuda
export SKUFORGE_LORA_RESOLUTION="${SKUFORGE_LORA_RESOLUTION:-512}"

"$PYTHON" -m skuforge_cli topics create
"$PYTHON" -m skuforge_cli serve generator --backend diffusion &
generator=$!
"$PYTHON" -m skuforge_cli run lora-trainer &
trainer=$!
trap 'kill -TERM "$trainer" "$generator" 2>/dev/null; wait' INT TERM
# Under `set -e` a failing `wait -n` ended the script here, leaving the other process (Triton, on the
# GPU and its ports) running unattended.
status=0
wait -n "$trainer" "$generator" || status=$?
echo "a process exited ($status); stopping the other" >&2
kill -TERM "$trainer" "$generator" 2>/dev/null || true
wait || true
exit "$status"
