"""Two CPU processes (gloo) with BATCH_SUBDIVISIONS 2 step like one process with the whole batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crowdloss.engine import DefaultRunner
from crowdloss.utils.env import seed_all_rng

from test_engine import ConvModel, TinyModel, make_cfg, sample


def sharded_loader(per_device, rank, world):
    def build(cfg, start_iter=0):
        def gen():
            k = start_iter
            while True:
                first = (k * world + rank) * per_device
                yield [sample(first + i) for i in range(per_device)]
                k += 1

        return gen()

    return build


def model_factory(channels_last):
    # For MODEL.CHANNELS_LAST, a model with a conv: DDP then reduces NHWC-strided gradients.
    return (lambda c: ConvModel()) if channels_last else (lambda c: TinyModel(noise=0))


def _worker(rank, world, tmp, channels_last):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        cfg = make_cfg(os.path.join(tmp, "ddp"), max_iter=4, batch=1, sub=2,
                       loader=sharded_loader(1, rank, world))
        cfg.MODEL.CHANNELS_LAST = channels_last
        seed_all_rng(0)
        runner = DefaultRunner(cfg, model_factory(channels_last))
        assert isinstance(runner.model, torch.nn.parallel.DistributedDataParallel)
        if channels_last:
            assert runner.model.module.conv.weight.is_contiguous(memory_format=torch.channels_last)
        runner.resume_or_load(resume=False)
        runner.train()
        torch.save(runner.model.module.state_dict(), os.path.join(tmp, f"rank{rank}.pth"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("channels_last", [False, True])
def test_ddp_with_subdivisions_matches_single_process(tmp_path, channels_last):
    # fork: the children inherit the imported modules instead of re-importing torch (seconds).
    mp.start_processes(_worker, args=(2, str(tmp_path), channels_last), nprocs=2, join=True,
                       start_method="fork")
    seed_all_rng(0)
    single = DefaultRunner(make_cfg(tmp_path / "single", max_iter=4, batch=4,
                                    loader=sharded_loader(4, 0, 1)),
                           model_factory(channels_last))  # in NCHW: the config's default
    single.train()
    ranks = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in range(2)]
    for name, value in single.model.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.allclose(ranks[0][name], value, atol=1e-6), name
    # Every rank's RNG state is in the checkpoint, so each rank resumes its own streams.
    rng = torch.load(tmp_path / "ddp" / "model_final.pth", weights_only=True)["rng"]
    assert isinstance(rng, list) and len(rng) == 2 and "torch" in rng[1]
    # Only rank 0 wrote checkpoints and metrics.
    assert sorted(n for n in os.listdir(tmp_path / "ddp") if "tfevents" not in n) == [
        "last_checkpoint", "metrics.json", "model_final.pth"]
