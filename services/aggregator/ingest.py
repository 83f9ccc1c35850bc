"""How contributions get in: receive into recycled buffers, validate, fold (pure; no gRPC).

A contribution is a stream: a header, then raw chunks (``tessera.wire``). Its life here:

1. ``JobModel.check_header`` validates the tensor table against the model and the round before
   a byte of payload is read; the ledger answers duplicates at the same point.
2. ``Intake`` receives the payload into one buffer taken from the job's ``BufferPool`` and
   checks every chunk's floating values as it lands (a NaN is refused at the chunk that carries
   it, and the rest of the stream is never read).
3. When the stream is complete, ``JobModel`` decides under the job's lock: the round is still
   open, the ledger's claim succeeds, and only then does the contribution count. The mean
   folds it into the round's sum (``RoundMean``); robust rules keep it until the round closes.

Folding and memory. A contribution must count entirely or not at all, and a stream can fail
after any chunk (a later non-finite value, a broken connection, a duplicate claimed first, a
round closed meanwhile). A fold cannot be undone (the folded chunks are gone), so no chunk is
folded into the round's sum before the whole contribution is accepted. Instead each stream
lands in a buffer of its own, one payload in size, and the mean works like this:

* The first contribution of a round is not copied at all: its buffer *becomes* the round's sum.
  ``RoundSum`` keeps the sum as ``scale * S`` so that adopting needs no pass over the data
  either (``S`` is the buffer, ``scale`` the contribution's weight).
* A later contribution is folded *as its chunks arrive*, into its own buffer: each chunk, once
  checked, is overwritten in place with ``S + (w / scale) * chunk`` (``torch.add(..., out=)``
  while the chunk is still in cache). When the stream completes and is accepted, its buffer
  holds the new sum and simply replaces the old one, whose buffer goes back to the pool: the
  commit is O(1) and the receipt waits for no pass over 100 MB. If the stream fails, its buffer
  is dropped and the sum never changed. This "fold lane" needs the sum to stay still while the
  stream reads it, so one stream at a time holds it; contributions that arrive while the lane
  is busy are received whole and folded with one vectorised ``S.add_(x, alpha=w / scale)`` per
  tensor once accepted (deferred until the lane is free, if it is still busy then).
* Closing the round scales ``S`` in place, steps the optimizer with it and returns its buffer
  to the pool, where the next round's first contribution finds it.

So the mean holds, per job and round, one sum plus one buffer per stream in flight, and
keeping a contribution's folded part apart from the sum costs nothing beyond the buffer it
arrives in. Peak memory for receiving one contribution is its payload plus a few 1 MiB gRPC
messages. The pool keeps up to ``capacity`` idle buffers (two by default: the sum and one
stream in flight) so that steady-state receives touch no fresh pages: faulting in 100 MB of new
memory costs about as long as receiving it. Lossy codecs' payloads are decoded once complete
and folded then, as are raw tensors whose dtype differs from the sum's (float16 parameters).
Robust rules (median, trimmed mean, Krum, centred clipping) need all contributions at once and
keep each received buffer, as decoded views, until the round closes: ``tasks_per_round``
payloads.

Finiteness is checked with one vectorised sum per chunk (NaN and infinities propagate through a
sum; only a non-finite sum pays for the exact element-wise test, ``tessera.wire.all_finite``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import torch

from tessera.common.errors import InvalidSpec, QuotaExceeded
from tessera.wire.codecs import TensorMeta
from tessera.wire.frames import Assembler, ValueSink, buffer_bytes

__all__ = ["BufferPool", "Intake", "RoundMean", "RoundSum"]


class BufferPool:
    """Idle receive buffers of one job, recycled so that receives touch no fresh pages.

    A buffer is a contiguous ``uint8`` tensor. ``take`` hands out the smallest idle buffer that
    is large enough, or a new one; ``give`` returns one, which the caller must no longer use
    (nor any view of it). At most ``capacity`` buffers are kept idle; the rest are freed.
    Thread-safe.

    Args:
        capacity: how many idle buffers to keep; two cover a round of the mean in steady
            state (its sum and one stream in flight).
    """

    def __init__(self, capacity: int = 2) -> None:
        if capacity < 0:
            raise InvalidSpec(f"buffer pool capacity ({capacity}) must be >= 0")
        self._capacity = capacity
        self._idle: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        """Return a buffer of at least ``nbytes`` bytes, recycled if one fits."""
        with self._lock:
            fitting = [i for i, b in enumerate(self._idle) if b.numel() >= nbytes]
            if fitting:
                return self._idle.pop(min(fitting, key=lambda i: self._idle[i].numel()))
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, buffer: torch.Tensor) -> None:
        """Keep ``buffer`` for reuse (the largest ``capacity`` idle buffers are kept)."""
        with self._lock:
            self._idle.append(buffer)
            self._idle.sort(key=lambda b: b.numel(), reverse=True)
            del self._idle[self._capacity :]

    @property
    def idle_bytes(self) -> int:
        """Bytes held by idle buffers."""
        with self._lock:
            return sum(b.numel() for b in self._idle)

    def clear(self) -> None:
        """Free every idle buffer."""
        with self._lock:
            self._idle.clear()


class Intake:
    """One contribution's payload on its way in: a buffer from the pool and an ``Assembler``.

    The buffer goes back to the pool on ``release`` unless ``keep`` transferred it to whoever
    holds the received tensors (views into it). Release it in a ``finally``: a stream may fail
    at any chunk.

    Args:
        metas: the contribution's tensor table, already validated against the model.
        max_bytes: the largest payload accepted.
        pool: where the buffer comes from and returns to.
        sink: receives each chunk's checked raw floating values (``RoundSum.ahead`` folds
            them into the round's sum as they arrive).

    Raises (constructor):
        QuotaExceeded: the table declares more than ``max_bytes``, checked before allocating.
    """

    def __init__(
        self,
        metas: Sequence[TensorMeta],
        *,
        max_bytes: int,
        pool: BufferPool,
        sink: ValueSink | None = None,
    ) -> None:
        total = sum(m.byte_length for m in metas)
        if total > max_bytes:
            raise QuotaExceeded(f"payload of {total} bytes exceeds the limit of {max_bytes} bytes")
        self._pool: BufferPool | None = pool
        self.assembler = Assembler(
            metas,
            max_bytes=max_bytes,
            buffer=pool.take(buffer_bytes(metas)),
            check_finite=True,
            sink=sink,
        )

    def write(self, chunk: bytes | memoryview) -> None:
        """Place and check the next chunk.

        Raises:
            InvalidSpec: the chunk goes beyond the declared payload.
            NonFinite: the chunk completes a non-finite value.
        """
        self.assembler.write(chunk)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The received tensors (views into the buffer for the ``none`` codec).

        Raises:
            InvalidSpec: the payload is incomplete or does not decode.
            NonFinite: a decoded tensor holds NaN or an infinity.
        """
        return self.assembler.tensors()

    @property
    def shares_buffer(self) -> bool:
        """Whether received tensors are views into the buffer (some are ``none``-coded)."""
        return any(m.codec == "none" and m.byte_length for m in self.assembler.metas)

    def keep(self) -> torch.Tensor:
        """Take the buffer out of the pool's cycle (its views live on); return it."""
        self._pool = None
        return self.assembler.buffer

    def release(self) -> None:
        """Return the buffer to the pool, unless kept or already released."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.give(self.assembler.buffer)


class RoundSum:
    """The weighted sum of one round's contributions, folded in as they are accepted.

    The sum is kept as ``scale * S``: the first contribution becomes ``S`` with ``scale`` equal
    to its weight (adopted without a copy if the caller hands over ownership), and each later
    one is folded with ``S.add_(x, alpha=weight / scale)``. ``S`` is float32 (float64 for
    float64 tensors) whatever the contributions' dtype. Not thread-safe: the job's lock guards it.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._scale = 0.0
        self._weight = 0.0
        self._count = 0
        self._spent = False

    @property
    def count(self) -> int:
        """How many contributions have been folded in."""
        return self._count

    @property
    def weight(self) -> float:
        """The total weight folded in."""
        return self._weight

    def add(self, tensors: Mapping[str, torch.Tensor], weight: float, *, owned: bool) -> bool:
        """Fold ``weight * tensors`` into the sum.

        Args:
            tensors: floating tensors with the same names, shapes and dtypes as every earlier
                contribution.
            weight: a finite weight > 0, usually the contribution's sample count.
            owned: whether the sum may keep and modify the tensors in place. Only the first
                contribution is ever kept; later ones are read once and never modified.

        Returns:
            Whether the sum kept (some of) the tensors: the caller must keep their memory for
            the sum and must not modify them.

        Raises:
            InvalidSpec: a bad weight, a non-floating tensor, names, shapes or dtypes that
                differ from the first contribution's, or a sum already turned into a result.
        """
        if self._spent:
            raise InvalidSpec("this round's sum has already been turned into its mean")
        if not (isinstance(weight, int | float) and 0 < weight < float("inf")):
            raise InvalidSpec(f"weight ({weight!r}) must be a finite number > 0")
        if not self._sums:
            return self._adopt(tensors, float(weight), owned)
        if tensors.keys() != self._sums.keys():
            raise InvalidSpec(
                f"contribution has tensors {sorted(tensors)}, the round's sum has "
                f"{sorted(self._sums)}"
            )
        for name, tensor in tensors.items():
            total = self._sums[name]
            if tensor.shape != total.shape or tensor.dtype != self._dtypes[name]:
                raise InvalidSpec(
                    f"tensor {name!r} has shape {tuple(tensor.shape)} and dtype {tensor.dtype}, "
                    f"the round's sum has {tuple(total.shape)} and {self._dtypes[name]}"
                )
        alpha = weight / self._scale
        for name, tensor in tensors.items():
            self._sums[name].add_(tensor.detach(), alpha=alpha)
        self._weight += weight
        self._count += 1
        return False

    def replace(self, tensors: Mapping[str, torch.Tensor], weight: float) -> None:
        """Take ``tensors`` as ``S``: the old ``S`` plus a contribution of ``weight``.

        For a contribution folded ahead of its acceptance (``ahead``): the tensors hold
        ``S + (weight / scale) * x``, computed from the current ``S``.

        Raises:
            InvalidSpec: no sum yet, or names, shapes or dtypes differ from the sum's.
        """
        if not self._sums or self._spent:
            raise InvalidSpec("only an existing sum can be replaced")
        for name, total in self._sums.items():
            tensor = tensors.get(name)
            if tensor is None or tensor.shape != total.shape or tensor.dtype != total.dtype:
                raise InvalidSpec(f"replacement for tensor {name!r} does not match the sum")
        self._sums = {name: tensors[name] for name in self._sums}
        self._weight += weight
        self._count += 1

    def ahead(self, metas: Sequence[TensorMeta], weight: float) -> ValueSink | None:
        """A sink that folds a raw contribution into its own buffer as chunks arrive.

        The sink overwrites each landed element ``x`` with ``S + (weight / scale) * x``, so the
        complete buffer holds what ``replace`` takes. Returns None when that is not possible:
        no sum yet, or a tensor that is not raw or not of the sum's dtype.
        """
        if not self._sums or self._spent or len(metas) != len(self._sums):
            return None
        if not 0 < weight < float("inf"):
            return None
        flat: list[torch.Tensor] = []
        for meta in metas:
            total = self._sums.get(meta.name)
            if meta.codec != "none" or total is None or total.dtype != meta.dtype:
                return None
            flat.append(total.reshape(-1))
        alpha = weight / self._scale

        def fold(index: int, start: int, values: torch.Tensor) -> None:
            torch.add(flat[index][start : start + values.numel()], values, alpha=alpha, out=values)

        return fold

    def _adopt(self, tensors: Mapping[str, torch.Tensor], weight: float, owned: bool) -> bool:
        kept = False
        for name, tensor in tensors.items():
            if not tensor.dtype.is_floating_point:
                raise InvalidSpec(f"mean combines floating tensors; {name!r} is {tensor.dtype}")
            accumulate = torch.promote_types(tensor.dtype, torch.float32)
            if owned and tensor.dtype == accumulate:
                self._sums[name] = tensor.detach()
                kept = True
            else:
                self._sums[name] = tensor.detach().to(accumulate, copy=True)
            self._dtypes[name] = tensor.dtype
        self._scale = self._weight = weight
        self._count = 1
        return kept

    def result(self) -> dict[str, torch.Tensor]:
        """Return the weighted mean of each tensor, in its contributions' dtype.

        Computed in place: the sum's memory becomes the result and the sum cannot be added to
        or read again.

        Raises:
            InvalidSpec: nothing was folded in, or the result was already taken.
        """
        if self._spent:
            raise InvalidSpec("this round's sum has already been turned into its mean")
        if not self._sums:
            raise InvalidSpec("mean needs at least 1 contribution, got 0")
        self._spent = True
        factor = self._scale / self._weight
        out: dict[str, torch.Tensor] = {}
        for name, total in self._sums.items():
            if factor != 1.0:
                total.mul_(factor)
            out[name] = total.to(self._dtypes[name])
        self._sums.clear()
        return out


