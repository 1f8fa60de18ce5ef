"""Split parsers on sample files in the official formats, resolved against store ids."""
from pathlib import Path

import pytest

from motionssl.train.labels import SplitError, detect, load_split

UCF_IDS = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01",
           "HandstandPushups/v_HandStandPushups_g09_c01", "HandstandPushups/v_HandStandPushups_g01_c02",
           "YoYo/v_YoYo_g25_c05"]  # YoYo is in no list: extra store videos are fine


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def ucf_lists(tmp_path) -> Path:
    d = tmp_path / "ucfTrainTestlist"
    write(d / "classInd.txt", "1 ApplyEyeMakeup\n2 ApplyLipstick\n3 HandstandPushups\n")
    write(d / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                                 "HandstandPushups/v_HandStandPushups_g09_c01.avi 3\r\n")
    # UCF101's own quirk: the test list spells the folder with a capital S
    write(d / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
                                "HandStandPushups/v_HandStandPushups_g01_c02.avi\r\n")
    return d


def test_ucf101(ucf_lists):
    s = load_split([ucf_lists], UCF_IDS, split=1)
    assert s.classes == ("ApplyEyeMakeup", "ApplyLipstick", "HandstandPushups")
    assert s.train == {"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01": 0, "HandstandPushups/v_HandStandPushups_g09_c01": 2}
    assert s.test == {"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01": 0, "HandstandPushups/v_HandStandPushups_g01_c02": 2}
    assert s.part("test") == (["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01",
                               "HandstandPushups/v_HandStandPushups_g01_c02"], [0, 2])


def test_ucf101_flat_store_matches_by_file_name(ucf_lists):
    flat = [v.split("/")[1] for v in UCF_IDS]
    s = load_split([ucf_lists], flat)
    assert s.train == {"v_ApplyEyeMakeup_g08_c01": 0, "v_HandStandPushups_g09_c01": 2}


def test_unmatched_ids_are_listed_in_one_error(ucf_lists):
    with pytest.raises(SplitError) as e:
        load_split([ucf_lists], UCF_IDS[:1] + UCF_IDS[3:])
    msg = str(e.value)
    assert msg.startswith("2 of the videos in ucf101 labels")
    assert "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01" in msg and "HandstandPushups/v_HandStandPushups_g09_c01" in msg
    assert "\n" not in msg  # one line, as every CLI error
    assert "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01" not in msg.split("): ", 1)[1]  # the list, after the examples


def test_hmdb51(tmp_path):
    d = tmp_path / "testTrainMulti_7030_splits"
    write(d / "brush_hair_test_split1.txt", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
                                             "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 2 \n"
                                             "unused_brush_hair_clip.avi 0 \n")
    write(d / "cartwheel_test_split1.txt", "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_le_bad_8.avi 2 \n")
    write(d / "cartwheel_test_split2.txt", "whatever.avi 1 \n")
    ids = ["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0",
           "brush_hair/Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0",
           "cartwheel/Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_le_bad_8"]
    assert detect([d]) == "hmdb51"
    s = load_split([d], ids, split=1)
    assert s.classes == ("brush_hair", "cartwheel")
    assert s.train == {ids[0]: 0}
    assert s.test == {ids[1]: 0, ids[2]: 1}  # the 0-marked clip is in neither part, and need not be stored
    write(d / "cartwheel_test_split1.txt", "x.avi 3\n")
    with pytest.raises(SplitError, match="mark '3' of x.avi is not 0, 1 or 2"):
        load_split([d], ids)


def test_kinetics400(tmp_path):
    header = "label,youtube_id,time_start,time_end,split\n"
    train = write(tmp_path / "train.csv", header + "abseiling,--07WQ2iBlw,1,11,train\n"
                                                     '"air drumming",--nQbRBEz2s,104,114,train\n')
    val = write(tmp_path / "validate.csv", header + "abseiling,0wR5jVB-WPk,417,427,val\n")
    ids = ["train/abseiling/--07WQ2iBlw_000001_000011", "air drumming/--nQbRBEz2s_000104_000114", "0wR5jVB-WPk"]
    assert detect([train, val]) == "kinetics400"
    s = load_split([train, val], ids)
    assert s.classes == ("abseiling", "air drumming")
    assert s.train == {ids[0]: 0, ids[1]: 1} and s.test == {ids[2]: 0}


def test_generic_csv(tmp_path):
    f = write(tmp_path / "labels.csv", "video_id,label,split\nright/r_000,right,train\nleft/l_000.mp4,left,test\n"
                                       "right/r_001,right,test\n")
    s = load_split([f], ["left/l_000", "right/r_000", "right/r_001"])
    assert s.classes == ("left", "right")
    assert s.train == {"right/r_000": 1} and s.test == {"left/l_000": 0, "right/r_001": 1}
    bad = write(tmp_path / "bad.csv", "video_id,label,split\nright/r_000,right,val\n")
    with pytest.raises(SplitError, match="split 'val' of right/r_000 is not train or test"):
        load_split([bad], ["right/r_000"])
    with pytest.raises(SplitError, match="expected CSVs with a header"):
        load_split([write(tmp_path / "x.csv", "a,b\n1,2\n")], [])
