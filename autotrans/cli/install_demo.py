"""``autotrans_install_demo``: copy the bundled real demo datasets into ``$autotrans_raw``."""
from __future__ import annotations

import argparse
import sys

from autotrans.cli.common import run, setup_logging
from autotrans.dataset.demo import DEMO_DATASETS, install_demo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="autotrans_install_demo", description=(
        "Install the bundled real demo datasets (" + ", ".join(f"{k}: {v}" for k, v in DEMO_DATASETS.items()) +
        ") into $autotrans_raw."))
    p.add_argument("--ids", nargs="+", default=[], metavar="SHIPPED:NEW", help="install under other ids, e.g. 901:3")
    p.add_argument("--overwrite", action="store_true", help="replace an installed copy")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    setup_logging(a.verbose)

    def go() -> None:
        mapping = {}
        for item in a.ids:
            try:
                old, new = (int(x) for x in item.split(":"))
            except ValueError:
                p.error(f"--ids expects SHIPPED:NEW pairs like 901:3, got {item!r}")
            mapping[old] = new
        for path in install_demo(mapping, overwrite=a.overwrite):
            print(path)

    return run(p.prog, go)


if __name__ == "__main__":
    sys.exit(main())
