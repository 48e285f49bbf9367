"""``medunet networks``: list the network (and loss) registries that the bundle and docs read."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``networks`` sub-command."""
    parser = subparsers.add_parser(
        "networks",
        help="list the available networks (and losses)",
        description="List registered networks: name, spatial dims, patch divisor, description.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (for bundles and docs)")
    parser.add_argument("--losses", action="store_true", help="also list the registered losses")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medunet.losses import loss_table
    from medunet.networks import network_table

    networks = network_table()
    losses = loss_table() if args.losses else None
    if args.json:
        payload: dict[str, Any] = {"networks": networks}
        if losses is not None:
            payload["losses"] = losses
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return 0
    rows = [
        (
            r["name"] + (" *" if r["default"] else ""),
            "/".join(f"{d}D" for d in r["spatial_dims"]),
            str(r["divisor"]),
            str(r["min_patch_size"]),
            r["description"],
        )
        for r in networks
    ]
    sys.stdout.write(_table(("network", "dims", "divisor", "min patch", "description"), rows))
    if losses is not None:
        loss_rows = [(r["name"] + (" *" if r["default"] else ""), r["description"]) for r in losses]
        sys.stdout.write("\n" + _table(("loss", "description"), loss_rows))
    sys.stdout.write(
        "\n* default. Patch edges must be multiples of the divisor and at least the min patch.\n"
    )
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (header, *rows)
    ]
    return "\n".join(lines) + "\n"
