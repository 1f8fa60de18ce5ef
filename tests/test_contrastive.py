import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from motionssl.train.contrastive import (MoCoQueue, info_nce, info_nce_multi, mil_nce,
                                         momentum_at, momentum_update, projection_head)
from motionssl.train.distributed import DistInfo, barrier, cleanup, gather, init_from_env, is_main


def unit(*shape: int, seed: int, dim: int = -1) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=dim)


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


# --- naive references: python floats, one query at a time ---------------------------------------------------------

def naive_info_nce(q, k, queue, tau, mask=None) -> float:
    q, k = q.double().tolist(), k.double().tolist()
    losses = []
    for i in range(len(q)):
        pos = math.exp(dot(q[i], k[i]) / tau)
        if queue is None:
            denom = sum(math.exp(dot(q[i], kj) / tau) for kj in k)
        else:
            denom = pos + sum(math.exp(dot(q[i], qj) / tau) for j, qj in enumerate(queue.double().tolist())
                              if mask is None or not mask[i, j])
        losses.append(-math.log(pos / denom))
    return sum(losses) / len(losses)


def naive_multi(q, keys, pos_mask, tau, *, sum_inside_log: bool) -> float:
    q, keys = q.double().tolist(), keys.double().tolist()
    losses = []
    for i in range(len(q)):
        e = [math.exp(dot(q[i], kn) / tau) for kn in keys]
        positives = [n for n in range(len(keys)) if pos_mask[i, n]]
        if sum_inside_log:
            losses.append(-math.log(sum(e[p] for p in positives) / sum(e)))
        else:
            losses.append(-sum(math.log(e[p] / sum(e)) for p in positives) / len(positives))
    return sum(losses) / len(losses)


# --- info_nce ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("B,K,tau", [(1, 3, 0.07), (4, 16, 0.07), (8, 5, 0.2), (3, 64, 1.0), (6, 0, 0.1)])
def test_info_nce_matches_naive(B, K, tau):
    q, k = unit(B, 8, seed=1), unit(B, 8, seed=2)
    if K == 0:
        assert info_nce(q, k, None, tau).item() == pytest.approx(naive_info_nce(q, k, None, tau), rel=1e-5)
        return
    queue = unit(K, 8, seed=3)
    assert info_nce(q, k, queue, tau).item() == pytest.approx(naive_info_nce(q, k, queue, tau), rel=1e-5)
    mask = torch.rand(B, K, generator=torch.Generator().manual_seed(4)) < 0.4
    got = info_nce(q, k, queue, tau, queue_mask=mask).item()
    assert got == pytest.approx(naive_info_nce(q, k, queue, tau, mask), rel=1e-5)


def test_info_nce_collapsed_embeddings():
    B, K = 5, 12
    v = unit(1, 16, seed=0)
    q, k, queue = v.expand(B, 16), v.expand(B, 16), v.expand(K, 16)
    assert info_nce(q, k, queue, 0.07).item() == pytest.approx(math.log(1 + K), rel=1e-5)
    assert info_nce(q, k, None, 0.07).item() == pytest.approx(math.log(B), rel=1e-5)
    mask = torch.zeros(B, K, dtype=torch.bool)
    mask[:, :4] = True  # 4 entries of every query's own video: 8 negatives left
    assert info_nce(q, k, queue, 0.07, queue_mask=mask).item() == pytest.approx(math.log(1 + 8), rel=1e-5)
    all_masked = torch.ones(B, K, dtype=torch.bool)
    assert info_nce(q, k, queue, 0.07, queue_mask=all_masked).item() == pytest.approx(0.0, abs=1e-6)


def test_info_nce_gradients_reach_q_and_k_and_match_closed_form():
    B, K, D, tau = 4, 6, 8, 0.1
    q, k = unit(B, D, seed=5).requires_grad_(), unit(B, D, seed=6).requires_grad_()
    queue = unit(K, D, seed=7)
    info_nce(q, k, queue, tau).backward()
    # loss = mean_i (logsumexp_j s_ij - s_i0), s_ij = q_i . v_ij / tau, v_i0 = k_i, v_ij = queue_j (j >= 1)
    with torch.no_grad():
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / tau
        p = logits.softmax(dim=1)
        grad_q = (p[:, :1] * k + p[:, 1:] @ queue - k) / (B * tau)
        grad_k = (p[:, :1] - 1) * q / (B * tau)
    torch.testing.assert_close(q.grad, grad_q)
    torch.testing.assert_close(k.grad, grad_k)

    q.grad = k.grad = None
    info_nce(q, k, None, tau).backward()  # in-batch: keys get gradient from every query
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


