"""Labels and train/test splits in the datasets' official formats, resolved against a store's video ids.

A store's ids are the extract input's paths without extension (`ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01`).
A split file names a video by a path or a file name, so each entry carries the id forms it may have in a store,
tried in order: exactly, then ignoring case, then by its last path component when that is unique in the store.
Entries that match nothing are listed in one error; nothing is dropped silently.

    split = load_split([Path("ucfTrainTestlist")], store.videos, split=1)
    split.train  # {video id: class index}; split.classes[i] is the name of class i
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PARTS = ("train", "test")


class SplitError(ValueError):
    """Label files that cannot be read or resolved against the store; the message lists what is wrong."""


def printable(video_id: str) -> str:
    """An id as is, or quoted with escapes if it holds a newline or another unprintable character (a quoted CSV
    field can), so that an error stays one line."""
    return video_id if video_id.isprintable() else repr(video_id)


@dataclass(frozen=True)
class Entry:
    forms: tuple[str, ...]  # the ids this video may have in a store, most specific first
    label: str
    part: str               # train | test


@dataclass(frozen=True)
class Split:
    classes: tuple[str, ...]
    train: dict[str, int]   # store video id -> class index
    test: dict[str, int]

    def part(self, name: str) -> tuple[list[str], list[int]]:
        """(videos, labels) of `train` or `test`, videos sorted."""
        items = sorted(getattr(self, name).items())
        return [v for v, _ in items], [y for _, y in items]


def _stem_forms(path: str, *prefixes: str) -> tuple[str, ...]:
    stem = PurePosixPath(path.strip().replace("\\", "/"))
    stem = stem.with_suffix("") if stem.suffix else stem
    return tuple(dict.fromkeys([*(f"{p}/{stem.name}" for p in prefixes), stem.as_posix()]))


def ucf101(directory: Path, *, split: int = 1) -> tuple[list[Entry], list[str]]:
    """`classInd.txt` ("1 ApplyEyeMakeup"), `trainlist0N.txt` ("Class/v_..._c01.avi 1"), `testlist0N.txt`
    ("Class/v_..._c01.avi"; the class is the folder). Classes in classInd order."""
    directory = Path(directory)
    classes: dict[int, str] = {}
    for line in _lines(directory / "classInd.txt"):
        index, name = _fields(directory / "classInd.txt", line, 2, "INDEX CLASS")
        classes[_int(directory / "classInd.txt", line, index)] = name
    names = [classes[i] for i in sorted(classes)]
    by_lower = {n.lower(): n for n in names}
    entries = []
    train = directory / f"trainlist{split:02d}.txt"
    for line in _lines(train):
        path, index = _fields(train, line, 2, "PATH CLASS_INDEX")
        if _int(train, line, index) not in classes:
            raise SplitError(f"{train}: class index {index} of {path} is not in classInd.txt")
        entries.append(Entry(_stem_forms(path), classes[int(index)], "train"))
    for line in _lines(directory / f"testlist{split:02d}.txt"):
        path = line.split()[0]
        folder = PurePosixPath(path.replace("\\", "/")).parent.name
        if folder.lower() not in by_lower:
            raise SplitError(f"{directory / f'testlist{split:02d}.txt'}: class folder {folder!r} of {path} "
                             f"is not in classInd.txt")
        entries.append(Entry(_stem_forms(path), by_lower[folder.lower()], "test"))
    return entries, names


def hmdb51(directory: Path, *, split: int = 1) -> tuple[list[Entry], list[str]]:
    """`<class>_test_splitN.txt`, lines "<video>.avi <mark>": 1 train, 2 test, 0 unused in this split.
    Classes sorted by name."""
    files = sorted(Path(directory).glob(f"*_test_split{split}.txt"))
    if not files:
        raise SplitError(f"{directory}: no HMDB51 files *_test_split{split}.txt")
    entries = []
    for f in files:
        label = f.name[: -len(f"_test_split{split}.txt")]
        for line in _lines(f):
            name, mark = _fields(f, line, 2, "VIDEO MARK")
            if mark not in ("0", "1", "2"):
                raise SplitError(f"{f}: mark {mark!r} of {name} is not 0, 1 or 2")
            if mark != "0":
                entries.append(Entry(_stem_forms(name, label), label, "train" if mark == "1" else "test"))
    return entries, sorted({e.label for e in entries})


# Kinetics has no public test labels; papers evaluate on `validate.csv` (split "val"), used here as test.
KINETICS_PARTS = {"train": "train", "val": "test", "validate": "test", "test": "test"}


def kinetics400(files: Sequence[Path]) -> tuple[list[Entry], list[str]]:
    """CSVs with columns label, youtube_id, time_start, time_end, split (train.csv, validate.csv). A clip is
    stored as `<label>/<youtube_id>_<start:06d>_<end:06d>`, flat, or as the bare youtube id."""
    entries = []
    for f in files:
        for row in _csv_rows(f, ("label", "youtube_id", "time_start", "time_end", "split")):
            if row["split"] not in KINETICS_PARTS:
                raise SplitError(f"{f}: split {row['split']!r} is not one of {', '.join(KINETICS_PARTS)}")
            start, end = (_int(f, f"{row['youtube_id']},{row[k]}", row[k]) for k in ("time_start", "time_end"))
            clip = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            forms = (f"{row['label']}/{clip}", clip, row["youtube_id"])
            entries.append(Entry(forms, row["label"], KINETICS_PARTS[row["split"]]))
    return entries, sorted({e.label for e in entries})


def generic_csv(files: Sequence[Path]) -> tuple[list[Entry], list[str]]:
    """CSVs with columns video_id, label, split (train or test). Classes sorted by name."""
    entries = []
    for f in files:
        for row in _csv_rows(f, ("video_id", "label", "split")):
            if row["split"] not in PARTS:
                raise SplitError(f"{f}: split {row['split']!r} of {printable(row['video_id'])} is not train or test")
            entries.append(Entry(_stem_forms(row["video_id"]), row["label"], row["split"]))
    return entries, sorted({e.label for e in entries})


def resolve(entries: Iterable[Entry], classes: Sequence[str], store_ids: Iterable[str], *, source: str) -> Split:
    """Map every entry to one store id; raise one SplitError listing every entry that maps to none."""
    ids = list(store_ids)
    exact = set(ids)
    lower: dict[str, list[str]] = {}
    base: dict[str, list[str]] = {}
    for vid in ids:
        lower.setdefault(vid.lower(), []).append(vid)
        base.setdefault(vid.rsplit("/", 1)[-1].lower(), []).append(vid)
    index = {c: i for i, c in enumerate(classes)}
    parts: dict[str, dict[str, int]] = {p: {} for p in PARTS}
    unmatched, twice = [], []
    for e in entries:
        vid = _match(e.forms, exact, lower, base)
        if vid is None:
            unmatched.append(e.forms[0])
        elif any(vid in p for p in parts.values()):
            twice.append(vid)
        else:
            parts[e.part][vid] = index[e.label]
    if unmatched:
        shown = ", ".join(map(printable, unmatched[:10])) + (f" and {len(unmatched) - 10} more"
                                                             if len(unmatched) > 10 else "")
        example = ", ".join(map(printable, ids[:3])) or "none: the store is empty"
        raise SplitError(f"{len(unmatched)} of the videos in {source} are not in the store (its ids look like "
                         f"{example}): {shown}; extract them or fix the labels")  # one line, as every CLI error
    if twice:
        raise SplitError(f"{source}: {len(twice)} videos are listed twice: {', '.join(map(printable, twice[:10]))}")
    return Split(tuple(classes), parts["train"], parts["test"])


def _match(forms: tuple[str, ...], exact: set[str], lower: dict[str, list[str]],
           base: dict[str, list[str]]) -> str | None:
    for form in forms:
        if form in exact:
            return form
    for form in forms:
        if len(found := lower.get(form.lower(), [])) == 1:
            return found[0]
    for form in forms:
        if len(found := base.get(form.rsplit("/", 1)[-1].lower(), [])) == 1:
            return found[0]
    return None


def detect(paths: Sequence[Path]) -> str:
    """ucf101 | hmdb51 | kinetics400 | csv, from what the paths hold."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        d = paths[0]
        if (d / "classInd.txt").is_file():
            return "ucf101"
        if any(d.glob("*_test_split[0-9].txt")):
            return "hmdb51"
        raise SplitError(f"{d}: neither UCF101 lists (classInd.txt) nor HMDB51 splits (*_test_split1.txt)")
    kinds = set()
    for p in paths:
        if not p.is_file():
            raise SplitError(f"label file {p} does not exist")
        try:
            header = set(next(csv.reader(io.StringIO(_text(p), newline="")), []))
        except csv.Error as e:
            raise SplitError(f"{p}: not a readable CSV ({e})") from None
        kinds.add("kinetics400" if "youtube_id" in header else "csv" if "video_id" in header else None)
    if None in kinds or len(kinds) != 1:
        raise SplitError(f"{', '.join(map(str, paths))}: expected CSVs with a header of video_id,label,split or "
                         f"Kinetics' label,youtube_id,time_start,time_end,split (all of one kind)")
    return kinds.pop()


