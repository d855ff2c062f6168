"""The same training entry point under Ray Train (for clusters that already run the data engine)."""

from __future__ import annotations

from dataclasses import asdict

from train.config import TrainConfig


def _loop(config: dict) -> None:
    from train.trainer import train

    train(TrainConfig(**config))  # Ray Train has set up torch.distributed; train() picks it up


def train_with_ray(cfg: TrainConfig, num_workers: int, use_gpu: bool = False, address: str | None = None) -> None:
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        # as iscene-datagen: join the cluster the user names, else a private local Ray; never whatever
        # /tmp/ray/ray_current_cluster points at (a stale file there makes ray.init hang)
        ray.init(address=address or "local")
    TorchTrainer(_loop, train_loop_config=asdict(cfg),
                 scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu)).fit()
