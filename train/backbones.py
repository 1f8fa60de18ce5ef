"""Video backbones: (B, C, T, H, W) in, (B, out_dim) out, randomly initialised, no classifier.

The VideoResNet family (R3D, R(2+1)D, R2D) follows torchvision's `models/video/resnet.py` module for module, so at
the default width its state_dict keys and shapes are torchvision's without `fc`; S3D reuses torchvision's blocks.
`width` (channels of the first stage, 64 at full size) and the depth are parameters, so tests can build tiny nets.
Heads live with the methods (`contrastive.projection_head`), never here.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn
from torchvision.models.video.s3d import SepInceptionBlock3D, TemporalSeparableConv
from torchvision.ops.misc import Conv3dNormActivation


class Backbone(nn.Module):
    """`forward_features` gives the last feature map (B, out_dim, T', H', W'); `forward` its global average.

    `last_convs` are the convolutions whose outputs, concatenated along channels, form the last convolutional
    feature map before its BatchNorm, residual sum and ReLU (MCL's gradient maps are taken there: the gradient
    with respect to the final, globally averaged map is the same at every position).
    """

    out_dim: int

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def last_convs(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).mean(dim=(2, 3, 4))


def init_weights(model: nn.Module) -> None:
    """torchvision's VideoResNet init: He (fan_out) for convs, BN scale 1 and shift 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --- VideoResNet -------------------------------------------------------------------------------------------------

class Conv3DSimple(nn.Conv3d):
    """3x3x3 convolution (R3D)."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int, stride: int = 1):
        super().__init__(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)

    @staticmethod
    def downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class Conv2Plus1D(nn.Sequential):
    """1x3x3 spatial then 3x1x1 temporal convolution, with `midplanes` channels in between (R(2+1)D)."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int, stride: int = 1):
        super().__init__(
            nn.Conv3d(in_planes, midplanes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
                      bias=False),
            nn.BatchNorm3d(midplanes),
            nn.ReLU(inplace=True),
            nn.Conv3d(midplanes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0),
                      bias=False),
        )

    @staticmethod
    def downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class Conv2D(nn.Conv3d):
    """1x3x3 convolution applied to every frame alone, never strided in time (R2D)."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int, stride: int = 1):
        super().__init__(in_planes, out_planes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
                         bias=False)

    @staticmethod
    def downsample_stride(stride: int) -> tuple[int, int, int]:
        return 1, stride, stride


ConvBuilder = type[Conv3DSimple] | type[Conv2Plus1D] | type[Conv2D]


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, conv: ConvBuilder, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        # R(2+1)D: as many parameters as the 3x3x3 convolution it replaces (Tran et al. 2018, eq. 1).
        midplanes = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)
        self.conv1 = nn.Sequential(conv(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes),
                                   nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv(planes, planes, midplanes), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


def r3d_stem(in_channels: int, width: int, *, stride: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, width, kernel_size=(3, 7, 7), stride=(1, stride, stride), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def r2plus1d_stem(in_channels: int, width: int) -> nn.Sequential:
    mid = max(1, 45 * width // 64)  # torchvision's 45 at width 64
    return nn.Sequential(
        nn.Conv3d(in_channels, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, width, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def r2d_stem(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, width, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


class VideoResNet(Backbone):
    """Stem, then four stages of BasicBlocks with `width * (1, 2, 4, 8)` channels, stages 2-4 strided by 2.

    Output stride 16 in space; in time 8 for R3D and R(2+1)D (1 when T = 1), 1 for R2D.
    """

    def __init__(self, *, conv: ConvBuilder, stem: nn.Module, layers: Sequence[int], width: int):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"VideoResNet has 4 stages, got layers={tuple(layers)}")
        self.stem = stem
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv3d(inplanes, planes, kernel_size=1, stride=conv.downsample_stride(stride), bias=False),
                    nn.BatchNorm3d(planes),
                )
            stage = [BasicBlock(inplanes, planes, conv, stride, downsample)]
            stage += [BasicBlock(planes, planes, conv) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes
        self.out_dim = inplanes
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def last_convs(self) -> list[nn.Module]:
        return [self.layer4[-1].conv2[0]]  # R(2+1)D: the (2+1)D pair, whose output is its temporal conv's


def r3d_18(*, in_channels: int = 3, width: int = 64) -> VideoResNet:
    return VideoResNet(conv=Conv3DSimple, stem=r3d_stem(in_channels, width), layers=(2, 2, 2, 2), width=width)


def r3d_10(*, in_channels: int = 3, width: int = 64, stem_stride: int = 2) -> VideoResNet:
    """`stem_stride=1` halves the output stride (8 in space): CMD's M-network on coarse motion-vector maps."""
    stem = r3d_stem(in_channels, width, stride=stem_stride)
    return VideoResNet(conv=Conv3DSimple, stem=stem, layers=(1, 1, 1, 1), width=width)


