"""Measure how fast ``guardrail audit summary`` streams a large log, and its memory.

The log is built by repeating the events of a template log (any audit log,
such as one written by the tests) with fresh request and session ids until
it reaches ``--size-mb``, optionally gzip-compressed. ``guardrail audit
summary --json`` (or ``report``) then runs on it in a subprocess, and the
wall time and the peak resident memory of that process are printed.

    .venv/bin/python benchmarks/bench_audit_reader.py TEMPLATE.jsonl \\
        --size-mb 1024 --sessions 20000 --gzip
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_log(
    template: Path, target: Path, size: int, sessions: int, compress: bool
) -> int:
    """Write about ``size`` bytes of events to ``target``; return the lines."""
    events = [json.loads(line) for line in template.read_text().splitlines()]
    opener = gzip.open if compress else open
    written = 0
    lines = 0
    copy = 0
    with opener(target, "wt", encoding="utf-8") as out:  # type: ignore[operator]
        while written < size:
            session = f"s-{copy % sessions}"
            for event in events:
                event = {
                    **event,
                    "request_id": f"{event['request_id']}-{copy}",
                    "session_id": session,
                }
                line = json.dumps(event, ensure_ascii=False) + "\n"
                out.write(line)
                written += len(line)
                lines += 1
            copy += 1
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", type=Path)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument(
        "--command",
        choices=["summary", "report"],
        default="summary",
        help="the audit command to time",
    )
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / ("big.jsonl.gz" if arguments.gzip else "big.jsonl")
        started = time.perf_counter()
        lines = write_log(
            arguments.template,
            target,
            arguments.size_mb * 1024 * 1024,
            arguments.sessions,
            arguments.gzip,
        )
        print(
            f"wrote {lines} lines of {arguments.size_mb} MiB uncompressed, "
            f"{target.stat().st_size / 2**20:.0f} MiB on disk, in "
            f"{time.perf_counter() - started:.0f} s"
        )

        started = time.perf_counter()
        command = [sys.executable, "-m", "guardrail", "audit", arguments.command]
        options = ["--json"]
        if arguments.command == "report":
            options = ["-o", str(Path(folder) / "report.html")]
        result = subprocess.run(
            [*command, str(target), *options, "--no-progress"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=os.environ,
            check=False,
        )
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if result.returncode != 0:
            sys.exit(f"audit failed ({result.returncode}): {result.stderr[-2000:]}")

    megabytes = arguments.size_mb
    print(
        f"{arguments.command}: {seconds:.1f} s "
        f"({megabytes / seconds:.0f} MiB/s uncompressed), peak RSS {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
