"""One module per self-supervised method; `METHODS` maps the `--method` name to its class."""
from motionssl.train.methods.cgm import CGM
from motionssl.train.methods.cmd import CMD
from motionssl.train.methods.mcl import MCL
from motionssl.train.methods.modist import MoDist
from motionssl.train.methods.mvcgc import MVCGC
from motionssl.train.methods.rgb_moco import RGBMoCo

METHODS = {
    "rgb-moco": RGBMoCo,
    "cmd": CMD,
    "mvcgc": MVCGC,
    "mcl": MCL,
    "modist": MoDist,
    "cgm": CGM,
}
