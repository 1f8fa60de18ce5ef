"""motionssl: extract motion signals from videos once, then learn motion-aware video representations."""
__version__ = "0.1.0"
