"""What a model is, as plain values: the alignment spec, EDVR's config and its presets.

No torch here: the command line takes its choices from these names, and `vsrx models` reads
the zoo with them, without paying for importing torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from vsrx.errors import ModelError, UsageError

ALIGN_MODES = ("dcn", "decomp", "flow")


@dataclass(frozen=True)
class Alignment:
    """One member of the alignment family: ``dcn`` (a 3x3 DCNv2, N = 9), ``decomp`` (Eq. 3 with
    any number N of offsets per group) or ``flow`` (G = N = 1, no modulation).

    ``groups`` is G, or None where the architecture decides it (a name such as ``decomp-5``
    does not say). Invalid combinations raise ModelError on construction.
    """

    mode: str = "dcn"
    offsets: int = 9
    groups: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ALIGN_MODES:
            raise ModelError(f"unknown alignment mode {self.mode!r}; choose one of {', '.join(ALIGN_MODES)}")
        if self.offsets < 1 or (self.groups is not None and self.groups < 1):
            raise ModelError(f"alignment needs at least one offset and one group, not N={self.offsets}, G={self.groups}")
        if self.mode == "dcn" and self.offsets != 9:
            raise ModelError(f"dcn alignment has N=9 offsets (3x3 kernel), not {self.offsets}; use --align decomp for other N")
        if self.mode == "flow" and (self.groups or 1, self.offsets) != (1, 1):
            raise ModelError("flow alignment has one group and one offset (G=N=1)")

    @classmethod
    def of(cls, mode: str, offsets: int | None = None, groups: int | None = None) -> Alignment:
        """The mode with its defaults filled in: N = 9 for dcn and decomp, G = N = 1 for flow."""
        if mode == "flow":
            return cls(mode, 1 if offsets is None else offsets, 1 if groups is None else groups)
        return cls(mode, 9 if offsets is None else offsets, groups)

    @classmethod
    def parse(cls, name: str) -> Alignment:
        """An alignment from its name: ``dcn``, ``flow``, ``decomp`` (N = 9) or ``decomp-N``."""
        mode, dash, n = name.partition("-")
        if (dash and (mode != "decomp" or not n.isdigit())) or mode not in ALIGN_MODES:
            raise UsageError(f"unknown alignment mode {name!r}; use dcn, flow, decomp or decomp-N")
        return cls.of(mode, int(n) if dash else None)

    @property
    def name(self) -> str:
        """``dcn``, ``flow`` or ``decomp-N``: how the family member is called everywhere."""
        return f"decomp-{self.offsets}" if self.mode == "decomp" else self.mode

    @property
    def flags(self) -> str:
        """The command-line flags that ask for it, e.g. ``--align decomp --offsets 5``."""
        return f"--align {self.mode}" + (f" --offsets {self.offsets}" if self.mode == "decomp" else "")

    @property
    def modulated(self) -> bool:
        """Whether each sample is weighted by a learned mask (all modes but flow)."""
        return self.mode != "flow"

    def check_channels(self, channels: int) -> None:
        """ModelError unless ``channels`` split into the G groups."""
        if self.groups is not None and channels % self.groups:
            raise ModelError(f"{channels} feature channels cannot form {self.groups} groups")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class EDVRConfig:
    """Everything needed to rebuild an EDVR model; stored in every weights file (as `to_json`)."""

    num_feat: int = 64
    num_frame: int = 7
    groups: int = 8
    num_extract_block: int = 5
    num_reconstruct_block: int = 10
    with_tsa: bool = True
    align: str = "dcn"
    offsets: int = 9
    center_frame_idx: int | None = None
    hr_feat: int = 64  # width of the x4 tail (upconv2 output / 4, conv_hr); BasicSR fixes it at 64
    flow_guided: bool = False  # offsets = SPyNet flow (centre -> neighbour) + the learned residual; the model carries its SPyNet

    def __post_init__(self) -> None:
        self.alignment.check_channels(self.num_feat)
        if self.num_frame < 1 or not 0 <= self.center < self.num_frame:
            raise ModelError(f"bad window: {self.num_frame} frames, centre {self.center_frame_idx}")

    @property
    def alignment(self) -> Alignment:
        """The aligners' mode, N and G (validated)."""
        return Alignment(self.align, self.offsets, self.groups)

    @property
    def center(self) -> int:
        return self.num_frame // 2 if self.center_frame_idx is None else self.center_frame_idx

    @property
    def mode_name(self) -> str:
        """'dcn', 'flow' or 'decomp-N' (the alignment's name), '+flow-guided' where the offsets start from SPyNet's flow."""
        return self.alignment.name + ("+flow-guided" if self.flow_guided else "")

    def with_alignment(self, alignment: Alignment) -> EDVRConfig:
        """The same architecture with another alignment mode and N (G unchanged unless given)."""
        groups = self.groups if alignment.groups is None else alignment.groups
        return dataclasses.replace(self, align=alignment.mode, offsets=alignment.offsets, groups=groups)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EDVRConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = json.loads(text)
        unknown = set(data) - fields
        if unknown:
            raise ModelError(f"model config has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**data)


# Architecture presets, smallest first (alignment and window are chosen separately).
PRESETS: dict[str, dict] = {
    # CPU-friendly: half EDVR-M's width everywhere, including the x4 tail that dominates its cost.
    "edvr-s": dict(num_feat=32, groups=4, num_extract_block=2, num_reconstruct_block=5, with_tsa=False, hr_feat=32),
    "edvr-m": dict(num_feat=64, groups=8, num_extract_block=5, num_reconstruct_block=10, with_tsa=True),
    "edvr-l": dict(num_feat=128, groups=8, num_extract_block=5, num_reconstruct_block=40, with_tsa=True),
}
