"""The shard contract (SHARD_FORMAT.md, ``iscene-shard/1``) in one neutral package.

The data engine writes it, the trainer and the evaluator read it, and none of them imports the
others: everything that knows the file layout lives here (as mosaicml/streaming keeps writer and
reader in one format package).

- :mod:`.format`       constants of the format: version string, sample files, key pattern, limits
- :mod:`.atomic`       temp-name-then-rename writes, sha256, a lock on an output folder
- :mod:`.safejson`     bounded JSON parsing for files that come from outside
- :mod:`.dataset_json` ``dataset.json``: read (shard entries confined to the folder), write
- :mod:`.registry`     dataset names -> shard lists; ``--mix`` parsing
- :mod:`.validate`     per-sample validation before a sample is used for anything
- :mod:`.reader`       iterate the raw and decoded samples of shards
- :mod:`.grids`        a sample's scene and instance voxel coordinates, by frame
"""

from iscene_core.shards.atomic import FolderLock, LockedError, file_sha256, write_bytes_atomic, write_json_atomic
from iscene_core.shards.dataset_json import DatasetError, load_dataset_json, safe_shard_path, shard_paths, write_dataset_json
from iscene_core.shards.grids import grid_keys, scene_and_instance_coords
from iscene_core.shards.format import FORMAT, REQUIRED_FILES, config_sha256, sample_key
from iscene_core.shards.reader import ShardReadError, decode, iter_raw, iter_samples, iter_valid_samples
from iscene_core.shards.registry import DatasetEntry, parse_mix, register_dataset, registry_path, resolve, unregister_dataset
from iscene_core.shards.validate import SampleError, validate_sample

__all__ = [
    "FORMAT", "REQUIRED_FILES", "config_sha256", "sample_key",
    "FolderLock", "LockedError", "file_sha256", "write_bytes_atomic", "write_json_atomic",
    "DatasetError", "load_dataset_json", "safe_shard_path", "shard_paths", "write_dataset_json",
    "ShardReadError", "decode", "iter_raw", "iter_samples", "iter_valid_samples",
    "DatasetEntry", "parse_mix", "register_dataset", "registry_path", "resolve", "unregister_dataset",
    "SampleError", "validate_sample", "grid_keys", "scene_and_instance_coords",
]
