"""A study: a YAML spec expanded into a graph of stages (data -> VAE -> train -> eval per cell).

Why a graph of small stages: every stage is one CLI run with its own outputs, so a stage that
finished is recognised by a done record and never redone, a cell that fails stops only its own
chain, and the same graph runs in one process, on the local Ray or on a cluster.

Spec (see ``studies/*.yaml`` and docs/STUDIES.md)::

    name: ablation-nano
    catalogs:  {NAME: {source: procedural, n: 60, seed: 0}}          # iscene-assets build
    datasets:  {NAME: {catalog: NAME | procedural: true, n: 200, seed: 0, args: {...}}   # iscene-datagen
                NAME: {path: data/rand25k} | {registered: rand25k}}                   # reuse, never made
    benches:   {NAME: {from: DATASET, n: 20, args: {...}}}           # iscene-eval make-bench
    vae:       {mix: DATASET, args: {channels: "8,16,32", steps: 1500}}   # iscene-train vae (optional)
    base:      {TrainConfig fields shared by every cell}
    cells:     {NAME: {field overrides}}     # named ablation cells (default: one cell "base"); a cell's
                                             # eval: {predict: {cfg: 0}} changes its own sampler only
    grid:      {field: [values]}             # crossed with the cells (e.g. mix: [d@100, d@1000])
    seeds:     [0, 1]
    eval:      {protocol: iscene, predict: {steps: 12}, score: {points: N}, metrics: [iou_b, f_s], dinov2: PATH}
    scaling:   {x: samples | flops, metric: iou_b, transform: one_minus}
    resources: {train: {num_cpus: 2, num_gpus: 0, ray_workers: 0}, default: {num_cpus: 1}}
    smoke:     {scenes: 4, steps: 3, vae_steps: 3, bench_n: 2, predict_steps: 2}
    cache_latents: true                        # encode each training set once with the study's VAE (default)
    baselines: {untrained: {cell: full}, mean-box: {from: DATASET}}   # floors the cells are compared with
    learns_task: {cell: full, bench: train-fit, metric: iou_b, margin: 0.1}   # the report's pass/fail check

A dataset in a mix may be a prefix ``NAME@N`` (the first N samples; see train/study_data.py).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from train.study_data import parse_sized

SPEC_KEYS = {"name", "description", "catalogs", "datasets", "benches", "vae", "base", "cells", "grid", "seeds", "eval",
             "scaling", "resources", "smoke", "paper_reference", "budget", "baselines", "learns_task", "cache_latents"}
BASELINE_KINDS = ("untrained", "mean-box")
SMOKE_DEFAULTS = {"scenes": 4, "steps": 3, "vae_steps": 3, "bench_n": 2, "predict_steps": 2, "catalog_n": 8, "score_points": 1024}


class StudyError(ValueError):
    """A spec that cannot be expanded (unknown key, missing dataset, bad value): one-line message."""


@dataclass
class Stage:
    """One unit of work: ``kind`` picks the runner; ``config`` is everything its output depends on."""

    id: str
    kind: str  # catalog | datagen | reuse | prefix | bench | vae | latents | train | probe | eval | baseline
    out: str
    config: dict
    deps: list[str] = field(default_factory=list)
    cell: str | None = None
    resources: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Study:
    name: str
    out: Path
    spec: dict
    stages: dict[str, Stage]
    cells: dict[str, dict]  # cell name -> {"group", "seed", "train", "evals": [stage ids], "factors"[, "baseline"]}
    smoke: bool = False

    def order(self) -> list[str]:
        """Stage ids in dependency order (spec order among independent stages)."""
        done, out = set(), []

        def visit(sid: str, stack: tuple = ()) -> None:
            if sid in done:
                return
            if sid in stack:
                raise StudyError(f"dependency cycle through {sid}")
            for d in self.stages[sid].deps:
                visit(d, stack + (sid,))
            done.add(sid)
            out.append(sid)

        for sid in self.stages:
            visit(sid)
        return out


def stage_hash(stage: Stage, stages: dict[str, Stage], _memo: dict | None = None) -> str:
    """sha256 of the stage's kind, config and its dependencies' hashes: same inputs, same hash."""
    memo = {} if _memo is None else _memo
    if stage.id in memo:
        return memo[stage.id]
    h = config_hash(stage.kind, stage.config, [stage_hash(stages[d], stages, memo) for d in stage.deps])
    memo[stage.id] = h
    return h


def config_hash(kind: str, config: dict, dep_hashes: list[str]) -> str:
    """The hash of a stage made of these parts (``stage_hash`` with its inputs' hashes given)."""
    payload = {"kind": kind, "config": config, "deps": list(dep_hashes)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@+" else "_" for c in str(s))


def load_spec(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such study file")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise StudyError(f"{path}: a study is a mapping (name, datasets, base, cells, ...)")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise StudyError(f"{path}: unknown keys {unknown} (known: {sorted(SPEC_KEYS)})")
    spec.setdefault("name", path.stem)
    return spec


def _smoke_size(n: int, full: int, scenes: int) -> int:
    return max(1, min(n, math.ceil(n * scenes / max(full, 1))))


def expand(spec: dict, out: str | Path, smoke: bool = False) -> Study:
    """Spec -> stages. ``smoke`` shrinks every dataset, bench, VAE and training run (see SMOKE_DEFAULTS)."""
    spec = copy.deepcopy(spec)
    out = Path(out)
    sm = {**SMOKE_DEFAULTS, **(spec.get("smoke") or {})}
    res = spec.get("resources") or {}
    default_res = res.get("default", {"num_cpus": 1})
    stages: dict[str, Stage] = {}
    datasets = spec.get("datasets") or {}
    catalogs = spec.get("catalogs") or {}

    def add(stage: Stage) -> Stage:
        stage.resources = {**default_res, **(res.get(stage.kind) or {})}
        stages[stage.id] = stage
        return stage

    for name, c in catalogs.items():
        c = dict(c or {})
        if smoke and "n" in c:
            c["n"] = min(int(c["n"]), int(sm["catalog_n"]))
        add(Stage(f"catalog/{name}", "catalog", str(out / "catalogs" / _safe(name)), c))
    full_sizes: dict[str, int] = {}
    for name, d in datasets.items():
        d = dict(d or {})
        if "path" in d or "registered" in d:
            add(Stage(f"data/{name}", "reuse", str(d.get("path") or ""), {"path": d.get("path"), "registered": d.get("registered")}))
            full_sizes[name] = int(d.get("n", 0) or 0)
            continue
        if "n" not in d:
            raise StudyError(f"dataset {name!r}: give n (scenes) to make it, or path/registered to reuse one")
        full_sizes[name] = int(d["n"])
        if smoke:
            d["n"] = min(int(d["n"]), int(sm["scenes"]))
        deps = []
        if "catalog" in d:
            if d["catalog"] not in catalogs:
                raise StudyError(f"dataset {name!r}: catalog {d['catalog']!r} is not in catalogs")
            deps.append(f"catalog/{d['catalog']}")
        elif not d.get("procedural") and "assets" not in d:
            raise StudyError(f"dataset {name!r}: give catalog, assets (a catalog folder) or procedural: true")
        add(Stage(f"data/{name}", "datagen", str(out / "data" / _safe(name)), {"name": name, **d}, deps))

    def data_stage(token: str) -> str:
        """A dataset token of a mix (``name``, ``name@N``) -> its stage id (prefix stages made on demand)."""
        name, n = parse_sized(token)
        if name not in datasets:  # not made by the study: an existing folder or registered name, reused
            datasets[name] = {"path": name} if Path(name).exists() else {"registered": name}
            add(Stage(f"data/{name}", "reuse", name, dict(datasets[name])))
        if n is None:
            return f"data/{name}"
        if smoke:
            n = _smoke_size(n, full_sizes.get(name) or n, int(sm["scenes"]))
        sid = f"data/{name}@{n}"
        if sid not in stages:
            add(Stage(sid, "prefix", str(out / "data" / _safe(f"{name}@{n}")), {"of": name, "n": n}, [f"data/{name}"]))
        return sid

    def mix_deps(mix: str) -> tuple[list[tuple[str, str]], list[str]]:
        """[(stage id, weight suffix)], stage ids."""
        parts = []
        for tok in [t.strip() for t in str(mix).split(",") if t.strip()]:
            name, sep, w = tok.rpartition(":")
            if not sep:
                name, w = tok, ""
            parts.append((data_stage(name), w))
        return parts, [p for p, _ in parts]

    for name, b in (spec.get("benches") or {}).items():
        b = dict(b or {})
        if "from" not in b:
            raise StudyError(f"bench {name!r}: give from: DATASET")
        if smoke and "n" in b:
            b["n"] = min(int(b["n"]), int(sm["bench_n"]))
        elif smoke:
            b["n"] = int(sm["bench_n"])
        deps = [data_stage(b["from"])]
        src = datasets.get(parse_sized(b["from"])[0], {})
        if src.get("catalog"):  # make-bench finds the ground-truth meshes in the dataset's own catalog
            b["catalog"] = src["catalog"]
            deps.append(f"catalog/{src['catalog']}")
        elif src.get("assets"):
            b.setdefault("args", {})["assets"] = str(src["assets"])
        add(Stage(f"bench/{name}", "bench", str(out / "benches" / _safe(name)), {"name": name, **b}, deps))

    vae_id = None
    if spec.get("vae"):
        v = dict(spec["vae"])
        args = dict(v.get("args") or {})
        if smoke:
            args["steps"] = int(sm["vae_steps"])
            args.setdefault("holdout", 0.34)
        parts, deps = mix_deps(v.get("mix", ""))
        vae_id = add(Stage("vae", "vae", str(out / "vae"), {"mix": parts, "args": args}, deps)).id

    def latents_stage(data_id: str, space: str) -> str:
        """``iscene-train cache-latents`` for one training set and voxel frame with the study's VAE
        encoder: every cell training on it reads the cache instead of encoding 64^3 grids per step."""
        sid = f"latents/{data_id[len('data/'):]}/{space}"
        if sid not in stages:
            add(Stage(sid, "latents", str(out / "latents" / _safe(data_id[len("data/"):]) / space), {"space": space}, [data_id, vae_id]))
        return sid

    base = dict(spec.get("base") or {})
    cells_spec = spec.get("cells") or {"base": {}}
    grid = spec.get("grid") or {}
    seeds = spec.get("seeds") or [base.get("seed", 0)]
    keys = list(grid)
    ev = dict(spec.get("eval") or {})
    benches = list((spec.get("benches") or {}).keys())
    cells: dict[str, dict] = {}
    for cname, overrides in cells_spec.items():
        for values in itertools.product(*(grid[k] for k in keys)):
            combo = dict(zip(keys, values))
            group = "-".join([cname] + [f"{k}={_safe(v)}" for k, v in combo.items()])
            for seed in seeds:
                cfg = {**base, **(overrides or {}), **combo, "seed": seed}
                cell_eval = cfg.pop("eval", None) or {}  # a cell's own sampler settings (eval.predict), not a train flag
                if not isinstance(cell_eval, dict) or set(cell_eval) - {"predict"}:
                    raise StudyError(f"cell {cname}: eval may only hold predict (the cell's sampler settings), got {cell_eval!r}")
                cell_predict = {**(ev.get("predict") or {}), **(cell_eval.get("predict") or {})}
                if smoke:
                    cfg["steps"] = int(sm["steps"])
                    cfg["ckpt_every"] = int(sm["steps"])
                    cfg["log_every"] = 1
                if "mix" not in cfg:
                    raise StudyError(f"cell {group}: no mix (set base.mix, the cell's mix or a grid over mix)")
                parts, deps = mix_deps(cfg["mix"])
                cfg["mix"] = parts
                if vae_id and not cfg.get("init") and not cfg.get("encoder"):
                    deps = deps + [vae_id]
                    cfg["encoder"] = {"stage": vae_id}
                    if spec.get("cache_latents", True):
                        deps = deps + [latents_stage(d, str(cfg.get("space", "view"))) for d in list(deps) if d.startswith("data/")]
                cell = f"{group}-s{seed}"
                train = add(Stage(f"cell/{cell}/train", "train", str(out / "cells" / _safe(cell) / "train"), cfg, deps, cell=cell))
                evals = []
                for bname in benches:
                    econf = {"bench": bname, "protocol": ev.get("protocol", "iscene"),
                             "predict": dict(cell_predict),
                             "dinov2": ev.get("dinov2"), "sca": cfg.get("sca", True)}
                    if ev.get("score"):
                        econf["score"] = dict(ev["score"])
                    if smoke:
                        econf["predict"]["steps"] = int(sm["predict_steps"])
                        econf["score"] = {**econf.get("score", {}), "points": int(sm["score_points"])}
                    edeps = [train.id, f"bench/{bname}"] + ([vae_id] if vae_id else [])
                    evals.append(add(Stage(f"cell/{cell}/eval/{bname}", "eval", str(out / "cells" / _safe(cell) / "eval" / _safe(bname)),
                                           econf, edeps, cell=cell)).id)
                cells[cell] = {"group": group, "seed": seed, "train": train.id, "evals": evals,
                               "factors": {"cell": cname, **{k: str(v) for k, v in combo.items()}},
                               "predict": cell_predict}
                probe_cfg = ev.get("probe", {"batches": 4})
                if probe_cfg:  # how much the trained flow uses its image (iscene-train probe)
                    pc = {"batches": 4, **(probe_cfg if isinstance(probe_cfg, dict) else {})}
                    if smoke:
                        pc["batches"] = 1
                    cells[cell]["probe"] = add(Stage(f"cell/{cell}/probe", "probe", str(out / "cells" / _safe(cell) / "probe"),
                                                     pc, [train.id], cell=cell)).id
    for bname_, b in (spec.get("baselines") or {}).items():
        b = dict(b or {})
        kind = str(b.get("kind", bname_))
        if kind not in BASELINE_KINDS:
            raise StudyError(f"baseline {bname_!r}: kind must be one of {BASELINE_KINDS}, got {kind!r}")
        cfg_b: dict = {"kind": kind}
        deps_b: list[str] = []
        if kind == "mean-box":
            if "from" not in b:
                raise StudyError(f"baseline {bname_!r}: give from: DATASET (the training set whose mean box is used)")
            deps_b.append(data_stage(str(b["from"])))
        else:  # untrained: a cell's model, conditioner and VAE with the flow at its seeded initialisation
            ref = next((c for c in cells.values() if c["factors"]["cell"] == b.get("cell", "full")), None)
            if ref is None:
                raise StudyError(f"baseline {bname_!r}: cell {b.get('cell', 'full')!r} is not in cells")
            tcfg = {k: v for k, v in stages[ref["train"]].config.items()}
            cfg_b["train_config"] = tcfg
            cfg_b["predict"] = dict(ref["predict"])  # the cell's own sampler: the floor is sampled as the cell is
            deps_b += [d for d in stages[ref["train"]].deps if d == vae_id or d.startswith("data/")]
        evals = []
        for bench_name in benches:
            econf = {"bench": bench_name, "protocol": ev.get("protocol", "iscene"), "predict": dict(ev.get("predict") or {}),
                     "dinov2": ev.get("dinov2"), "sca": cfg_b.get("train_config", {}).get("sca", True), **cfg_b}
            econf["predict"] = dict(econf["predict"])  # smoke shrinks it below: never the cell's own dict
            if ev.get("score"):
                econf["score"] = dict(ev["score"])
            if smoke:
                econf["predict"]["steps"] = int(sm["predict_steps"])
                econf["score"] = {**econf.get("score", {}), "points": int(sm["score_points"])}
            sid = f"baseline/{_safe(bname_)}/eval/{bench_name}"
            evals.append(add(Stage(sid, "baseline", str(out / "baselines" / _safe(bname_) / _safe(bench_name)), econf,
                                   deps_b + [f"bench/{bench_name}"], cell=f"baseline-{bname_}")).id)
        cells[f"baseline-{bname_}"] = {"group": f"baseline: {bname_}", "seed": 0, "train": None, "evals": evals,
                                       "factors": {"cell": f"baseline: {bname_}"}, "baseline": kind}
    return Study(name=str(spec["name"]), out=out, spec=spec, stages=stages, cells=cells, smoke=smoke)
