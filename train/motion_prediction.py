"""CMD's motion prediction (paper 000 §3.3, eq. 2) as a part any objective can add: `cmd` pretraining and
`finetune --aux-motion W` (the regulariser of its Table 6).

From the clip feature map x (B, C1, T1, H1, W1) of the video network, a predictor (a Transformer encoder-decoder,
or the ConvGRU of the Table 1 ablation) estimates motion features at every position of the motion target map
v (B, C3, T3, H3, W3) = M(mv), the M-network's features of the motion vectors after the clip. Both go through their
own two-layer MLP head, are L2-normalised per position and compared by `motion_nce`: the positive of the prediction
at (video i, position j) is the target at (i, j); every other target position of every video of the batch, and
every position of the hard-negative motion clips (other times of the same videos), is a negative.

Grids. The M-network is R3D-10 whose stem is not strided (output stride 8 in space, 8 in time). It sees the MV grid
(S/c cells for crop side S and MV cell c) resampled by nearest neighbour to S/2 x S/2, so its map is S/16 x S/16:
the grid of the ResNet video backbones (output stride 16), at 112 px 7 x 7 both, the alignment of the authors'
code (encoder 2x7x7, decoder 1x7x7 for 16 clip frames and 8 future frames). For S3D and C3D (stride 32) the clip
map is half as fine; the Transformer maps any input length to the target length, and the ConvGRU resamples the clip
map to the target grid. Motion vectors are clamped to +-10 output pixels per frame and divided by 10 (the authors
clamp +-10 pixels of the original video, whose vectors they do not rescale under crop and resize).

Heads are the authors': Linear-BN-ReLU-Linear-BN. The Transformer is torch's (post-norm, ReLU, dropout 0.1, feed-
forward width = hidden, as the authors' layers), with learned positions added once to the encoder input and used
as the decoder's queries (the authors add them at every layer, DETR-style).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motionssl.train.backbones import r3d_10
from motionssl.train.contrastive import similarities

PREDICTORS = ("transformer", "convgru")


def scale_motion(mv: Tensor, clamp: float = 10.0) -> Tensor:
    """Motion vectors in output pixels per frame, clamped to +-clamp and divided by it (CMD's network input)."""
    return mv.clamp(-clamp, clamp) / clamp


def bn_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """The CMD authors' two-layer MLP head (their 1x1 Conv1d over positions is this Linear over rows)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim))


def motion_nce(pred: Tensor, target: Tensor, negatives: Tensor | None = None, tau: float = 0.1, *,
               query_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eq. 2 of paper 000 over flattened positions: pred, target (M, D) and negatives (K, D), L2-normalised.

    Row m of pred has target[m] as its positive; its negatives are the other M - 1 targets (every position of every
    video) and the K negatives. With s = pred . key / tau,
        loss_m = -log( exp(s(pred_m, target_m)) / sum_{key in target ++ negatives} exp(s(pred_m, key)) ),
    averaged over the rows where `query_mask` (M,) bool is True (all by default; none: a zero that keeps the graph).
    Returns (loss, correct): correct (M,) bool, True where the positive has the highest similarity (top-1).
    """
    keys = target if negatives is None else torch.cat([target, negatives])
    logits = similarities(pred, keys, tau)
    labels = torch.arange(pred.shape[0], device=pred.device)
    losses = F.cross_entropy(logits, labels, reduction="none")
    correct = logits.argmax(dim=1) == labels
    if query_mask is None:
        return losses.mean(), correct
    if not query_mask.any():
        return losses.sum() * 0.0, correct
    return losses[query_mask].mean(), correct


def m_network(*, width: int = 64) -> nn.Module:
    """R3D-10 over the 2 channels (dx, dy) of motion vectors, stem unstrided."""
    return r3d_10(in_channels=2, width=width, stem_stride=1)


class MotionTransformer(nn.Module):
    """Clip map (B, C, T1, H1, W1) as a sequence of T1*H1*W1 tokens -> (B, tgt_len, hidden), one per target
    position, from learned queries."""

    def __init__(self, in_dim: int, src_len: int, tgt_len: int, *, hidden: int = 512, heads: int = 8,
                 encoder_layers: int = 2, decoder_layers: int = 4, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden, bias=False)
        self.src_pos = nn.Parameter(torch.rand(src_len, hidden))  # uniform, as the authors' nn.Embedding init
        self.tgt_pos = nn.Parameter(torch.rand(tgt_len, hidden))
        self.transformer = nn.Transformer(d_model=hidden, nhead=heads, num_encoder_layers=encoder_layers,
                                          num_decoder_layers=decoder_layers, dim_feedforward=hidden, dropout=dropout,
                                          batch_first=True)
        self.out_dim = hidden

    def forward(self, clip_map: Tensor) -> Tensor:
        tokens = clip_map.flatten(2).transpose(1, 2)  # (B, T1*H1*W1, C), (t, y, x) order
        if tokens.shape[1] != self.src_pos.shape[0]:
            raise ValueError(f"the clip feature map has {tokens.shape[1]} positions, the predictor was built for "
                             f"{self.src_pos.shape[0]}: keep the clip length and crop size of the run")
        src = self.proj(tokens) + self.src_pos
        return self.transformer(src, self.tgt_pos.expand(tokens.shape[0], -1, -1))


class ConvGRUCell(nn.Module):
    """A convolutional GRU cell (Ballas et al. 2015), 3x3 kernels, over (B, C, H, W)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.gates = nn.Conv2d(in_dim + hidden, 2 * hidden, 3, padding=1)
        self.candidate = nn.Conv2d(in_dim + hidden, hidden, 3, padding=1)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        reset, update = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * h], 1)))
        return (1 - update) * h + update * candidate


class MotionConvGRU(nn.Module):
    """The Table 1 alternative, DPC-style: a ConvGRU reads the clip map frame by frame (resampled to the target
    grid), then rolls out one prediction per target time step, each fed back as the next input."""

    def __init__(self, in_dim: int, tgt_shape: tuple[int, int, int], *, hidden: int = 512):
        super().__init__()
        self.tgt_shape = tgt_shape
        self.proj = nn.Conv2d(in_dim, hidden, 1)
        self.cell = ConvGRUCell(hidden, hidden)
        self.predict = nn.Sequential(nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, hidden, 1))
        self.out_dim = hidden

    def forward(self, clip_map: Tensor) -> Tensor:
        t3, h3, w3 = self.tgt_shape
        b, _, t1 = clip_map.shape[:3]
        if clip_map.shape[3:] != (h3, w3):
            clip_map = F.interpolate(clip_map, size=(t1, h3, w3), mode="nearest")
        h = clip_map.new_zeros(b, self.out_dim, h3, w3)
        for t in range(t1):
            h = self.cell(self.proj(clip_map[:, :, t]), h)
        steps = []
        for _ in range(t3):
            p = self.predict(h)
            steps.append(p)
            h = self.cell(p, h)
        return torch.stack(steps, 2).flatten(2).transpose(1, 2)  # (B, T3*H3*W3, hidden)


class MotionPrediction(nn.Module):
    """M-network, predictor and both heads; `forward` returns the eq. 2 loss and its top-1 accuracy.

    clip_map_shape: (C1, T1, H1, W1) of the video network's last map; future_frames: F, the motion target's frames;
    crop: the clip's side S in pixels (the M-network sees the MV grid resampled to S/2).
    """

    def __init__(self, clip_map_shape: tuple[int, int, int, int], *, future_frames: int, crop: int,
                 predictor: str = "transformer", hidden: int = 512, heads: int = 8, encoder_layers: int = 2,
                 decoder_layers: int = 4, dropout: float = 0.1, head_hidden: int = 2048, dim: int = 512,
                 m_width: int = 64, tau: float = 0.1, mv_clamp: float = 10.0):
        super().__init__()
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
        self.tau, self.mv_clamp = tau, mv_clamp
        self.m_size = (future_frames, max(crop // 2, 1), max(crop // 2, 1))
        self.m_network = m_network(width=m_width)
        with torch.no_grad():  # the target map's shape, from a dry run
            self.m_network.eval()
            target_shape = tuple(self.m_network.forward_features(torch.zeros(1, 2, *self.m_size)).shape[2:])
            self.m_network.train()
        self.target_shape = target_shape
        c1, t1, h1, w1 = clip_map_shape
        if predictor == "transformer":
            self.predictor = MotionTransformer(c1, t1 * h1 * w1, target_shape[0] * target_shape[1] * target_shape[2],
                                               hidden=hidden, heads=heads, encoder_layers=encoder_layers,
                                               decoder_layers=decoder_layers, dropout=dropout)
        else:
            self.predictor = MotionConvGRU(c1, target_shape, hidden=hidden)
        self.target_head = bn_head(self.m_network.out_dim, head_hidden, dim)  # g1^M
        self.pred_head = bn_head(hidden, head_hidden, dim)                    # g2^M

    def motion_features(self, mv: Tensor) -> Tensor:
        """(B, 2, F, g, g) motion vectors -> (B * N, dim) normalised target embeddings, (b, t, y, x) row order."""
        x = F.interpolate(scale_motion(mv, self.mv_clamp), size=self.m_size, mode="nearest")
        v = self.m_network.forward_features(x)
        return F.normalize(self.target_head(v.flatten(2).transpose(1, 2).flatten(0, 1)), dim=1)

    def forward(self, clip_map: Tensor, mv: Tensor, mv_valid: Tensor | None = None,
                negative_mv: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """clip_map (B, C1, T1, H1, W1); mv (B, 2, F, g, g) the target motion; mv_valid (B, 1, F, g, g): samples
        with no valid vector in their target (past the end of a short video) are not queries; negative_mv
        (B, K, 2, F, g, g). Returns (loss, top-1 accuracy over the query positions)."""
        b = mv.shape[0]
        motion = mv if negative_mv is None else torch.cat([mv, negative_mv.flatten(0, 1)])
        keys = self.motion_features(motion)  # one pass: BatchNorm sees targets and negatives together
        n = keys.shape[0] // motion.shape[0]
        target, negatives = keys[:b * n], (keys[b * n:] if negative_mv is not None else None)
        pred = self.predictor(clip_map)
        pred = F.normalize(self.pred_head(pred.flatten(0, 1)), dim=1)
        mask = None
        if mv_valid is not None:
            mask = (mv_valid.flatten(1) > 0).any(dim=1).repeat_interleave(n)
        loss, correct = motion_nce(pred, target, negatives, self.tau, query_mask=mask)
        accuracy = correct[mask].float().mean() if mask is not None and mask.any() else correct.float().mean()
        return loss, accuracy.detach()


# -- Table 1's other losses: predicting the motion values themselves ----------------------------------------------

MOTION_LOSSES = ("nce", "mse", "ce")
VALUE_PATCH = 4  # value cells per side of each target position (at 112 px and mv cell 4: the MV grid itself)


def quantise_motion(x: Tensor, bins: int) -> Tensor:
    """Scaled motion values (`scale_motion`, in [-1, 1]) -> bin indices 0..bins-1, bins of equal width."""
    return ((x.clamp(-1, 1) + 1) * (bins / 2)).long().clamp(max=bins - 1)


def motion_patches(x: Tensor, target_shape: tuple[int, int, int]) -> Tensor:
    """(B, C, F, g, g) -> (B * T3 * H3 * W3, C * ft * 4 * 4): the values each target position predicts, rows in
    (b, t, y, x) order as the predictor's; the field resampled by nearest neighbour to (T3 * ft, 4 * H3, 4 * W3),
    ft = ceil(F / T3)."""
    t3, h3, w3 = target_shape
    b, c, f = x.shape[:3]
    ft, p = -(-f // t3), VALUE_PATCH
    x = F.interpolate(x, size=(t3 * ft, h3 * p, w3 * p), mode="nearest")
    x = x.view(b, c, t3, ft, h3, p, w3, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b * t3 * h3 * w3, c * ft * p * p)


def motion_value_loss(pred: Tensor, target: Tensor, valid: Tensor, *, loss: str,
                      bins: int) -> tuple[Tensor, Tensor]:
    """Table 1's regression (`mse`: pred (M, P) against target (M, P)) or classification of quantised values (`ce`:
    pred (M, P, bins) logits against the bins of target), averaged over the entries where `valid` (M, P) is True
    (none: a zero that keeps the graph). Returns (loss, accuracy): the share of valid entries whose predicted bin
    (mse: the bin of the regressed value) is the target's."""
    truth = quantise_motion(target, bins)
    if loss == "mse":
        per_entry, guess = (pred - target) ** 2, quantise_motion(pred.detach(), bins)
    elif loss == "ce":
        per_entry = F.cross_entropy(pred.flatten(0, 1), truth.flatten(), reduction="none").view_as(target)
        guess = pred.detach().argmax(-1)
    else:
        raise ValueError(f"motion value loss must be mse or ce, got {loss!r}")
    mask = valid.float()
    count = mask.sum()
    value = (per_entry * mask).sum() / count.clamp(min=1)
    accuracy = ((guess == truth).float() * mask).sum() / count.clamp(min=1)
    return value, accuracy


