"""What a dataset's captions say: the attributes (slots) they name and how to read them back from any text.

Caption-derived metrics (attribute accuracy, linear probes) take their schema from the data config
(`data.caption_schema`): the generated dataset ships one, plain shards have none and simply skip those metrics.
"""

from __future__ import annotations

from typing import Callable


class CaptionSchema:
    """slots: {slot: its values}; parse: caption text -> {slot: value or None}, never raising on garbage.

    A plain class, not a dataclass: Hydra would read a dataclass passed to `instantiate` as a structured config.
    """

    def __init__(self, slots: dict[str, tuple[str, ...]], parse: Callable[[str], dict[str, str | None]]):
        self.slots, self.parse = dict(slots), parse

    def labels(self, caption: str) -> dict[str, str] | None:
        """The caption's value for every slot, or None when it leaves one out (free text)."""
        values = self.parse(caption)
        return None if any(values.get(slot) is None for slot in self.slots) else values


def generated_captions() -> CaptionSchema:
    """The generated dataset's captions: size, colour, shape, position and mark."""
    from vistok.data.generated import SLOTS, parse_caption

    return CaptionSchema(SLOTS, parse_caption)
