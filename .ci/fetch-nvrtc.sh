#!/usr/bin/env bash
# fetch-nvrtc.sh PACKAGE==VERSION DEST: NVIDIA's NVRTC wheel from PyPI, its libnvrtc libraries (the
# plain ones, not the .alt builds) into DEST/lib. Used by .ci/nvrtc-majors.sh and
# .ci/stage-device.sh (STAGE_NVRTC12=1).
set -euo pipefail
pkg=$1 dest=$2
[ -d "$dest/lib" ] && exit 0
python3 -m pip download --quiet --no-deps --dest "$dest" "$pkg"
python3 - "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
dest = sys.argv[1]
os.makedirs(f"{dest}/lib", exist_ok=True)
with zipfile.ZipFile(glob.glob(f"{dest}/*.whl")[0]) as z:
    for name in z.namelist():
        if "/lib/libnvrtc" in name and ".alt." not in name:
            with z.open(name) as src, open(f"{dest}/lib/{os.path.basename(name)}", "wb") as out:
                shutil.copyfileobj(src, out)
PY
