import argparse
import shutil

import pytest
import torch
from conftest import CLASSES, make_folder_dataset
from torchvision.transforms import v2

import data
import space.pictures
import vit_model
from training.batches import ImageTensorDataset

# ---------------------------------------------------------------- transforms and statistics


def test_train_transform_is_the_assignment_chain_in_order():
    t = data.train_transform([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]).transforms
    assert [type(x) for x in t] == [v2.RandomHorizontalFlip, v2.RandomResizedCrop, v2.ToDtype, v2.Normalize]
    assert t[0].p == 0.5
    assert tuple(t[1].size) == (32, 32)
    assert t[1].scale == (0.8, 1.0) and t[1].ratio == (0.9, 1.1)
    assert t[3].mean == [0.1, 0.2, 0.3] and t[3].std == [0.4, 0.5, 0.6]


def test_dataset_applies_its_transform():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    ds = ImageTensorDataset(images, torch.arange(5), data.train_transform([0.5] * 3, [0.2] * 3))
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y == 3


def test_channel_stats_match_torch():
    images = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8)
    mean, std = data.channel_stats(images)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False).tolist(), abs=1e-7)


def test_split_is_seeded_disjoint_and_complete():
    a_train, a_val = data.split_indices(1000, 100, seed=3)
    b_train, b_val = data.split_indices(1000, 100, seed=3)
    c_train, c_val = data.split_indices(1000, 100, seed=4)
    assert torch.equal(a_val, b_val) and not torch.equal(a_val, c_val)
    assert len(a_val) == 100 and len(a_train) == 900
    assert sorted(torch.cat([a_train, a_val]).tolist()) == list(range(1000))
    with pytest.raises(data.DataError, match="validation size"):
        data.split_indices(10, 10, seed=0)


# ---------------------------------------------------------------- loading


def test_folder_source_loads_and_caches(folder_data, monkeypatch):
    ds = data.load_split(folder_data, "train")
    assert ds.images.shape == (120, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.class_names == sorted(CLASSES)
    assert ds.labels.bincount().tolist() == [12] * 10
    assert data.load_split(folder_data, "test") is None
    caches = list((folder_data / ".cache").glob("train-*.pt"))
    assert len(caches) == 1
    # The second load reads the cache and decodes nothing.
    monkeypatch.setattr(data, "_decode", lambda path: pytest.fail("decoded again"))
    again = data.load_split(folder_data, "train")
    assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)


def test_cache_is_rebuilt_when_files_change_and_the_old_one_removed(folder_data):
    data.load_split(folder_data, "train")
    (old,) = (folder_data / ".cache").glob("train-*.pt")
    (folder_data / "train" / "cat" / "0000.png").unlink()
    assert len(data.load_split(folder_data, "train")) == 119
    (new,) = (folder_data / ".cache").glob("train-*.pt")
    assert new != old


def test_cache_is_found_whatever_the_folder_is_called(folder_data, monkeypatch):
    data.load_split(folder_data, "train")
    monkeypatch.chdir(folder_data.parent)
    monkeypatch.setattr(data, "_decode", lambda path: pytest.fail("decoded again"))
    for name in (folder_data.name, f"./{folder_data.name}", f"../{folder_data.parent.name}/{folder_data.name}"):
        assert len(data.load_split(name, "train")) == 120
    assert len(list((folder_data / ".cache").glob("train-*.pt"))) == 1


def test_a_read_only_data_folder_loads_without_a_cache(folder_data, monkeypatch, capsys):
    def refuse(obj, path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data, "atomic_save", refuse)  # as in a folder without write bits (CI runs as root)
    assert len(data.load_split(folder_data, "train")) == 120
    assert "no decode cache" in capsys.readouterr().err


def test_nothing_is_downloaded_unless_asked(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: calls.append(k) or pytest.fail())
    with pytest.raises(data.DataError, match=r"nope does not exist: .* or add --download to fetch"):
        data.load_split(tmp_path / "nope")
    with pytest.raises(data.DataError, match=r"holds no images: .* or add --download to fetch"):
        data.load_split(tmp_path)
    assert calls == [] and not (tmp_path / "nope").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(data.DataError, match="is a file, not a folder"):
        data.load_split(tmp_path / "file", download=True)


def test_an_asked_download_that_fails_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        assert kwargs["download"] is True
        raise RuntimeError("Failed to download (offline)")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(data.DataError, match="no train/<class>/ images, and CIFAR-10 could not be downloaded"):
        data.load_split(tmp_path, download=True)
    with pytest.raises(data.DataError, match="could not be downloaded"):
        data.load_split(tmp_path / "new", download=True)


def test_one_class_folder_is_refused(tmp_path):
    root = make_folder_dataset(tmp_path / "one", per_class=2)
    for extra in sorted((root / "train").iterdir())[1:]:
        shutil.rmtree(extra)
    with pytest.raises(data.DataError, match=r"has one class folder \(\w+\): a classifier needs"):
        data.load_split(root)


def test_an_unreadable_decode_cache_is_decoded_again(folder_data, capsys):
    first = data.load_split(folder_data, "train")
    (cache,) = (folder_data / ".cache").glob("train-*.pt")
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated
    again = data.load_split(folder_data, "train")
    assert torch.equal(again.images, first.images) and "decoding the images again" in capsys.readouterr().err
    assert len(cache.read_bytes()) > 1000  # rewritten whole


