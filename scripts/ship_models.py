"""Package trained runs as keydyn's shipped models (src/keydyn/models/<task>/), with their provenance.

    python scripts/ship_models.py --task top_down --visual-run VISUAL --run sds=RUN --run gt3d=RUN \
        --evaluation sds=EVAL --evaluation gt3d=EVAL --provenance provenance.json

Copies what control needs (no optimiser state, no caches): the visual run's best checkpoint and config, and each
dynamics run's config, task, best checkpoint and latent files, with visual_network.json pointing at ../visual.
Writes manifest.json: the format version, the provenance (a JSON file of the commands and commit that made the
runs), each run's measured errors (from the results.json of `keydyn evaluate`) and every file's SHA-256.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from keydyn.models import FORMAT_VERSION, file_sha256, models_root

VISUAL_FILES = ("best.json", "best.safetensors", "config.json")
RUN_FILES = (
    "config.json",
    "task.json",
    "best.json",
    "best.safetensors",
    "references.json",
    "references.safetensors",
    "rigid_filter.json",
    "rigid_filter.safetensors",
    "visual_network.json",
    "keypoints.png",
)


def _pairs(values: list[str], what: str) -> dict[str, Path]:
    pairs = {}
    for value in values:
        name, _, path = value.partition("=")
        if not path:
            raise SystemExit(f"--{what} takes METHOD=PATH, got {value!r}")
        pairs[name] = Path(path)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--visual-run", type=Path, required=True)
    parser.add_argument("--run", action="append", default=[], help="METHOD=dynamics run directory")
    parser.add_argument("--evaluation", action="append", default=[], help="METHOD=evaluation directory")
    parser.add_argument("--provenance", type=Path, required=True, help="JSON: commit, commands, notes")
    parser.add_argument("--out", type=Path, default=None, help="models folder (default: the package's)")
    args = parser.parse_args()
    runs, evaluations = _pairs(args.run, "run"), _pairs(args.evaluation, "evaluation")
    provenance = json.loads(args.provenance.read_text())
    missing = {"commit", "commands"} - set(provenance)
    if missing:
        raise SystemExit(f"--provenance lacks {', '.join(sorted(missing))}")
    folder = (args.out or models_root()) / args.task
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "visual").mkdir(parents=True)
    for name in VISUAL_FILES:
        shutil.copy2(args.visual_run / name, folder / "visual" / name)
    entries = {}
    for method, run in runs.items():
        (folder / method).mkdir()
        for name in RUN_FILES:
            if (run / name).exists():
                shutil.copy2(run / name, folder / method / name)
        identity_path = folder / method / "visual_network.json"
        if identity_path.exists():
            identity = json.loads(identity_path.read_text())
            identity["visual_run"] = "../visual"
            identity_path.write_text(json.dumps(identity, indent=2) + "\n")
        entry = {"best": json.loads((run / "best.json").read_text())}
        if method in evaluations:
            results = json.loads((evaluations[method] / "results.json").read_text())
            summary = results["summary"]
            entry["evaluation"] = {
                "pairs": summary["episodes"],
                "position_cm": summary["final_position_error_cm"]["mean"],
                "position_median_cm": summary["final_position_error_cm"]["median"],
                "angle_deg": summary["final_angle_error_deg"]["mean"],
                "success_rate": summary["success_rate"],
                "first_pairs_position_cm": [row["final_position_error_cm"] for row in results["episodes"][:5]],
                "evaluate_config": results["config"],
            }
        entries[method] = entry
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    files = {
        str(path.relative_to(folder)): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }
    manifest = {
        "format": FORMAT_VERSION,
        "task": args.task,
        "provenance": provenance,
        "visual": {"best": json.loads((args.visual_run / "best.json").read_text()).get("step")},
        "runs": entries,
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {folder}: {len(files)} files, {sum((folder / f).stat().st_size for f in files) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
