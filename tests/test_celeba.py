"""A tiny CelebA folder in the official formats, built here, read through torchvision."""

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_params
from PIL import Image

from advmix.data import DatasetError
from advmix.data.build import build_dataset

NAMES = ["5_o_Clock_Shadow", "Male", "Smiling", "Young"]


def make_celeba(root: Path, n: int = 160, seed: int = 0, with_optional: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    attr_lines, part_lines = [str(n), " ".join(NAMES)], []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        img = rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / "img_align_celeba" / name)
        values = rng.choice([-1, 1], len(NAMES))
        # make the four (Smiling, Male) cells of each partition well filled
        values[1], values[2] = (1 if i % 2 else -1), (1 if (i // 2) % 2 else -1)
        partition = [0, 0, 1, 2][(i // 4) % 4]
        attr_lines.append(f"{name} " + " ".join(f"{v:2d}" for v in values))
        part_lines.append(f"{name} {partition}")
    (folder / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")
    if with_optional:
        (folder / "identity_CelebA.txt").write_text("".join(f"{i + 1:06d}.jpg {i % 7}\n" for i in range(n)))
    return root


SIZES = {"train": 40, "val": 8, "test_iid": 8, "test_balanced": 8, "test_flipped": 8, "pool": 8}


def celeba_params(root: Path, **kw):
    return tiny_params(name="celeba", sizes=SIZES, rho=0.75, celeba={"root": str(root)}, **kw)


@pytest.mark.parametrize("with_optional", [False, True])
def test_builds_skewed_splits_from_official_partitions(tmp_path, with_optional):
    make_celeba(tmp_path, with_optional=with_optional)
    ds = build_dataset(celeba_params(tmp_path))
    m = ds.manifest
    assert ds.images.shape == (80, 32, 32, 3)  # 72 labelled + 8 pool
    train = m[m.split == "train"]
    assert abs((train.label == train.male).mean() - 0.75) <= 0.02
    assert m[m.split == "test_balanced"].groupby(["label", "male"]).size().tolist() == [2, 2, 2, 2]
    assert m.id.is_unique  # test_iid, test_balanced and test_flipped are disjoint
    parts = {f"{i + 1:06d}.jpg": [0, 0, 1, 2][(i // 4) % 4] for i in range(160)}
    assert {parts[i] for i in m[m.split.isin(["train", "pool"])].id} == {0}  # the pool: unused train-partition
    assert not set(m[m.split == "pool"].id) & set(m[m.split != "pool"].id)
    assert {parts[i] for i in m[m.split.str.startswith("test")].id} == {2}
    assert ds.info["spurious"] == "male" and "smiling" not in ds.info["attributes"]


def test_files_given_directly_without_celeba_subfolder(tmp_path):
    make_celeba(tmp_path)
    ds = build_dataset(celeba_params(tmp_path / "celeba"))
    assert len(ds) == 80


def test_missing_file_named(tmp_path):
    make_celeba(tmp_path)
    (tmp_path / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt: missing"):
        build_dataset(celeba_params(tmp_path))


def test_malformed_attribute_file_named(tmp_path):
    make_celeba(tmp_path)
    path = tmp_path / "celeba" / "list_attr_celeba.txt"
    path.write_text(path.read_text().replace(" 1", " yes", 1))
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt: malformed"):
        build_dataset(celeba_params(tmp_path))


def test_unknown_attribute_and_no_root(tmp_path):
    make_celeba(tmp_path)
    with pytest.raises(DatasetError, match=r"data.celeba.target: 'Smilng' is not an attribute"):
        build_dataset(tiny_params(name="celeba", sizes=SIZES, celeba={"root": str(tmp_path), "target": "Smilng"}))
    with pytest.raises(DatasetError, match=r"data.celeba.root: not set"):
        build_dataset(tiny_params(name="celeba"))
    with pytest.raises(DatasetError, match="no CelebA files found"):
        build_dataset(celeba_params(tmp_path / "elsewhere"))


def test_too_few_images_named(tmp_path):
    make_celeba(tmp_path)
    with pytest.raises(DatasetError, match=r"data.sizes.train: needs .* found"):
        build_dataset(celeba_params(tmp_path).model_copy(update={"data": celeba_params(tmp_path).data.model_copy(
            update={"sizes": celeba_params(tmp_path).data.sizes.model_copy(update={"train": 400})})}))
