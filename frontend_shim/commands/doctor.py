"""`doctor --config VM.toml`: check everything attaching this VM needs, and say what to do for each failure.

Exit status: 0 all checks passed, 1 some failed, 2 the config itself is unusable.
"""

from __future__ import annotations

import argparse

from frontend_shim.attach.doctor import run_checks
from frontend_shim.commands import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="check a VM's config, QEMU, services, pairing and sockets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.vm_config(p)
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each service (default 3)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = options.load_vm_config(args)
    if cfg is None:
        return 2
    checks = run_checks(cfg, args.timeout)
    for c in checks:
        print("\n".join(c.lines()))
    failed = sum(1 for c in checks if not c.ok)
    print(f"{cfg.name}: {len(checks) - failed} of {len(checks)} checks passed" + (f", {failed} failed" if failed
          else ""))  # fmt: skip
    return 1 if failed else 0
