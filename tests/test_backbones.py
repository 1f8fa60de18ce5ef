import math

import pytest
import torch
from torchvision.models import video as tv_video

from motionssl.train.backbones import BACKBONES, r2d_10, r2plus1d_18, r3d_10, r3d_18, s3d

TINY = {"r3d18": {"width": 4}, "r2plus1d18": {"width": 4}, "r3d10": {"width": 4}, "r2d10": {"width": 4},
        "r2d18": {"width": 4}, "s3d": {"width_mult": 4 / 64}, "c3d": {"width": 4}, "slow_r50": {"width": 4}}


def expected_map(name: str, t: int, h: int) -> tuple[int, int]:
    """(T', H') of the last feature map: every stride-2 stage rounds up, so k of them give ceil(size / 2**k)."""
    spatial = 16 if name.startswith("r") else 32
    temporal = {"r2d10": 1, "r2d18": 1, "s3d": 8, "c3d": 16, "slow_r50": 1}.get(name, 8)
    return math.ceil(t / temporal), math.ceil(h / spatial)


GRID = [(name, c, t, h) for name in BACKBONES for c in (1, 2, 3)
        for t in ((1, 4, 8, 16) if name.startswith("r2d") else (4, 8, 16)) for h in (32, 56, 112)
        if t * h <= 8 * 112]  # the larger clips only where cheap


@pytest.mark.parametrize("name,in_channels,t,h", GRID)
def test_shapes_and_pooling(name, in_channels, t, h):
    torch.manual_seed(0)
    net = BACKBONES[name](in_channels=in_channels, **TINY[name]).eval()
    x = torch.randn(2, in_channels, t, h, h)
    with torch.no_grad():
        fmap, pooled = net.forward_features(x), net(x)
    t_out, h_out = expected_map(name, t, h)
    assert fmap.shape == (2, net.out_dim, t_out, h_out, h_out)
    assert pooled.shape == (2, net.out_dim)
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3, 4)))


def test_out_dims_at_tiny_width():
    dims = {name: BACKBONES[name](**TINY[name]).out_dim for name in BACKBONES}
    # 8 x width for the ResNets and C3D; S3D's last block: 384 + 384 + 128 + 128 at 1/16 width.
    assert dims == {"r3d18": 32, "r2plus1d18": 32, "r3d10": 32, "r2d10": 32, "r2d18": 32, "s3d": 24 + 24 + 8 + 8, "c3d": 32,
                    "slow_r50": 4 * 8 * 4}  # Slow-only: bottleneck expansion 4


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("ours,theirs,head", [(r3d_18, tv_video.r3d_18, "fc"),
                                              (r2plus1d_18, tv_video.r2plus1d_18, "fc"),
                                              (s3d, tv_video.s3d, "classifier")])
def test_torchvision_parity(ours, theirs, head):
    """Same parameter count as torchvision's model without its head, and the same state_dict keys and shapes."""
    mine, ref = ours(), theirs(weights=None)
    assert n_params(mine) == n_params(ref) - n_params(getattr(ref, head))
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith(head + ".")}
    assert {k: v.shape for k, v in mine.state_dict().items()} == ref_shapes
    assert mine.out_dim == {"fc": 512, "classifier": 1024}[head]


def test_same_function_as_torchvision_with_its_weights():
    """Loaded with torchvision's (random) weights, the ResNets compute its pooled features and S3D its map."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 64, 64)
    for ours, theirs in [(r3d_18, tv_video.r3d_18), (r2plus1d_18, tv_video.r2plus1d_18)]:
        ref, mine = theirs(weights=None).eval(), ours().eval()
        mine.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
        with torch.no_grad():
            expected = ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.stem(x)))))).flatten(1)
            torch.testing.assert_close(mine(x), expected)

    ref, mine = tv_video.s3d(weights=None).eval(), s3d().eval()
    mine.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("classifier.")})
    with torch.no_grad():
        torch.testing.assert_close(mine.forward_features(x), ref.features(x))


def test_r2d_sees_each_frame_alone_and_r3d_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 32, 32)
    y = x.clone()
    y[:, :, 2] += 1.0  # change frame 2 only
    r2d, r3d = r2d_10(in_channels=2, width=4).eval(), r3d_10(in_channels=2, width=4).eval()
    with torch.no_grad():
        a, b = r2d.forward_features(x), r2d.forward_features(y)
        changed = (a - b).abs().amax(dim=(0, 1, 3, 4)) > 0
        assert changed.tolist() == [False, False, True, False]
        single = r2d.forward_features(x[:, :, 2:3])  # one frame alone (an I-frame): the same features
        torch.testing.assert_close(single, a[:, :, 2:3])
        assert not torch.allclose(r3d.forward_features(x), r3d.forward_features(y))


def test_backward_reaches_the_stem():
    for name in BACKBONES:
        net = BACKBONES[name](**TINY[name])
        net(torch.randn(2, 3, 4, 32, 32)).square().sum().backward()
        first = next(net.parameters())
        assert first.grad is not None and first.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", list(BACKBONES))
def test_last_convs_make_the_last_feature_map(name):
    """The outputs of `last_convs`, concatenated, have the last feature map's channels (and its shape, but for C3D's
    pool5 after them), and the feature map depends on each of them."""
    torch.manual_seed(0)
    net = BACKBONES[name](**TINY[name]).train()
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in net.last_convs()]
    fmap = net.forward_features(torch.randn(2, 3, 8, 32, 32))
    for h in hooks:
        h.remove()
    stacked = torch.cat(outputs, dim=1)
    assert stacked.shape[1] == fmap.shape[1] == net.out_dim
    assert stacked.shape == fmap.shape or name == "c3d"
    grads = torch.autograd.grad(fmap.square().sum(), outputs)
    assert all(g.abs().sum() > 0 for g in grads)


def test_slow_r50_is_resnet50_with_the_slow_only_temporal_kernels():
    """MoDist's R3D-50 (paper 002 Table 1): torchvision's 2D ResNet-50 with the stem's kernel 5 deep in time and the
    first conv of every res4 and res5 bottleneck 3 deep; at full width the parameters are ResNet-50's (no fc) plus
    those extra temporal taps, counted in closed form."""
    from torchvision.models import resnet50

    from motionssl.train.backbones import slow_r50

    net = slow_r50()
    r50 = resnet50()
    extra = 4 * (3 * 64 * 7 * 7)                       # stem: 5 temporal taps instead of 1
    for stage, (inplanes, planes, blocks) in {"layer3": (512, 256, 6), "layer4": (1024, 512, 3)}.items():
        extra += 2 * planes * (inplanes + (blocks - 1) * 4 * planes)  # conv1 of each block: 3 taps instead of 1
    assert n_params(net) == n_params(r50) - n_params(r50.fc) + extra == 31_672_128
    kernels = {name: m.kernel_size[0] for name, m in net.named_modules() if name.endswith("conv1")}
    assert kernels["layer1.0.conv1"] == kernels["layer2.3.conv1"] == 1 and kernels["layer3.5.conv1"] == 3
    assert kernels["layer4.0.conv1"] == 3 and net.stem[0].kernel_size == (5, 7, 7) and net.out_dim == 2048
    x = torch.randn(1, 3, 8, 64, 64)
    assert slow_r50(width=4).forward_features(x).shape == (1, 128, 8, 2, 2)  # no temporal stride, spatial 32
