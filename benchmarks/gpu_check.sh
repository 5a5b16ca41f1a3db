#!/usr/bin/env bash
# The GPU check (benchmarks/GPU.md): every CUDA path, timed and checked, into one JSON.
#
#   bash benchmarks/gpu_check.sh prepare   # on a machine with PyPI: the packages a bare GPU machine
#                                          # lacks, packed into parts that fit the device calls
#   bash benchmarks/gpu_check.sh           # on the GPU machine: set Python up, run every stage
#   DEVICE=cpu bash benchmarks/gpu_check.sh   # dry run here: every stage at tiny sizes, on the CPU
#
# Environment: DEVICE (cuda | cpu), PYTHON (the interpreter; default: the repo's .venv, else
# python3), TOTAL_S (seconds for everything, setup included; 560 on cuda), STAGES (a subset,
# comma-separated), RESULT (the JSON; default benchmarks/results/gpu_check.json on cuda), WORK
# (scratch folder). If OUT names a folder, the JSON and the logs are copied there too.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
PAYLOAD="$REPO/.gpu_payload"
# what the GPU image lacks (its own torch, numpy, scipy, h5py, accelerate, tensorboard, pytest ... stay)
PACKAGES=(warp-lang mujoco mujoco-core mujoco-warp gymnasium farama-notifications hydra-core omegaconf
  antlr4-python3-runtime diffusers importlib-metadata lazy-importer pyopengl)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

say() { echo "gpu_check.sh: $*" >&2; }

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"
  else echo python3; fi
}

ignore_locally() {  # keep a folder out of git (and so out of what a device call sends, unless carried)
  local exclude
  exclude=$(git -C "$REPO" rev-parse --git-path info/exclude 2>/dev/null) || return 0
  mkdir -p "$(dirname "$exclude")"
  grep -qx "$1" "$exclude" 2>/dev/null || echo "$1" >>"$exclude"
}

tree_mib() {  # what every device call sends anyway: tracked and untracked-not-ignored files
  git -C "$REPO" ls-files -co --exclude-standard -z | (cd "$REPO" && xargs -0 stat -c %s 2>/dev/null) |
    awk '{s += $1} END {printf "%d", s / 1048576 + 1}'
}

prepare() {
  local py stage pins=() v n part_mib tree
  py=$(pick_python)
  stage=$(mktemp -d /tmp/dreamgym_payload.XXXXXX)
  ignore_locally '/.gpu_payload/'
  ignore_locally '/.gl/'
  rm -rf "$PAYLOAD" && mkdir -p "$PAYLOAD" "$stage/wheels" "$stage/site"
  for n in "${PACKAGES[@]}"; do  # the versions this machine (and so CI) runs, where it has them
    v=$("$py" -c "import importlib.metadata as m; print(m.version('$n'))" 2>/dev/null) && pins+=("$n==$v") || pins+=("$n")
  done
  say "downloading ${pins[*]}"
  for n in "${pins[@]}"; do  # a package published only as source (antlr4's runtime) is pure Python: build its wheel here
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
      -d "$stage/wheels" "$n" 2>/dev/null || "$py" -m pip wheel -q --no-deps -w "$stage/wheels" "$n" || return 1
  done
  "$py" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" --target "$stage/site" "$stage"/wheels/*.whl || return 1
  # tests, examples and caches are not needed to run
  rm -rf "$stage/site/warp/tests" "$stage/site/warp/examples" "$stage/site/mujoco/testdata" "$stage/site/bin"
  find "$stage/site" -depth -name __pycache__ -exec rm -rf {} +
  find "$stage/site" -name '*_test.py' -delete
  say "packing $(du -sh "$stage/site" | cut -f1) (xz -${XZ_LEVEL:-9}: minutes; about 104 MiB at -9)"
  tar -C "$stage/site" -cf - . | xz -T0 "-${XZ_LEVEL:-9}" >"$stage/site.tar.xz" || return 1
  tree=$(tree_mib)
  part_mib=$((60 - tree - 4))  # a device call sends at most 64 MiB: the tree, one part, the EGL packages
  [ "$part_mib" -ge 8 ] || { say "the working tree is ${tree} MiB: no room left for the packages in a device call"; return 1; }
  split -b "${part_mib}M" -d -a 2 "$stage/site.tar.xz" "$PAYLOAD/site.tar.xz.part"
  {
    echo "sha256 $(sha256sum "$stage/site.tar.xz" | cut -d' ' -f1)"
    echo "packages ${pins[*]}"
    echo "python 3.12 manylinux x86_64"
  } >"$PAYLOAD/MANIFEST"
  (  # C MuJoCo's EGL renderer needs the GL vendor-neutral loaders, which a bare GPU image may lack
    mkdir -p "$REPO/.gl" /tmp/amd64/partial && cd "$REPO/.gl" &&
      apt-get -q -oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64 update >/dev/null &&
      apt-get -q -oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64 download \
        libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null
  ) || say "could not fetch the EGL packages (.gl); the backend-agreement test may fail to render"
  rm -rf "$stage"
  write_plan "$tree"
  say "payload ready: $(ls "$PAYLOAD" | tr '\n' ' '); see $PAYLOAD/PLAN.md"
}

