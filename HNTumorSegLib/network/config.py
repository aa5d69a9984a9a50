"""Network configuration: the one description from which a network is built and saved.

The same dataclass builds the paper's PSAM U-Net (``psam=True, norm="se"``) and the plain U-Net
baseline (``psam=False, norm="instance"``). It round-trips through JSON (``to_dict`` /
``from_dict``) so a model file says exactly which network its weights belong to; a config that
cannot be built raises :class:`~HNTumorSegLib.errors.ModelFileError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ..errors import ModelFileError

NORMS = ("se", "instance")
#: PSAM gates the skips of the first three levels (full, 1/2, 1/4 resolution): paper section 2.3.
PSAM_GATED_LEVELS = 3
MAX_LEVELS = 7


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class NetworkConfig:
    """Hyper-parameters of :class:`~HNTumorSegLib.network.unet.PSAMUNet`.

    ``channels`` has one entry per level (5 levels: the input is down-sampled 4 times, so its
    size must be divisible by 16). ``pet_channel`` is the input channel PSAM reads (0 is CT).
    ``se_reduction`` is the squeeze ratio of SE Normalization (Iantsen et al. use 2).
    """

    in_channels: int = 2
    out_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    psam: bool = True
    norm: str = "se"
    psam_channels: tuple[int, ...] = (8, 16, 32)
    pet_channel: int = 1
    se_reduction: int = 2

    def __post_init__(self) -> None:
        # Lists (from JSON) become tuples, so configs compare equal and stay hashable-ish.
        if isinstance(self.channels, list):
            self.channels = tuple(self.channels)
        if isinstance(self.psam_channels, list):
            self.psam_channels = tuple(self.psam_channels)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self, source: str | None = None) -> None:
        """Raise ModelFileError (one line, prefixed by ``source``) if this config cannot be built."""
        problem = self._problem()
        if problem:
            prefix = f"{source}: " if source else ""
            raise ModelFileError(f"{prefix}invalid network config: {problem}")

    def _problem(self) -> str | None:
        for name in ("in_channels", "out_channels", "pet_channel", "se_reduction"):
            v = getattr(self, name)
            if not _is_int(v):
                return f"{name} must be an integer, got {v!r}"
        if self.in_channels < 1 or self.out_channels < 1:
            return f"in_channels and out_channels must be >= 1, got {self.in_channels}, {self.out_channels}"
        if self.se_reduction < 1:
            return f"se_reduction must be >= 1, got {self.se_reduction}"
        for name in ("channels", "psam_channels"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or not all(_is_int(c) and c > 0 for c in v):
                return f"{name} must be a non-empty list of positive integers, got {v!r}"
        if not 2 <= len(self.channels) <= MAX_LEVELS:
            return f"channels must have 2 to {MAX_LEVELS} levels, got {len(self.channels)}"
        if not isinstance(self.psam, bool):
            return f"psam must be true or false, got {self.psam!r}"
        if self.norm not in NORMS:
            return f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}"
        if self.psam:
            if len(self.channels) < PSAM_GATED_LEVELS + 1:
                return (f"psam needs at least {PSAM_GATED_LEVELS + 1} levels "
                        f"({PSAM_GATED_LEVELS} gated skips + bottleneck), got {len(self.channels)}")
            if len(self.psam_channels) > len(self.channels):
                return "psam_channels cannot have more levels than channels"
            if not 0 <= self.pet_channel < self.in_channels:
                return f"pet_channel must be in 0..{self.in_channels - 1}, got {self.pet_channel}"
        return None

    @property
    def levels(self) -> int:
        return len(self.channels)

    @property
    def size_multiple(self) -> int:
        """Each spatial input size must be a multiple of this (2 ** (levels - 1))."""
        return 2 ** (len(self.channels) - 1)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["psam_channels"] = list(self.psam_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "NetworkConfig":
        """Build from a dict as written by :meth:`to_dict`; every key must be present and known.

        ``source`` (e.g. the JSON file name) prefixes the one-line ModelFileError message.
        """
        prefix = f"{source}: " if source else ""
        if not isinstance(d, Mapping):
            raise ModelFileError(f"{prefix}invalid network config: expected an object, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        missing = [k for k in known if k not in d]
        if unknown:
            raise ModelFileError(f"{prefix}invalid network config: unknown key(s) {', '.join(map(str, unknown))}")
        if missing:
            raise ModelFileError(f"{prefix}invalid network config: missing key(s) {', '.join(missing)}")
        kwargs = dict(d)
        for name in ("channels", "psam_channels"):
            if isinstance(kwargs[name], list):
                kwargs[name] = tuple(kwargs[name])
        obj = cls.__new__(cls)
        for k in known:
            setattr(obj, k, kwargs[k])
        obj.validate(source)
        return obj