class MotionValuePrediction(MotionPrediction):
    """The predictor of `MotionPrediction` on the same target positions, with a linear layer that predicts the
    motion values of each position's patch (`motion_patches`) instead of an M-network embedding: `loss` mse
    (the scaled values) or ce (`bins` logits per value). No M-network, no heads, no hard negatives."""

    def __init__(self, clip_map_shape: tuple[int, int, int, int], *, loss: str, bins: int = 16, **kwargs):
        super().__init__(clip_map_shape, **kwargs)
        if loss not in ("mse", "ce") or bins < 2:
            raise ValueError(f"MotionValuePrediction: loss mse or ce and bins >= 2, got {loss!r}, {bins}")
        del self.m_network, self.target_head, self.pred_head
        self.loss, self.bins = loss, bins
        f = self.m_size[0]
        self.patch = 2 * -(-f // self.target_shape[0]) * VALUE_PATCH ** 2
        self.values = nn.Linear(self.predictor.out_dim, self.patch * (bins if loss == "ce" else 1))

    def forward(self, clip_map: Tensor, mv: Tensor, mv_valid: Tensor | None = None,
                negative_mv: Tensor | None = None) -> tuple[Tensor, Tensor]:
        target = motion_patches(scale_motion(mv.float(), self.mv_clamp), self.target_shape)
        valid = torch.ones_like(mv[:, :1]) if mv_valid is None else mv_valid
        valid = motion_patches(valid.float().expand(-1, 2, -1, -1, -1), self.target_shape) > 0
        pred = self.values(self.predictor(clip_map).flatten(0, 1)).float()
        if self.loss == "ce":
            pred = pred.view(pred.shape[0], self.patch, self.bins)
        loss, accuracy = motion_value_loss(pred, target, valid, loss=self.loss, bins=self.bins)
        return loss, accuracy.detach()
