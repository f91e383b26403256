"""``shared.total_tqdm``: one console progress bar over all the steps of a multi-job run (scripts such as
Ultimate SD Upscale call ``updateTotal`` with the number of steps they will take)."""
from __future__ import annotations

from typing import Any


class TotalTQDM:
    def __init__(self) -> None:
        self._tqdm: Any = None
        self.total = 0

    def reset(self) -> None:
        from tqdm import tqdm

        self.clear()
        self._tqdm = tqdm(desc="Total progress", total=self.total, position=1, leave=False)

    def update(self) -> None:
        if self._tqdm is None:
            self.reset()
        self._tqdm.update()

    def updateTotal(self, new_total: int) -> None:  # noqa: N802 (A1111's name)
        self.total = int(new_total)
        if self._tqdm is None:
            self.reset()
        self._tqdm.total = self.total
        self._tqdm.refresh()

    def clear(self) -> None:
        if self._tqdm is not None:
            self._tqdm.refresh()
            self._tqdm.close()
            self._tqdm = None
