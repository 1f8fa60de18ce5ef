"""Per-frame flow, motion map and flow edges, computed as frames stream out of the decoder.

Frames are processed in blocks of `flow.block_frames`, keeping the last `edges_gap` frames of
history, so memory stays bounded on long videos and every pair across a block border is still
computed exactly once. Conventions (data_specs/README.md):
  flow[t]     forward flow t -> t+1; the last frame copies flow[T-2] (MCL)
  boundary[t] MCL motion map of flow[t]
  edges[t]    MoDist flow edges of the flow t -> t-gap; frames t < gap copy edges[gap]
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from motionssl.data_specs import Flow
from motionssl.preprocess.flow import FLOW_METHODS, flow_edges, motion_boundary


@dataclass
class MotionMaps:
    t: int
    flow: np.ndarray
    boundary: np.ndarray | None
    edges: np.ndarray | None


_methods: dict = {}


def flow_method(cfg: Flow, *, device: str | None = None):
    """The flow method a spec asks for, built once per process (RAFT loads its weights once).

    device: None lets RAFT and tvl1-torch take CUDA when this process sees a GPU, else the CPU."""
    key = (cfg.method, cfg.dis_preset, cfg.raft_model, cfg.raft_weights, cfg.raft_iters, cfg.batch, device)
    if key not in _methods:
        if cfg.method == "raft":
            _methods[key] = FLOW_METHODS["raft"](model=cfg.raft_model, weights=cfg.raft_weights,
                                                 iters=cfg.raft_iters, batch=cfg.batch, device=device)
        elif cfg.method == "dis":
            import cv2

            preset = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{cfg.dis_preset.upper()}")
            _methods[key] = FLOW_METHODS["dis"](preset=preset)
        elif cfg.method == "tvl1-torch":
            _methods[key] = FLOW_METHODS["tvl1-torch"](batch=cfg.batch, device=device)
        else:
            _methods[key] = FLOW_METHODS["tvl1-opencv"]()
    return _methods[key]


class MotionMapStream:
    def __init__(self, cfg: Flow, method, *, boundary: bool, edges: bool):
        self.cfg, self.method = cfg, method
        self.want_boundary, self.want_edges = boundary, edges
        self.frames: list[np.ndarray] = []  # frames[i] is frame first + i
        self.first = 0
        self.emitted = 0
        self.fwd_history: deque = deque(maxlen=cfg.edges_gap)  # forward flows before `emitted`
        self.notes: list[str] = []

    def push(self, frame: np.ndarray) -> list[MotionMaps]:
        self.frames.append(frame)
        if self.first + len(self.frames) - self.emitted > self.cfg.block_frames:
            return self._process(final=False)
        return []

    def finish(self) -> list[MotionMaps]:
        return self._process(final=True)

    def _frame(self, t: int) -> np.ndarray:
        return self.frames[t - self.first]

    def _pairs(self, pairs: list[tuple[int, int]]) -> np.ndarray:
        """Flow of every (source, target) frame pair, in one call so batched methods see full batches."""
        src = np.stack([self._frame(a) for a, _ in pairs])
        dst = np.stack([self._frame(b) for _, b in pairs])
        return self.method(src, dst)

    def _process(self, *, final: bool) -> list[MotionMaps]:
        total = self.first + len(self.frames)
        end = total if final else total - 1
        ts = list(range(self.emitted, end))
        if not ts:
            return []
        h, w = self.frames[0].shape[:2]
        if total == 1:
            self.notes.append("one frame only: flow, boundary and edges are zero")
            zero = np.zeros((h, w, 2), np.float32)
            fwd = {0: zero}
            back = {0: zero} if self.want_edges else {}
        else:
            paired = [t for t in ts if t + 1 < total]
            gap = self._edges_gap(total, final) if self.want_edges else 0
            separate = [t for t in ts if t >= gap] if self.want_edges and self.cfg.edges_flow == "separate" else []
            # The frames with both flows first, each frame's two side by side: a solver batch of an even size
            # computes both flows of its frames in one call (tvl1-torch: `flow.batch`).
            both = set(paired) & set(separate)
            pairs = [p for t in ts if t in both for p in ((t, t + 1), (t, t - gap))]
            pairs += [(t, t + 1) for t in paired if t not in both] + [(t, t - gap) for t in separate if t not in both]
            flows = self._pairs(pairs) if pairs else []
            fwd = {a: f for (a, b), f in zip(pairs, flows) if b == a + 1}
            if final:
                fwd[total - 1] = fwd.get(total - 2, self.fwd_history[-1] if self.fwd_history else None)
            computed = {a: f for (a, b), f in zip(pairs, flows) if b == a - gap}
            back = self._backward(ts, fwd, gap, computed) if self.want_edges else {}

        out = []
        for t in ts:
            f = fwd[t]
            out.append(MotionMaps(
                t, f,
                motion_boundary(f, operator=self.cfg.boundary_operator) if self.want_boundary else None,
                flow_edges(back[t], clamp=self.cfg.edges_clamp) if self.want_edges else None,
            ))
        for t in ts:
            self.fwd_history.append(fwd[t])
        self.emitted = end
        keep_from = max(self.first, self.emitted - self.cfg.edges_gap)  # history for t -> t-gap
        self.frames = self.frames[keep_from - self.first:]
        self.first = keep_from
        return out

    def _edges_gap(self, total: int, final: bool) -> int:
        if final and self.emitted == 0 and total <= self.cfg.edges_gap:  # video shorter than the gap
            self.notes.append(f"video shorter than edges_gap+1: edges use a gap of {total - 1} frames")
            return total - 1
        return self.cfg.edges_gap

    def _backward(self, ts, fwd, gap, separate) -> dict[int, np.ndarray]:
        """Flow t -> t-gap for every t in ts (`separate`: the ones computed); t < gap copies the first one."""
        have = [t for t in ts if t >= gap]
        if self.cfg.edges_flow == "separate":
            computed = separate
        else:  # derived: minus the sum of the forward flows between, without warping (approximate)
            history = list(self.fwd_history)
            chain = {self.emitted - len(history) + i: f for i, f in enumerate(history)} | fwd
            computed = {t: -sum(chain[k] for k in range(t - gap, t)) for t in have}
        head = computed[gap] if gap in computed else None
        return {t: computed[t] if t >= gap else head for t in ts}
