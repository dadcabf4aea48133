"""Tables: the CSV holds plain numbers (mean and std apart); Markdown/LaTeX keep "m ± s"."""

import csv
import json
import math

import pandas as pd

from dashlib.report import MeanStd, Provenance, Shown, save_table


def test_csv_splits_mean_and_std_into_numeric_columns(tmp_path):
    rows = [{"model": "teacher", "params": Shown(1624577, "1,624,577"), "FID": MeanStd(0.4221, 0.0381),
             "rho": Shown(1.0, "1.00")},
            {"model": "dash", "params": Shown(280881, "280,881"), "FID": MeanStd(0.5, None),
             "rho": Shown(None, "–")},
            {"model": "broken", "params": Shown(1, "1"), "FID": MeanStd(math.nan, math.nan),
             "rho": Shown(0.5, "0.50")}]
    prov = Provenance("tiny", (42,), {"ddim": 5})
    md = save_table(rows, ["model", "params", "FID", "rho"], tmp_path, "T9", "test", ["C1"], prov)
    text = md.read_text()
    assert "0.422 ± 0.038" in text and "1,624,577" in text and "| 0.500 |" in text
    assert r"0.422 $\pm$ 0.038" in (tmp_path / "T9.tex").read_text()
    with open(tmp_path / "T9.csv") as f:
        header = next(csv.reader(f))
    assert header == ["model", "params", "FID_mean", "FID_std", "rho"]
    df = pd.read_csv(tmp_path / "T9.csv")
    for column in ("params", "FID_mean", "FID_std", "rho"):
        assert df[column].dtype.kind in "if", (column, df[column].dtype)
    assert df["params"].tolist() == [1624577, 280881, 1]
    assert df["FID_mean"][0] == 0.4221 and df["FID_std"][0] == 0.0381
    assert math.isnan(df["FID_std"][1]) and math.isnan(df["FID_mean"][2]) and math.isnan(df["rho"][1])
    assert json.loads((tmp_path / "T9.json").read_text())["files"][2] == "T9.csv"


def test_a_nested_figures_index_links_to_the_papers_summary_that_exists(tmp_path):
    import re
    from pathlib import Path

    from dashlib.report import write_index

    docs = Path(__file__).resolve().parents[1] / "docs" / "paper.md"
    folder = tmp_path / "figures" / "tiny-pets" / "quick"
    folder.mkdir(parents=True)
    link = re.search(r"\[docs/paper.md\]\(([^)]+)\)", write_index(folder).read_text()).group(1)
    assert (folder / link).resolve() == docs


def test_the_figures_index_names_the_image_folder_and_the_changed_keys(tmp_path):
    from PIL import Image

    from dashlib.reproduce import prepared_figures_dir

    pets = tmp_path / "pets"
    for name in ("cat", "dog"):
        (pets / name).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), 60 * i).save(pets / name / f"{i}.png")
    overrides = {"data.name": "imagefolder", "data.data_root": str(pets), "train.steps": 7}
    quick = prepared_figures_dir("tiny", True, tmp_path / "figures", overrides)
    prov = Provenance("tiny", (42,), {})
    index = save_table([{"model": "teacher"}], ["model"], quick, "T9", "test", ["C1"], prov)
    text = (index.parent / "README.md").read_text()
    assert f"Data: the image folder {pets}." in text
    assert "Changed from the tiny preset: train.steps = 7." in text
    # a figure made from data of its own (the workshop's toys) is named as the exception
    toy = Provenance("tiny", (0,), {}, extra={"own_data": "the workshop's toy data"})
    index = save_table([{"model": "teacher"}], ["model"], quick, "W9", "toy", [], toy)
    assert (f"Data: the image folder {pets} (W9: the workshop's toy data)."
            in (index.parent / "README.md").read_text())
    plain = tmp_path / "plain"
    save_table([{"model": "teacher"}], ["model"], plain, "T9", "test", ["C1"], prov)
    assert "Data:" not in (plain / "README.md").read_text()
    assert "Changed from" not in (plain / "README.md").read_text()


def test_figures_made_from_earlier_images_are_named_in_the_index(tmp_path):
    """`dash reproduce --only ...` after an image was replaced remade some figures from the
    new images and left the others, made from the old ones, unmarked in the same folder."""
    from PIL import Image

    from dashlib.pipeline import budget
    from dashlib.reproduce import prepared_figures_dir

    pets = tmp_path / "pets"
    for name in ("cat", "dog"):
        (pets / name).mkdir(parents=True)
        for i in range(8):
            Image.new("L", (8, 8), 30 * i).save(pets / name / f"{i}.png")

    overrides = {"data.name": "imagefolder", "data.data_root": str(pets)}
    folder = prepared_figures_dir("tiny", False, tmp_path / "figs", overrides)
    old = budget("tiny", overrides=overrides, threads=1).provenance("02_distillation")
    index = folder / "README.md"
    save_table([{"model": "teacher"}], ["model"], folder, "T9", "old", ["C1"], old)
    assert "earlier contents" not in index.read_text()
    (pets / "cat" / "0.png").unlink()  # another image under the same name (as a new process sees it)
    Image.new("L", (9, 9), 255).save(pets / "cat" / "0.png")
    folder = prepared_figures_dir("tiny", False, tmp_path / "figs", overrides)  # the next run
    new = budget("tiny", overrides=overrides, threads=1).provenance("01_teacher")
    assert new.extra["data_files"] != old.extra["data_files"]
    save_table([{"model": "teacher"}], ["model"], folder, "T8", "new", ["C1"], new)
    assert "Warning: T9 was made from earlier contents of the image folder" in index.read_text()
    save_table([{"model": "teacher"}], ["model"], folder, "T9", "remade", ["C1"], new)
    assert "earlier contents" not in index.read_text()
