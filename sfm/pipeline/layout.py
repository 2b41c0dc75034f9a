"""Where a run's stages write: one folder layout, named once, read by the pipelines and the report.

    root/
      pipeline.json                   which pipeline made the run, its layout and resolved settings
      timings.jsonl                   one JSON record per stage run (sfm.pipeline.stages.Timings)
      <diff>/model.pt, metrics.jsonl  diffusion training (train_diff.py --save_dir)
      <s2ef>/model.pt, metrics.jsonl  S2EF training (train_s2ef.py --save_dir)
      <s2ef>/eval_s2ef_<split>.json   S2EF metrics on S2EF frames (eval_s2ef.py)
      <s2ef>/eval_is2re.json          ... on the IS2RE splits
      <s2ef>/mlsp_<split>.json        ML+SP of the initial placements (mlsp_bench.py)
      <group>/<name>/samples, metrics.json   a sampling run (gen.py --save_dir)
      <group>/<name>/scores.json, samples.csv, scored.lmdb   a scoring run (score.py --out)
      [<group>/]<name>.md             a table over runs (gen_table.py), e.g. quality_bar.md, gen/quality.md
      <group>/paired_<split>.json     two sampling runs compared per system (sfm.eval.paired)
      place/inputs.lmdb, random_samples.lmdb   the systems of a placement comparison, random placements
      train_set/data.lmdb             a training set the run made (recipe_diff's lowenergy stage)
      dense/<split>/<source>.lmdb, dense_<split>.json   dense-split sampling inputs, success@k
      report/                         report.md, report.json, *.png (sfm.tasks.report)

``diff`` and ``s2ef`` are the model folders' names: the quickstart trains both ("diff", "s2ef");
the diffusion recipe keeps its model in "train", the S2EF recipe in the run root (".").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

SETTINGS_FILE = "pipeline.json"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run under ``root`` (module docstring); pure naming, nothing is created."""

    root: Path
    diff: str = "diff"
    s2ef: str = "s2ef"

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def settings(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def timings(self) -> Path:
        return self.root / "timings.jsonl"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def diff_dir(self) -> Path:
        return self.root / self.diff

    @property
    def s2ef_dir(self) -> Path:
        return self.root / self.s2ef

    def model(self, kind: str) -> Path:
        """The consolidated checkpoint of the ``kind`` ("diff" or "s2ef") training run."""
        return self._model_dir(kind) / "model.pt"

    def training_records(self, kind: str) -> Path:
        """The trainer's ``metrics.jsonl`` of the ``kind`` ("diff" or "s2ef") training run."""
        return self._model_dir(kind) / "metrics.jsonl"

    def _model_dir(self, kind: str) -> Path:
        if kind not in ("diff", "s2ef"):
            raise ValueError(f"model kind must be 'diff' or 's2ef', got {kind!r}")
        return self.diff_dir if kind == "diff" else self.s2ef_dir

    def s2ef_eval(self, split: str = "val_id") -> Path:
        return self.s2ef_dir / f"eval_s2ef_{split}.json"

    @property
    def is2re_eval(self) -> Path:
        return self.s2ef_dir / "eval_is2re.json"

    def mlsp(self, split: str = "val_id") -> Path:
        return self.s2ef_dir / f"mlsp_{split}.json"

    def run(self, group: str, name: str) -> Path:
        """The folder of one sampling or scoring run, ``root/group/name``."""
        return self.root / group / name

    def samples(self, group: str, name: str) -> Path:
        return self.run(group, name) / "samples"

    def gen_metrics(self, group: str, name: str) -> Path:
        return self.run(group, name) / "metrics.json"

    def scores(self, group: str, name: str) -> Path:
        return self.run(group, name) / "scores.json"

    def runs(self, group: str, file: str) -> list[Path]:
        """``file`` of every run of ``group`` that has one, sorted by run name."""
        return sorted((self.root / group).glob(f"*/{file}"))

    def table(self, name: str, group: str = "") -> Path:
        """A Markdown table over runs, ``root[/group]/name.md``."""
        return self.root / group / f"{name}.md"

    def paired(self, group: str, split: str) -> Path:
        """The paired comparison (sfm.eval.paired) of two sampling runs of ``group`` on ``split``."""
        return self.root / group / f"paired_{split}.json"

    @property
    def train_set(self) -> Path:
        """A training set the run made for itself (e.g. the low-energy one), an LMDB folder."""
        return self.root / "train_set"

    def dense_inputs(self, split: str, source: str) -> Path:
        """One source's placements of a dense split, as sampling inputs."""
        return self.root / "dense" / split / f"{source}.lmdb"

    def success(self, split: str) -> Path:
        """Placement success@k against the dense minimum (sfm.eval.success --json)."""
        return self.root / f"dense_{split}.json"

    @property
    def place_inputs(self) -> Path:
        """The systems a placement comparison scores (a prefix of a split)."""
        return self.root / "place" / "inputs.lmdb"

    @property
    def random_placements(self) -> Path:
        return self.root / "place" / "random_samples.lmdb"

    def write_settings(self, pipeline: str, settings: dict) -> None:
        """Record the pipeline, this layout's folder names and its resolved settings."""
        self.root.mkdir(parents=True, exist_ok=True)
        layout = {k: v for k, v in asdict(self).items() if k != "root"}
        self.settings.write_text(
            json.dumps({"pipeline": pipeline, "layout": layout, "settings": settings}, indent=1, default=str) + "\n"
        )

    @classmethod
    def read(cls, root) -> tuple[RunLayout, dict]:
        """The layout of an existing run and its settings (``{}``; the quickstart's layout without a
        ``pipeline.json``, e.g. a run folder assembled by hand)."""
        path = Path(root) / SETTINGS_FILE
        if not path.is_file():
            return cls(Path(root)), {}
        try:
            record = json.loads(path.read_text())
            return cls(Path(root), **record["layout"]), record["settings"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a pipeline settings record ({type(err).__name__}: {err})") from err