class RoundMean:
    """One round of the weighted mean: its ``RoundSum``, its fold lane and their buffers.

    Not thread-safe: call every method under the job's lock. ``intake`` opens a receiver (the
    lane's, if the lane is free and the sum exists); ``commit`` counts a received contribution
    that the ledger has just claimed; ``finish`` must follow every ``intake`` (in a
    ``finally``); ``result`` ends the round, ``recycle`` returns its buffers afterwards.

    Args:
        pool: the job's buffer pool.
    """

    def __init__(self, pool: BufferPool) -> None:
        self._pool = pool
        self._sum = RoundSum()
        self._sum_buffers: list[torch.Tensor] = []
        self._lane: Intake | None = None
        # Accepted while the lane was busy: (tensors, weight, buffer), folded once it is free.
        self._deferred: list[tuple[Mapping[str, torch.Tensor], float, torch.Tensor | None]] = []

    @property
    def count(self) -> int:
        """Contributions counted, folded or deferred."""
        return self._sum.count + len(self._deferred)

    def intake(self, metas: Sequence[TensorMeta], weight: float, *, max_bytes: int) -> Intake:
        """A receiver for a contribution of ``weight``; it folds ahead if it gets the lane.

        Raises:
            QuotaExceeded: the table declares more than ``max_bytes``.
        """
        sink = self._sum.ahead(metas, weight) if self._lane is None else None
        intake = Intake(metas, max_bytes=max_bytes, pool=self._pool, sink=sink)
        if sink is not None:
            self._lane = intake
        return intake

    def commit(self, intake: Intake, tensors: Mapping[str, torch.Tensor], weight: float) -> None:
        """Count a received contribution (claimed by the ledger) into the round."""
        if intake is self._lane:
            self._sum.replace(tensors, weight)
            self._swap_buffer(intake.keep())
            self._free_lane()
        elif self._lane is not None:
            buffer = intake.keep() if intake.shares_buffer else None
            self._deferred.append((tensors, weight, buffer))
        elif self._sum.add(tensors, weight, owned=True) and intake.shares_buffer:
            self._sum_buffers.append(intake.keep())

    def add(self, tensors: Mapping[str, torch.Tensor], weight: float) -> None:
        """Count a contribution the caller keeps (read, never modified or kept)."""
        if self._lane is not None:
            self._deferred.append(({k: v.clone() for k, v in tensors.items()}, weight, None))
        else:
            self._sum.add(tensors, weight, owned=False)

    def finish(self, intake: Intake) -> None:
        """End an intake, whatever happened: free the lane if it held it, release its buffer."""
        if intake is self._lane:
            self._free_lane()
        intake.release()

    def result(self) -> dict[str, torch.Tensor]:
        """End the round: the weighted mean, computed in place in the sum's memory.

        A stream still holding the lane is cut loose (its round is over: it will be rejected
        as stale); deferred contributions are folded first.

        Raises:
            InvalidSpec: nothing was counted.
        """
        self._free_lane()
        return self._sum.result()

    def recycle(self) -> None:
        """Return the sum's buffers to the pool; call once the result is no longer used."""
        for buffer in self._sum_buffers:
            self._pool.give(buffer)
        self._sum_buffers = []

    def _swap_buffer(self, buffer: torch.Tensor) -> None:
        old, self._sum_buffers = self._sum_buffers, [buffer]
        for each in old:
            self._pool.give(each)

    def _free_lane(self) -> None:
        self._lane = None
        deferred, self._deferred = self._deferred, []
        for tensors, weight, buffer in deferred:
            if self._sum.add(tensors, weight, owned=True) and buffer is not None:
                self._sum_buffers.append(buffer)
            elif buffer is not None:
                self._pool.give(buffer)
