"""tcnet.utils.trees: the folders the Kubeflow pipeline hands between tasks."""

from pathlib import Path

import pytest

from tcnet.utils.trees import INDEX_FILES, TreeClashError, copy_index, merge_evaluations, merge_trees


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_merge_trees_unions_the_runs_of_several_loops(tmp_path):
    a = write(tmp_path / "a", {"exp/r1/scores.json": "1", "exp/r1/masks/x.png": "m"})
    b = write(tmp_path / "b", {"exp/r2/scores.json": "2", "other/r3/scores.json": "3"})
    out = merge_trees(tmp_path / "out", None, a, b)
    assert tree(out) == {"exp/r1/masks/x.png": "m", "exp/r1/scores.json": "1", "exp/r2/scores.json": "2",
                         "other/r3/scores.json": "3"}


def test_the_same_file_twice_is_one_file_and_different_bytes_fail(tmp_path):
    a = write(tmp_path / "a", {"isic2017.json": "same"})
    b = write(tmp_path / "b", {"isic2017.json": "same", "ph2.json": "p"})
    assert tree(merge_trees(tmp_path / "ok", a, b)) == {"isic2017.json": "same", "ph2.json": "p"}
    c = write(tmp_path / "c", {"isic2017.json": "other"})
    with pytest.raises(TreeClashError, match=r"isic2017.json: .*a/isic2017.json and .*c/isic2017.json differ"):
        merge_trees(tmp_path / "clash", a, c)


def test_merged_evaluations_keep_the_run_folders_not_each_tasks_partial_summary(tmp_path):
    a = write(tmp_path / "a", {"exp/r1/scores.json": "1", "exp/summary.json": "r1 only"})
    b = write(tmp_path / "b", {"exp/r2/scores.json": "2", "exp/summary.json": "r2 only"})
    assert tree(merge_evaluations(tmp_path / "out", a, b)) == {"exp/r1/scores.json": "1", "exp/r2/scores.json": "2"}


def test_a_pattern_takes_only_matching_files(tmp_path):
    a = write(tmp_path / "a", {"isic2017.json": "s", "params.yaml": "split: {seed: 1}"})
    b = write(tmp_path / "b", {"ph2.json": "p", "params.yaml": "split: {seed: 2}"})  # would clash without the pattern
    assert tree(merge_trees(tmp_path / "out", a, b, pattern="*.json")) == {"isic2017.json": "s", "ph2.json": "p"}


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: not a folder"):
        merge_trees(tmp_path / "out", tmp_path / "nowhere")


def test_copy_index_copies_the_manifest_and_statistics_not_the_arrays(tmp_path):
    pre = write(tmp_path / "pre", {"manifest.csv": "id\n", "stats.json": "{}", "params.yaml": "p",
                                   "isic2017/images.npy": "big"})
    assert tree(copy_index(pre, tmp_path / "index")) == {n: tree(pre)[n] for n in INDEX_FILES}
    with pytest.raises(FileNotFoundError, match="manifest.csv not found: not a preprocess output"):
        copy_index(tmp_path / "index" / "nothing", tmp_path / "i2")
