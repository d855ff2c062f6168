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
        ray.init(address=address)
    TorchTrainer(_loop, train_loop_config=asdict(cfg),
                 scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu)).fit()
