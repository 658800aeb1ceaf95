"""Write the HTML template that makes `dvc plots show` / `dvc plots diff` pages open offline.

DVC's page loads vega, vega-lite and vega-embed from a CDN (dvc-render's
``VegaRenderer.SCRIPTS``). A custom template (``plots.html_template`` in ``.dvc/config``) without
the ``{scripts}`` placeholder gets no such tags; this one inlines the same three libraries, at
the versions dvc-render asks for, taken from their npm packages:

    python tools/offline_plots_template.py            # npm pack, then writes the template
    python tools/offline_plots_template.py --from DIR # DIR holds the three npm .tgz files

Rerun it after upgrading DVC; ``tests/test_report.py`` fails while the versions differ.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / ".dvc" / "plots_offline.html"
# npm package -> the minified browser build inside its tarball
BUILDS = {"vega": "package/build/vega.min.js", "vega-lite": "package/build/vega-lite.min.js",
          "vega-embed": "package/build/vega-embed.min.js"}
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}: inlined by tools/offline_plots_template.py so this page needs no network -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
        img {{
            max-width: 100%;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def wanted_versions() -> dict[str, str]:
    """The versions dvc-render's page loads from the CDN: {"vega": "5.20.2", ...}."""
    from dvc_render.vega import VegaRenderer

    found = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([0-9][^\"/]*)", VegaRenderer.SCRIPTS))
    if set(found) != set(BUILDS):
        raise SystemExit(f"unexpected scripts in dvc-render: {VegaRenderer.SCRIPTS}")
    return found


def build(tarballs: Path) -> str:
    versions = wanted_versions()
    scripts = []
    for name, member in BUILDS.items():
        tgz = tarballs / f"{name}-{versions[name]}.tgz"
        with tarfile.open(tgz) as tar:
            source = tar.extractfile(member).read().decode("utf-8")
        # a literal "</script" inside the code would end the inline element early; the
        # source-map comment would point developer tools at a file that is not there
        source = source.replace("</script", "<\\/script")
        source = re.sub(r"^//# sourceMappingURL=.*$", "", source, flags=re.M)
        scripts.append(f"    <script>/* {name}@{versions[name]} (BSD-3-Clause) */\n{source}\n"
                       f"    </script>")
    names = ", ".join(f"{n}@{v}" for n, v in versions.items())
    return PAGE.format(versions=names, scripts="\n".join(scripts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="tarballs", type=Path,
                    help="directory with the npm tarballs (default: npm pack them)")
    ap.add_argument("--out", type=Path, default=TEMPLATE)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tarballs = args.tarballs
        if tarballs is None:
            tarballs = Path(tmp)
            specs = [f"{n}@{v}" for n, v in wanted_versions().items()]
            subprocess.run(["npm", "pack", "--silent", *specs], cwd=tmp, check=True)
        args.out.write_text(build(tarballs), encoding="utf-8")
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
