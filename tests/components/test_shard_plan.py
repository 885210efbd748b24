import json

import pytest

from components.data.loading.shard_plan import ShardRef, epoch_shards, rank_shards, read_shard_refs, steps_in_epoch


def refs(prefix, sizes):
    return [ShardRef(f"{prefix}/{i:05d}.tar", n) for i, n in enumerate(sizes)]


def test_each_epoch_reads_every_shard_once_in_a_seeded_order():
    shards = refs("a", [10] * 8)
    e0 = epoch_shards([shards], None, seed=1, epoch=0)
    assert sorted(e0, key=lambda r: r.url) == shards
    assert e0 == epoch_shards([shards], None, seed=1, epoch=0)  # reproducible
    assert e0 != epoch_shards([shards], None, seed=1, epoch=1)  # reshuffled per epoch
    assert e0 != epoch_shards([shards], None, seed=2, epoch=0)


def test_ranks_get_disjoint_shares_that_cover_the_epoch():
    plan = epoch_shards([refs("a", [10, 20, 30, 40, 50])], None, seed=0, epoch=3)
    shares = [rank_shards(plan, r, 2) for r in range(2)]
    assert sorted(shares[0] + shares[1], key=lambda r: r.url) == sorted(plan, key=lambda r: r.url)
    assert not set(shares[0]) & set(shares[1])
    # steps are set by the poorer rank so every rank takes the same number
    poorer = min(sum(r.num_samples for r in share) for share in shares)
    assert steps_in_epoch(plan, 2, 7) == poorer // 7
    with pytest.raises(ValueError, match="cannot feed 8 workers"):
        rank_shards(plan, 0, 8)


def test_weighted_mixing_resamples_to_the_requested_size_in_proportion():
    a, b = refs("a", [10] * 4), refs("b", [10] * 4)
    drawn = epoch_shards([a, b], [3.0, 1.0], seed=0, epoch=0, samples_per_epoch=4000)
    assert sum(r.num_samples for r in drawn) >= 4000
    share_a = sum(r.url.startswith("a/") for r in drawn) / len(drawn)
    assert 0.7 < share_a < 0.8
    with pytest.raises(ValueError, match="needs samples_per_epoch"):
        epoch_shards([a, b], [3.0, 1.0], seed=0, epoch=0)


def test_read_shard_refs_follows_sizes_json(tmp_path):
    (tmp_path / "sizes.json").write_text(json.dumps({"00001.tar": 5, "00000.tar": 7}))
    assert read_shard_refs(tmp_path) == [ShardRef(str(tmp_path / "00000.tar"), 7), ShardRef(str(tmp_path / "00001.tar"), 5)]


def test_planner_matches_the_pure_functions_and_the_driver_refuses_too_little_data(tmp_path):
    import json as _json

    from components.data.loading.shard_plan import EpochPlanner, ShardSource
    from components.data.shards.shard_reader import ShardSetError
    from components.training.ray_trainer import _check_sources
    from components.training.train_config import TrainConfig

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sizes.json").write_text(_json.dumps({f"{i:05d}.tar": 10 for i in range(4)}))
    sources = [ShardSource(str(tmp_path / "a")), ShardSource(str(tmp_path / "b"))]
    planner = EpochPlanner(sources, seed=3)
    refs = [read_shard_refs(tmp_path / "a"), read_shard_refs(tmp_path / "b")]
    assert planner.shards(2) == epoch_shards(refs, None, 3, 2)
    assert planner.steps(2, world=2, samples_per_rank_step=8) == 40 // 8
    _check_sources(sources, TrainConfig(batch_size=16, num_workers=2))  # 40 samples per rank: enough
    with pytest.raises(ShardSetError, match="fewer samples per epoch than one step \\(64\\)"):
        _check_sources(sources, TrainConfig(batch_size=128, num_workers=2))
