"""Writes index.html, the page template that `dvc plots show` fills (plots.html_template in
.dvc/config), with Vega, Vega-Lite and Vega-Embed inlined so that the page needs no
network, and LICENSES.txt, the licences of the code in those three bundles.

    npm install --prefix /tmp/vega --no-audit --no-fund vega@5 vega-lite@5 vega-embed@6
    python .dvc/html/build.py /tmp/vega/node_modules

The major versions are the ones dvc-render's own page loads from a CDN.
"""

import json
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLES = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}
# Dependencies that only the packages' command-line tools or Node.js builds use: not in the bundles.
NOT_BUNDLED = {"node-fetch", "yargs", "commander", "iconv-lite", "rw"}
# The vega monorepo's LICENSE; some of its packages are published without a copy of it.
VEGA_MONOREPO_LICENSE = "vega-view"

PAGE = """<!DOCTYPE html>
<!-- The page `dvc plots show` writes: dvc-render's own, but with
     {versions}
     inlined instead of loaded from a CDN, so that it needs no network. Written by build.py
     from npm's packages; their licences, and those of the code they bundle, are in
     LICENSES.txt next to this file. -->
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def manifest(modules: Path, name: str) -> dict:
    return json.loads((modules / name / "package.json").read_text())


def bundled_packages(modules: Path) -> list[str]:
    """The three packages and everything their `dependencies` pull in, but NOT_BUNDLED."""
    found: set[str] = set()
    todo = list(BUNDLES)
    while todo:
        name = todo.pop()
        if name in found or name in NOT_BUNDLED or name.startswith("@types/"):
            continue
        found.add(name)
        todo += manifest(modules, name).get("dependencies", {})
    return sorted(found)


def licence_text(modules: Path, name: str) -> str:
    files = sorted(p for p in (modules / name).iterdir() if p.name.lower().startswith(("license", "licence")))
    if files:
        return files[0].read_text(encoding="utf-8").strip()
    if manifest(modules, name).get("repository") == "vega/vega":
        return licence_text(modules, VEGA_MONOREPO_LICENSE)  # published from the vega monorepo
    raise SystemExit(f"{name}: no licence file")


def main(modules: Path) -> None:
    scripts, versions = [], []
    for name, file in BUNDLES.items():
        code = (modules / name / file).read_text(encoding="utf-8").strip()
        version = manifest(modules, name)["version"]
        # The page must not end the script early, and dvc-render replaces {placeholders} everywhere.
        if "</script" in code.lower() or "<!--" in code:
            raise SystemExit(f"{name}: its code would end the <script> early")
        if any(f"{{{p}}}" in code for p in ("scripts", "plot_divs", "refresh_tag")):
            raise SystemExit(f"{name}: its code holds a placeholder that dvc-render would replace")
        scripts.append(f"    <script>/* {name} {version} */\n{code}\n    </script>")
        versions.append(f"{name} {version}")
    page = PAGE.format(versions=", ".join(versions), scripts="\n".join(scripts))
    (HERE / "index.html").write_text(page, encoding="utf-8")

    by_text: dict[str, list[str]] = {}
    for name in bundled_packages(modules):
        package = manifest(modules, name)
        by_text.setdefault(licence_text(modules, name), []).append(f"{name} {package['version']} ({package['license']})")
    sections = [f"{textwrap.fill(', '.join(names) + ':', 88)}\n\n{text}" for text, names in by_text.items()]
    header = f"index.html inlines {', '.join(versions)} (from npm): here are the licences"
    header = textwrap.fill(f"{header} of these packages and of the code their builds include.", 88)
    (HERE / "LICENSES.txt").write_text("\n\n\n".join([header, *sections]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