def load_split(paths: Sequence[Path], store_ids: Iterable[str], *, split: int = 1) -> Split:
    """Parse the label files (format detected, see `detect`) and resolve them against `store_ids`."""
    paths = [Path(p) for p in paths]
    kind = detect(paths)
    if kind == "ucf101":
        entries, classes = ucf101(paths[0], split=split)
    elif kind == "hmdb51":
        entries, classes = hmdb51(paths[0], split=split)
    elif kind == "kinetics400":
        entries, classes = kinetics400(paths)
    else:
        entries, classes = generic_csv(paths)
    return resolve(entries, classes, store_ids, source=f"{kind} labels {', '.join(map(str, paths))}")


def _text(path: Path) -> str:
    if not Path(path).is_file():
        raise SplitError(f"label file {path} does not exist")
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SplitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it a label file?") from None


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in _text(path).splitlines() if line.strip()]


def _fields(path: Path, line: str, n: int, expected: str) -> list[str]:
    fields = line.split()
    if len(fields) != n:
        raise SplitError(f"{path}: line {line[:80]!r} is not '{expected}'")
    return fields


def _int(path: Path, line: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SplitError(f"{path}: {value[:40]!r} in line {line[:80]!r} is not an integer") from None


def _csv_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        reader = csv.DictReader(io.StringIO(_text(path), newline=""))
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SplitError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(columns)}")
        # A row with more fields than the header puts the rest under None (dropped); fewer leaves None values.
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except csv.Error as e:
        raise SplitError(f"{path}: not a readable CSV ({e})") from None

