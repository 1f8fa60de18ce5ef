"""`python -m motionssl ...` runs the command line, as the `motionssl` script does."""
from motionssl.cli import app

app(prog_name="motionssl")
