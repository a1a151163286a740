"""What every benchmark result file starts with: the command that made it and the machine it ran on."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(device) -> list[str]:
    """Markdown bullet lines: date, command, hardware, library versions."""
    import peft
    import torch
    import transformers

    if device.type == "cuda":
        hardware = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        hardware = f"CPU {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, no GPU"
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    return [
        f"- Command: `{command}`",
        f"- Machine: {hardware}",
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}",
        f"- Date: {datetime.date.today().isoformat()}",
    ]


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
