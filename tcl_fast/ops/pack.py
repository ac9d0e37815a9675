"""``pack_spikes()``: spikes that later ops save for backward are kept as bits.

Inside ``with tcl_fast.pack_spikes():`` every spike tensor a tcl_fast LIF
module emits is *marked* (its storage, dtype and version counter are noted,
weakly). A ``torch.autograd.graph.saved_tensors_hooks`` pair then sees every
tensor any op saves for its backward (conv, linear, pooling, a custom
Function, ...). A tensor that is a marked spike tensor, or a view of one, is
stored as 1 bit per element (tcl_fast.ops.spike_pack) and unpacked when the
backward needs it; every other tensor is stored as it is.

Why it is exact: a marked tensor holds only 0 and 1 (the LIF op's output), and
1 bit restores 0/1 bit for bit in any float dtype, so the backward receives
the same values and gradients are bit-identical. What would break that, and
what happens then:

* The spikes were changed in place after the LIF op (``s.mul_(2)``, or any
  op writing into them): their version counter moved, the save sees it and
  stores the tensor normally. A change *after* the save raises at backward,
  like autograd does without hooks.
* Code under ``torch.compile``: the compiled LIF does not mark its output
  (tcl_fast cannot see inside the compiled graph), so tensors saved inside a
  compiled region are stored normally. Spikes emitted eagerly and saved by a
  compiled region are still packed (they are 0/1 and unchanged).
* Spike tensors the LIF op did not emit (a copy cast by autocast, spikes
  from another library): not marked, stored normally.
* ``_smooth`` (test) spikes are not 0/1: never marked.

The hooks replace autograd's own check that a saved tensor was not modified
in place before backward; both hooks redo it (saved version vs current), so
that misuse still raises instead of giving a wrong gradient.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import torch

from tcl_fast.ops.spike_pack import PACK_DTYPES, pack_bits, unpack_bits

__all__ = ["pack_spikes", "mark_spikes", "pack_spikes_active", "SavedTensorCounter"]

_state = threading.local()


def _st():
    if not hasattr(_state, "depth"):
        _state.depth = 0
        _state.records = {}  # storage data_ptr -> _Record
        _state.counters = []
    return _state


def pack_spikes_active() -> bool:
    return _st().depth > 0


class _Record:
    """A marked spike tensor: weak reference, version at emission, bits once packed."""

    __slots__ = ("ref", "version", "numel", "dtype", "nbytes", "bits", "unpacked", "__weakref__")

    def __init__(self, spikes: torch.Tensor, ref):
        self.ref = ref
        self.version = spikes._version
        self.numel = spikes.numel()
        self.dtype = spikes.dtype
        self.nbytes = spikes.untyped_storage().nbytes()
        self.bits = None
        self.unpacked = None  # weakref to the last unpacked tensor (shared by several unpacks)


def mark_spikes(spikes: torch.Tensor) -> torch.Tensor:
    """Note that ``spikes`` holds only 0/1 (called by tcl_fast's LIF modules).

    Does nothing outside ``pack_spikes()``, under torch.compile, when no
    gradient is recorded, or for a tensor that does not own its whole storage.
    """
    st = _st()
    if st.depth == 0 or torch.compiler.is_compiling():
        return spikes
    if not (torch.is_grad_enabled() and spikes.requires_grad) or spikes.dtype not in PACK_DTYPES:
        return spikes
    storage = spikes.untyped_storage()
    if (not spikes.is_contiguous() or spikes.storage_offset() != 0
            or storage.nbytes() != spikes.numel() * spikes.element_size()):
        return spikes
    key = storage.data_ptr()
    records = st.records

    def _forget(_ref, key=key):
        rec = records.get(key)
        if rec is not None and rec.ref is _ref:
            del records[key]

    records[key] = _Record(spikes, weakref.ref(spikes, _forget))
    return spikes


class _PackedSpikes:
    """What autograd holds instead of a saved spike tensor (or a view of it)."""

    __slots__ = ("record", "size", "stride", "offset", "ref", "version")

    def __init__(self, record: _Record, t: torch.Tensor):
        self.record = record
        self.size, self.stride, self.offset = t.size(), t.stride(), t.storage_offset()
        self.ref = record.ref
        self.version = t._version


def _modified_error(t_version, saved_version):
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: it is at version {t_version}; expected version {saved_version} instead "
        "(detected by tcl_fast.pack_spikes' saved-tensor hooks)")


def _pack_hook(t: torch.Tensor):
    st = _st()
    packed = _try_pack(st, t)
    out = packed if packed is not None else (t, t._version)
    for counter in st.counters:
        counter._add(packed.record.bits if packed is not None else t)
    return out


def _try_pack(st, t: torch.Tensor):
    if not st.records or t.layout != torch.strided or t.is_sparse:
        return None
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # fake / functional tensors
        return None
    rec = st.records.get(storage.data_ptr())
    if rec is None or rec.ref() is None or rec.dtype != t.dtype or rec.nbytes != storage.nbytes():
        return None
    if t._version != rec.version:  # changed in place since the LIF op wrote it
        return None
    if rec.bits is None:
        rec.bits = pack_bits(rec.ref())
    return _PackedSpikes(rec, t)


def _unpack_hook(packed):
    if isinstance(packed, tuple):
        t, version = packed
        if t._version != version:
            raise _modified_error(t._version, version)
        return t
    base = packed.ref()
    if base is not None and base._version != packed.version:
        raise _modified_error(base._version, packed.version)
    rec = packed.record
    full = rec.unpacked() if rec.unpacked is not None else None
    if full is None:
        full = unpack_bits(rec.bits, rec.numel, rec.dtype)
        rec.unpacked = weakref.ref(full)
    return full.as_strided(packed.size, packed.stride, packed.offset)


@contextlib.contextmanager
def pack_spikes(enabled: bool = True):
    """Store spikes saved for backward as 1 bit per element inside this block.

    Wrap the forward (the backward may run outside). Gradients are bit-identical
    to running without it; see this module's doc for what is packed and what
    falls back to normal saving. ``enabled=False`` makes it a no-op.
    """
    if not enabled:
        yield
        return
    st = _st()
    st.depth += 1
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack_hook, _unpack_hook):
            yield
    finally:
        st.depth -= 1
        if st.depth == 0:
            st.records.clear()


class SavedTensorCounter:
    """Count the bytes autograd holds for backward: each storage once.

    Use ``with SavedTensorCounter() as c:`` around a forward (inside or outside
    ``pack_spikes()``); ``c.nbytes`` then is the sum over distinct storages of
    what the saved-tensor hooks keep: the packed bits for packed spikes, the
    whole storage for anything else. ``exclude`` (tensors, e.g. the model's
    parameters) are left out. Outside ``pack_spikes`` it installs its own
    hooks that store tensors normally.
    """

    def __init__(self, exclude=()):
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.storages: dict[int, int] = {}
        self._hooks = None

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())

    def _add(self, t: torch.Tensor) -> None:
        try:
            s = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = s.data_ptr()
        if key in self._exclude or s.nbytes() == 0:
            return
        self.storages[key] = max(self.storages.get(key, 0), s.nbytes())

    def __enter__(self):
        st = _st()
        st.counters.append(self)
        if st.depth == 0:  # plain saving, counted
            def pack(t):
                self._add(t)
                return (t, t._version)
            self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, _unpack_hook)
            self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        if self._hooks is not None:
            self._hooks.__exit__(*exc)
            self._hooks = None
        _st().counters.remove(self)
        return False
