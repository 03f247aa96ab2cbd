"""Scene folders: ``explaincam scenes`` writes generated scenes as PNG files and ``captions.jsonl``.

The scenes themselves (``scene_at``, the words they use) are ``daemon.scenes``; this module
writes them to a folder with their ground truth and reads such a folder back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2

from convert.progress import Progress
from daemon.files import write_atomically
from daemon.scenes import scene_at


def write_scenes(out: str | os.PathLike, count: int, seed: int, progress=None) -> Path:
    """Write ``count`` scenes as PNG files plus ``captions.jsonl``; return the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        scene = scene_at(seed, i)
        name = f"scene_{seed}_{i:06d}.png"
        cv2.imwrite(str(out / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        lines.append(json.dumps({
            "file": name,
            "caption": scene.caption,
            "objects": [o.to_json(scene.caption) for o in scene.objects],
            "seed": seed,
            "index": i,
        }))
        if progress:
            progress(i + 1, count)
    write_atomically(out / "captions.jsonl", "\n".join(lines) + "\n")
    return out


def read_scenes(folder: str | os.PathLike) -> list[dict]:
    """The records of a scenes folder's ``captions.jsonl`` (``file`` made absolute)."""
    folder = Path(folder)
    index = folder / "captions.jsonl"
    if not index.is_file():
        raise FileNotFoundError(f"{folder} is not a scenes folder: {index} is missing")
    records = []
    for line in index.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            rec["path"] = str(folder / rec["file"])
            records.append(rec)
    return records


def configure(parser) -> None:
    """Arguments of ``explaincam scenes``."""
    parser.add_argument("--count", type=int, default=100, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="scene stream seed (training uses 1)")
    parser.add_argument("--out", required=True, help="output folder (PNG files + captions.jsonl)")


def main(args) -> int:
    """Write the scenes and say where they are."""
    if args.count < 1:
        raise SystemExit("error: --count must be at least 1")
    out = write_scenes(args.out, args.count, args.seed, Progress("scenes"))
    print(f"wrote {args.count} scenes to {out} (captions in {out / 'captions.jsonl'})")
    return 0
