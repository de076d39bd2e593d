#!/usr/bin/env bash
# Entrypoint of the GPU image (Dockerfile.triton): make the plans for this GPU, then become tritonserver.
#
#   1. copy the generated tensorrt repository (configs, decoder code) to a writable place;
#   2. python3 -m engines.build fills in every model.plan, from the cache volume when this GPU and TensorRT
#      version built them before, else by building them now (a few minutes, once per GPU model);
#   3. exec tritonserver on that repository, with the arguments given to the container appended.
#
# A first argument that is not an option runs that command instead (docker run ... alpr-triton bash).
# Environment: ALPR_PRECISION (fp16 | fp32 | int8), ALPR_ENGINE_CACHE, ALPR_REPOSITORY, ALPR_SHM_DEFAULT_BYTES,
# ALPR_GPU_CONCURRENT_EXECUTIONS.
set -euo pipefail

if [[ $# -gt 0 && "$1" != -* ]]; then
    exec "$@"
fi

alpr_home="${ALPR_HOME:-/opt/alpr}"
engine_cache="${ALPR_ENGINE_CACHE:-/var/cache/alpr/engines}"
repository="${ALPR_REPOSITORY:-/tmp/alpr/model_repository}"
precision="${ALPR_PRECISION:-fp16}"
# Shared memory each Python-backend instance starts with and grows by: a 1920x1080 BGR frame is 6 MB.
shm_bytes="${ALPR_SHM_DEFAULT_BYTES:-16777216}"
gpu_executions="${ALPR_GPU_CONCURRENT_EXECUTIONS:-2}"

rm -rf "${repository}"
mkdir -p "${repository}" "${engine_cache}"
cp -R "${alpr_home}/repository/." "${repository}/"

cd "${alpr_home}"
python3 -m engines.build \
    --onnx-dir "${alpr_home}/onnx" \
    --repository "${repository}" \
    --cache-dir "${engine_cache}" \
    --calibration-dir "${alpr_home}/engines/calibration" \
    --precision "${precision}"

# The rate limiter lets at most ALPR_GPU_CONCURRENT_EXECUTIONS step instances execute at once per GPU (the
# repository gives each TensorRT instance one unit of gpu_executions); waiting requests keep their priority.
exec tritonserver \
    --model-repository="${repository}" \
    --rate-limit=execution_count \
    --rate-limit-resource="gpu_executions:${gpu_executions}" \
    --backend-config="python,shm-default-byte-size=${shm_bytes}" \
    --backend-config="python,shm-growth-byte-size=${shm_bytes}" \
    "$@"
