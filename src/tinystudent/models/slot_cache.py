"""A batch's KV cache whose rows are refilled: the slot of a row that is done takes the next prompt.

`SlotCache` is a transformers `DynamicCache` whose layers (`SlotLayer`) keep their keys and values
in buffers with spare columns on the right, so a decoding step writes its token in place
(`DynamicLayer` concatenates, which copies the whole cache at every step). Rows are aligned on
the right: every row's next token goes into the same column, and a row shorter than the others
has masked columns on its left. The cache keeps that attention mask (`mask`, one row per slot).

`place` writes the cache of newly prefilled prompts into given slots, `keep` drops the slots
that are done, and columns that no row uses any more are dropped from the left, so the width
stays the longest row's length.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache

SPARE = 256  # columns allocated past the last one in use, so decoding writes in place


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values, `[slots, heads, columns, head size]`, the columns in use
    being `lo:hi` of buffers that hold `SPARE` more."""

    is_sliding = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None
        self.lo = self.hi = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states, value_states, key_states.shape[0], 0)

    def allocate(self, like_keys: torch.Tensor, like_values: torch.Tensor, rows: int, width: int) -> None:
        """Zeroed buffers for `rows` slots and `width` columns in use."""
        self.device = like_keys.device
        keys_shape = (rows, like_keys.shape[1], width + SPARE, like_keys.shape[3])
        values_shape = (rows, like_values.shape[1], width + SPARE, like_values.shape[3])
        self.key_buffer = like_keys.new_zeros(keys_shape)
        self.value_buffer = like_values.new_zeros(values_shape)
        self.lo, self.hi = 0, width
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        assert self.key_buffer is not None and self.value_buffer is not None
        self.keys = self.key_buffer[:, :, self.lo : self.hi]
        self.values = self.value_buffer[:, :, self.lo : self.hi]

    def _move(self, width: int, room: int) -> None:
        """New buffers with `width` columns in use, what is kept aligned on their right, zeros on
        its left, and `room` columns free past them."""
        assert self.key_buffer is not None and self.value_buffer is not None
        kept = self.hi - self.lo
        keys = self.key_buffer.new_zeros(self.key_buffer.shape[:2] + (width + room,) + self.key_buffer.shape[3:])
        values = self.value_buffer.new_zeros(
            self.value_buffer.shape[:2] + (width + room,) + self.value_buffer.shape[3:]
        )
        keys[:, :, width - kept : width] = self.key_buffer[:, :, self.lo : self.hi]
        values[:, :, width - kept : width] = self.value_buffer[:, :, self.lo : self.hi]
        self.key_buffer, self.value_buffer, self.lo, self.hi = keys, values, 0, width

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.key_buffer is not None and self.value_buffer is not None
        new = key_states.shape[-2]
        if self.hi + new > self.key_buffer.shape[2]:
            self._move(self.hi - self.lo, new + SPARE)
        self.key_buffer[:, :, self.hi : self.hi + new] = key_states
        self.value_buffer[:, :, self.hi : self.hi + new] = value_states
        self.hi += new
        self._views()
        return self.keys, self.values

    def widen(self, width: int) -> None:
        """At least `width` columns in use, the new ones zeros on the left."""
        if self.hi - self.lo >= width:
            return
        missing = width - (self.hi - self.lo)
        assert self.key_buffer is not None and self.value_buffer is not None
        if self.lo >= missing:
            self.key_buffer[:, :, self.lo - missing : self.lo] = 0
            self.value_buffer[:, :, self.lo - missing : self.lo] = 0
            self.lo -= missing
        else:
            self._move(width, SPARE)
        self._views()

    def place(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Rows' keys and values into `slots`, aligned on the right (the columns on their left
        keep the old row's numbers, which the mask hides)."""
        assert self.key_buffer is not None and self.value_buffer is not None
        width = keys.shape[2]
        self.key_buffer[slots, :, self.hi - width : self.hi] = keys
        self.value_buffer[slots, :, self.hi - width : self.hi] = values

    def keep(self, slots: torch.Tensor) -> None:
        assert self.key_buffer is not None and self.value_buffer is not None
        self.key_buffer = self.key_buffer.index_select(0, slots)
        self.value_buffer = self.value_buffer.index_select(0, slots)
        self._views()

    def trim(self, columns: int) -> None:
        self.lo += columns
        self._views()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.hi - self.lo if self.is_initialized else 0

    def get_max_length(self) -> int:
        return -1


class SlotCache(DynamicCache):
    """A decoding batch's KV cache and attention mask, slot by slot (see the module)."""

    def __init__(self, rows: int, device) -> None:
        Cache.__init__(self, layer_class_to_replicate=SlotLayer)
        self.mask = torch.zeros((rows, 0), dtype=torch.long, device=device)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def place(self, slots: list[int], prefilled: DynamicCache, mask: torch.Tensor) -> None:
        """Newly prefilled prompts (their cache and mask, one row each) into `slots`. `prefilled`
        is emptied layer by layer as it is copied, so the batch is never held twice."""
        width = max(self.width, mask.shape[1])
        self.mask = torch.cat([self.mask.new_zeros((self.mask.shape[0], width - self.width)), self.mask], dim=1)
        index = torch.tensor(slots, dtype=torch.long, device=self.mask.device)
        self.mask[index] = 0
        self.mask[index, width - mask.shape[1] :] = mask.to(self.mask.device)
        for filled in self._filled():
            filled.widen(width)
        for number, source in enumerate(prefilled.layers):
            keys, values = getattr(source, "keys", None), getattr(source, "values", None)
            if keys is None or values is None or keys.numel() == 0:
                continue
            while len(self.layers) <= number:
                self.layers.append(SlotLayer())
            layer = self.layers[number]
            assert isinstance(layer, SlotLayer)
            if not layer.is_initialized:
                layer.allocate(keys, values, self.mask.shape[0], width)
            layer.place(index.to(keys.device), keys, values)
            source.keys = source.values = None  # type: ignore[union-attr]
        self._trim()

    def keep(self, slots: list[int]) -> None:
        """Only these slots, in this order."""
        index = torch.tensor(slots, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        for layer in self._filled():
            layer.keep(index.to(layer.device))
        self._trim()

    def grow(self) -> torch.Tensor:
        """The mask with a column for the token every row is about to write."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        return self.mask

    def _filled(self) -> list[SlotLayer]:
        """The layers that hold keys and values."""
        return [layer for layer in self.layers if isinstance(layer, SlotLayer) and layer.is_initialized]

    def _trim(self) -> None:
        used = self.mask.any(0)
        lead = int(used.long().argmax()) if bool(used.any()) else self.width
        if lead == 0:
            return
        self.mask = self.mask[:, lead:]
        for layer in self._filled():
            layer.trim(lead)
