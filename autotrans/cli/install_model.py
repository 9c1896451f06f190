"""``autotrans_install_model``: put a model zip from autotrans_export_model into ``$autotrans_results``."""
from __future__ import annotations

import argparse
import sys

from autotrans.cli.common import run, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_install_model",
        description="Install a model zip written by autotrans_export_model into $autotrans_results, where "
                    "autotrans_predict then finds it. The zip's checksums and layout are verified and every "
                    "checkpoint is loaded weights-only (no code from the file runs) before anything is installed.")
    p.add_argument("zip", metavar="ZIP", help="the exported model zip")
    p.add_argument("--overwrite", action="store_true", help="replace an installed model folder of the same name")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging(a.verbose)

    def go() -> None:
        from autotrans.sharing import install_model

        install_model(a.zip, overwrite=a.overwrite)

    return run(p.prog, go)


if __name__ == "__main__":
    sys.exit(main())
