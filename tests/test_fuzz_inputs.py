"""Property-based fuzzing (hypothesis) of what users hand in as text: label files in every format and spec YAML.
Any input gives a result or the project's one-line error (SplitError, SpecError), never another exception."""
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from motionssl.data_specs import Spec, SpecError, load_spec, spec_from_dict
from motionssl.train.labels import Split, SplitError, load_split

# Characters that matter to these parsers (separators, quotes, path parts, digits), plus any text at all.
SYMBOLS = st.sampled_from(list(" \t,;\"'/\\.-_0123456789") + ["\r", "\u00e9", "\x00", "avi", "train", "test", "val",
                                                                   "1", "2", "0", "Class", "v_a_g01_c01"])
LINE = st.lists(st.one_of(SYMBOLS, st.text(max_size=6)), max_size=8).map("".join)
CONTENT = st.one_of(st.lists(LINE, max_size=6).map("\n".join), st.binary(max_size=64))
STORE_IDS = st.lists(st.sampled_from(["Class/v_a_g01_c01", "v_a_g01_c01", "b/clip", "abc_000001_000011", "x"]),
                     max_size=4, unique=True)


def write(path: Path, content) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))


def one_line_result(paths, store_ids) -> None:
    try:
        assert isinstance(load_split(paths, store_ids), Split)
    except SplitError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(class_ind=CONTENT, train=CONTENT, test=CONTENT, store_ids=STORE_IDS)
def test_ucf101_lists_give_a_split_or_one_line(class_ind, train, test, store_ids):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        write(d / "classInd.txt", class_ind)
        write(d / "trainlist01.txt", train)
        write(d / "testlist01.txt", test)
        one_line_result([d], store_ids)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label=st.sampled_from(["brush_hair", "a", "x_y"]), content=CONTENT, store_ids=STORE_IDS)
def test_hmdb51_splits_give_a_split_or_one_line(label, content, store_ids):
    with tempfile.TemporaryDirectory() as d:
        write(Path(d) / f"{label}_test_split1.txt", content)
        one_line_result([Path(d)], store_ids)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.sampled_from(["video_id,label,split", "label,youtube_id,time_start,time_end,split", "a,b", ""]),
       rows=CONTENT, store_ids=STORE_IDS)
@example(header="video_id,label,split", rows='",\n,', store_ids=[])  # a quoted id with a newline (found by CI)
@example(header="video_id,label,split", rows='"a\nb",x,train\n"a\nb",x,train', store_ids=["a\nb"])  # listed twice
@example(header="video_id,label,split", rows='"a\nb",x,train', store_ids=["c"])  # not in the store
def test_csv_and_kinetics_label_files_give_a_split_or_one_line(header, rows, store_ids):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "labels.csv"
        write(path, (header + "\n").encode() + rows if isinstance(rows, bytes) else f"{header}\n{rows}")
        one_line_result([path], store_ids)


SPEC_KEYS = ["spec_version", "name", "modalities", "resolution", "decode", "mv", "flow", "storage", "short_side",
             "max_pixels", "cell", "method", "chunk_frames", "shard_frames", "zarr_codec", "zarr_level", "checksums",
             "rgb_codec", "rgb_crf", "store_bound", "edges_gap", "batch", "block_frames", "dis_preset", "bogus"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=True), st.text(max_size=8),
                    st.sampled_from(["rgb", "mv", "flow", "dis", "tvl1", "zstd", "h264", 1, 64, 128]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(SPEC_KEYS), inner, max_size=5)),
                      max_leaves=12)


@st.composite
def spec_documents(draw):
    """Mostly a valid spec with some keys replaced by anything; sometimes anything at all."""
    if draw(st.booleans()):
        return draw(VALUES)
    doc = {"spec_version": 1, "name": "fuzz", "modalities": ["rgb", "mv"], "resolution": {"short_side": 64},
           "storage": {"chunk_frames": 4, "shard_frames": 16}}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(["resolution", "decode", "mv", "flow", "storage", None]))
        key, value = draw(st.sampled_from(SPEC_KEYS)), draw(VALUES)
        if section is None:
            doc[key] = value
        else:
            doc[section] = {**(doc.get(section) if isinstance(doc.get(section), dict) else {}), key: value}
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=spec_documents(), raw_text=st.one_of(st.none(), st.text(max_size=80)))
def test_spec_yaml_gives_a_spec_or_one_line(doc, raw_text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.yaml"
        path.write_text(raw_text if raw_text is not None else yaml.safe_dump(doc), encoding="utf-8",
                        errors="surrogatepass")
        for load in (lambda: load_spec(path), lambda: spec_from_dict(doc, recorded=True)):
            try:
                spec = load()
                assert isinstance(spec, Spec) and spec.digest
            except SpecError as e:
                assert str(e) and "\n" not in str(e), repr(str(e))
