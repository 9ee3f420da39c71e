"""Rebuild ``offline.html``: the HTML template for ``dvc plots show/diff`` that needs no network.

    python .dvc/plots/build_offline_template.py      (make plots-template)

DVC's default page loads vega, vega-lite and vega-embed from a CDN. This script installs
the pinned releases from the npm registry into a temporary directory (``npm install
--ignore-scripts``), inlines their minified UMD builds into the template (the trailing
``sourceMappingURL`` comment dropped: the map is not shipped), and writes

- ``offline.html``: the template (``.dvc/config``: ``plots.html_template = plots/offline.html``);
  it has DVC's ``{plot_divs}`` placeholder and deliberately no ``{scripts}`` placeholder,
  which is where DVC would put its CDN ``<script src>`` tags;
- ``VENDOR.json``: versions, the npm integrity of each tarball and sha256 of each file;
- ``THIRD_PARTY_LICENSES.txt``: the licence of every package in the installed tree (the
  bundles contain code from a subset of them). All are permissive (BSD-2/3, ISC, MIT, 0BSD,
  Unlicense); vega's own package ships no LICENSE file, so its BSD-3-Clause notice is written
  out from its ``package.json`` licence field and copyright holder.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = {  # package -> (version, minified UMD build inside the package)
    "vega": ("5.33.1", "build/vega.min.js"),
    "vega-lite": ("5.23.0", "build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "build/vega-embed.min.js"),
}
HOLDER = "University of Washington Interactive Data Lab"
BSD3 = """Copyright (c) 2015, {holder}
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its contributors
   may be used to endorse or promote products derived from this software
   without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>trustlab: DVC plots</title>
<!-- trustlab's offline template for `dvc plots show/diff` (.dvc/plots/build_offline_template.py).
     vega, vega-lite and vega-embed are inlined below, so the page needs no network; each block
     names its package, version and licence (texts: .dvc/plots/THIRD_PARTY_LICENSES.txt). -->
{libraries}
<style>
  body { font-family: system-ui, "DejaVu Sans", sans-serif; margin: 16px; }
  table { border-spacing: 15px; }
  .vega-embed { margin: 8px 0 24px; }
</style>
</head>
<body>
<h1>trustlab: DVC plots</h1>
{plot_divs}
</body>
</html>
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inline_code(raw: str) -> str:
    """The minified build without its trailing source-map comment."""
    lines = raw.rstrip("\n").split("\n")
    if lines and lines[-1].startswith("//# sourceMappingURL="):
        lines = lines[:-1]
    code = "\n".join(lines)
    for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in code:
            raise ValueError(f"the minified build contains {bad!r}; it cannot be inlined as is")
    return code


def licence_text(pkg_dir: Path, meta: dict) -> str:
    files = sorted(p for p in pkg_dir.iterdir() if p.name.lower().startswith(("license", "licence", "copying")))
    if files:
        return files[0].read_text(encoding="utf-8", errors="replace").strip()
    if meta.get("license") == "BSD-3-Clause" and meta.get("name", "").startswith("vega"):
        return BSD3.format(holder=HOLDER).strip()
    return f"(no licence file in the package; package.json says: {meta.get('license')})"


def build(out_dir: Path = HERE) -> dict:
    with tempfile.TemporaryDirectory(prefix="vega-vendor-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "package.json").write_text('{"name": "vendor", "version": "0.0.0", "private": true}\n')
        specs = [f"{name}@{ver}" for name, (ver, _) in PACKAGES.items()]
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error", *specs],
            cwd=tmp_path,
            check=True,
        )
        lock = json.loads((tmp_path / "package-lock.json").read_text())["packages"]
        modules = tmp_path / "node_modules"
        vendor, blocks = {}, []
        for name, (ver, build_file) in PACKAGES.items():
            meta = json.loads((modules / name / "package.json").read_text())
            if meta["version"] != ver:
                raise RuntimeError(f"npm installed {name} {meta['version']}, expected {ver}")
            raw = (modules / name / build_file).read_bytes()
            code = inline_code(raw.decode("utf-8"))
            vendor[name] = {
                "version": ver,
                "license": meta.get("license"),
                "file": build_file,
                "npm_integrity": lock[f"node_modules/{name}"].get("integrity"),
                "file_sha256": sha256(raw),
                "inlined_sha256": sha256(code.encode("utf-8")),
            }
            header = (
                f"/*! {name} {ver} | {meta.get('license')} | Copyright (c) {HOLDER} | "
                f"npm {name}@{ver}/{build_file}, sha256 {sha256(raw)} | licence: THIRD_PARTY_LICENSES.txt */"
            )
            blocks.append(f'<script data-vendored="{name}@{ver}">\n{header}\n{code}\n</script>')
        notices = []
        for key in sorted(k for k in lock if k.startswith("node_modules/")):
            pkg_dir = tmp_path / key
            meta = json.loads((pkg_dir / "package.json").read_text())
            notices.append(
                f"{'=' * 78}\n{meta['name']} {meta['version']} ({meta.get('license')})\n{'=' * 78}\n"
                f"{licence_text(pkg_dir, meta)}\n"
            )
    # Plain str.replace, never str.format: the inlined code is full of braces (DVC fills its
    # own placeholders the same way).
    page = PAGE.replace("{libraries}", "\n".join(blocks))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "offline.html").write_text(page, encoding="utf-8")
    (out_dir / "VENDOR.json").write_text(json.dumps(vendor, indent=2) + "\n", encoding="utf-8")
    (out_dir / "THIRD_PARTY_LICENSES.txt").write_text(
        "Licences of the npm packages whose code is inlined in offline.html (vega, vega-lite, vega-embed)\n"
        "and of every package in their installed dependency tree (the bundles contain a subset).\n\n"
        + "\n".join(notices),
        encoding="utf-8",
    )
    return vendor


if __name__ == "__main__":
    for name, info in build().items():
        print(f"{name} {info['version']}: {info['file']} sha256 {info['file_sha256'][:16]}")
    print(f"wrote {HERE / 'offline.html'}")
