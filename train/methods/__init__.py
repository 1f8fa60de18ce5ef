"""One module per self-supervised method; `METHODS` maps the `--method` name to its class."""
from motionssl.train.methods.cgm import CGM
from motionssl.train.methods.rgb_moco import RGBMoCo

METHODS = {
    "rgb-moco": RGBMoCo,
    "cgm": CGM,
}
