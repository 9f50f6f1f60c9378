"""`data.name: folder`: small image folders with a metadata CSV, built here in both layouts."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_params
from PIL import Image
from typer.testing import CliRunner

import advmix.cli
from advmix.data import DatasetError
from advmix.data.build import build_dataset

SIZES = {"train": 16, "val": 8, "test_iid": 8, "test_balanced": 8, "test_flipped": 8, "pool": 8}
AGREEMENT = {"train": 0.75, "val": 0.75, "test_iid": 0.75, "test_balanced": 0.5, "test_flipped": 0.25}


def colour_of(i: int) -> tuple[int, int, int]:
    return (40 + i % 200, 60 + (i * 7) % 180, 90 + (i * 13) % 150)


def draw(path: Path, i: int, width: int, height: int) -> None:
    """A solid colour per row inside the centred square, black outside it (the crop must drop the black)."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    img[top:top + side, left:left + side] = colour_of(i)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def make_waterbirds(root: Path, per_cell: dict[int, int] | None = None) -> Path:
    """Layout (a): img_filename, y, place, split (0/1/2), integer labels, 20x12 images in subfolders."""
    per_cell = per_cell or {0: 10, 1: 4, 2: 8}  # images per (y, place) cell in each partition
    rows = []
    for split, n in per_cell.items():
        for y in (0, 1):
            for place in (0, 1):
                for _ in range(n):
                    i = len(rows)
                    name = f"{y:03d}.bird/img_{i:04d}.png"
                    draw(root / name, i, 20, 12)
                    rows.append({"img_id": i, "img_filename": name, "y": y, "split": split, "place": place})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def make_custom(root: Path, per_cell: int = 16) -> Path:
    """Layout (b): custom column names, string labels and spurious values, no split column, 12x20 images."""
    rows = []
    for species in ("landbird", "waterbird"):
        for background in ("land", "water"):
            for _ in range(per_cell):
                i = len(rows)
                name = f"im{i}.png"
                draw(root / "images" / name, i, 12, 20)
                rows.append({"path": f"images/{name}", "species": species, "background": background})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


CUSTOM = {"metadata": "labels.csv", "file": "path", "label": "species", "spurious": "background"}


def folder_params(root: Path, seed: int = 0, sizes: dict | None = None, **folder):
    p = tiny_params(name="folder", sizes=sizes or SIZES, rho=0.75, resolution=16,
                    folder={"root": str(root), **folder})
    return p.model_copy(update={"seed": seed})


def check_splits(ds, spurious: str) -> None:
    m = ds.manifest
    assert m.groupby("split").size().to_dict() == SIZES
    assert ds.images.shape == (sum(SIZES.values()), 16, 16, 3)
    assert m.id.is_unique
    for split, rho in AGREEMENT.items():
        part = m[m.split == split]
        assert (part.label == part[spurious]).mean() == pytest.approx(rho)
        assert (part.label == 1).mean() == 0.5
    assert m[m.split == "test_balanced"].groupby(["label", spurious]).size().tolist() == [2, 2, 2, 2]
    assert (m.group == m.label * 2 + m[spurious]).all()
    assert ds.info["attributes"] == {spurious: [0, 1]} and ds.info["n_classes"] == 2


def test_waterbirds_layout_with_defaults(tmp_path):
    root = make_waterbirds(tmp_path / "waterbirds")
    ds = build_dataset(folder_params(root))
    check_splits(ds, "place")
    assert ds.info["name"] == "folder" and ds.info["spurious"] == "place" and ds.info["classes"] == ["0", "1"]
    assert ds.info["values"] == {"y": [0, 1], "place": [0, 1]} and ds.info["root"] == str(root)
    meta = pd.read_csv(root / "metadata.csv").set_index("img_filename")
    m = ds.manifest
    partition = m.id.map(meta.split)
    assert set(partition[m.split.isin(["train", "pool"])]) == {0}  # the pool comes from the train partition only
    assert set(partition[m.split == "val"]) == {1}
    assert set(partition[m.split.str.startswith("test")]) == {2}
    assert (m.label.to_numpy() == m.id.map(meta.y).to_numpy()).all()
    assert (m.place.to_numpy() == m.id.map(meta.place).to_numpy()).all()
    # each image is its row's colour, centre-cropped (no black margin) to 16 x 16
    expected = np.array([colour_of(int(meta.img_id[i])) for i in m.id], dtype=np.uint8)
    assert (ds.images == expected[:, None, None, :]).all()


def test_custom_columns_string_values_no_split_column(tmp_path):
    root = make_custom(tmp_path / "birds")
    ds = build_dataset(folder_params(root, **CUSTOM))
    check_splits(ds, "background")
    assert ds.info["classes"] == ["landbird", "waterbird"]
    assert ds.info["values"] == {"species": ["landbird", "waterbird"], "background": ["land", "water"]}
    meta = pd.read_csv(root / "labels.csv").set_index("path")
    m = ds.manifest
    assert (m.id.map(meta.species) == np.array(["landbird", "waterbird"])[m.label]).all()
    assert (m.id.map(meta.background) == np.array(["land", "water"])[m.background]).all()
    expected = np.array([colour_of(int(i.removeprefix("images/im").removesuffix(".png"))) for i in m.id])
    assert (ds.images == expected[:, None, None, :].astype(np.uint8)).all()


