"""``autotrans_turing create | serve | analyze``: thin command-line edge of :mod:`autotrans.turing`."""
from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import signal
import sys

from autotrans.cli.common import run, setup_logging
from autotrans.errors import AutotransError, ConfigurationError

logger = logging.getLogger("autotrans.turing")


def _print_links(study: object, base_url: str) -> None:
    from autotrans.turing.study import reader_links

    for name, link in reader_links(study, base_url).items():  # type: ignore[arg-type]
        print(f"reader {name}: {link}")
    print(f"admin (progress only): {base_url.rstrip('/')}/admin#{study.admin_token}")  # type: ignore[attr-defined]


def _create(args: argparse.Namespace) -> int:
    from autotrans.turing.study import create_study, parse_synthetic

    study = create_study(
        real=args.real, synthetic=[parse_synthetic(s) for s in args.synthetic], out=args.output,
        modality=args.modality, n_per_class=args.n_per_class, readers=args.readers, seed=args.seed,
        design=args.design, source=args.source, source_modality=args.source_modality,
    )
    logger.info("study with %d items for %d readers written to %s", len(study.items), len(study.readers), args.output)
    print(f"Study folder: {args.output} (keep it private: it holds the ground truth and the tokens)")
    _print_links(study, args.url)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    from autotrans.turing.server import make_server
    from autotrans.turing.study import Study

    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port {args.port}: choose a port from 1 to 65535 (or 0: any free port)")
    study = Study.load(args.study)
    try:
        server = make_server(study, args.host, args.port)
    except (OSError, OverflowError) as e:  # port in use, no such interface, address not allowed
        hint = "; choose another --port" if getattr(e, "errno", None) == errno.EADDRINUSE else ""
        why = getattr(e, "strerror", None) or e
        raise AutotransError(f"cannot listen on {args.host}:{args.port} ({why}{hint})") from None
    if not _is_loopback(args.host):
        logger.warning("listening on %s: readers' answers travel unencrypted; put a TLS proxy in front", args.host)
    print(f"Serving {args.study} at {server.url} (Ctrl+C to stop)")
    _print_links(study, args.url or server.url)
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, _stop)  # stop like Ctrl+C (answers are committed either way)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("stopped")
    finally:
        server.server_close()
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from autotrans.turing.analysis import analyze_studies
    from autotrans.utils.files import ensure_writable_dir

    ensure_writable_dir(args.output, "-o")  # a read-only report folder fails before any work
    summary = analyze_studies(args.study, args.output)
    if summary.get("design") == "2afc":
        pooled = summary["overall"].get("pooled") or summary["overall"]["pooled_naive"]
        print(f"2AFC proportion correct (= AUC) {100 * pooled['proportion_correct']:.1f}% "
              f"[{100 * pooled['ci_low']:.1f}, {100 * pooled['ci_high']:.1f}]; report: {args.output}/report.html")
        return 0
    acc = summary["overall"]["accuracy"]
    print(
        f"accuracy {100 * acc['value']:.1f}% [{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}] "
        f"({acc['k']}/{acc['n']}), p = {summary['overall']['p_value']:.3g}; report: {args.output}/report.html"
    )
    from autotrans.turing.analysis_mrmc import console_lines

    for line in console_lines(summary):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_turing", description="Visual Turing test: can readers tell synthetic volumes from real ones?"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (includes every request)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create", help="build a blinded study folder and print one link per reader")
    c.add_argument("--real", required=True, help="folder of real volumes")
    c.add_argument("--synthetic", required=True, action="append", metavar="DIR[:label]",
                   help="folder of synthetic volumes, optionally with a model label (repeatable)")
    c.add_argument("-o", "--output", required=True, help="new study folder")
    c.add_argument("--n_per_class", type=int, default=None,
                   help="real volumes and synthetic volumes each; with --design 2afc: pairs "
                        "(default: as many as both classes allow)")
    c.add_argument("--design", choices=["single", "2afc"], default="single",
                   help="single: one volume per item, real or synthetic? (default); 2afc: the real and a "
                        "synthetic volume of one case side by side, which is real?")
    c.add_argument("--source", default=None, metavar="DIR",
                   help="folder of source volumes named like the cases (the CT of a PET, the input of an MR "
                        "model): PET can be fused over it, other modalities show it beside the item")
    c.add_argument("--source_modality", choices=["CT", "PET", "MR"], default=None,
                   help="modality of --source (default: CT for a PET study, else the study's modality)")
    c.add_argument("--readers", nargs="+", default=None, metavar="NAME", help="reader names (default: reader01)")
    c.add_argument("--seed", type=int, default=None, help="seed for item choice and order (default: random)")
    c.add_argument("--modality", required=True, choices=["CT", "PET", "MR"], help="sets the window presets")
    c.add_argument("--url", default="http://127.0.0.1:8080", help="server address used in the printed links")
    c.set_defaults(func=_create)

    s = sub.add_parser("serve", help="serve the reader web app for a study")
    s.add_argument("study", help="study folder made by 'create'")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8080, help="TCP port, 1-65535 (0: any free port) (8080)")
    s.add_argument("--url", default=None, help="public address for the printed links (e.g. behind a proxy)")
    s.set_defaults(func=_serve)

    a = sub.add_parser("analyze", help="statistics and report from the answers")
    a.add_argument("study", nargs="+", help="one or more study folders (pooled)")
    a.add_argument("-o", "--output", required=True, help="report folder")
    a.set_defaults(func=_analyze)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run(f"autotrans_turing {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
