"""Metrics records: appended as JSON lines to runs/<experiment>/metrics.jsonl and passed to plugins."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, registry=None, enabled: bool = True):
        self.path = Path(path)
        self.hook = registry.pm.hook if registry is not None else None
        self.enabled = enabled

    def write(self, stage: str, record: dict) -> None:
        if not self.enabled:
            return
        record = {"stage": stage, "time": round(time.time(), 3), **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.hook is not None:
            self.hook.kd_on_metrics(stage=stage, record=record)


def read_metrics(path: Path, stage: str | None = None) -> list[dict]:
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a run killed mid-line leaves a partial last line
            continue
        if stage is None or rec.get("stage") == stage:
            out.append(rec)
    return out