def test_split_column_as_strings_or_ignored(tmp_path):
    root = make_waterbirds(tmp_path / "wb")
    meta = pd.read_csv(root / "metadata.csv")
    meta["split"] = meta.split.map({0: "train", 1: "val", 2: "test"})
    meta.to_csv(root / "metadata.csv", index=False)
    by_name = build_dataset(folder_params(root))
    parts = by_name.manifest.id.map(meta.set_index("img_filename").split)
    assert set(parts[by_name.manifest.split == "val"]) == {"val"}
    free = build_dataset(folder_params(root, split=None))  # every row available to every split
    check_splits(free, "place")
    assert set(free.manifest.id.map(meta.set_index("img_filename").split)) > {"train"}


def test_deterministic_in_seed(tmp_path):
    root = make_custom(tmp_path / "birds")
    a, b = (build_dataset(folder_params(root, **CUSTOM)) for _ in range(2))
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    assert (a.images == b.images).all() and a.info == b.info
    c = build_dataset(folder_params(root, seed=1, **CUSTOM))
    assert not a.manifest.id.equals(c.manifest.id)


def test_setup_errors_name_the_key_or_file(tmp_path):
    root = make_waterbirds(tmp_path / "wb")
    with pytest.raises(DatasetError, match=r"data\.folder\.root: not set"):
        build_dataset(tiny_params(name="folder"))
    with pytest.raises(DatasetError, match=r"elsewhere: folder not found \(data\.folder\.root\)"):
        build_dataset(folder_params(tmp_path / "elsewhere"))
    with pytest.raises(DatasetError, match=r"labels\.csv: missing"):
        build_dataset(folder_params(root, metadata="labels.csv"))
    with pytest.raises(DatasetError, match=r"data\.folder\.label: 'species' is not a column of .*metadata\.csv "
                                           r"\(have img_id, img_filename, y, split, place\)"):
        build_dataset(folder_params(root, label="species"))
    with pytest.raises(DatasetError, match=r"data\.folder\.spurious: 'background' is not a column"):
        build_dataset(folder_params(root, spurious="background"))


def edit_metadata(root: Path, **columns) -> None:
    meta = pd.read_csv(root / "metadata.csv")
    for name, fn in columns.items():
        meta[name] = fn(meta)
    meta.to_csv(root / "metadata.csv", index=False)


def test_content_errors_name_the_column(tmp_path):
    root = make_waterbirds(tmp_path / "wb")
    edit_metadata(root, split=lambda m: m.split.where(m.index != 5, 7))
    with pytest.raises(DatasetError, match=r"data\.folder\.split: column 'split' of .*metadata\.csv has value\(s\) 7"):
        build_dataset(folder_params(root))
    edit_metadata(root, split=lambda m: m.split.where(m.index != 5, 0), place=lambda m: m.index % 3)
    with pytest.raises(DatasetError, match=r"data\.folder\.spurious: column 'place' of .*metadata\.csv has 3 values"):
        build_dataset(folder_params(root))
    edit_metadata(root, y=lambda m: 1)
    with pytest.raises(DatasetError, match=r"data\.folder\.label: column 'y' of .*metadata\.csv has one value"):
        build_dataset(folder_params(root))


def test_too_few_images_named(tmp_path):
    root = make_waterbirds(tmp_path / "wb")
    with pytest.raises(DatasetError, match=r"data\.sizes\.train: needs \d+ images with y=\d, place=\d in partition 0 "
                                           r"of .*metadata\.csv, found \d+; lower the size or rho"):
        build_dataset(folder_params(root, sizes={**SIZES, "train": 400}))
    with pytest.raises(DatasetError, match=r"data\.sizes\.pool: needs 40 unused train-partition images"):
        build_dataset(folder_params(root, sizes={**SIZES, "pool": 40}))
    custom = make_custom(tmp_path / "birds")
    with pytest.raises(DatasetError, match=r"data\.sizes\.test_flipped: needs \d+ images with species=\w+, "
                                           r"background=\w+ of .*labels\.csv"):
        build_dataset(folder_params(custom, sizes={**SIZES, "test_flipped": 40}, **CUSTOM))


def test_missing_or_unreadable_image_named(tmp_path):
    root = make_waterbirds(tmp_path / "wb")
    chosen = build_dataset(folder_params(root)).manifest.id
    (root / chosen[3]).unlink()
    with pytest.raises(DatasetError, match=rf"{chosen[3]}: image file missing \(listed in .*metadata\.csv"):
        build_dataset(folder_params(root))
    (root / chosen[3]).write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=rf"{chosen[3]}: cannot read image"):
        build_dataset(folder_params(root))


def test_prepare_cli(tmp_path, monkeypatch):
    root = make_waterbirds(tmp_path / "waterbirds")
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("COLUMNS", "1000")  # rich would wrap the error line at 80 columns
    data = {"name": "folder", "sizes": SIZES, "rho": 0.75, "resolution": 16, "folder": {"root": str(root)}}
    (project / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    res = CliRunner().invoke(advmix.cli.app, ["prepare"])
    assert res.exit_code == 0, res.output
    manifest = pd.read_csv(project / "data" / "folder" / "manifest.csv")
    assert len(manifest) == sum(SIZES.values())
    (root / manifest.id[0]).unlink()
    res = CliRunner().invoke(advmix.cli.app, ["prepare"])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.strip()]
    message = f"{root / manifest.id[0]}: image file missing (listed in {root / 'metadata.csv'}, column 'img_filename')"
    assert errors == [f"error: {message}"]