def r2plus1d_18(*, in_channels: int = 3, width: int = 64) -> VideoResNet:
    return VideoResNet(conv=Conv2Plus1D, stem=r2plus1d_stem(in_channels, width), layers=(2, 2, 2, 2), width=width)


def r2d_10(*, in_channels: int = 3, width: int = 64) -> VideoResNet:
    """ResNet-10 applied to each frame (no temporal kernel or stride): works for T = 1, e.g. CMD's I-frame network."""
    return VideoResNet(conv=Conv2D, stem=r2d_stem(in_channels, width), layers=(1, 1, 1, 1), width=width)


def r2d_18(*, in_channels: int = 3, width: int = 64) -> VideoResNet:
    """ResNet-18 applied to each frame, e.g. MoDist's motion pathway (at 1/8 of the visual pathway's width)."""
    return VideoResNet(conv=Conv2D, stem=r2d_stem(in_channels, width), layers=(2, 2, 2, 2), width=width)


# --- S3D ---------------------------------------------------------------------------------------------------------

# Branch widths of each SepInceptionBlock3D at full size: (b0_out, b1_mid, b1_out, b2_mid, b2_out, b3_out).
S3D_BLOCKS = {
    "3": ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    "4": ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
          (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),
    "5": ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
}


class S3D(Backbone):
    """S3D (Xie et al. 2018) from torchvision's blocks, every channel count scaled by `width_mult`.

    Same `features` layout as torchvision's S3D, but BatchNorm keeps PyTorch's momentum (torchvision's 0.001 is the
    TensorFlow port's, for converted weights: from scratch the running statistics would lag for thousands of
    steps), and the last max-pool rounds up so that clips of 4 frames or 32 pixels still go through.
    """

    def __init__(self, *, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        norm = partial(nn.BatchNorm3d, eps=1e-3)

        def ch(c: int) -> int:
            return max(1, round(c * width_mult))

        def inception(in_planes: int, widths: tuple[int, ...]) -> tuple[SepInceptionBlock3D, int]:
            w = tuple(ch(c) for c in widths)
            return SepInceptionBlock3D(in_planes, *w, norm_layer=norm), w[0] + w[2] + w[4] + w[5]

        layers: list[nn.Module] = [
            TemporalSeparableConv(in_channels, ch(64), 7, 2, 3, norm),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            Conv3dNormActivation(ch(64), ch(64), kernel_size=1, norm_layer=norm),
            TemporalSeparableConv(ch(64), ch(192), 3, 1, 1, norm),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        ]
        planes = ch(192)
        pools = {"4": nn.MaxPool3d(kernel_size=3, stride=2, padding=1),
                 "5": nn.MaxPool3d(kernel_size=2, stride=2, ceil_mode=True)}
        for stage, blocks in S3D_BLOCKS.items():
            if stage in pools:
                layers.append(pools[stage])
            for widths in blocks:
                block, planes = inception(planes, widths)
                layers.append(block)
        self.features = nn.Sequential(*layers)
        self.out_dim = planes

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def last_convs(self) -> list[nn.Module]:
        block = self.features[-1]  # branches in the order they are concatenated, each ending in conv, BN, ReLU
        return [block.branch0[0], block.branch1[1][1][0], block.branch2[1][1][0], block.branch3[1][0]]


def s3d(*, in_channels: int = 3, width_mult: float = 1.0) -> S3D:
    return S3D(in_channels=in_channels, width_mult=width_mult)


# --- C3D ---------------------------------------------------------------------------------------------------------

class C3D(Backbone):
    """The 8-convolution C3D (Tran et al. 2015) without fc6/fc7, BatchNorm after every convolution.

    BatchNorm is what video SSL work trains C3D with (VCOP, PRP, ...); the classic net has none. Max-pools round
    up, so the pool5 padding of the original is not needed and short or small clips go through.
    """

    def __init__(self, *, in_channels: int = 3, width: int = 64):
        super().__init__()

        def conv(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv3d(i, o, kernel_size=3, padding=1, bias=False), nn.BatchNorm3d(o),
                                 nn.ReLU(inplace=True))

        def pool(kernel: int | tuple[int, int, int]) -> nn.MaxPool3d:
            return nn.MaxPool3d(kernel_size=kernel, stride=kernel, ceil_mode=True)

        w = width
        self.features = nn.Sequential(
            conv(in_channels, w), pool((1, 2, 2)),
            conv(w, 2 * w), pool(2),
            conv(2 * w, 4 * w), conv(4 * w, 4 * w), pool(2),
            conv(4 * w, 8 * w), conv(8 * w, 8 * w), pool(2),
            conv(8 * w, 8 * w), conv(8 * w, 8 * w), pool(2),
        )
        self.out_dim = 8 * w
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def last_convs(self) -> list[nn.Module]:
        return [self.features[-2][0]]  # the last conv, BN, ReLU before pool5


def c3d(*, in_channels: int = 3, width: int = 64) -> C3D:
    return C3D(in_channels=in_channels, width=width)


# --- Slow-only R3D-50 ----------------------------------------------------------------------------------------------

class Bottleneck3D(nn.Module):
    """ResNet-50's bottleneck (1x1, 3x3, 1x1 convs, 4x expansion) with a temporal kernel `kt` in its first conv: the
    Slow-only block (kt 1: 2D in res2 and res3; kt 3 in res4 and res5). Spatial stride in the 3x3 conv."""

    def __init__(self, inplanes: int, planes: int, *, kt: int, stride: int = 1):
        super().__init__()
        out = 4 * planes
        self.conv1 = nn.Conv3d(inplanes, planes, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv3d(inplanes, out, 1, stride=(1, stride, stride), bias=False),
                                            nn.BatchNorm3d(out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class SlowOnly(Backbone):
    """MoDist's visual pathway (paper 002, Table 1), the "Slow-only" R3D-50 of SlowFast and CVRL: a 5x7x7 stem conv
    (temporal kernel 5, no temporal stride) and a 1x3x3 max-pool, then bottleneck stages of (3, 4, 6, 3) blocks
    with `width * (1, 2, 4, 8)` inner channels (x4 out: 2048 at width 64); res2 and res3 2D (temporal kernel 1),
    res4 and res5 with temporal kernel 3. Output stride 32 in space, 1 in time."""

    def __init__(self, *, in_channels: int = 3, width: int = 64, layers: Sequence[int] = (3, 4, 6, 3)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, width, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(width), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, kt = width * 2**i, 1 if i < 2 else 3
            stage = [Bottleneck3D(inplanes, planes, kt=kt, stride=1 if i == 0 else 2)]
            stage += [Bottleneck3D(4 * planes, planes, kt=kt) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = 4 * planes
        self.out_dim = inplanes
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def last_convs(self) -> list[nn.Module]:
        return [self.layer4[-1].conv3]


def slow_r50(*, in_channels: int = 3, width: int = 64) -> SlowOnly:
    return SlowOnly(in_channels=in_channels, width=width)


BACKBONES = {"r3d18": r3d_18, "r2plus1d18": r2plus1d_18, "r3d10": r3d_10, "r2d10": r2d_10, "r2d18": r2d_18, "s3d": s3d,
             "c3d": c3d, "slow_r50": slow_r50}