def test_images_without_class_folders_are_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    make_folder_dataset(tmp_path / "x", per_class=1)
    (tmp_path / "x" / "train" / "cat" / "0000.png").rename(tmp_path / "train" / "0000.png")
    with pytest.raises(data.DataError, match="has no class folders"):
        data.load_split(tmp_path)


def test_empty_class_folder_is_a_clear_error(folder_data):
    (folder_data / "train" / "zebra").mkdir()
    with pytest.raises(data.DataError, match="zebra holds no"):
        data.load_split(folder_data)


def test_truncated_image_is_named_and_no_cache_is_left(tmp_path):
    root = make_folder_dataset(tmp_path / "c", per_class=3, suffix=".jpg")
    bad = root / "train" / "dog" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(data.DataError, match=r"cannot read image .*dog/0001\.jpg"):
        data.load_split(root)
    assert not list(root.rglob("*.pt")) and not list(root.rglob("*.tmp"))


def test_not_an_image_is_named(folder_data):
    (folder_data / "train" / "cat" / "notes.png").write_text("not an image")
    with pytest.raises(data.DataError, match="notes.png"):
        data.load_split(folder_data)


def test_mixed_image_sizes_are_named(tmp_path):
    root = make_folder_dataset(tmp_path / "c", per_class=2)
    from PIL import Image

    Image.new("RGB", (40, 40)).save(root / "train" / "truck" / "0001.png")
    with pytest.raises(data.DataError, match=r"airplane/0000\.png is 32x32 but .*truck/0001\.png is 40x40"):
        data.load_split(root)


@pytest.mark.parametrize("odd", ["first", "last"])
def test_non_square_images_are_refused_naming_the_file(tmp_path, odd):
    root = make_folder_dataset(tmp_path / "c", per_class=2)
    from PIL import Image

    name = ("airplane", "0000.png") if odd == "first" else ("truck", "0001.png")
    Image.new("RGB", (40, 32)).save(root / "train" / name[0] / name[1])
    with pytest.raises(data.DataError, match=rf"{name[0]}/{name[1]} is 40x32: images must be square"):
        data.load_split(root)


def test_val_size_is_a_fraction_or_a_count():
    assert len(data.split_indices(600, 0.1, seed=0)[1]) == 60  # 10% of a small folder
    assert len(data.split_indices(50_000, data.val_size("0.1"), seed=0)[1]) == 5000
    assert len(data.split_indices(600, data.val_size("25"), seed=0)[1]) == 25
    for bad in ("0", "-3", "2.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            data.val_size(bad)


# ---------------------------------------------------------------- the command


def test_cli_prints_the_split_and_its_statistics(folder_data, capsys):
    data.main(["--data-dir", str(folder_data), "--val-size", "20"])
    out = capsys.readouterr().out
    assert "100 training / 20 validation images (split seed 0), no test split, 10 classes" in out
    assert "training images per class [10, 12, 10, 8, 9, 10, 10, 11, 11, 9]" in out and "mean [" in out


def test_cli_reports_bad_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["data.py", "--data-dir", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="does not exist"):
        data.main()


def test_tile_patches_puts_gaps_between_patches():
    image = torch.arange(2 * 8 * 8).float().view(2, 8, 8)
    patches = vit_model.patchify(image[None], 4)[0].view(4, 2, 4, 4)
    grid = space.pictures.tile_patches(patches, columns=2, gap=2, fill=-1)
    assert grid.shape == (2, 10, 10)
    assert torch.equal(grid[:, :4, :4], image[:, :4, :4])
    assert torch.equal(grid[:, 6:, 6:], image[:, 4:, 4:])
    assert (grid[:, 4:6, :] == -1).all() and (grid[:, :, 4:6] == -1).all()
    wrapped = space.pictures.tile_patches(patches[:3], columns=2, gap=1, fill=0)
    assert wrapped.shape == (2, 9, 9) and (wrapped[:, 5:, 5:] == 0).all()  # last row half full


def test_a_data_folder_one_level_off_is_named_instead_of_downloading_into(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_download(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    root = make_folder_dataset(tmp_path / "above" / "cifar10-jpeg", per_class=1)
    with pytest.raises(data.DataError, match="subfolder .*cifar10-jpeg has train/<class>/ images: pass that"):
        data.load_split(tmp_path / "above")
    with pytest.raises(data.DataError, match="looks like a train/ folder, so pass its parent .*cifar10-jpeg"):
        data.load_split(root / "train")


def test_same_images_and_same_split_compare_what_a_run_records():
    assert data.same_images([0.49, 0.48, 0.45], [0.49, 0.48, 0.45 + 5e-7])
    assert not data.same_images([0.49, 0.48, 0.45], [0.49, 0.48, 0.46])
    record = {"split_seed": 0, "val_images": 5000}
    assert data.same_split(record, 0, 5000)
    assert not data.same_split(record, 1, 5000) and not data.same_split(record, 0, 4999)
    assert not data.same_split({}, 0, 5000)  # a record without a split is no match
