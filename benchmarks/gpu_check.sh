#!/usr/bin/env bash
# The GPU checks in one call of a machine lent through the `device` tool (one H200; its image has CUDA PyTorch
# and an older transformers, no datasets, and no network), so that a session lent one spends its minutes on
# running, not on setting up:
#
#   bash benchmarks/gpu_check.sh fetch      # here, beforehand: the wheels the image lacks, into .whl/ (ignored)
#   bash benchmarks/gpu_check.sh            # there: `run` with carry [".whl"]; logs land in $OUT
#   bash benchmarks/gpu_check.sh benchmark  # there: only the named stages (tests, benchmark, pretrain)
#
# Stages: tests (tests/model/test_cuda.py), benchmark (compare_gpt2.py on CUDA; $BENCHMARK_ARGS, default
# "--quick --compile"), pretrain (300 steps of the 124M shape on the image's Python standard library, then 300
# more compiled). Measured on an H200 (2026-12-04): installing the wheels 45 s; tests 30 s; benchmark --quick 130 s,
# with --compile over 200 s; pretrain 75 s uncompiled (corpus 10 s, 300 steps 38 s), the compiled run over 90 s.
# A session's 15 device minutes hold them all only split over two calls, the compiled stages in the second, made
# within the 30 s the machine stays warm (this script then skips the install).
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(transformers==5.24.0 regex==2026.11.19 datasets==4.8.3 fsspec==2026.2.0 dill==0.4.1 multiprocess==0.70.19
        peft==0.21.2 trl==1.16.0 gguf==0.19.0)

if [[ "${1:-}" == fetch ]]; then
    set -e
    grep -qsx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    rm -rf .whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    du -sh .whl
    exit
fi

stages=("$@")
(( ${#stages[@]} )) || stages=(tests benchmark pretrain)
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if ! compgen -G ".whl/*.whl" > /dev/null; then
    echo "no wheels in .whl/: run 'bash benchmarks/gpu_check.sh fetch' here first, then carry .whl"
    exit 2
fi
# The image's packages (its python3 is itself a virtualenv, so a new one would not see them), with the carried
# wheels ahead of them on the path, and the package itself from this checkout.
# Once per machine: a later call on the same machine (stages split over calls) finds them there.
[[ -d /tmp/site/transformers ]] || python3 -m pip install --quiet --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TOKENIZERS_PARALLELISM=false
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import importlib.metadata as m, torch, hf_scratch_gpt
for name in ('torch', 'transformers', 'peft', 'datasets', 'trl', 'accelerate', 'tokenizers', 'flash_attn'):
    try: print(name, m.version(name))
    except m.PackageNotFoundError: print(name, 'not installed')
print('cuda', torch.cuda.is_available(), torch.version.cuda)"
} 2>&1 | tee "$OUT/env.txt"

failed=()
run_stage() {  # name, command...: its output into $OUT/name.txt, its failure recorded, the next stage run anyway
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.txt" || failed+=("$name")
}
for stage in "${stages[@]}"; do
    case $stage in
    tests) run_stage tests python3 -m pytest -q -p no:cacheprovider tests/model/test_cuda.py ;;
    benchmark) run_stage benchmark python3 benchmarks/compare_gpt2.py --device cuda ${BENCHMARK_ARGS:---quick --compile} ;;
    pretrain)
        # GPT-2's shape needs its 50257-token vocabulary, more than the offline default corpus yields: train on
        # the image's Python standard library instead, a text file per module.
        python3 -c "import pathlib, sysconfig
root, out = pathlib.Path(sysconfig.get_paths()['stdlib']), pathlib.Path('/tmp/stdlib-corpus')
out.mkdir(exist_ok=True)
for f in root.rglob('*.py'):
    if 'test' not in f.parts and 'site-packages' not in f.parts:
        (out / (f.relative_to(root).as_posix().replace('/', '.') + '.txt')).write_text(f.read_text(errors='replace'))"
        shape=(--data /tmp/stdlib-corpus --context_length 1024 --emb_dim 768 --n_heads 12 --n_layers 12
               --per_device_train_batch_size 16 --max_steps 300 --logging_steps 50 --eval_steps 150 --save_steps 300
               --dataloader_num_workers 4 --disable_tqdm true --report_to none)
        run_stage pretrain python3 -m hf_scratch_gpt.cli pretrain --output_dir /tmp/gpu-pretrain \
            --tokenizer_vocab_size 50257 "${shape[@]}"
        run_stage pretrain-compiled python3 -m hf_scratch_gpt.cli pretrain --output_dir /tmp/gpu-pretrain-compiled \
            --tokenizer_name_or_path /tmp/gpu-pretrain --torch_compile true "${shape[@]}"
        cp /tmp/gpu-pretrain/README.md "$OUT/pretrain-card.md" 2>/dev/null ;;
    *) echo "unknown stage: $stage (tests, benchmark, pretrain)"; exit 2 ;;
    esac
done
(( ${#failed[@]} == 0 )) || { echo "failed: ${failed[*]}"; exit 1; }