def test_info_nce_float32_under_autocast():
    q, k, queue = unit(4, 32, seed=8), unit(4, 32, seed=9), unit(64, 32, seed=10)
    expected = info_nce(q, k, queue, 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce(q, k, queue, 0.07)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_queue_mask_needs_queue():
    q = unit(2, 4, seed=0)
    with pytest.raises(ValueError):
        info_nce(q, q, None, queue_mask=torch.zeros(2, 3, dtype=torch.bool))


# --- multi-positive ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("B,N,tau", [(3, 7, 0.07), (5, 20, 0.5)])
def test_multi_positive_losses_match_naive(B, N, tau):
    q, keys = unit(B, 6, seed=11), unit(N, 6, seed=12)
    mask = torch.rand(B, N, generator=torch.Generator().manual_seed(13)) < 0.3
    mask[torch.arange(B), torch.arange(B)] = True  # at least one positive per row
    assert info_nce_multi(q, keys, mask, tau).item() == pytest.approx(
        naive_multi(q, keys, mask, tau, sum_inside_log=False), rel=1e-5)
    assert mil_nce(q, keys, mask, tau).item() == pytest.approx(
        naive_multi(q, keys, mask, tau, sum_inside_log=True), rel=1e-5)


def test_multi_positive_with_one_positive_is_info_nce():
    q, k = unit(6, 8, seed=14), unit(6, 8, seed=15)
    eye = torch.eye(6, dtype=torch.bool)
    expected = info_nce(q, k, None, 0.07)
    torch.testing.assert_close(info_nce_multi(q, k, eye, 0.07), expected)
    torch.testing.assert_close(mil_nce(q, k, eye, 0.07), expected)


def test_multi_positive_rejects_rows_without_positive():
    q = unit(3, 4, seed=0)
    mask = torch.eye(3, dtype=torch.bool)
    mask[1, 1] = False
    for loss in (info_nce_multi, mil_nce):
        with pytest.raises(ValueError, match="positive"):
            loss(q, q, mask, 0.1)


# --- queue, momentum, head ------------------------------------------------------------------------------------------

def test_queue_wraps_around_and_masks_own_video():
    queue = MoCoQueue(dim=4, size=5)
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(5))
    assert queue.video_ids.tolist() == [-1] * 5 and queue.ptr.item() == 0
    first, second = unit(3, 4, seed=1), unit(3, 4, seed=2)
    queue.enqueue(first, torch.tensor([10, 11, 12]))
    queue.enqueue(second, torch.tensor([20, 21, 22]))  # slots 3, 4, then 0
    assert queue.ptr.item() == 1
    assert queue.video_ids.tolist() == [22, 11, 12, 20, 21]
    torch.testing.assert_close(queue.keys, torch.stack([second[2], first[1], first[2], second[0], second[1]]))

    mask = queue.negatives_mask(torch.tensor([11, 20, 99, 22]))
    assert mask.tolist() == [[False, True, False, False, False], [False, False, False, True, False],
                             [False] * 5, [True, False, False, False, False]]

    many = unit(7, 4, seed=3)  # more keys than slots: the last 5 stay, oldest first from ptr
    queue.enqueue(many, torch.arange(7))
    assert queue.ptr.item() == 1
    assert queue.video_ids.tolist() == [6, 2, 3, 4, 5]
    torch.testing.assert_close(queue.keys[1:], many[2:6])


def test_queue_is_checkpointed():
    queue = MoCoQueue(dim=3, size=4)
    queue.enqueue(unit(2, 3, seed=4), torch.tensor([7, 8]))
    state = queue.state_dict()
    assert set(state) == {"keys", "video_ids", "ptr"}
    restored = MoCoQueue(dim=3, size=4)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.keys, queue.keys)
    assert restored.video_ids.tolist() == [7, 8, -1, -1] and restored.ptr.item() == 2


def test_momentum_schedule():
    assert momentum_at(0, 100, base=0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, base=0.99) == pytest.approx(0.995)
    assert momentum_at(100, 100, base=0.99) == pytest.approx(1.0)
    assert momentum_at(150, 100, base=0.99) == pytest.approx(1.0)
    values = [momentum_at(s, 100, base=0.996) for s in range(101)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_momentum_update():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online(torch.randn(8, 3))  # moves online's BN running statistics
    before = [p.clone() for p in target.parameters()]
    momentum_update(online, target, 0.9)
    for p_online, p_before, p_after in zip(online.parameters(), before, target.parameters()):
        torch.testing.assert_close(p_after, 0.9 * p_before + 0.1 * p_online)
    for b_online, b_target in zip(online.buffers(), target.buffers()):
        torch.testing.assert_close(b_target, b_online)
    momentum_update(online, target, 0.0)
    for p_online, p_target in zip(online.parameters(), target.parameters()):
        torch.testing.assert_close(p_target, p_online)


def test_projection_head():
    head = projection_head(16, 32, 8)
    assert head(torch.randn(5, 16)).shape == (5, 8)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert sum(p.numel() for p in head.parameters()) == 16 * 32 + 32 + 32 * 8 + 8


# --- distributed ------------------------------------------------------------------------------------------------------

def test_single_process():
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert init_from_env() == DistInfo(rank=0, local_rank=0, world_size=1, device=device)
    x = torch.randn(3, 2, requires_grad=True)
    assert gather(x) is x
    assert is_main()
    barrier()
    cleanup()


def gather_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x = torch.arange(6, dtype=torch.float32).reshape(3, 2) + 100 * rank
    result = {"x": gather(x), "ids": gather(torch.tensor([10 * rank, 10 * rank + 1])),
              "grad": gather(x.clone().requires_grad_()).requires_grad, "main": is_main()}
    barrier()
    cleanup()
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))


def test_gather_two_processes(tmp_path):
    mp.spawn(gather_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    x = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(result["x"], torch.cat([x, x + 100]))
        assert result["ids"].tolist() == [0, 1, 10, 11]
        assert result["grad"] is False and result["main"] is (rank == 0)


def env_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), MOTIONSSL_DIST_BACKEND="gloo")  # CPU and gloo, on GPU hosts too
    info = init_from_env()
    result = {"info": info, "backend": dist.get_backend(), "ids": gather(torch.tensor([rank]))}
    cleanup()
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))


def test_init_from_env_two_processes(tmp_path):
    """The gloo path; benchmarks/gpu_check.py runs the NCCL one (a GPU per process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(env_worker, args=(port, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        with torch.serialization.safe_globals([DistInfo]):  # this test's own dataclass, and nothing else
            result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert result["info"] == DistInfo(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"),
                                          group=True)
        assert result["backend"] == "gloo" and result["ids"].tolist() == [0, 1]
