"""The command line explains itself: --help lists every config field with its value and meaning
(exit 0), the end-of-run summary fits a terminal, data messages fit the dataset, and the package
installs without warnings from its own metadata."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lth_jax import config as config_lib
from lth_jax import data, report
from lth_jax.data import DatasetError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lth_jax.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def fields(config, prefix=""):
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


MEANINGS = {name: text for name, _, text in config_lib.FIELDS}


def test_every_config_field_has_a_meaning():
    """Each field is described once, beside its default (config.FIELDS), and base_config() has
    exactly those fields."""
    names = [name for name, _, _ in config_lib.FIELDS]
    assert len(names) == len(set(names))
    assert sorted(fields(config_lib.base_config())) == sorted(names)
    assert all(len(text) > 10 for text in MEANINGS.values())


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpfull"])
def test_help_lists_fields_with_defaults_and_exits_0(flag):
    result = run_cli(flag)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name, value in fields(config_lib.base_config()).items():
        line = next((l for l in out.splitlines() if l.split()[:1] == [name]), None)
        assert line is not None, f"{name} missing from --help"
        assert repr(value) in line or repr(value) in out  # long values sit on their own line
    assert "train.iterations            50000" in out
    assert MEANINGS["prune.levels"][:40] in out.replace("\n" + " " * 45, " ")
    if flag == "--helpfull":
        assert "absl flags:" in out and "--verbosity" in out
    else:
        assert max(len(line) for line in out.splitlines()) <= 100


def test_help_with_a_config_file_shows_its_values():
    result = run_cli("--config=configs/quickstart.py", "--help")
    assert result.returncode == 0, result.stderr
    assert "values of configs/quickstart.py" in result.stdout
    lines = {l.split()[0]: l.split()[1] for l in result.stdout.splitlines() if l.startswith("  ") and
             len(l.split()) > 1 and "." in l.split()[0]}
    assert lines["dataset.name"] == "'fashion_mnist'"
    quickstart = config_lib.load_file(str(ROOT / "configs" / "quickstart.py"))
    assert lines["prune.levels"] == str(quickstart.prune.levels)


def test_unreadable_config_file_still_gives_help():
    result = run_cli("--config=configs/no_such_file.py", "--help")
    assert result.returncode == 0
    assert "could not load configs/no_such_file.py" in result.stdout
    assert "train.iterations" in result.stdout


# ---------------------------------------------------------------- terminal summary

def write_workdir(tmp_path, variants=("ticket", "reinit", "random_prune"), levels=6, trials=3,
                  iterations=2000):
    config = config_lib.base_config().to_dict()
    config["trials"], config["prune"]["levels"] = trials, levels
    config["train"]["iterations"] = iterations
    (tmp_path / "config.json").write_text(json.dumps(config, default=list))
    records = []
    for level in range(levels + 1):
        for variant in (("ticket",) if level == 0 else variants):
            for trial in range(trials):
                records.append({
                    "trial": trial, "level": level, "variant": variant, "status": "ok",
                    "density": 0.8 ** level, "early_stop_iteration": iterations if trial else 1500,
                    "eval_iterations": list(range(100, iterations + 1, 100)),
                    "test_accuracy_at_early_stop": 0.9 - 0.001 * level,
                    "final_test_accuracy": 0.89})
    with open(tmp_path / "results.jsonl", "w") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")
    return records


def test_terminal_summary_fits_100_columns(tmp_path):
    records = write_workdir(tmp_path)
    report.write_report(tmp_path, plots=False)
    text = report.terminal_summary(tmp_path)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    # one line per level, every variant's accuracy, the early-stop note, where the full report is
    assert sum(1 for l in lines if re.match(r"\s+\d+\s+[\d.]+%  ", l)) == 7
    assert "90.00 [1833]" in text and "89.40 [1833]" in text
    late = sum(1 for r in records if r["early_stop_iteration"] == 2000)
    assert f"{late} of {len(records)} runs had their minimum validation loss at their last" in text
    assert str(tmp_path / "report.md") in text
    # the full table, by contrast, is much wider
    full = (tmp_path / "report.md").read_text()
    assert max(len(l) for l in full.splitlines()) > 100


def test_terminal_summary_of_the_recorded_reproduction():
    text = report.terminal_summary(ROOT / "experiments" / "lenet_fashion_mnist")
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "88.61 [6633]" in text  # level 15 ticket, as in report.md


# ---------------------------------------------------------------- data messages

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_data_message_names_only_ways_that_fit(tmp_path, name):
    with pytest.raises(DatasetError) as err:
        data.load({"name": name, "source": "files", "path": str(tmp_path / "nowhere")})
    message = str(err.value)
    assert f"tfds build {name} " in message and "--config.dataset.path=FOLDER" in message
    assert "source=synthetic" in message
    if name == "fashion_mnist":
        assert "apt-get install dataset-fashion-mnist" in message
    else:
        assert "apt-get" not in message and "fashion" not in message.lower()
    if name == "cifar10":
        assert "cifar-10-batches-py" in message and "IDX" not in message
    else:
        assert "images-idx3" in message


# ---------------------------------------------------------------- packaging

def test_pyproject_license_is_an_spdx_string():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert "license-files" not in meta["project"] or isinstance(meta["project"]["license-files"], list)
    setuptools = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools and int(setuptools[0].split(">=")[1].split(".")[0]) >= 77  # SPDX license support


def test_quickstart_level_count_agrees_in_readme_script_and_config():
    quickstart = config_lib.load_file(str(ROOT / "configs" / "quickstart.py"))
    texts = {
        "README.md": (ROOT / "README.md").read_text(),
        "experiments/quickstart.sh": "\n".join(l.lstrip("# ") for l in
                                               (ROOT / "experiments" / "quickstart.sh").read_text().splitlines()),
        "configs/quickstart.py": (ROOT / "configs" / "quickstart.py").read_text(),
    }
    for name, text in texts.items():
        counts = re.findall(r"dense network(?: \(level 0\))? and (\d+) pruning levels", " ".join(text.split()))
        assert counts == [str(quickstart.prune.levels)], (name, counts)
