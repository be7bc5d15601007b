import os
import shutil
import zipfile

import pytest

from celeba_common.errors import UserError
from dataset_format.schema import ATTRIBUTE_NAMES
from preprocessing import celeba
from preprocessing.synthetic_celeba import write_lists


def test_txt_layout_rows(celeba_txt):
    layout = celeba.find_layout(celeba_txt)
    assert layout.kind == "txt" and layout.image_dir.endswith("img_align_celeba")
    rows = celeba.read_rows(layout)
    assert len(rows) == 300 and rows[0].name == "000001.jpg"
    assert {r.partition for r in rows} == {"train", "validation", "test"}
    male = ATTRIBUTE_NAMES.index("Male")
    assert all(r.label == (1 if r.attributes[male] == 1 else 0) for r in rows)


def test_crlf_and_trailing_spaces_and_runs_of_spaces(celeba_copy):
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        path = os.path.join(celeba_copy, name)
        with open(path) as f:
            lines = f.read().splitlines()
        with open(path, "w", newline="") as f:
            f.write("".join(line.replace(" ", "   ") + "  \r\n" for line in lines))
    rows = celeba.read_rows(celeba.find_layout(celeba_copy))
    assert len(rows) == 300


def test_kaggle_layout_detected(celeba_txt, tmp_path):
    rows = celeba.read_rows(celeba.find_layout(celeba_txt))
    kaggle = tmp_path / "kaggle"
    shutil.copytree(os.path.join(celeba_txt, "img_align_celeba"), kaggle / "img_align_celeba" / "img_align_celeba")
    write_lists(str(kaggle), [(r.name, r.attributes) for r in rows], "kaggle")
    layout = celeba.find_layout(str(kaggle))
    assert layout.kind == "kaggle"
    assert celeba.read_rows(layout) == rows


def test_zip_read_in_place(celeba_txt, tmp_path):
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        shutil.copy(os.path.join(celeba_txt, name), zipped / name)
    with zipfile.ZipFile(zipped / "img_align_celeba.zip", "w") as z:
        z.write(os.path.join(celeba_txt, "img_align_celeba", "000007.jpg"), "img_align_celeba/000007.jpg")
    layout = celeba.find_layout(str(zipped))
    assert layout.image_zip and layout.image_dir is None
    source = celeba.ImageSource.for_layout(layout)
    with open(os.path.join(celeba_txt, "img_align_celeba", "000007.jpg"), "rb") as f:
        assert source.read("000007.jpg") == f.read()
    with pytest.raises(FileNotFoundError):
        source.read("000008.jpg")


def test_missing_folder_error_names_folder_and_help(tmp_path):
    with pytest.raises(UserError, match="does not exist.*CelebA"):
        celeba.find_layout(str(tmp_path / "nope"))
    with pytest.raises(UserError, match=r"no CelebA download found in .*list_attr_celeba.txt.*demo"):
        celeba.find_layout(str(tmp_path))


def test_bad_attribute_row_names_file_and_line(celeba_copy):
    path = os.path.join(celeba_copy, "list_attr_celeba.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[5] = lines[5].replace("-1", "0", 1)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="list_attr_celeba.txt line 6"):
        celeba.read_rows(celeba.find_layout(celeba_copy))


def test_bad_partition_value(celeba_copy):
    path = os.path.join(celeba_copy, "list_eval_partition.txt")
    with open(path, "a") as f:
        f.write("000999.jpg 7\n")
    with pytest.raises(UserError, match="list_eval_partition.txt line 301"):
        celeba.read_rows(celeba.find_layout(celeba_copy))


def _edit(path, change):
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(change(lines)) + "\n")


@pytest.mark.parametrize("list_file,first_row", [("list_attr_celeba.txt", 2), ("list_eval_partition.txt", 0)])
def test_a_name_listed_twice_is_an_error_naming_the_line(celeba_copy, list_file, first_row):
    path = os.path.join(celeba_copy, list_file)
    # the last row becomes a second 000001.jpg (before, the later row won silently: a flipped label, or an image
    # moved to another split); the attribute file's image count on line 1 still matches
    _edit(path, lambda lines: lines[:-1] + [lines[first_row]])
    with pytest.raises(
        UserError,
        match=rf"{list_file} line \d+: 000001.jpg is listed twice \(first on line "
        rf"{first_row + 1}\)",
    ):
        celeba.read_rows(celeba.find_layout(celeba_copy))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/dev/zero", "sub/000001.jpg", ".."])
def test_names_must_stay_inside_the_image_folder(celeba_copy, bad):
    path = os.path.join(celeba_copy, "list_eval_partition.txt")
    _edit(path, lambda lines: [lines[0].replace("000001.jpg", bad, 1)] + lines[1:])
    with pytest.raises(UserError, match=r"list_eval_partition.txt line 1: .* is not a plain file name"):
        celeba.read_rows(celeba.find_layout(celeba_copy))


def test_rows_missing_from_either_list_file_are_an_error(celeba_copy, tmp_path):
    partitions = os.path.join(celeba_copy, "list_eval_partition.txt")
    _edit(partitions, lambda lines: lines[:-2])  # two attribute rows have no partition
    with pytest.raises(
        UserError,
        match=r"list_eval_partition.txt has no row for 000299.jpg \(and 1 more\) listed "
        r"in .*list_attr_celeba.txt",
    ):
        celeba.read_rows(celeba.find_layout(celeba_copy))
    _edit(partitions, lambda lines: lines + ["000299.jpg 2", "000300.jpg 2", "000301.jpg 2"])
    with pytest.raises(UserError, match=r"list_attr_celeba.txt has no row for 000301.jpg listed in"):
        celeba.read_rows(celeba.find_layout(celeba_copy))
