"""Read what tbparse does not: the Custom Scalars layout in TensorBoard event files."""

import re
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2


def custom_scalars(logdir: Path) -> dict[str, dict[str, list[str]]]:
    """category -> chart title -> tag regexes, from every event file below ``logdir``."""
    layout = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "custom_scalars__config__":
                    parsed = layout_pb2.Layout.FromString(value.tensor.string_val[0])
                    for category in parsed.category:
                        layout[category.title] = {c.title: list(c.multiline.tag) for c in category.chart}
    return layout


def charted(layout: dict, tag: str) -> bool:
    return any(re.search(rx, tag) for charts in layout.values() for rxs in charts.values() for rx in rxs)
