"""The CUDA paths that can be checked without a GPU: the backend and device each process picks, and a resume
that leaves no training state on the CPU (the `meta` device stands in for a GPU). benchmarks/gpu_check.py runs
them on one."""
import pytest
import torch

from motionssl.eval.motion import backward_warp
from motionssl.train import checkpoint
from motionssl.train.config import ConfigError, resolve
from motionssl.train.distributed import BACKEND_ENV, plan
from motionssl.train.methods import METHODS
from motionssl.train.optim import make_optimizer, param_groups

CPU, CUDA0, CUDA1 = torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:1")


@pytest.mark.parametrize("kwargs, expected", [
    ({"world_size": 1, "local_rank": 0, "device_count": 0, "backend": None, "torchrun": False}, (None, CPU)),
    ({"world_size": 1, "local_rank": 0, "device_count": 2, "backend": None, "torchrun": True}, (None, CUDA0)),
    ({"world_size": 2, "local_rank": 1, "device_count": 2, "backend": None, "torchrun": True}, ("nccl", CUDA1)),
    ({"world_size": 2, "local_rank": 1, "device_count": 0, "backend": None, "torchrun": True}, ("gloo", CPU)),
    # forced gloo keeps every rank on the CPU, even on a host with fewer GPUs than ranks
    ({"world_size": 2, "local_rank": 1, "device_count": 1, "backend": "gloo", "torchrun": True}, ("gloo", CPU)),
    # forced, a group of one under torchrun: DDP and the backend run in the GPU check's one-process run
    ({"world_size": 1, "local_rank": 0, "device_count": 1, "backend": "nccl", "torchrun": True}, ("nccl", CUDA0)),
    ({"world_size": 1, "local_rank": 0, "device_count": 0, "backend": "gloo", "torchrun": True}, ("gloo", CPU)),
    ({"world_size": 1, "local_rank": 0, "device_count": 0, "backend": "gloo", "torchrun": False}, (None, CPU)),
])
def test_plan_picks_backend_and_device(kwargs, expected):
    assert plan(**kwargs) == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"world_size": 2, "local_rank": 1, "device_count": 1, "backend": None},
     "LOCAL_RANK 1 needs GPU cuda:1 but this host shows 1; start at most 1 process(es) per node"),
    ({"world_size": 4, "local_rank": 3, "device_count": 2, "backend": "nccl"}, "torchrun --nproc_per_node 2"),
    ({"world_size": 2, "local_rank": 0, "device_count": 0, "backend": "nccl"}, f"{BACKEND_ENV}=nccl needs a CUDA GPU"),
    ({"world_size": 2, "local_rank": 0, "device_count": 0, "backend": "mpi"}, "use nccl or gloo"),
])
def test_plan_refuses_in_one_line(kwargs, message):
    with pytest.raises(ConfigError) as e:
        plan(**kwargs, torchrun=True)
    assert message in str(e.value) and "\n" not in str(e.value)


def _tiny(method: str, optimizer: str):
    cfg = resolve(METHODS[method].defaults, {}, {
        "method": method, "store": "-", "out": "-", "backbone": "r3d10", "backbone_width": 4, "clip_len": 4,
        "stride": 1, "size": 32, "steps": 10, "optimizer": optimizer,
        "method_options": {"hidden": 8, "dim": 8, "queue_size": 8}}, source="test")
    m = METHODS[method](cfg, total_steps=10)
    return m, make_optimizer(param_groups(m, cfg.weight_decay), name=cfg.optimizer, lr=0.1)


def _tensors(obj, path=""):
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}/{i}")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_leaves_no_training_state_on_the_cpu(tmp_path, optimizer):
    """A checkpoint written on the CPU (loaded, as always, to the CPU) restored into a method already on another
    device: every weight, momentum encoder, queue and optimiser moment ends up there; only torch's own step counts
    of Adam stay on the CPU, as torch keeps them for any device."""
    method, opt = _tiny("mvcgc", optimizer)  # two streams: two momentum encoders and two queues
    x = torch.rand(2, 3, 4, 32, 32)
    method.rgb.query(x).sum().backward()  # optimiser state for the parameters that got a gradient
    opt.step()
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    checkpoint.save(tmp_path / "c.pt", {"method": method.state_dict(), "optimizer": opt.state_dict(),
                                        "scaler": scaler.state_dict(), "rng": [checkpoint.rng_state()]})
    payload = checkpoint.load(tmp_path / "c.pt")
    assert {t.device.type for _, t in _tensors(payload)} == {"cpu"}

    target = torch.device("meta")
    fresh, _ = _tiny("mvcgc", optimizer)
    fresh.to(target)
    fresh_opt = make_optimizer(param_groups(fresh, 0.0), name=optimizer, lr=0.1)
    fresh_scaler = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.warns(UserWarning, match="meta"):  # copying into a meta tensor is a no-op, and torch says so
        checkpoint.restore(payload, method=fresh, optimizer=fresh_opt, scaler=fresh_scaler)
    names = [k for k, _ in _tensors(fresh.state_dict())]
    assert any("queue.keys" in k for k in names) and any("backbone_k" in k for k in names)
    off = [k for k, t in _tensors(fresh.state_dict()) if t.device != target]
    assert not off
    moments = [(k, t) for k, t in _tensors(fresh_opt.state_dict()["state"]) if not k.endswith("/step")]
    assert len(moments) >= len(list(method.rgb.backbone.parameters()))
    assert all(t.device == target for _, t in moments)
    steps = [t for k, t in _tensors(fresh_opt.state_dict()["state"]) if k.endswith("/step")]
    assert all(t.device == CPU and t.dim() == 0 for t in steps) and (optimizer == "adam") == bool(steps)
    assert fresh_scaler.get_scale() == scaler.get_scale()


def test_backward_warp_stays_on_the_frames_device():
    frames, shift = torch.zeros(2, 3, 8, 8, device="meta"), torch.zeros(2, 2, 8, 8, device="meta")
    assert backward_warp(frames, shift).device.type == "meta"
