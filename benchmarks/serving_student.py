"""The serving benchmark (benchmarks.serving) for another student than the run's, e.g. a study's: the towers study's
student on a separate query tower, whose cache miss runs the smaller encoder.

    .venv/bin/python -m benchmarks.serving_student --student DIR --name serving-query-tower [--requests N --rounds R]

Builds runs/NAME beside the run of --config (configs/homedepot-minilm.yaml): its data, teacher and embedding cache
linked, the student copied, and a config naming the student's encoders and MLP; then runs benchmarks.serving on
it (which materializes the features of the student's item tower and exports its bundle), writing
benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def prepare(config_path: Path, student_dir: Path, name: str) -> Path:
    """runs/NAME set up for `relevance features` / `export` / `serve` with ``student_dir`` as its student."""
    from relevance.common.files import read_manifest
    from relevance.config import load_config

    run = ROOT / load_config(config_path).workdir
    manifest = read_manifest(student_dir, "student")
    workdir = ROOT / "runs" / name
    workdir.mkdir(parents=True, exist_ok=True)
    for part in ("data", "teacher", "embeddings"):
        link, target = workdir / part, (run / part).resolve()
        if link.is_symlink() and link.resolve() != target:  # another run's (or broken): point it at this one
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    student = workdir / "student"
    before = read_manifest(student, "student") if (student / "manifest.json").exists() else None
    if before is None or before["student_version"] != manifest["student_version"]:
        shutil.rmtree(student, ignore_errors=True)
        shutil.copytree(student_dir, student)
        if before is None or before["encoder_fingerprint"] != manifest["encoder_fingerprint"]:
            # Another item tower: the features are materialized again and the bundle exported against them.
            for stale in ("feature_repo", "export"):
                shutil.rmtree(workdir / stale, ignore_errors=True)
    settings = yaml.safe_load(config_path.read_text()) or {}
    settings["workdir"] = str(workdir.relative_to(ROOT))
    student_settings = settings.get("student", {})
    # The student names its encoders: nothing for this workdir to tune or distil (the run's steps off).
    off = {part: {**student_settings.get(part, {}), "enabled": False} for part in ("towers", "query_tower")}
    settings["student"] = {**student_settings, **off, "encoder": manifest["encoder"],
                           "query_encoder": manifest.get("query_encoder"), "hidden": manifest["config"]["hidden"],
                           "encoder_max_length": manifest["encoder_max_length"]}
    out = workdir / "config.yaml"
    out.write_text(yaml.safe_dump(settings))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, required=True, help="a trained student's directory")
    parser.add_argument("--name", required=True, help="runs/NAME and benchmarks/results/NAME.{json,md}")
    parser.add_argument("--about", default=None, help="what the student is, for the report")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "homedepot-minilm.yaml")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    if not (args.student / "manifest.json").exists():
        raise SystemExit(f"{args.student}: not a trained student (no manifest.json)")
    config = prepare(args.config, args.student, args.name)
    rerun = shlex.join([".venv/bin/python", "-m", "benchmarks.serving_student", *sys.argv[1:]])
    subprocess.run([sys.executable, "-m", "benchmarks.serving", "--config", str(config), "--name", args.name,
                    "--requests", str(args.requests), "--rounds", str(args.rounds), "--command", rerun,
                    *(["--about", args.about] if args.about else [])], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
