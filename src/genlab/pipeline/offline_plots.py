"""`dvc plots show` / `dvc plots diff` pages that draw offline.

DVC's page loads Vega, Vega-Lite and Vega-Embed from a CDN, so without internet its curves are blank. This
writes a page template with the three libraries inlined, in the versions DVC's renderer asks for (packed
from the npm registry by npm), and points this checkout's DVC at it (.dvc/config.local, not committed):

    python -m genlab.pipeline.offline_plots        # make setup runs it; needs npm, once
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from genlab.core import atomic
from genlab.core.errors import GenlabError, exit_on_error

TEMPLATE = "tmp/offline-plots.html"  # relative to .dvc/, as DVC reads plots.html_template; DVC ignores tmp/


def packages() -> list[tuple[str, str]]:
    """(name, version) of each script DVC's Vega renderer loads, in its order."""
    from dvc_render.vega import VegaRenderer

    return re.findall(r"/npm/([a-z-]+)@([0-9.]+)", VegaRenderer.SCRIPTS)


def page(scripts: dict[str, str]) -> str:
    """DVC's page with `scripts` (package -> minified source) inlined where its CDN tags would go."""
    from dvc_render.html import PAGE_HTML

    inlined = []
    for name, source in scripts.items():
        if "</script" in source.lower():  # would end the inline element early
            raise GenlabError(f"{name}'s build holds '</script' and cannot be inlined")
        inlined.append(f"<script>/* {name} */\n{source}\n</script>")
    return PAGE_HTML.replace("{scripts}", "\n".join(inlined))


def build(dvc_dir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise GenlabError("npm is not installed (Debian: apt install npm): `dvc plots show` pages stay online-only")
    wanted = packages()
    with tempfile.TemporaryDirectory(prefix="genlab-vega-") as tmp:
        specs = [f"{name}@{version}" for name, version in wanted]
        proc = subprocess.run([npm, "pack", "--silent", *specs, "--pack-destination", tmp], capture_output=True,
                              text=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise GenlabError(f"npm pack {' '.join(specs)} failed: {proc.stderr.strip()[-500:]}")
        scripts = {}
        for name, version in wanted:
            with tarfile.open(Path(tmp) / f"{name}-{version}.tgz") as tar:
                scripts[f"{name}@{version}"] = tar.extractfile(f"package/build/{name}.min.js").read().decode()
    target = dvc_dir / TEMPLATE
    atomic.write_text(target, page(scripts))
    subprocess.run(["dvc", "config", "--local", "plots.html_template", TEMPLATE], cwd=dvc_dir.parent, check=True)
    return target


def main() -> None:
    target = build(Path(".dvc"))
    print(f"dvc plots pages now draw offline: {target} ({target.stat().st_size / 2**20:.1f} MiB, Vega inlined)")


if __name__ == "__main__":
    exit_on_error(main)
