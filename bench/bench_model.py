"""Model benchmark: one training step and one joint sampling run, SCA versus plain TRELLIS.

A batch is one scene plus N instances (default 6) of the stage-1 flow transformer. Measured in the
same run, on the same weights and inputs:
  - training step (flow-matching loss, forward + backward) with SCA on and SCA off;
  - one joint Euler sampling run (released settings: guidance interval, rescaled grid) with SCA on/off.
The SCA/no-SCA ratio is the cost of Scene Context Attention. Analytic model FLOPs per training step
and per sampling run are reported for the released L configuration (and the measured one), so that a
GPU run (``--device cuda --config L --dtype bf16``) can turn time into tokens/s and MFU.

    python bench/bench_model.py                # CPU, small config, CI-sized
    python bench/bench_model.py --device cuda --config L --dtype bf16 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402
from iscene_core.flow import euler_sample, flow_matching_loss, time_grid  # noqa: E402
from iscene_core.trellis import SparseStructureFlowModel  # noqa: E402

CONFIGS = {
    # the released ss_flow_img_dit_L_16l8 arguments
    "L": dict(resolution=16, in_channels=8, out_channels=8, model_channels=1024, cond_channels=1024, num_blocks=24,
              num_heads=16, mlp_ratio=4, patch_size=1, pe_mode="ape", qk_rms_norm=True),
    # CI-sized: the fixture's widths at an 8^3 token grid (512 tokens/row, so CPU runs in ~a minute)
    "small": dict(resolution=8, in_channels=8, out_channels=8, model_channels=128, cond_channels=64, num_blocks=2,
                  num_heads=4, mlp_ratio=4, patch_size=1, pe_mode="ape", qk_rms_norm=True),
}
COND_TOKENS = {"L": 1374, "small": 37}  # DINOv2 ViT-L/14-reg at 518 px: 1 + 4 + 37*37


def forward_flops(args: dict, cond_tokens: int, rows: int, sca_rows: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one forward over ``rows`` rows, ``sca_rows`` of which
    attend to twice the keys (their own + their scene's). Norms/activations are ignored (<1%)."""
    c, cc = args["model_channels"], args["cond_channels"]
    n = (args["resolution"] // args["patch_size"]) ** 3
    hidden = int(c * args["mlp_ratio"])
    per_block_linear = 2 * n * (3 * c * c + c * c + c * c + c * c + 2 * c * hidden) + 2 * cond_tokens * cc * 2 * c
    per_block_linear += 2 * 6 * c * c  # adaLN modulation (one token per row)
    cross_attn = 4 * n * cond_tokens * c
    self_attn_plain = 4 * n * n * c
    blocks = args["num_blocks"]
    io = 2 * n * (args["in_channels"] + args["out_channels"]) * args["patch_size"] ** 3 * c + 2 * (256 * c + c * c)
    per_row = blocks * (per_block_linear + cross_attn + self_attn_plain) + io
    return rows * per_row + sca_rows * blocks * self_attn_plain  # SCA doubles the keys of instance rows


def sampling_forward_rows(steps: int, rescale_t: float, cfg_interval: tuple[float, float]) -> tuple[int, int]:
    grid = time_grid(steps, rescale_t)
    guided = sum(cfg_interval[0] <= t <= cfg_interval[1] for t in grid[:-1])
    return int(steps), int(guided)  # each guided step doubles the batch


def _time_pair(fn, model, repeats: int, device: str) -> tuple[float, float]:
    """Median seconds of ``fn`` with SCA on and off, alternating on/off so that load from other
    processes on a shared machine hits both sides alike (a warm-up of each first)."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(repeats + 1):
        for sca in (True, False):
            model.sca_enabled = sca
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i > 0:
                times[sca].append(time.perf_counter() - t0)
    return statistics.median(times[True]), statistics.median(times[False])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="small", help="model size to time")
    p.add_argument("--instances", type=int, default=6, help="instances per scene in the batch")
    p.add_argument("--steps", type=int, default=25, help="sampler steps (released: 25)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per side (median is reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the CI box is shared)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak, to report MFU")
    p.add_argument("--out", default="model", help="results name under bench/results/")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    args = CONFIGS[a.config]
    torch.manual_seed(0)
    model = SparseStructureFlowModel(**args).to(a.device)
    with torch.no_grad():  # upstream init zeroes adaLN/out layers; randomise so timing is on real work
        for prm in model.parameters():
            prm.normal_(0, 0.02)
    rows = 1 + a.instances
    g = torch.Generator().manual_seed(0)
    r = args["resolution"]
    x0 = torch.randn(rows, args["in_channels"], r, r, r, generator=g).to(a.device)
    cond = torch.randn(rows, COND_TOKENS[a.config], args["cond_channels"], generator=g).to(a.device)
    si = torch.zeros(rows, dtype=torch.long, device=a.device)
    amp = torch.autocast(device_type=a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.dtype == "bf16")

    def train_step():
        model.train()
        model.zero_grad(set_to_none=True)
        with amp:
            loss, _ = flow_matching_loss(model, x0, cond, scene_index=si, generator=torch.Generator().manual_seed(1))
        loss.backward()

    def sample():
        model.eval()
        with amp:
            euler_sample(model, torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)).to(a.device),
                         cond, None, scene_index=si, steps=a.steps)

    res: dict = {}
    for name, fn in (("train_step", train_step), ("sample", sample)):
        res[f"{name}_s_sca"], res[f"{name}_s_plain"] = _time_pair(fn, model, a.repeats, a.device)
        res[f"{name}_sca_over_plain"] = res[f"{name}_s_sca"] / res[f"{name}_s_plain"]

    steps, guided = sampling_forward_rows(a.steps, 3.0, (0.5, 1.0))
    tokens = (args["resolution"] // args["patch_size"]) ** 3
    flops = {}
    for cfg_name in sorted({"L", a.config}):
        ca, nc = CONFIGS[cfg_name], COND_TOKENS[cfg_name]
        fwd_sca, fwd_plain = forward_flops(ca, nc, rows, a.instances), forward_flops(ca, nc, rows, 0)
        flops[cfg_name] = {
            "train_step_sca": 3 * fwd_sca, "train_step_plain": 3 * fwd_plain,  # backward ~ 2x forward
            "sample_sca": (steps + guided) * fwd_sca, "sample_plain": (steps + guided) * fwd_plain,
        }
    meas = flops[a.config]
    res["achieved_tflops_train_sca"] = meas["train_step_sca"] / res["train_step_s_sca"] / 1e12
    res["tokens_per_s_train_sca"] = rows * tokens / res["train_step_s_sca"]
    mfu = None if a.peak_tflops is None else res["achieved_tflops_train_sca"] / a.peak_tflops
    gpu_note = ("no GPU in this session: CPU timings only; run with --device cuda --config L --dtype bf16 "
                "--peak-tflops <peak> on a GPU to get MFU") if not a.device.startswith("cuda") else None

    print(f"config={a.config} device={a.device} dtype={a.dtype} rows={rows} (1 scene + {a.instances}) "
          f"tokens/row={tokens} steps={a.steps} ({steps + guided} forward passes)")
    print(f"{'':14}{'SCA s':>10}{'plain s':>10}{'ratio':>8}")
    for name in ("train_step", "sample"):
        print(f"{name:14}{res[f'{name}_s_sca']:10.3f}{res[f'{name}_s_plain']:10.3f}{res[f'{name}_sca_over_plain']:8.2f}")
    print(f"analytic TFLOPs per training step (L, SCA): {flops['L']['train_step_sca'] / 1e12:.1f}; "
          f"per sampling run: {flops['L']['sample_sca'] / 1e12:.1f}")
    if gpu_note:
        print(gpu_note)
    path = write_result(a.out, {
        "config": a.config, "model_args": args, "device": a.device, "dtype": a.dtype, "threads": a.threads,
        "rows": rows, "instances": a.instances, "tokens_per_row": tokens, "sampler_steps": a.steps,
        "sampler_forward_passes": steps + guided, "timings": res, "analytic_flops": flops,
        "peak_tflops": a.peak_tflops, "mfu_train_sca": mfu, "gpu": gpu_note or "measured on GPU",
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