write_plan() {
  local parts last p i=0
  mapfile -t parts < <(cd "$PAYLOAD" && ls site.tar.xz.part*)
  last=${parts[${#parts[@]}-1]}
  {
    echo "# Running the GPU check on a machine without network (working tree $1 MiB, ${#parts[@]} parts)"
    echo
    echo "Each step sends the working tree plus the files it names (at most 64 MiB in all) and runs one"
    echo "command in the repository root there. Run the steps back to back: the parts staged in /tmp are"
    echo "lost if the machine is replaced between two steps. The last step runs the check (under 10 minutes)."
    echo
    for p in "${parts[@]}"; do
      [ "$p" = "$last" ] && continue
      i=$((i + 1))
      echo "$i. files: .gpu_payload/$p"
      echo "   command: mkdir -p /tmp/dg_payload && cp .gpu_payload/$p /tmp/dg_payload/ && ls -l /tmp/dg_payload"
    done
    echo "$((i + 1)). files: .gpu_payload/$last, .gpu_payload/MANIFEST, .gl"
    echo "   command: bash benchmarks/gpu_check.sh   (allow 600 s; with OUT set to a folder, the JSON and logs land there)"
    echo
    echo "Then copy the returned gpu_check.json into benchmarks/results/ and commit it."
  } >"$PAYLOAD/PLAN.md"
}

unpack_payload() {  # the parts carried in this call and staged by earlier ones -> $WORK/site
  local parts want got
  mapfile -t parts < <(ls "$PAYLOAD"/site.tar.xz.part* /tmp/dg_payload/site.tar.xz.part* 2>/dev/null |
    awk -F/ '!seen[$NF]++' | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2)
  [ "${#parts[@]}" -gt 0 ] || return 1
  cat "${parts[@]}" >"$WORK/site.tar.xz"
  want=$(awk '/^sha256/ {print $2}' "$PAYLOAD/MANIFEST" 2>/dev/null)
  got=$(sha256sum "$WORK/site.tar.xz" | cut -d' ' -f1)
  if [ -n "$want" ] && [ "$want" != "$got" ]; then
    say "the packages' parts do not add up (${#parts[@]} found: ${parts[*]}); expected sha256 $want, got $got"
    return 2
  fi
  rm -rf "$WORK/site" && mkdir -p "$WORK/site"
  "$PY" -c "import sys, tarfile; t = tarfile.open(sys.argv[1], 'r:xz'); t.extractall(sys.argv[2], **({'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}))" \
    "$WORK/site.tar.xz" "$WORK/site" || return 2
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
}

pip_install() {  # a machine that reaches PyPI: a venv with a CUDA build of torch and the project
  "$PY" -m venv "$WORK/venv" || return 1
  PY="$WORK/venv/bin/python"
  if [ "$DEVICE" != cpu ]; then  # PyPI's Linux x86-64 torch wheels are CUDA builds
    "$PY" -m pip install -q torch || return 1
  fi
  "$PY" -m pip install -q -e "$REPO[test]"
}

link_package() {  # dreamgym.<layer> -> the repo's folders, as the editable install maps them
  "$PY" -c "import dreamgym.envs" 2>/dev/null && return 0
  rm -rf "$WORK/py" && mkdir -p "$WORK/py/dreamgym"
  for d in envs rollouts worldmodel policies avatars benchmarks configs app; do ln -s "$REPO/$d" "$WORK/py/dreamgym/$d"; done
  export PYTHONPATH="$WORK/py${PYTHONPATH:+:$PYTHONPATH}"
}

check() {
  local t0=$SECONDS mode budget rc
  DEVICE=${DEVICE:-cuda}
  WORK=${WORK:-/tmp/dreamgym_gpu_check}
  TOTAL_S=${TOTAL_S:-$([ "$DEVICE" = cpu ] && echo 2400 || echo 560)}
  mkdir -p "$WORK"
  PY=$(pick_python)
  if ls .gl/*.deb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ "$DEVICE" != cpu ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  for f in /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json /usr/share/glvnd/egl_vendor.d/10_nvidia.json; do
    [ -f "$f" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$f" && break
  done
  export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl PYTHONUNBUFFERED=1
  unpack_payload
  case $? in
    0) mode=payload ;;
    2) mode=payload_broken ;;
    *) if "$PY" -c "import torch, warp, mujoco_warp, gymnasium, hydra, diffusers" 2>/dev/null; then mode=installed
       else say "no packages carried and some missing: installing from PyPI"; pip_install && mode=pip || mode=pip_failed; fi ;;
  esac
  link_package
  say "python $PY ($mode), setup took $((SECONDS - t0)) s"
  "$PY" - "$WORK/setup.json" "$mode" "$((SECONDS - t0))" <<'EOF'
import importlib, json, sys
mods = {}
for name in ("torch", "warp", "mujoco", "mujoco_warp", "gymnasium", "hydra", "diffusers", "accelerate", "dreamgym.envs.vec_env"):
    try:
        m = importlib.import_module(name)
        mods[name] = getattr(m, "__version__", "ok")
    except Exception as e:  # recorded, not fatal: the stages that need it fail with their own error
        mods[name] = f"missing: {type(e).__name__}: {e}"
json.dump({"python": sys.executable, "mode": sys.argv[2], "setup_s": int(sys.argv[3]), "imports": mods}, open(sys.argv[1], "w"), indent=1)
print("\n".join(f"  {k}: {v}" for k, v in mods.items()), file=sys.stderr)
EOF
  budget=$((TOTAL_S - (SECONDS - t0) - 15))
  timeout -k 10 $((budget + 30)) "$PY" -m dreamgym.benchmarks.gpu_check --device "$DEVICE" --budget-s "$budget" --work "$WORK" \
    ${STAGES:+--stages "$STAGES"} ${RESULT:+--out "$RESULT"}
  rc=$?
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then  # the device tool brings back what lands in $OUT
    cp "${RESULT:-$REPO/benchmarks/results/gpu_check.json}" "$WORK"/gpu_check_dry_run.json "$OUT"/ 2>/dev/null
    tar -czf "$OUT/gpu_check_logs.tgz" -C "$WORK" --exclude=site --exclude=py --exclude=venv --exclude=data --exclude='*.xz' \
      --exclude='train_*' --exclude='eval_*' --exclude='wm_*' . 2>/dev/null
  fi
  say "done in $((SECONDS - t0)) s (exit $rc)"
  return $rc
}

case "${1:-}" in
  prepare) prepare ;;
  "") check ;;
  *) say "unknown command '$1'; use: prepare, or nothing to run the check"; exit 2 ;;
esac
